/*
 * inet-keeper: holds TCP and UDP sockets over IPv4 and IPv6 with data in flight both ways, waits
 * to be checkpointed (and restored), then checks each one with its peer (the test).
 *
 *   inet-keeper REPORT_FILE WORK_DIR PEER4_PORT PEER6_PORT PEER_UDP6_PORT UDP_FROM_PORT [raw|packet|netlink]
 *
 * Protocol as tests/state-keeper.c, in two steps: "listening <pid> <l4> <l6>" once its listeners
 * are up (the test then connects to each: one connection over IPv4 to l4, one over IPv4 to the
 * dual-stack l6, which makes an IPv4-mapped IPv6 socket here); "ready <pid> <c1> <c6> <cw> <fw>
 * <u4> <u6> <f1> <f1 bytes> <la bytes>" once everything is set up (the local ports of its
 * connections to the test and of its UDP sockets, and how much F1 and LA sent before their FIN;
 * the test then queues datagrams in both UDP sockets); on SIGUSR1 "ok ..." / "FAIL ..." lines, then "done <failures>", exit status = number
 * of failures.
 *
 * Held:
 *   L4   TCP listener on 127.0.0.1 (backlog 5, SO_REUSEADDR, SO_RCVBUF, TCP_FASTOPEN 7)
 *   L6   TCP listener on [::] (IPV6_V6ONLY off, SO_REUSEPORT, backlog 3, TCP_DEFER_ACCEPT 5 s)
 *   C1   connection to 127.0.0.1:PEER4 (SO_KEEPALIVE, TCP_KEEPIDLE 77)
 *   C6   connection to [::1]:PEER6 (IPV6_TCLASS 0x20)
 *   A    connection accepted from L4 (TCP_NODELAY)
 *   M    connection accepted from L6, IPv4-mapped
 *   CW   connection to 127.0.0.1:PEER4 the test has shut down after "bye-from-peer": CLOSE_WAIT
 *   FW   connection to 127.0.0.1:PEER4 this side shut down after "bye-from-program": FIN_WAIT2
 *   F1   connection to 127.0.0.1:PEER4 this side shut down behind a full window: FIN_WAIT1
 *   LA   third connection accepted from L4, shut down by the test, then by this side behind a
 *        full window: LAST_ACK (the test reads F1 and LA to their end after the restore)
 *   U4   UDP socket bound to 127.0.0.1 (SO_RCVBUF 100000), with "queued-1", 3000 bytes and
 *        "queued-3" waiting in it (sent by the test)
 *   U6   UDP socket connected to [::1]:PEER_UDP6, with "six-1" from that peer waiting in it
 * On C1, C6, A and M each side sends STREAM_LEN bytes of its own pseudo-random stream, as much
 * as fits before the checkpoint (non-blocking sockets, until EAGAIN), the rest after it; each
 * side checks every byte it receives. The optional last argument adds a socket dump must refuse.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/if_ether.h>
#include <linux/netlink.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define STREAM_LEN (3u << 20)

static volatile sig_atomic_t check_requested;
static int udp_from_port; /* the test's UDP socket that queues datagrams in U4 */
static int report_fd = -1;
static int failures;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > 0 && write(report_fd, line, (size_t)n) < 0)
		_exit(100);
}

#define CHECK(cond, ...)                                           \
	do {                                                       \
		char what_[256];                                   \
		snprintf(what_, sizeof(what_), __VA_ARGS__);       \
		if (cond)                                          \
			say("ok %s\n", what_);                     \
		else {                                             \
			say("FAIL %s (errno %d)\n", what_, errno); \
			failures++;                                \
		}                                                  \
	} while (0)

#define MUST(x)                                                                             \
	do {                                                                                \
		if ((x) < 0) {                                                              \
			dprintf(report_fd, "setup failed: %s: %s\n", #x, strerror(errno)); \
			_exit(99);                                                          \
		}                                                                           \
	} while (0)

static void on_usr1(int sig) { check_requested = 1; }

/* Byte i of stream `seed` (the test computes the same). */
static uint8_t stream_byte(uint32_t seed, uint32_t i)
{
	uint32_t v = (i ^ seed) * 0x9E3779B1u;
	v ^= v >> 15;
	v *= 0x85EBCA77u;
	v ^= v >> 13;
	return (uint8_t)v;
}

/* One stream connection: what this side sent and received so far. */
struct conn {
	const char *name;
	int fd;
	uint32_t send_seed, recv_seed;
	uint32_t sent, received;
	int bad; /* received bytes that were not the stream's */
};

/* Sends as much of the rest of the stream as the socket takes now. */
static void pump_send(struct conn *c)
{
	static uint8_t buf[65536];
	while (c->sent < STREAM_LEN) {
		uint32_t n = STREAM_LEN - c->sent < sizeof(buf) ? STREAM_LEN - c->sent : (uint32_t)sizeof(buf);
		for (uint32_t i = 0; i < n; i++)
			buf[i] = stream_byte(c->send_seed, c->sent + i);
		ssize_t w = send(c->fd, buf, n, MSG_DONTWAIT | MSG_NOSIGNAL);
		if (w <= 0)
			return;
		c->sent += (uint32_t)w;
	}
}

/* Takes what has arrived and checks it against the peer's stream. */
static void pump_recv(struct conn *c)
{
	static uint8_t buf[65536];
	for (;;) {
		ssize_t r = recv(c->fd, buf, sizeof(buf), MSG_DONTWAIT);
		if (r <= 0)
			return;
		for (ssize_t i = 0; i < r; i++)
			if (buf[i] != stream_byte(c->recv_seed, c->received + (uint32_t)i))
				c->bad++;
		c->received += (uint32_t)r;
	}
}

static int listen_on(int family, const char *addr, int backlog)
{
	int fd = socket(family, SOCK_STREAM, 0);
	MUST(fd);
	int one = 1;
	if (family == AF_INET) {
		struct sockaddr_in a = {.sin_family = AF_INET};
		inet_pton(AF_INET, addr, &a.sin_addr);
		MUST(setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one)));
		int rcvbuf = 150000;
		MUST(setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
		MUST(bind(fd, (struct sockaddr *)&a, sizeof(a)));
	} else {
		struct sockaddr_in6 a = {.sin6_family = AF_INET6};
		inet_pton(AF_INET6, addr, &a.sin6_addr);
		int zero = 0;
		MUST(setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero)));
		MUST(setsockopt(fd, SOL_SOCKET, SO_REUSEPORT, &one, sizeof(one)));
		MUST(bind(fd, (struct sockaddr *)&a, sizeof(a)));
	}
	MUST(listen(fd, backlog));
	return fd;
}

static int connect_to(int family, const char *addr, int port)
{
	int fd = socket(family, SOCK_STREAM, 0);
	MUST(fd);
	if (family == AF_INET) {
		struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
		inet_pton(AF_INET, addr, &a.sin_addr);
		MUST(connect(fd, (struct sockaddr *)&a, sizeof(a)));
	} else {
		struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)port)};
		inet_pton(AF_INET6, addr, &a.sin6_addr);
		MUST(connect(fd, (struct sockaddr *)&a, sizeof(a)));
	}
	return fd;
}

static int local_port(int fd)
{
	struct sockaddr_storage ss;
	socklen_t len = sizeof(ss);
	if (getsockname(fd, (struct sockaddr *)&ss, &len) < 0)
		return -1;
	return ntohs(ss.ss_family == AF_INET ? ((struct sockaddr_in *)&ss)->sin_port : ((struct sockaddr_in6 *)&ss)->sin6_port);
}

static void nonblocking(int fd) { MUST(fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK)); }

static int int_opt(int fd, int level, int name)
{
	int v = -1;
	socklen_t len = sizeof(v);
	if (getsockopt(fd, level, name, &v, &len) < 0)
		return -1;
	return v;
}

static int tcp_state(int fd)
{
	struct tcp_info ti;
	socklen_t len = sizeof(ti);
	if (getsockopt(fd, IPPROTO_TCP, TCP_INFO, &ti, &len) < 0)
		return -1;
	return ti.tcpi_state;
}

/* Waits (bounded) for `len` bytes; returns how many came. */
static ssize_t read_exactly(int fd, char *buf, size_t len, int timeout_ms)
{
	size_t got = 0;
	while (got < len) {
		struct pollfd p = {.fd = fd, .events = POLLIN};
		if (poll(&p, 1, timeout_ms) <= 0)
			break;
		ssize_t n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return (ssize_t)got;
}

static int peer_closed(int fd, int timeout_ms)
{
	char c;
	struct pollfd p = {.fd = fd, .events = POLLIN};
	if (poll(&p, 1, timeout_ms) <= 0)
		return 0;
	return recv(fd, &c, 1, MSG_DONTWAIT) == 0;
}

int main(int argc, char **argv)
{
	if (argc != 7 && argc != 8)
		return 2;
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	report_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (report_fd < 0)
		return 3;
	int peer4 = atoi(argv[3]), peer6 = atoi(argv[4]), peer_udp6 = atoi(argv[5]);
	udp_from_port = atoi(argv[6]);
	const char *refuse = argc == 8 ? argv[7] : "";
	signal(SIGPIPE, SIG_IGN);
	int one = 1;

	int l4 = listen_on(AF_INET, "127.0.0.1", 5);
	int l6 = listen_on(AF_INET6, "::", 3);
	say("listening %d %d %d\n", getpid(), local_port(l4), local_port(l6));
	int a = accept4(l4, NULL, NULL, 0);
	MUST(a);
	int m = accept4(l6, NULL, NULL, 0);
	MUST(m);
	MUST(setsockopt(a, IPPROTO_TCP, TCP_NODELAY, &one, sizeof(one)));
	/* The test connected a third time to L4 and at once shut down its side: LA is in CLOSE_WAIT. */
	int la = accept4(l4, NULL, NULL, 0);
	MUST(la);

	int c1 = connect_to(AF_INET, "127.0.0.1", peer4);
	MUST(setsockopt(c1, SOL_SOCKET, SO_KEEPALIVE, &one, sizeof(one)));
	int idle = 77;
	MUST(setsockopt(c1, IPPROTO_TCP, TCP_KEEPIDLE, &idle, sizeof(idle)));
	int cw = connect_to(AF_INET, "127.0.0.1", peer4);
	int fw = connect_to(AF_INET, "127.0.0.1", peer4);
	int f1 = connect_to(AF_INET, "127.0.0.1", peer4);
	int c6 = connect_to(AF_INET6, "::1", peer6);
	int tclass = 0x20;
	MUST(setsockopt(c6, IPPROTO_IPV6, IPV6_TCLASS, &tclass, sizeof(tclass)));

	int u4 = socket(AF_INET, SOCK_DGRAM, 0);
	MUST(u4);
	int rcvbuf = 100000;
	MUST(setsockopt(u4, SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
	struct sockaddr_in ua = {.sin_family = AF_INET};
	inet_pton(AF_INET, "127.0.0.1", &ua.sin_addr);
	MUST(bind(u4, (struct sockaddr *)&ua, sizeof(ua)));
	int u6 = socket(AF_INET6, SOCK_DGRAM, 0);
	MUST(u6);
	struct sockaddr_in6 u6peer = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)peer_udp6)};
	inet_pton(AF_INET6, "::1", &u6peer.sin6_addr);
	MUST(connect(u6, (struct sockaddr *)&u6peer, sizeof(u6peer)));

	struct conn conns[] = {
		{"C1", c1, 0x1001, 0x2001, 0, 0, 0},
		{"C6", c6, 0x1002, 0x2002, 0, 0, 0},
		{"A", a, 0x1003, 0x2003, 0, 0, 0},
		{"M", m, 0x1004, 0x2004, 0, 0, 0},
	};
	const int nconns = (int)(sizeof(conns) / sizeof(conns[0]));
	for (int i = 0; i < nconns; i++) {
		nonblocking(conns[i].fd);
		pump_send(&conns[i]);
	}
	MUST(send(fw, "bye-from-program", 16, 0));
	MUST(shutdown(fw, SHUT_WR));
	/* Our FIN behind more data than the peer's window takes: F1 stays in FIN_WAIT1 and LA (the
	   peer's FIN already in) in LAST_ACK, each with its FIN unacknowledged. */
	struct conn f1c = {"F1", f1, 0x1005, 0, 0, 0, 0}, lac = {"LA", la, 0x1006, 0, 0, 0, 0};
	nonblocking(f1);
	nonblocking(la);
	pump_send(&f1c);
	pump_send(&lac);
	MUST(shutdown(f1, SHUT_WR));
	MUST(shutdown(la, SHUT_WR));

	int extra = -1;
	if (strcmp(refuse, "raw") == 0)
		extra = socket(AF_INET, SOCK_RAW, IPPROTO_ICMP);
	else if (strcmp(refuse, "packet") == 0)
		extra = socket(AF_PACKET, SOCK_DGRAM, htons(ETH_P_ALL));
	else if (strcmp(refuse, "netlink") == 0)
		extra = socket(AF_NETLINK, SOCK_RAW, NETLINK_ROUTE);
	if (*refuse)
		MUST(extra);

	/* Listener options CRIU's format has no place for (nginx's "deferred" and "fastopen="), set
	   once the listeners' first connections are in; the kernel rounds TCP_DEFER_ACCEPT to its
	   retransmission steps, so the value read back is the one to keep. */
	int defer = 5, fastopen_qlen = 7;
	MUST(setsockopt(l6, IPPROTO_TCP, TCP_DEFER_ACCEPT, &defer, sizeof(defer)));
	MUST(setsockopt(l4, IPPROTO_TCP, TCP_FASTOPEN, &fastopen_qlen, sizeof(fastopen_qlen)));
	defer = int_opt(l6, IPPROTO_TCP, TCP_DEFER_ACCEPT);

	signal(SIGUSR1, on_usr1);
	say("ready %d %d %d %d %d %d %d %d %u %u\n", getpid(), local_port(c1), local_port(c6), local_port(cw), local_port(fw), local_port(u4), local_port(u6),
	    local_port(f1), f1c.sent, lac.sent);
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	/* Options and shapes as they were set up. */
	CHECK(int_opt(l4, SOL_SOCKET, SO_ACCEPTCONN) == 1 && int_opt(l4, SOL_SOCKET, SO_REUSEADDR) == 1, "L4 listens with SO_REUSEADDR");
	CHECK(int_opt(l4, SOL_SOCKET, SO_RCVBUF) == 300000, "L4 SO_RCVBUF kept (%d)", int_opt(l4, SOL_SOCKET, SO_RCVBUF));
	CHECK(int_opt(l6, SOL_SOCKET, SO_ACCEPTCONN) == 1 && int_opt(l6, IPPROTO_IPV6, IPV6_V6ONLY) == 0 && int_opt(l6, SOL_SOCKET, SO_REUSEPORT) == 1,
	      "L6 listens dual-stack with SO_REUSEPORT");
	CHECK(int_opt(l6, IPPROTO_TCP, TCP_DEFER_ACCEPT) == defer, "L6 TCP_DEFER_ACCEPT kept (%d, was %d)", int_opt(l6, IPPROTO_TCP, TCP_DEFER_ACCEPT), defer);
	CHECK(int_opt(l4, IPPROTO_TCP, TCP_FASTOPEN) == fastopen_qlen, "L4 TCP_FASTOPEN kept (%d)", int_opt(l4, IPPROTO_TCP, TCP_FASTOPEN));
	CHECK(int_opt(c1, SOL_SOCKET, SO_KEEPALIVE) == 1 && int_opt(c1, IPPROTO_TCP, TCP_KEEPIDLE) == 77, "C1 keepalive, idle 77 s");
	CHECK(int_opt(c6, IPPROTO_IPV6, IPV6_TCLASS) == 0x20, "C6 traffic class kept (%d)", int_opt(c6, IPPROTO_IPV6, IPV6_TCLASS));
	CHECK(int_opt(a, IPPROTO_TCP, TCP_NODELAY) == 1, "A TCP_NODELAY kept");
	CHECK(int_opt(u4, SOL_SOCKET, SO_RCVBUF) == 200000, "U4 SO_RCVBUF kept (%d)", int_opt(u4, SOL_SOCKET, SO_RCVBUF));
	CHECK(fcntl(a, F_GETFL) & O_NONBLOCK, "A still non-blocking");
	struct sockaddr_in6 mp;
	socklen_t mplen = sizeof(mp);
	char mtext[64] = "";
	if (getpeername(m, (struct sockaddr *)&mp, &mplen) == 0)
		inet_ntop(AF_INET6, &mp.sin6_addr, mtext, sizeof(mtext));
	CHECK(strcmp(mtext, "::ffff:127.0.0.1") == 0, "M is IPv4-mapped (%s)", mtext);
	CHECK(tcp_state(cw) == TCP_CLOSE_WAIT, "CW in CLOSE_WAIT (%d)", tcp_state(cw));
	CHECK(tcp_state(fw) == TCP_FIN_WAIT2, "FW in FIN_WAIT2 (%d)", tcp_state(fw));

	/* The streams: the rest of ours out, all of the peer's in, checked byte by byte. */
	struct timespec t0, now;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	for (;;) {
		int pending = 0;
		struct pollfd p[4];
		for (int i = 0; i < nconns; i++) {
			pump_send(&conns[i]);
			pump_recv(&conns[i]);
			pending += conns[i].sent < STREAM_LEN || conns[i].received < STREAM_LEN;
			p[i].fd = conns[i].fd;
			p[i].events = (short)(POLLIN | (conns[i].sent < STREAM_LEN ? POLLOUT : 0));
		}
		if (!pending)
			break;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec - t0.tv_sec > 60)
			break;
		poll(p, (nfds_t)nconns, 100);
	}
	for (int i = 0; i < nconns; i++)
		CHECK(conns[i].sent == STREAM_LEN && conns[i].received == STREAM_LEN && conns[i].bad == 0,
		      "%s: stream out %u of %u, in %u of %u, %d bad bytes", conns[i].name, conns[i].sent, STREAM_LEN, conns[i].received,
		      STREAM_LEN, conns[i].bad);

	char buf[256];
	ssize_t n = read_exactly(cw, buf, 13, 5000);
	CHECK(n == 13 && memcmp(buf, "bye-from-peer", 13) == 0, "CW: what the peer sent before its FIN (%zd bytes)", n);
	CHECK(peer_closed(cw, 5000), "CW: then the end of the stream");
	CHECK(send(cw, "reply-cw", 8, MSG_NOSIGNAL) == 8, "CW: can still send");
	close(cw);
	n = read_exactly(fw, buf, 14, 10000);
	CHECK(n == 14 && memcmp(buf, "late-from-peer", 14) == 0, "FW: receives after its own FIN (%zd bytes)", n);
	CHECK(peer_closed(fw, 10000), "FW: then the peer's FIN");
	close(fw);

	/* New connections on the restored listeners (the test connected them before SIGUSR1). */
	int n4 = accept4(l4, NULL, NULL, SOCK_NONBLOCK);
	CHECK(n4 >= 0, "L4 accepts a new connection");
	n = n4 >= 0 ? read_exactly(n4, buf, 7, 5000) : -1;
	CHECK(n == 7 && memcmp(buf, "hello4\n", 7) == 0, "L4 new connection's line (%zd)", n);
	int n6 = accept4(l6, NULL, NULL, SOCK_NONBLOCK);
	CHECK(n6 >= 0, "L6 accepts a new connection");
	n = n6 >= 0 ? read_exactly(n6, buf, 7, 5000) : -1;
	CHECK(n == 7 && memcmp(buf, "hello6\n", 7) == 0, "L6 new connection's line (%zd)", n);

	/* UDP: the datagrams queued before the checkpoint, in order, boundaries and sources kept. */
	char dgram[4096];
	struct sockaddr_in dfrom;
	socklen_t dfromlen = sizeof(dfrom);
	n = recvfrom(u4, dgram, sizeof(dgram), MSG_DONTWAIT, (struct sockaddr *)&dfrom, &dfromlen);
	int from_test = dfromlen == sizeof(dfrom) && dfrom.sin_addr.s_addr == htonl(INADDR_LOOPBACK) && ntohs(dfrom.sin_port) == udp_from_port;
	CHECK(n == 8 && memcmp(dgram, "queued-1", 8) == 0 && from_test, "U4 queued datagram 1 (%zd bytes, from port %d)", n, ntohs(dfrom.sin_port));
	n = recv(u4, dgram, sizeof(dgram), MSG_DONTWAIT);
	int pattern_ok = n == 3000;
	for (int i = 0; pattern_ok && i < 3000; i++)
		pattern_ok = dgram[i] == (char)('A' + i % 23);
	CHECK(pattern_ok, "U4 queued datagram 2 (%zd bytes)", n);
	n = recv(u4, dgram, sizeof(dgram), MSG_DONTWAIT);
	CHECK(n == 8 && memcmp(dgram, "queued-3", 8) == 0, "U4 queued datagram 3 (%zd bytes)", n);
	n = recv(u6, dgram, sizeof(dgram), MSG_DONTWAIT);
	CHECK(n == 5 && memcmp(dgram, "six-1", 5) == 0, "U6 queued datagram from its peer (%zd bytes)", n);

	/* The test sent "udp4 ping" to U4 after the restore; answer to where it came from. U6 talks to its peer. */
	struct sockaddr_storage from;
	socklen_t fromlen = sizeof(from);
	struct pollfd up = {.fd = u4, .events = POLLIN};
	poll(&up, 1, 5000);
	n = recvfrom(u4, buf, sizeof(buf), MSG_DONTWAIT, (struct sockaddr *)&from, &fromlen);
	CHECK(n == 9 && memcmp(buf, "udp4 ping", 9) == 0, "U4 receives a datagram (%zd)", n);
	CHECK(n > 0 && sendto(u4, "udp4 pong", 9, 0, (struct sockaddr *)&from, fromlen) == 9, "U4 answers it");
	CHECK(send(u6, "udp6 hello", 10, 0) == 10, "U6 sends to its connected peer");

	say("done %d\n", failures);
	return failures;
}

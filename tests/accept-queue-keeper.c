/*
 * accept-queue-keeper: two TCP listeners whose clients connect and send before the program has
 * accepted anyone; the program accepts only when asked (SIGUSR1), after being checkpointed and
 * restored, and checks what each connection carries.
 *
 *   accept-queue-keeper REPORT_FILE
 *
 * Listeners: L4 on 127.0.0.1 (backlog 8), L6 on [::1] (backlog 4, IPV6_V6ONLY). "listening <pid>
 * <l4 port> <l6 port>" once up. The test (the clients) then connects, in this order:
 *   Q1 to L4, sends BIG_LEN bytes of stream seed 0x51 (as much as the window takes; the rest after
 *      the program accepts) and keeps its side open;
 *   Q2 to L4, sends "second" and shuts its side down (the connection waits in CLOSE_WAIT);
 *   Q3 to L6, sends SMALL_LEN bytes of stream seed 0x53.
 * On SIGUSR1 the program accepts from L4 twice and from L6 once and checks, per connection:
 * queue order (Q1's first bytes come first), every byte received against the stream, Q2's EOF
 * after "second"; then answers on each: Q1 gets REPLY_LEN bytes of stream seed 0x61, Q2 and Q3
 * get "bye-<name>". "ok"/"FAIL" lines, "done <failures>" (keeper.h's protocol).
 */
#define _GNU_SOURCE
#include "keeper.h"
#include <arpa/inet.h>
#include <netinet/in.h>
#include <poll.h>
#include <stdint.h>
#include <sys/socket.h>

#define BIG_LEN (1u << 20)
#define SMALL_LEN 3000u
#define REPLY_LEN (256u << 10)

/* The stream both sides compute: a xorshift of the seed, one byte per step. */
struct stream {
	uint32_t state;
};
static uint8_t stream_next(struct stream *s)
{
	s->state ^= s->state << 13;
	s->state ^= s->state >> 17;
	s->state ^= s->state << 5;
	return (uint8_t)s->state;
}

/* Reads exactly `len` bytes (or up to EOF) with a time bound; returns the count. */
static size_t read_all(int fd, uint8_t *buf, size_t len, int timeout_ms)
{
	size_t got = 0;
	while (got < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, timeout_ms) <= 0)
			break;
		ssize_t n = read(fd, buf + got, len - got);
		if (n <= 0)
			break;
		got += (size_t)n;
	}
	return got;
}

static int write_all(int fd, const uint8_t *buf, size_t len)
{
	size_t done = 0;
	while (done < len) {
		struct pollfd p = { .fd = fd, .events = POLLOUT };
		if (poll(&p, 1, 10000) <= 0)
			return -1;
		ssize_t n = write(fd, buf + done, len - done);
		if (n < 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

static int accept_one(int listener)
{
	struct pollfd p = { .fd = listener, .events = POLLIN };
	if (poll(&p, 1, 5000) <= 0)
		return -1;
	return accept4(listener, NULL, NULL, SOCK_CLOEXEC);
}

static void check_stream(const char *name, const uint8_t *buf, size_t got, size_t want, uint32_t seed)
{
	struct stream s = { seed };
	size_t bad = 0;
	for (size_t i = 0; i < got; i++)
		if (buf[i] != stream_next(&s))
			bad++;
	CHECK(got == want && bad == 0, "%s: received %zu of %zu bytes, %zu bad", name, got, want, bad);
}

int main(int argc, char **argv)
{
	if (argc != 2 || keeper_open_report(argv[1]) < 0)
		return 2;
	signal(SIGUSR1, on_usr1);

	int l4 = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
	MUST(l4);
	struct sockaddr_in a4 = { .sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK) };
	MUST(bind(l4, (struct sockaddr *)&a4, sizeof(a4)));
	MUST(listen(l4, 8));
	int l6 = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
	MUST(l6);
	int one = 1;
	MUST(setsockopt(l6, IPPROTO_IPV6, IPV6_V6ONLY, &one, sizeof(one)));
	struct sockaddr_in6 a6 = { .sin6_family = AF_INET6, .sin6_addr = IN6ADDR_LOOPBACK_INIT };
	MUST(bind(l6, (struct sockaddr *)&a6, sizeof(a6)));
	MUST(listen(l6, 4));
	socklen_t len4 = sizeof(a4), len6 = sizeof(a6);
	MUST(getsockname(l4, (struct sockaddr *)&a4, &len4));
	MUST(getsockname(l6, (struct sockaddr *)&a6, &len6));
	say("listening %d %d %d\n", getpid(), ntohs(a4.sin_port), ntohs(a6.sin6_port));

	while (!check_requested) /* polled: a restored task re-enters its sleep after a signal that came just before */
		usleep(1000);

	uint8_t *buf = malloc(BIG_LEN + 1);
	if (!buf)
		return 2;
	int q1 = accept_one(l4);
	CHECK(q1 >= 0, "Q1 accepted from L4");
	int q2 = accept_one(l4);
	CHECK(q2 >= 0, "Q2 accepted from L4");
	int q3 = accept_one(l6);
	CHECK(q3 >= 0, "Q3 accepted from L6");
	if (q1 < 0 || q2 < 0 || q3 < 0) {
		say("done %d\n", failures);
		return failures;
	}

	/* Q2 is read first: it must be the second of L4's queue whatever Q1 holds. */
	size_t got = read_all(q2, buf, 64, 5000);
	CHECK(got == 6 && memcmp(buf, "second", 6) == 0, "Q2 (second in L4's queue) carries \"second\" (%zu bytes)", got);
	CHECK(read_all(q2, buf, 1, 5000) == 0, "Q2 then reads EOF (its client had shut its side)");
	got = read_all(q1, buf, BIG_LEN, 10000);
	check_stream("Q1", buf, got, BIG_LEN, 0x51);
	got = read_all(q3, buf, SMALL_LEN, 5000);
	check_stream("Q3", buf, got, SMALL_LEN, 0x53);

	struct stream reply = { 0x61 };
	for (size_t i = 0; i < REPLY_LEN; i++)
		buf[i] = stream_next(&reply);
	CHECK(write_all(q1, buf, REPLY_LEN) == 0, "Q1: %u bytes sent back", REPLY_LEN);
	CHECK(write_all(q2, (const uint8_t *)"bye-Q2", 6) == 0, "Q2: answered");
	CHECK(write_all(q3, (const uint8_t *)"bye-Q3", 6) == 0, "Q3: answered");
	close(q2);
	close(q3);
	/* Q1 stays open until its client has read everything and closed. */
	CHECK(read_all(q1, buf, 1, 10000) == 0, "Q1: its client closed after reading the reply");
	close(q1);
	say("done %d\n", failures);
	return failures;
}

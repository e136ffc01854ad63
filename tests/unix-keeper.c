/*
 * unix-keeper: holds AF_UNIX sockets of every shape criu-ts dumps and restores, with messages
 * waiting in their queues, waits to be checkpointed (and restored), then checks each one.
 *
 *   unix-keeper REPORT_FILE WORK_DIR [external PATH]
 *
 * Protocol as tests/state-keeper.c: "ready <pid>" when set up; on SIGUSR1 "ok ..." / "FAIL ..."
 * lines, then "done <failures>", exit status = number of failures.
 *
 * Held: a stream socketpair with data queued both ways (several writes each way); a dgram
 * socketpair with datagrams of different sizes queued (boundaries must survive) and SO_RCVBUF
 * set; a seqpacket pair with records queued both ways; a stream listener bound to
 * WORK_DIR/listen.sock (backlog 7) and a stream listener bound to the abstract name
 * "\0criu-ts-unix-keeper-<pid>": before SIGUSR1 the test connects a client to each and writes a
 * line, which the program accepts and reads; a connection accepted from the path listener, with
 * data queued both ways; a stream pair whose one end shut down writing after sending bytes; a
 * dgram socket bound to WORK_DIR/dgram.sock with a datagram queued from a dgram socket connected
 * to it; a socket with SO_PASSCRED on and an empty queue; a seqpacket listener bound to the
 * abstract name "\0criu-ts-unix-keeper-waiting-<pid>" with a connection it has not accepted yet;
 * a dgram socket bound to WORK_DIR/gone.sock whose file was then removed; a stream socket whose
 * peer sent bytes and closed.
 * With "external PATH", one more socket is connected to the listener at PATH (owned by the test):
 * a peer outside the process, which dump must refuse.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include "keeper.h"

static socklen_t path_addr(struct sockaddr_un *a, const char *dir, const char *name)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	snprintf(a->sun_path, sizeof(a->sun_path), "%s/%s", dir, name);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(a->sun_path) + 1);
}

static socklen_t abstract_addr(struct sockaddr_un *a)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "criu-ts-unix-keeper-%d", getpid());
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/* Reads exactly what a stream holds right now (non-blocking) into buf; returns the length. */
static ssize_t drain(int fd, char *buf, size_t size)
{
	size_t got = 0;
	for (;;) {
		ssize_t n = recv(fd, buf + got, size - got, MSG_DONTWAIT);
		if (n <= 0)
			return n == 0 || errno == EAGAIN ? (ssize_t)got : -1;
		got += (size_t)n;
	}
}

static int expect_message(int fd, const char *text)
{
	char buf[4096];
	ssize_t n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	return n == (ssize_t)strlen(text) && memcmp(buf, text, (size_t)n) == 0;
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 5)
		return 2;
	/* Close what the starter leaked, so that the fd table is ours alone. */
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	report_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (report_fd < 0)
		return 3;
	const char *dir = argv[2];
	signal(SIGPIPE, SIG_IGN);

	int stream[2], dgram[2], seqpacket[2], half[2];
	MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, stream));
	MUST(write(stream[0], "first ", 6));
	MUST(write(stream[0], "second ", 7));
	MUST(write(stream[0], "third", 5));
	MUST(write(stream[1], "answer one, ", 12));
	MUST(write(stream[1], "answer two", 10));

	MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, dgram));
	int rcvbuf = 100000;
	MUST(setsockopt(dgram[1], SOL_SOCKET, SO_RCVBUF, &rcvbuf, sizeof(rcvbuf)));
	char big[3000];
	for (size_t i = 0; i < sizeof(big); i++)
		big[i] = (char)('a' + i % 26);
	MUST(send(dgram[0], "d1", 2, 0));
	MUST(send(dgram[0], big, sizeof(big), 0));
	MUST(send(dgram[0], "datagram three", 14, 0));
	MUST(send(dgram[1], "back", 4, 0));

	MUST(socketpair(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0, seqpacket));
	MUST(send(seqpacket[0], "record A", 8, 0));
	MUST(send(seqpacket[0], "record BB", 9, 0));
	MUST(send(seqpacket[1], "record C", 8, 0));

	struct sockaddr_un addr;
	socklen_t len = path_addr(&addr, dir, "listen.sock");
	int path_listener = socket(AF_UNIX, SOCK_STREAM, 0);
	MUST(path_listener);
	MUST(bind(path_listener, (struct sockaddr *)&addr, len));
	MUST(listen(path_listener, 7));
	int accepted_client = socket(AF_UNIX, SOCK_STREAM, 0);
	MUST(accepted_client);
	MUST(connect(accepted_client, (struct sockaddr *)&addr, len));
	int accepted = accept(path_listener, NULL, NULL);
	MUST(accepted);
	MUST(write(accepted_client, "to the server", 13));
	MUST(write(accepted, "to the client", 13));

	len = abstract_addr(&addr);
	int abstract_listener = socket(AF_UNIX, SOCK_STREAM | SOCK_NONBLOCK, 0);
	MUST(abstract_listener);
	MUST(bind(abstract_listener, (struct sockaddr *)&addr, len));
	MUST(listen(abstract_listener, 3));

	MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, half));
	MUST(write(half[0], "last words", 10));
	MUST(shutdown(half[0], SHUT_WR));

	len = path_addr(&addr, dir, "dgram.sock");
	int named_dgram = socket(AF_UNIX, SOCK_DGRAM, 0);
	MUST(named_dgram);
	MUST(bind(named_dgram, (struct sockaddr *)&addr, len));
	int dgram_client = socket(AF_UNIX, SOCK_DGRAM, 0);
	MUST(dgram_client);
	MUST(connect(dgram_client, (struct sockaddr *)&addr, len));
	MUST(send(dgram_client, "to the named one", 16, 0));

	memset(&addr, 0, sizeof(addr));
	addr.sun_family = AF_UNIX;
	len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 +
			  snprintf(addr.sun_path + 1, sizeof(addr.sun_path) - 1, "criu-ts-unix-keeper-waiting-%d", getpid()));
	int waiting_listener = socket(AF_UNIX, SOCK_SEQPACKET | SOCK_NONBLOCK, 0);
	MUST(waiting_listener);
	MUST(bind(waiting_listener, (struct sockaddr *)&addr, len));
	MUST(listen(waiting_listener, 2));
	int waiting_client = socket(AF_UNIX, SOCK_SEQPACKET, 0);
	MUST(waiting_client);
	MUST(connect(waiting_client, (struct sockaddr *)&addr, len));

	len = path_addr(&addr, dir, "gone.sock");
	int gone = socket(AF_UNIX, SOCK_DGRAM, 0);
	MUST(gone);
	MUST(bind(gone, (struct sockaddr *)&addr, len));
	MUST(unlink(addr.sun_path));

	int orphan[2];
	MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, orphan));
	MUST(write(orphan[1], "parting words", 13));
	close(orphan[1]);

	int passcred = socket(AF_UNIX, SOCK_DGRAM, 0);
	int one = 1;
	MUST(passcred);
	MUST(setsockopt(passcred, SOL_SOCKET, SO_PASSCRED, &one, sizeof(one)));

	int external = -1;
	if (argc == 5 && strcmp(argv[3], "external") == 0) {
		len = path_addr(&addr, "", "");
		snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", argv[4]);
		len = (socklen_t)(offsetof(struct sockaddr_un, sun_path) + strlen(addr.sun_path) + 1);
		external = socket(AF_UNIX, SOCK_STREAM, 0);
		MUST(external);
		MUST(connect(external, (struct sockaddr *)&addr, len));
	}

	signal(SIGUSR1, on_usr1);
	say("ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	char buf[8192];
	ssize_t n = drain(stream[1], buf, sizeof(buf));
	CHECK(n == 18 && memcmp(buf, "first second third", 18) == 0, "stream data queued in end 1 (%zd bytes: %.*s)", n, (int)(n > 0 ? n : 0), buf);
	n = drain(stream[0], buf, sizeof(buf));
	CHECK(n == 22 && memcmp(buf, "answer one, answer two", 22) == 0, "stream data queued in end 0 (%zd bytes)", n);
	CHECK(write(stream[0], "ping", 4) == 4 && read(stream[1], buf, 4) == 4 && memcmp(buf, "ping", 4) == 0, "stream pair still connected");

	n = recv(dgram[1], buf, sizeof(buf), MSG_DONTWAIT);
	CHECK(n == 2 && memcmp(buf, "d1", 2) == 0, "first datagram (%zd bytes)", n);
	n = recv(dgram[1], buf, sizeof(buf), MSG_DONTWAIT);
	CHECK(n == (ssize_t)sizeof(big) && memcmp(buf, big, sizeof(big)) == 0, "second datagram (%zd bytes)", n);
	CHECK(expect_message(dgram[1], "datagram three"), "third datagram");
	CHECK(recv(dgram[1], buf, sizeof(buf), MSG_DONTWAIT) < 0 && errno == EAGAIN, "no fourth datagram");
	CHECK(expect_message(dgram[0], "back"), "datagram queued the other way");
	int got_rcvbuf = 0;
	socklen_t optlen = sizeof(got_rcvbuf);
	getsockopt(dgram[1], SOL_SOCKET, SO_RCVBUF, &got_rcvbuf, &optlen);
	CHECK(got_rcvbuf == 2 * rcvbuf, "SO_RCVBUF kept (%d)", got_rcvbuf);
	int type = 0;
	optlen = sizeof(type);
	getsockopt(dgram[0], SOL_SOCKET, SO_TYPE, &type, &optlen);
	CHECK(type == SOCK_DGRAM, "dgram pair type");

	CHECK(expect_message(seqpacket[1], "record A") && expect_message(seqpacket[1], "record BB"), "seqpacket records in order");
	CHECK(expect_message(seqpacket[0], "record C"), "seqpacket record the other way");
	CHECK(fcntl(seqpacket[0], F_GETFL) & O_NONBLOCK, "seqpacket end non-blocking");
	optlen = sizeof(type);
	getsockopt(seqpacket[0], SOL_SOCKET, SO_TYPE, &type, &optlen);
	CHECK(type == SOCK_SEQPACKET, "seqpacket type");

	/* The test connected a client to each listener and wrote "hello <name>\n". */
	int client = accept4(path_listener, NULL, NULL, SOCK_NONBLOCK);
	CHECK(client >= 0, "path listener accepts a new client");
	if (client >= 0) {
		usleep(10000);
		n = drain(client, buf, sizeof(buf));
		CHECK(n == 11 && memcmp(buf, "hello path\n", 11) == 0, "path client's line (%zd bytes)", n);
		close(client);
	}
	int backlog = -1;
	optlen = sizeof(backlog);
	CHECK(getsockopt(path_listener, SOL_SOCKET, SO_ACCEPTCONN, &backlog, &optlen) == 0 && backlog == 1, "path listener listens");
	client = accept4(abstract_listener, NULL, NULL, SOCK_NONBLOCK);
	CHECK(client >= 0, "abstract listener accepts a new client");
	if (client >= 0) {
		n = drain(client, buf, sizeof(buf));
		CHECK(n == 15 && memcmp(buf, "hello abstract\n", 15) == 0, "abstract client's line (%zd bytes)", n);
		close(client);
	}
	struct sockaddr_un name;
	socklen_t name_len = sizeof(name);
	getsockname(accepted, (struct sockaddr *)&name, &name_len);
	CHECK(name_len > offsetof(struct sockaddr_un, sun_path) && strstr(name.sun_path, "listen.sock") != NULL, "accepted connection has the listener's name");
	CHECK(expect_message(accepted, "to the server") && expect_message(accepted_client, "to the client"), "accepted connection data both ways");
	CHECK(write(accepted, "more", 4) == 4 && read(accepted_client, buf, 4) == 4, "accepted connection still connected");

	n = drain(half[1], buf, sizeof(buf));
	CHECK(n == 10 && memcmp(buf, "last words", 10) == 0, "bytes sent before shutdown (%zd)", n);
	CHECK(read(half[1], buf, sizeof(buf)) == 0, "end of stream after them");
	CHECK(send(half[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "shut-down end cannot write");
	CHECK(write(half[1], "reply", 5) == 5 && read(half[0], buf, 5) == 5, "other direction still open");

	CHECK(expect_message(named_dgram, "to the named one"), "datagram queued in the named dgram socket");
	CHECK(send(dgram_client, "again", 5, 0) == 5 && expect_message(named_dgram, "again"), "dgram client still connected to the name");
	int cred = 0;
	optlen = sizeof(cred);
	getsockopt(passcred, SOL_SOCKET, SO_PASSCRED, &cred, &optlen);
	CHECK(cred == 1, "SO_PASSCRED kept");
	(void)external;

	name_len = sizeof(name);
	struct stat st;
	CHECK(getsockname(gone, (struct sockaddr *)&name, &name_len) == 0 && strstr(name.sun_path, "gone.sock") != NULL &&
	      stat(name.sun_path, &st) < 0 && errno == ENOENT, "socket whose file was removed keeps its name, and the file stays removed");

	n = drain(orphan[0], buf, sizeof(buf));
	CHECK(n == 13 && memcmp(buf, "parting words", 13) == 0, "bytes from a peer that closed (%zd)", n);
	CHECK(read(orphan[0], buf, sizeof(buf)) == 0, "then the end of the stream");
	CHECK(send(orphan[0], "x", 1, MSG_NOSIGNAL) < 0 && errno == EPIPE, "and no one to write to");

	int waiting = accept4(waiting_listener, NULL, NULL, SOCK_NONBLOCK);
	CHECK(waiting >= 0, "the connection not accepted yet is accepted now");
	CHECK(send(waiting_client, "late record", 11, 0) == 11 && expect_message(waiting, "late record"), "and carries records");
	CHECK(accept4(waiting_listener, NULL, NULL, SOCK_NONBLOCK) < 0 && errno == EAGAIN, "no other connection was waiting");

	say("done %d\n", failures);
	return failures;
}

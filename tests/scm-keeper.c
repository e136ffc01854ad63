/*
 * scm-keeper: file descriptors in flight (SCM_RIGHTS) in unix sockets' queues, sent and not
 * received yet, waiting to be checkpointed and restored.
 *
 *   scm-keeper REPORT_FILE WORK_DIR [refuse]
 *
 * A stream socketpair holds, in this order: "plain before" (no fds); "file" with a regular file
 * (WORK_DIR/data, read up to offset 5, closed by the sender); "pipe" with the read end of a pipe
 * holding bytes (the program keeps the write end); "sock" with one end of a socketpair whose
 * queue holds a message (the program keeps the other end); "two" with a second regular file and
 * an eventfd whose counter is 7; "plain after". A dgram socketpair holds "d-plain", "d-fds" with
 * the write end of a second pipe (the program keeps the read end), "d-last". A seqpacket pair
 * holds one record "s-file" with the WORK_DIR/data file opened O_APPEND.
 * With "refuse", the stream pair holds an epoll fd in flight too (which dump must refuse).
 *
 * Protocol as tests/state-keeper.c: "ready <pid>" when set up; on SIGUSR1 each message is
 * received with a buffer of exactly its length (a descriptor arriving with the wrong message
 * shows), each descriptor is checked by using it, then "done <failures>".
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>

#include "keeper.h"

static void send_fds(int sock, const char *text, const int *fds, int nfds)
{
	char control[CMSG_SPACE(sizeof(int) * 4)];
	struct iovec iov = { .iov_base = (void *)text, .iov_len = strlen(text) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1 };
	if (nfds > 0) {
		memset(control, 0, sizeof(control));
		msg.msg_control = control;
		msg.msg_controllen = CMSG_SPACE(sizeof(int) * (size_t)nfds);
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(int) * (size_t)nfds);
		memcpy(CMSG_DATA(c), fds, sizeof(int) * (size_t)nfds);
	}
	MUST(sendmsg(sock, &msg, 0));
}

/* Receives one message of exactly strlen(want) bytes; returns how many fds came with it (into fds). */
static int receive(int sock, const char *want, int *fds, int max)
{
	char buf[256] = { 0 };
	char control[CMSG_SPACE(sizeof(int) * 8)];
	struct iovec iov = { .iov_base = buf, .iov_len = strlen(want) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT);
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, strlen(want)) == 0, "message \"%s\" (got %zd bytes: \"%.*s\")", want, n, n > 0 ? (int)n : 0, buf);
	int got = 0;
	for (struct cmsghdr *c = CMSG_FIRSTHDR(&msg); c; c = CMSG_NXTHDR(&msg, c)) {
		if (c->cmsg_level != SOL_SOCKET || c->cmsg_type != SCM_RIGHTS)
			continue;
		int count = (int)((c->cmsg_len - CMSG_LEN(0)) / sizeof(int));
		for (int i = 0; i < count; i++) {
			int fd;
			memcpy(&fd, CMSG_DATA(c) + i * sizeof(int), sizeof(int));
			if (got < max)
				fds[got++] = fd;
			else
				close(fd);
		}
	}
	return got;
}

static int reads(int fd, const char *want)
{
	char buf[128] = { 0 };
	ssize_t n = read(fd, buf, strlen(want));
	return n == (ssize_t)strlen(want) && memcmp(buf, want, strlen(want)) == 0;
}

int main(int argc, char **argv)
{
	if (argc < 3 || keeper_open_report(argv[1]) < 0)
		return 3;
	const char *dir = argv[2];
	int refuse = argc > 3 && strcmp(argv[3], "refuse") == 0;
	signal(SIGPIPE, SIG_IGN);
	char path[4096];
	snprintf(path, sizeof(path), "%s/data", dir);
	int data = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	MUST(data);
	MUST(write(data, "01234file contents", 18));
	MUST(lseek(data, 5, SEEK_SET));

	int st[2], dg[2], sp[2], inner[2], pipe1[2], pipe2[2];
	MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, st));
	MUST(socketpair(AF_UNIX, SOCK_DGRAM, 0, dg));
	MUST(socketpair(AF_UNIX, SOCK_SEQPACKET, 0, sp));
	MUST(socketpair(AF_UNIX, SOCK_STREAM, 0, inner));
	MUST(pipe(pipe1));
	MUST(pipe(pipe2));
	MUST(write(pipe1[1], "through the pipe", 16));
	MUST(write(inner[0], "queued in the socket in flight", 30));

	send_fds(st[0], "plain before", NULL, 0);
	send_fds(st[0], "file", &data, 1);
	close(data);
	send_fds(st[0], "pipe", &pipe1[0], 1);
	close(pipe1[0]);
	send_fds(st[0], "sock", &inner[1], 1);
	close(inner[1]);
	snprintf(path, sizeof(path), "%s/second", dir);
	int second = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
	MUST(second);
	MUST(write(second, "second file", 11));
	MUST(lseek(second, 0, SEEK_SET));
	int efd = eventfd(7, 0);
	MUST(efd);
	int two[2] = { second, efd };
	send_fds(st[0], "two", two, 2);
	close(second);
	close(efd);
	if (refuse) {
		int ep = epoll_create1(0);
		MUST(ep);
		send_fds(st[0], "epoll", &ep, 1);
		close(ep);
	}
	send_fds(st[0], "plain after", NULL, 0);

	send_fds(dg[0], "d-plain", NULL, 0);
	send_fds(dg[0], "d-fds", &pipe2[1], 1);
	close(pipe2[1]);
	send_fds(dg[0], "d-last", NULL, 0);

	snprintf(path, sizeof(path), "%s/data", dir);
	int appender = open(path, O_WRONLY | O_APPEND);
	MUST(appender);
	send_fds(sp[0], "s-file", &appender, 1);
	close(appender);

	signal(SIGUSR1, on_usr1);
	say("ready %d\n", getpid());
	while (!check_requested)
		usleep(1000);

	int fds[8];
	CHECK(receive(st[1], "plain before", fds, 8) == 0, "no descriptor with \"plain before\"");
	CHECK(receive(st[1], "file", fds, 8) == 1, "one descriptor with \"file\"");
	CHECK(reads(fds[0], "file contents"), "the file in flight reads on from offset 5");
	close(fds[0]);
	CHECK(receive(st[1], "pipe", fds, 8) == 1, "one descriptor with \"pipe\"");
	CHECK(reads(fds[0], "through the pipe"), "the pipe in flight holds its bytes");
	MUST(write(pipe1[1], "more", 4));
	CHECK(reads(fds[0], "more"), "the pipe in flight is the pipe whose write end the program kept");
	close(fds[0]);
	CHECK(receive(st[1], "sock", fds, 8) == 1, "one descriptor with \"sock\"");
	CHECK(reads(fds[0], "queued in the socket in flight"), "the socket in flight holds its queued bytes");
	CHECK(write(fds[0], "answer", 6) == 6 && reads(inner[0], "answer"), "the socket in flight is connected to the end the program kept");
	close(fds[0]);
	int n = receive(st[1], "two", fds, 8);
	CHECK(n == 2, "two descriptors with \"two\" (got %d)", n);
	if (n == 2) {
		CHECK(reads(fds[0], "second file"), "the second file, first in its message");
		uint64_t value = 0;
		CHECK(read(fds[1], &value, 8) == 8 && value == 7, "the eventfd in flight has its counter (%llu)", (unsigned long long)value);
		close(fds[0]);
		close(fds[1]);
	}
	CHECK(receive(st[1], "plain after", fds, 8) == 0, "no descriptor with \"plain after\"");

	CHECK(receive(dg[1], "d-plain", fds, 8) == 0, "no descriptor with \"d-plain\"");
	CHECK(receive(dg[1], "d-fds", fds, 8) == 1, "one descriptor with \"d-fds\"");
	CHECK(write(fds[0], "into pipe two", 13) == 13 && reads(pipe2[0], "into pipe two"), "the write end in flight feeds the read end the program kept");
	close(fds[0]);
	CHECK(receive(dg[1], "d-last", fds, 8) == 0, "no descriptor with \"d-last\"");

	CHECK(receive(sp[1], "s-file", fds, 8) == 1, "one descriptor with \"s-file\"");
	CHECK(write(fds[0], "+", 1) == 1, "the O_APPEND file in flight takes a write");
	CHECK((fcntl(fds[0], F_GETFL) & O_APPEND) != 0, "the file in flight is still O_APPEND");
	close(fds[0]);
	say("done %d\n", failures);
	return failures;
}

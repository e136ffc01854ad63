/*
 * unix-pair-tree: AF_UNIX socketpairs (stream, dgram, seqpacket) whose two ends are in two
 * processes, a parent and its child, with messages queued in both directions.
 *
 *   unix-pair-tree REPORT_FILE
 *
 * The parent makes the three pairs and queues two messages on each towards the child, forks;
 * the child keeps end 1 of each pair, the parent end 0 (each closes the other), and the child
 * queues two messages of its own towards the parent. The child's dgram end also holds a datagram
 * carrying a pipe's read end (with bytes; the parent keeps the write end, the child holds the read
 * end open too) and a deleted file.
 * The parent also listens on an abstract name; a connection it accepted is served by the child
 * (the parent keeps the client end), with a message queued each way.
 * Then "ready <parent> <child>".
 * On SIGUSR1 the parent reads what waits for it, then passes the signal on; each process reads (in
 * order, datagram and record boundaries kept), then they talk over each pair once more (the
 * ends must be connected to each other): the child reports its own checks and exits with its
 * number of failures, the parent adds them and reports "done <failures>".
 */
#define _GNU_SOURCE
#include <stddef.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>

#include "keeper.h"

static const int types[3] = { SOCK_STREAM, SOCK_DGRAM, SOCK_SEQPACKET };
static const char *names[3] = { "stream", "dgram", "seqpacket" };

/* Reads one message (a datagram or record; for a stream, exactly strlen(want) bytes). */
static int expect(int fd, int type, const char *want, const char *who, int i)
{
	char buf[256];
	size_t len = strlen(want);
	ssize_t n;
	if (type == SOCK_STREAM) {
		size_t got = 0;
		while (got < len) {
			n = recv(fd, buf + got, len - got, MSG_DONTWAIT);
			if (n <= 0)
				break;
			got += (size_t)n;
		}
		n = (ssize_t)got;
	} else {
		n = recv(fd, buf, sizeof(buf), MSG_DONTWAIT);
	}
	int good = n == (ssize_t)len && memcmp(buf, want, len) == 0;
	CHECK(good, "%s: %s pair reads \"%s\" (got %zd bytes)", who, names[i], want, n);
	return good;
}

/*
 * The child's dgram end also holds a datagram carrying two descriptors (SCM_RIGHTS): the read
 * end of a pipe holding bytes (the parent keeps the write end) and a regular file deleted since.
 */
/* The child's own fd of the pipe end that is also in flight to it. */
static int held_pipe_end = -1;

static void check_fds_in_flight(int sock)
{
	char buf[64] = { 0 };
	char control[CMSG_SPACE(sizeof(int) * 2)];
	struct iovec iov = { .iov_base = buf, .iov_len = sizeof(buf) };
	struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
	ssize_t n = recvmsg(sock, &msg, MSG_DONTWAIT);
	struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
	int ok = n == 22 && memcmp(buf, "with a pipe and a file", 22) == 0 && c && c->cmsg_type == SCM_RIGHTS && c->cmsg_len == CMSG_LEN(2 * sizeof(int));
	CHECK(ok, "child: dgram pair reads the datagram with two descriptors");
	if (!ok)
		return;
	int fds[2];
	memcpy(fds, CMSG_DATA(c), sizeof(fds));
	char got[32] = { 0 };
	CHECK(read(fds[0], got, 11) == 11 && memcmp(got, "piped bytes", 11) == 0, "child: the pipe in flight holds its bytes");
	/* File status flags belong to the open file description: one description, one set of flags. */
	MUST(fcntl(fds[0], F_SETFL, O_NONBLOCK));
	CHECK((fcntl(held_pipe_end, F_GETFL) & O_NONBLOCK) != 0, "child: the pipe end in flight is the one it also holds open (one open file description)");
	memset(got, 0, sizeof(got));
	CHECK(pread(fds[1], got, 12, 0) == 12 && memcmp(got, "deleted file", 12) == 0, "child: the deleted file in flight holds its contents");
	struct stat st;
	CHECK(fstat(fds[1], &st) == 0 && st.st_nlink == 0, "child: the file in flight is still deleted");
	close(fds[0]);
	close(fds[1]);
}

static socklen_t listener_addr(struct sockaddr_un *a, pid_t parent)
{
	memset(a, 0, sizeof(*a));
	a->sun_family = AF_UNIX;
	int n = snprintf(a->sun_path + 1, sizeof(a->sun_path) - 1, "criu-ts-unix-pair-tree-%d", parent);
	return (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n);
}

/*
 * A connection accepted by the parent's listener and served by the child (the accepted end went
 * to the child across fork; the parent keeps the listener and the client end).
 */
static void check_accepted(int fd, int parent, int listener)
{
	const char *who = parent ? "parent" : "child";
	char buf[64] = { 0 };
	const char *want = parent ? "from the child's accepted end" : "to the child's accepted end";
	ssize_t n = recv(fd, buf, strlen(want), MSG_DONTWAIT);
	CHECK(n == (ssize_t)strlen(want) && memcmp(buf, want, strlen(want)) == 0, "%s: the accepted connection reads \"%s\"", who, want);
	if (!parent) {
		CHECK(send(fd, "ping", 4, 0) == 4, "child: the accepted end sends after restore");
		return;
	}
	memset(buf, 0, sizeof(buf));
	n = recv(fd, buf, 4, 0);
	CHECK(n == 4 && memcmp(buf, "ping", 4) == 0, "parent: the client end gets the child's message");
	/* The listener still has its name and takes new connections. */
	struct sockaddr_un addr;
	socklen_t len = listener_addr(&addr, getpid());
	int client = socket(AF_UNIX, SOCK_STREAM, 0);
	CHECK(client >= 0 && connect(client, (struct sockaddr *)&addr, len) == 0, "parent: a new client connects to the listener's name");
	int again = accept(listener, NULL, NULL);
	CHECK(again >= 0 && send(client, "x", 1, 0) == 1 && recv(again, buf, 1, 0) == 1, "parent: the listener accepts it and they talk");
	close(client);
	close(again);
}

/* The queued messages (then check_live: the peer must answer on the same pair). */
static void check_queues(int fd[3], int parent)
{
	const char *who = parent ? "parent" : "child";
	for (int i = 0; i < 3; i++) {
		if (parent) {
			expect(fd[i], types[i], "from the child, one", who, i);
			expect(fd[i], types[i], "from the child, two (longer)", who, i);
		} else {
			expect(fd[i], types[i], "from the parent, first", who, i);
			expect(fd[i], types[i], "from the parent, second message", who, i);
			if (types[i] == SOCK_DGRAM)
				check_fds_in_flight(fd[i]);
		}
		char none[8];
		errno = 0;
		CHECK(recv(fd[i], none, sizeof(none), MSG_DONTWAIT) < 0 && errno == EAGAIN, "%s: %s pair has nothing more queued", who, names[i]);
	}
}

/* One live exchange per pair: the child sends first and the parent answers. */
static void check_live(int fd[3], int parent)
{
	for (int i = 0; i < 3; i++) {
		/* The child sends first and the parent answers: a pair connected elsewhere would hang. */
		const char *ping = "live ping", *pong = "live pong";
		if (!parent) {
			CHECK(send(fd[i], ping, strlen(ping), 0) == (ssize_t)strlen(ping), "child: %s pair sends after restore", names[i]);
			char buf[64];
			ssize_t n = recv(fd[i], buf, sizeof(buf), 0);
			CHECK(n == (ssize_t)strlen(pong) && memcmp(buf, pong, (size_t)n) == 0, "child: %s pair gets the parent's answer", names[i]);
		} else {
			char buf[64];
			ssize_t n = recv(fd[i], buf, sizeof(buf), 0);
			CHECK(n == (ssize_t)strlen(ping) && memcmp(buf, ping, (size_t)n) == 0, "parent: %s pair gets the child's message", names[i]);
			CHECK(send(fd[i], pong, strlen(pong), 0) == (ssize_t)strlen(pong), "parent: %s pair answers", names[i]);
		}
	}
}

int main(int argc, char **argv)
{
	if (argc < 2 || keeper_open_report(argv[1]) < 0)
		return 3;
	signal(SIGPIPE, SIG_IGN);
	signal(SIGUSR1, on_usr1);
	int pairs[3][2];
	for (int i = 0; i < 3; i++) {
		MUST(socketpair(AF_UNIX, types[i], 0, pairs[i]));
		MUST(send(pairs[i][0], "from the parent, first", 22, 0));
		MUST(send(pairs[i][0], "from the parent, second message", 31, 0));
	}
	int piped[2];
	MUST(pipe(piped));
	MUST(write(piped[1], "piped bytes", 11));
	char path[] = "/tmp/criu-ts-unix-pair-tree-XXXXXX";
	int file = mkstemp(path);
	MUST(file);
	MUST(write(file, "deleted file", 12));
	MUST(unlink(path));
	{
		int carried[2] = { piped[0], file };
		char control[CMSG_SPACE(sizeof(carried))];
		memset(control, 0, sizeof(control));
		struct iovec iov = { .iov_base = "with a pipe and a file", .iov_len = 22 };
		struct msghdr msg = { .msg_iov = &iov, .msg_iovlen = 1, .msg_control = control, .msg_controllen = sizeof(control) };
		struct cmsghdr *c = CMSG_FIRSTHDR(&msg);
		c->cmsg_level = SOL_SOCKET;
		c->cmsg_type = SCM_RIGHTS;
		c->cmsg_len = CMSG_LEN(sizeof(carried));
		memcpy(CMSG_DATA(c), carried, sizeof(carried));
		MUST(sendmsg(pairs[1][0], &msg, 0));
	}
	close(file);
	struct sockaddr_un addr;
	socklen_t addrlen = listener_addr(&addr, getpid());
	int listener = socket(AF_UNIX, SOCK_STREAM, 0);
	MUST(listener);
	MUST(bind(listener, (struct sockaddr *)&addr, addrlen));
	MUST(listen(listener, 4));
	int client = socket(AF_UNIX, SOCK_STREAM, 0);
	MUST(client);
	MUST(connect(client, (struct sockaddr *)&addr, addrlen));
	int accepted = accept(listener, NULL, NULL);
	MUST(accepted);
	MUST(send(client, "to the child's accepted end", 27, 0));
	int ready[2];
	MUST(pipe(ready));
	pid_t child = fork();
	MUST(child);
	if (child == 0) {
		int mine[3];
		close(ready[0]);
		close(piped[1]);
		held_pipe_end = piped[0];
		close(listener);
		close(client);
		MUST(send(accepted, "from the child's accepted end", 29, 0));
		for (int i = 0; i < 3; i++) {
			close(pairs[i][0]);
			mine[i] = pairs[i][1];
			MUST(send(mine[i], "from the child, one", 19, 0));
			MUST(send(mine[i], "from the child, two (longer)", 28, 0));
		}
		MUST(write(ready[1], "r", 1));
		close(ready[1]);
		while (!check_requested)
			usleep(1000);
		check_queues(mine, 0);
		check_live(mine, 0);
		check_accepted(accepted, 0, -1);
		_exit(failures);
	}
	close(ready[1]);
	char r;
	if (read(ready[0], &r, 1) != 1) {
		dprintf(report_fd, "setup failed: the child did not get ready\n");
		_exit(99);
	}
	close(ready[0]);
	close(accepted);
	close(piped[0]);
	int mine[3];
	for (int i = 0; i < 3; i++) {
		close(pairs[i][1]);
		mine[i] = pairs[i][0];
	}
	say("ready %d %d\n", getpid(), child);
	while (!check_requested)
		usleep(1000);
	/* The parent's queues first: the child's live messages must not land in them before. */
	check_queues(mine, 1);
	kill(child, SIGUSR1);
	check_live(mine, 1);
	check_accepted(client, 1, listener);
	int status;
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status), "the child ran its checks and exited");
	if (WIFEXITED(status))
		failures += WEXITSTATUS(status);
	say("done %d\n", failures);
	return failures;
}

/*
 * unix-pair-tree: AF_UNIX socketpairs (stream, dgram, seqpacket) whose two ends are in two
 * processes, a parent and its child, with messages queued in both directions.
 *
 *   unix-pair-tree REPORT_FILE
 *
 * The parent makes the three pairs and queues two messages on each towards the child, forks;
 * the child keeps end 1 of each pair, the parent end 0 (each closes the other), and the child
 * queues two messages of its own towards the parent. Then "ready <parent> <child>".
 * On SIGUSR1 (to the parent, which passes it on) each process reads what waits for it (in
 * order, datagram and record boundaries kept), then they talk over each pair once more (the
 * ends must be connected to each other): the child reports its own checks and exits with its
 * number of failures, the parent adds them and reports "done <failures>".
 */
#define _GNU_SOURCE
#include <sys/socket.h>
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

/* The queued messages, then one live exchange (the peer must answer on the same pair). */
static void check_side(int fd[3], int parent)
{
	const char *who = parent ? "parent" : "child";
	for (int i = 0; i < 3; i++) {
		if (parent) {
			expect(fd[i], types[i], "from the child, one", who, i);
			expect(fd[i], types[i], "from the child, two (longer)", who, i);
		} else {
			expect(fd[i], types[i], "from the parent, first", who, i);
			expect(fd[i], types[i], "from the parent, second message", who, i);
		}
		char none[8];
		errno = 0;
		CHECK(recv(fd[i], none, sizeof(none), MSG_DONTWAIT) < 0 && errno == EAGAIN, "%s: %s pair has nothing more queued", who, names[i]);
	}
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
	int ready[2];
	MUST(pipe(ready));
	pid_t child = fork();
	MUST(child);
	if (child == 0) {
		int mine[3];
		close(ready[0]);
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
		check_side(mine, 0);
		_exit(failures);
	}
	close(ready[1]);
	char r;
	if (read(ready[0], &r, 1) != 1) {
		dprintf(report_fd, "setup failed: the child did not get ready\n");
		_exit(99);
	}
	close(ready[0]);
	int mine[3];
	for (int i = 0; i < 3; i++) {
		close(pairs[i][1]);
		mine[i] = pairs[i][0];
	}
	say("ready %d %d\n", getpid(), child);
	while (!check_requested)
		usleep(1000);
	kill(child, SIGUSR1);
	check_side(mine, 1);
	int status;
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status), "the child ran its checks and exited");
	if (WIFEXITED(status))
		failures += WEXITSTATUS(status);
	say("done %d\n", failures);
	return failures;
}

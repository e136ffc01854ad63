/*
 * lock-keeper: holds one file lock of each kind criu-ts saves with --file-locks, then checks
 * after restore that each still excludes another process.
 *
 *   lock-keeper REPORT_FILE WORK_DIR
 *
 * Protocol as tests/state-keeper.c ("ready <pid>", SIGUSR1 -> ok/FAIL lines, "done N").
 * Locks: flock(LOCK_EX) on WORK_DIR/flocked; a POSIX write lock on bytes 10..29 of
 * WORK_DIR/ranged (fcntl F_SETLK); an OFD read lock on the whole of WORK_DIR/shared-read
 * (F_OFD_SETLK). The check forks a child (another process, other open file descriptions) that
 * tries the conflicting locks without waiting and reports what F_GETLK / F_OFD_GETLK say.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/file.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keeper.h"


static int open_in(const char *dir, const char *name, int flags)
{
	char path[4200];
	snprintf(path, sizeof(path), "%s/%s", dir, name);
	return open(path, flags | O_CREAT, 0600);
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	if (keeper_open_report(argv[1]) < 0)
		return 3;
	int report = report_fd;
	const char *dir = argv[2];
	int flocked = open_in(dir, "flocked", O_RDWR);
	int ranged = open_in(dir, "ranged", O_RDWR);
	int shared_read = open_in(dir, "shared-read", O_RDWR);
	struct flock range = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 10, .l_len = 20 };
	struct flock whole = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
	if (flocked < 0 || ranged < 0 || shared_read < 0 || flock(flocked, LOCK_EX | LOCK_NB) < 0 || fcntl(ranged, F_SETLK, &range) < 0 ||
	    fcntl(shared_read, F_OFD_SETLK, &whole) < 0) {
		dprintf(report, "setup failed: %s\n", strerror(errno));
		return 4;
	}
	signal(SIGUSR1, on_usr1);
	dprintf(report, "ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	pid_t me = getpid();
	int pipefd[2];
	if (pipe(pipefd) < 0)
		return 5;
	pid_t child = fork();
	if (child == 0) {
		/* Another process with its own open file descriptions: every lock must stand in its way. */
		char line[512];
		int a = open_in(dir, "flocked", O_RDWR), b = open_in(dir, "ranged", O_RDWR), c = open_in(dir, "shared-read", O_RDWR);
		int flock_blocked = flock(a, LOCK_EX | LOCK_NB) < 0 && errno == EWOULDBLOCK;
		struct flock probe = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 100 };
		fcntl(b, F_GETLK, &probe);
		int posix_seen = probe.l_type == F_WRLCK && probe.l_pid == me && probe.l_start == 10 && probe.l_len == 20;
		struct flock outside = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 30, .l_len = 10 };
		int outside_free = fcntl(b, F_SETLK, &outside) == 0;
		struct flock write_c = { .l_type = F_WRLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
		int ofd_blocked = fcntl(c, F_OFD_SETLK, &write_c) < 0 && errno == EAGAIN;
		struct flock read_c = { .l_type = F_RDLCK, .l_whence = SEEK_SET, .l_start = 0, .l_len = 0 };
		int ofd_shares = fcntl(c, F_OFD_SETLK, &read_c) == 0;
		int n = snprintf(line, sizeof(line), "%d %d %d %d %d", flock_blocked, posix_seen, outside_free, ofd_blocked, ofd_shares);
		if (write(pipefd[1], line, (size_t)n) < 0)
			_exit(2);
		_exit(0);
	}
	close(pipefd[1]);
	char got[512] = { 0 };
	ssize_t n = read(pipefd[0], got, sizeof(got) - 1);
	waitpid(child, NULL, 0);
	int flock_blocked = 0, posix_seen = 0, outside_free = 0, ofd_blocked = 0, ofd_shares = 0;
	if (n > 0)
		sscanf(got, "%d %d %d %d %d", &flock_blocked, &posix_seen, &outside_free, &ofd_blocked, &ofd_shares);
	CHECK(flock_blocked, "flock(LOCK_EX) still excludes another process");
	CHECK(posix_seen, "F_GETLK shows our POSIX write lock on bytes 10..29");
	CHECK(outside_free, "bytes outside the POSIX range are free");
	CHECK(ofd_blocked, "OFD read lock blocks a writer");
	CHECK(ofd_shares, "OFD read lock lets another reader in");
	dprintf(report, "done %d\n", failures);
	return failures;
}

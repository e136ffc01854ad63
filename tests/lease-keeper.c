/*
 * lease-keeper: holds a read lease and a write lease (fcntl F_SETLEASE), each file with its own
 * F_SETSIG signal, then checks after restore that each lease is still there and still breaks:
 * another process opening the file in a way that conflicts makes the kernel signal us, and
 * F_GETLEASE then reports the break (the type the lease must go down to).
 *
 *   lease-keeper REPORT_FILE WORK_DIR [breaking]
 *
 * Protocol as tests/state-keeper.c ("ready <pid>", SIGUSR1 -> ok/FAIL lines, "done N").
 * WORK_DIR/read-leased is open O_RDONLY with a read lease (broken by an open for writing: the
 * lease must go, F_GETLEASE says F_UNLCK); WORK_DIR/write-leased is open O_RDWR with a write
 * lease (broken by any open, a read-only one here: the lease must go down to a read lease,
 * F_GETLEASE says F_RDLCK). The conflicting opens are O_NONBLOCK, so they fail at once with
 * EWOULDBLOCK instead of waiting lease-break-time for us to answer. A child shares both files
 * (it only waits for its parent to go).
 *
 * With "breaking", the test breaks the read lease (a non-blocking open for writing) before the
 * dump and does not let us answer: the check expects the lease still being broken (F_GETLEASE
 * F_UNLCK) and a second break signal, from the restore breaking it again.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "keeper.h"

#define READ_SIG (SIGRTMIN + 1)
#define WRITE_SIG (SIGRTMIN + 2)

static volatile sig_atomic_t read_broken_fd = -1, write_broken_fd = -1, read_breaks, write_breaks;

static void on_break(int sig, siginfo_t *si, void *ctx)
{
	(void)ctx;
	if (sig == READ_SIG) {
		read_broken_fd = si->si_fd;
		read_breaks++;
	} else if (sig == WRITE_SIG) {
		write_broken_fd = si->si_fd;
		write_breaks++;
	}
}

static void path_in(char *out, size_t size, const char *dir, const char *name)
{
	snprintf(out, size, "%s/%s", dir, name);
}

/* Another process opens `path` with `flags` | O_NONBLOCK; returns the errno it got (0: it opened). */
static int open_from_child(const char *path, int flags)
{
	pid_t child = fork();
	if (child == 0) {
		int fd = open(path, flags | O_NONBLOCK);
		_exit(fd >= 0 ? 0 : errno);
	}
	int status = 0;
	if (child < 0 || waitpid(child, &status, 0) != child || !WIFEXITED(status))
		return -1;
	return WEXITSTATUS(status);
}

static int wait_signal(volatile sig_atomic_t *slot)
{
	for (int i = 0; i < 3000 && *slot < 0; i++)
		usleep(1000);
	return *slot;
}

static int wait_count(volatile sig_atomic_t *count, int want)
{
	for (int i = 0; i < 3000 && *count < want; i++)
		usleep(1000);
	return *count;
}

int main(int argc, char **argv)
{
	if (argc != 3 && argc != 4)
		return 2;
	int breaking = argc == 4 && strcmp(argv[3], "breaking") == 0;
	if (keeper_open_report(argv[1]) < 0)
		return 3;
	char read_path[4200], write_path[4200];
	path_in(read_path, sizeof(read_path), argv[2], "read-leased");
	path_in(write_path, sizeof(write_path), argv[2], "write-leased");
	int made = open(read_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
	MUST(made);
	MUST(write(made, "read me\n", 8));
	close(made); /* a read lease needs the file open for writing nowhere */

	struct sigaction sa = { .sa_sigaction = on_break, .sa_flags = SA_SIGINFO | SA_RESTART };
	sigemptyset(&sa.sa_mask);
	MUST(sigaction(READ_SIG, &sa, NULL));
	MUST(sigaction(WRITE_SIG, &sa, NULL));

	int rd = open(read_path, O_RDONLY);
	MUST(rd);
	int wr = open(write_path, O_RDWR | O_CREAT, 0600);
	MUST(wr);
	/*
	 * A child shares both open file descriptions (and so the leases, which belong to them): the
	 * restore makes each file once and hands it to the other process, and the lease must still
	 * be taken with criu-ts holding that handover copy.
	 */
	pid_t parent = getpid();
	pid_t child = fork();
	MUST(child);
	if (child == 0) {
		while (getppid() == parent)
			usleep(10000);
		_exit(0);
	}
	MUST(fcntl(rd, F_SETSIG, READ_SIG));
	MUST(fcntl(wr, F_SETSIG, WRITE_SIG));
	MUST(fcntl(rd, F_SETLEASE, F_RDLCK));
	MUST(fcntl(wr, F_SETLEASE, F_WRLCK));

	signal(SIGUSR1, on_usr1);
	dprintf(report_fd, "ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	if (breaking) {
		/* Broken before the dump, broken again by the restore: a second signal, the same state. */
		CHECK(fcntl(rd, F_GETLEASE) == F_UNLCK, "the read lease on fd %d is still being broken (F_GETLEASE F_UNLCK)", rd);
		CHECK(wait_count(&read_breaks, 2) >= 2 && read_broken_fd == rd, "signalled again for fd %d after the restore (%d break signals)", rd, (int)read_breaks);
		CHECK(fcntl(wr, F_GETLEASE) == F_WRLCK, "fd %d holds a write lease", wr);
		CHECK(fcntl(rd, F_SETLEASE, F_UNLCK) == 0, "read lease released, answering the break");
	} else {
		CHECK(fcntl(rd, F_GETLEASE) == F_RDLCK, "fd %d holds a read lease", rd);
		CHECK(fcntl(wr, F_GETLEASE) == F_WRLCK, "fd %d holds a write lease", wr);
		CHECK(fcntl(rd, F_GETSIG) == READ_SIG && fcntl(wr, F_GETSIG) == WRITE_SIG, "F_SETSIG of both files kept");

		/* Read lease: a writer elsewhere breaks it. */
		int got = open_from_child(read_path, O_WRONLY);
		CHECK(got == EWOULDBLOCK, "another process opening %s for writing is held off by the lease (errno %d)", read_path, got);
		CHECK(wait_signal(&read_broken_fd) == rd, "the read lease break signalled us for fd %d (si_fd %d)", rd, (int)read_broken_fd);
		CHECK(fcntl(rd, F_GETLEASE) == F_UNLCK, "F_GETLEASE reports the read lease must go (F_UNLCK)");
		CHECK(fcntl(rd, F_SETLEASE, F_UNLCK) == 0, "read lease released");
	}

	/* Write lease: any open elsewhere breaks it, a reader asks it down to a read lease. */
	int got = open_from_child(write_path, O_RDONLY);
	CHECK(got == EWOULDBLOCK, "another process opening %s at all is held off by the lease (errno %d)", write_path, got);
	CHECK(wait_signal(&write_broken_fd) == wr, "the write lease break signalled us for fd %d (si_fd %d)", wr, (int)write_broken_fd);
	CHECK(fcntl(wr, F_GETLEASE) == F_RDLCK, "F_GETLEASE reports the write lease must go down to a read lease (F_RDLCK)");
	CHECK(fcntl(wr, F_SETLEASE, F_UNLCK) == 0, "write lease released");
	CHECK(open_from_child(write_path, O_RDWR) == 0, "with the leases gone, another process opens the file");

	dprintf(report_fd, "done %d\n", failures);
	return failures;
}

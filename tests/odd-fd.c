/*
 * odd-fd: holds one descriptor of a kind criu-ts does not checkpoint, then waits.
 *
 *   odd-fd REPORT_FILE WORK_DIR KIND      KIND: io_uring | userfaultfd | perf_event | inotify | socket | pidfd
 *
 * Writes "ready <pid> <fd>" to REPORT_FILE once the descriptor is open; on SIGUSR1 checks that
 * the descriptor is still the same open file (fstat) and writes "done 0" (or "done 1"), then exits.
 * Used to show that a dump refuses it by name and leaves the program running.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/perf_event.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/inotify.h>
#include <linux/netlink.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

static volatile sig_atomic_t check_requested;
static void on_usr1(int sig) { check_requested = 1; }

static int open_kind(const char *kind)
{
	if (!strcmp(kind, "io_uring")) {
		unsigned char params[120] = { 0 }; /* struct io_uring_params */
		return (int)syscall(SYS_io_uring_setup, 4, params);
	}
	if (!strcmp(kind, "userfaultfd"))
		return (int)syscall(SYS_userfaultfd, O_CLOEXEC);
	if (!strcmp(kind, "perf_event")) {
		struct perf_event_attr attr = { .type = PERF_TYPE_SOFTWARE, .size = sizeof(attr), .config = PERF_COUNT_SW_TASK_CLOCK, .disabled = 1 };
		return (int)syscall(SYS_perf_event_open, &attr, 0, -1, -1, 0);
	}
	if (!strcmp(kind, "inotify"))
		return inotify_init1(0);
	if (!strcmp(kind, "socket"))
		return socket(40 /* AF_VSOCK */, SOCK_STREAM, 0); /* unix, inet, netlink and packet sockets are dumped; vsock ones are not */
	if (!strcmp(kind, "pidfd"))
		return (int)syscall(SYS_pidfd_open, getpid(), 0);
	return -1;
}

int main(int argc, char **argv)
{
	if (argc != 4)
		return 2;
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	int report = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	int fd = open_kind(argv[3]);
	if (report < 0)
		return 3;
	if (fd < 0) {
		dprintf(report, "setup failed: %s: %m\n", argv[3]);
		return 4;
	}
	struct stat before, after;
	fstat(fd, &before);
	signal(SIGUSR1, on_usr1);
	dprintf(report, "ready %d %d\n", getpid(), fd);
	for (int i = 0; i < 600 && !check_requested; i++)
		sleep(1);
	int same = fstat(fd, &after) == 0 && after.st_ino == before.st_ino && after.st_dev == before.st_dev;
	dprintf(report, "done %d\n", same ? 0 : 1);
	return same ? 0 : 1;
}

/*
 * fanotify-keeper: holds a fanotify group with a mount mark, an inode mark with an ignore mask
 * inside that mount, and an inode mark on a file elsewhere, waits to be checkpointed (and
 * restored), then checks that the marks still work: events come for what is marked, none for
 * what the ignore mask covers or what is not marked.
 *
 *   fanotify-keeper REPORT_FILE WORK_DIR MOUNT_DIR [perm]
 *
 * With "perm" the group is a FAN_CLASS_CONTENT one with a FAN_OPEN_PERM mount mark instead,
 * which a dump must refuse (the program then checks nothing that would open a file: its own
 * opens in the mount would wait for its own answer).
 * MOUNT_DIR must be a mount point of its own (the test mounts a tmpfs there), so that the mount
 * mark sees this program's files only. Protocol as tests/state-keeper.c ("ready <pid>",
 * SIGUSR1 -> ok/FAIL lines, "done N").
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/fanotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keeper.h"

#define GROUP_FD 7

static char loud[PATH_MAX], quiet[PATH_MAX], watched[PATH_MAX], other[PATH_MAX];

struct seen {
	unsigned long long loud, quiet, watched, other, unknown;
};

static void touch(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
	if (fd >= 0) {
		if (write(fd, text, strlen(text)) < 0)
			CHECK(0, "write %s", path);
		close(fd);
	}
}

/* Every event queued now, by file; event fds closed. */
static struct seen read_events(int group)
{
	struct seen s = { 0 };
	char buf[8192] __attribute__((aligned(8)));
	for (;;) {
		ssize_t n = read(group, buf, sizeof(buf));
		if (n <= 0)
			break;
		for (struct fanotify_event_metadata *m = (void *)buf; FAN_EVENT_OK(m, n); m = FAN_EVENT_NEXT(m, n)) {
			char link[64], path[PATH_MAX] = "";
			if (m->fd >= 0) {
				snprintf(link, sizeof(link), "/proc/self/fd/%d", m->fd);
				ssize_t l = readlink(link, path, sizeof(path) - 1);
				if (l > 0)
					path[l] = '\0';
				close(m->fd);
			}
			if (strcmp(path, loud) == 0)
				s.loud |= m->mask;
			else if (strcmp(path, quiet) == 0)
				s.quiet |= m->mask;
			else if (strcmp(path, watched) == 0)
				s.watched |= m->mask;
			else if (strcmp(path, other) == 0)
				s.other |= m->mask;
			else
				s.unknown |= m->mask;
		}
	}
	return s;
}

int main(int argc, char **argv)
{
	if (argc != 4 && !(argc == 5 && strcmp(argv[4], "perm") == 0))
		return 2;
	int perm = argc == 5;
	if (keeper_open_report(argv[1]) < 0)
		return 3;
	snprintf(loud, sizeof(loud), "%s/loud", argv[3]);
	snprintf(quiet, sizeof(quiet), "%s/quiet", argv[3]);
	snprintf(watched, sizeof(watched), "%s/watched", argv[2]);
	snprintf(other, sizeof(other), "%s/other", argv[2]);
	touch(loud, "");
	touch(quiet, "");
	touch(watched, "");
	touch(other, "");

	int group = fanotify_init((perm ? FAN_CLASS_CONTENT : FAN_CLASS_NOTIF) | FAN_NONBLOCK | FAN_CLOEXEC, O_RDONLY | O_LARGEFILE);
	MUST(group);
	MUST(dup2(group, GROUP_FD));
	close(group);
	group = GROUP_FD;
	MUST(fcntl(group, F_SETFD, FD_CLOEXEC));
	pid_t child = -1;
	if (perm) {
		MUST(fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN_PERM, AT_FDCWD, argv[3]));
		signal(SIGUSR1, on_usr1);
		dprintf(report_fd, "ready %d\n", getpid());
		while (!check_requested)
			usleep(1000);
		CHECK(fcntl(group, F_GETFD) >= 0, "the permission group is still open");
		dprintf(report_fd, "done %d\n", failures);
		return failures;
	}
	MUST(fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_MOUNT, FAN_OPEN | FAN_CLOSE_WRITE, AT_FDCWD, argv[3]));
	MUST(fanotify_mark(group, FAN_MARK_ADD | FAN_MARK_IGNORED_MASK | FAN_MARK_IGNORED_SURV_MODIFY, FAN_OPEN | FAN_CLOSE_WRITE, AT_FDCWD, quiet));
	MUST(fanotify_mark(group, FAN_MARK_ADD, FAN_MODIFY | FAN_CLOSE_WRITE, AT_FDCWD, watched));
	read_events(group); /* nothing should be there; start from an empty queue */
	/*
	 * A child sharing the group: the tree has two processes, so the restore reads the child's
	 * images after the parent's marks exist (the test puts the images in the marked mount).
	 */
	child = fork();
	MUST(child);
	if (child == 0) {
		for (;;)
			usleep(100000);
	}

	signal(SIGUSR1, on_usr1);
	dprintf(report_fd, "ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	kill(child, SIGKILL);
	waitpid(child, NULL, 0);
	int fl = fcntl(group, F_GETFL);
	CHECK(fl >= 0 && (fl & O_NONBLOCK), "the group fd is still non-blocking (FAN_NONBLOCK)");
	CHECK((fcntl(group, F_GETFD) & FD_CLOEXEC) != 0, "the group fd is still close-on-exec");
	struct seen before = read_events(group);
	CHECK(before.loud == 0 && before.quiet == 0 && before.watched == 0 && before.other == 0 && before.unknown == 0,
	      "no events queued before the checks (loud %llx quiet %llx watched %llx other %llx others %llx)",
	      before.loud, before.quiet, before.watched, before.other, before.unknown);

	touch(loud, "x");
	touch(quiet, "x");
	touch(watched, "x");
	touch(other, "x");
	struct seen s = read_events(group);
	CHECK((s.loud & (FAN_OPEN | FAN_CLOSE_WRITE)) == (FAN_OPEN | FAN_CLOSE_WRITE), "mount mark: open and close-write of a file in the mount reported (mask %llx)", s.loud);
	CHECK(s.quiet == 0, "ignore mask: no event for the ignored file in the mount (mask %llx)", s.quiet);
	CHECK((s.watched & (FAN_MODIFY | FAN_CLOSE_WRITE)) == (FAN_MODIFY | FAN_CLOSE_WRITE), "inode mark: modify and close-write of the watched file reported (mask %llx)", s.watched);
	CHECK((s.watched & FAN_OPEN) == 0, "inode mark: its mask only (no open event, mask %llx)", s.watched);
	CHECK(s.other == 0, "no event for a file that is not marked (mask %llx)", s.other);
	dprintf(report_fd, "done %d\n", failures);
	return failures;
}

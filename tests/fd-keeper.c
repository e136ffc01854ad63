/*
 * fd-keeper: holds one of each kind of non-regular file descriptor criu-ts restores, each in a
 * state that shows whether it came back (data buffered, counters, watched targets, masks, armed
 * timers), waits to be checkpointed (and restored), then checks every one and reports.
 *
 *   fd-keeper REPORT_FILE WORK_DIR
 *
 * Protocol as tests/state-keeper.c: "ready <pid>" when set up; on SIGUSR1 "ok ..." / "FAIL ..."
 * lines, then "done <failures>", exit status = number of failures.
 *
 * Held: a pipe with bytes in it and a bigger capacity; a pipe whose write end sits at fd 2000
 * (close-on-exec) and whose read end is non-blocking; an eventfd with a counter; an eventfd in
 * semaphore mode; an epoll watching the first pipe and an eventfd through an fd number that was
 * dup'ed and closed after it was added; a signalfd with a pending queued signal; an armed
 * periodic timerfd; an expired timerfd with an unread tick; a FIFO with bytes in it; /dev/zero;
 * a pipe in O_ASYNC mode owned by the process (F_SETOWN) with its own signal (F_SETSIG);
 * an O_PATH fd and a directory fd read part way; a file in O_APPEND mode reopened through
 * /proc/self/fd at its own offset; a file whose path now names another file (the one held was
 * replaced by a rename); two memfds (one sealed against shrinking and growing, with a hole, read at an offset; one
 * not sealable); an inotify instance with watches on a directory and two files whose watch descriptors are 1,
 * 2 and 4 (3 was removed).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/inotify.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <sys/signalfd.h>
#include <sys/stat.h>
#include <sys/timerfd.h>
#include <time.h>
#include <unistd.h>

#include "keeper.h"

static double now_ms(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

#define PIPE_TEXT "bytes left in a pipe"
#define FIFO_TEXT "bytes left in a fifo"
#define EPOLL_PIPE_DATA 0x1234567890abcdefULL
#define EPOLL_EVENTFD_DATA 7ULL
#define HIGH_FD 2000

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	/* Close what the starter leaked, so that the fd table is ours alone. */
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	report_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (report_fd < 0)
		return 3;

	int data_pipe[2], high_pipe[2];
	MUST(pipe(data_pipe));
	MUST(fcntl(data_pipe[1], F_SETPIPE_SZ, 128 << 10));
	MUST(write(data_pipe[1], PIPE_TEXT, sizeof(PIPE_TEXT)));
	MUST(pipe2(high_pipe, O_NONBLOCK));
	MUST(fcntl(high_pipe[1], F_SETFL, 0)); /* only the read end stays non-blocking */
	MUST(dup3(high_pipe[1], HIGH_FD, O_CLOEXEC));
	close(high_pipe[1]);

	int counter = eventfd(42, EFD_NONBLOCK);
	int semaphore = eventfd(3, EFD_NONBLOCK | EFD_SEMAPHORE);
	int watched = eventfd(5, 0);
	MUST(counter);
	MUST(semaphore);
	MUST(watched);

	int ep = epoll_create1(EPOLL_CLOEXEC);
	MUST(ep);
	struct epoll_event ev = { .events = EPOLLIN, .data.u64 = EPOLL_PIPE_DATA };
	MUST(epoll_ctl(ep, EPOLL_CTL_ADD, data_pipe[0], &ev));
	ev.events = EPOLLIN | EPOLLET;
	ev.data.u64 = EPOLL_EVENTFD_DATA;
	MUST(epoll_ctl(ep, EPOLL_CTL_ADD, watched, &ev));
	/* The registration names fd `watched`; the file lives on only under another number. */
	int watched_moved = dup(watched);
	MUST(watched_moved);
	close(watched);

	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGRTMIN + 2);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	int sfd = signalfd(-1, &blocked, SFD_NONBLOCK);
	MUST(sfd);
	union sigval value = { .sival_int = 99 };
	MUST(sigqueue(getpid(), SIGRTMIN + 2, value));

	int periodic = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	MUST(periodic);
	struct itimerspec every = { .it_interval = { 0, 200 * 1000000 }, .it_value = { 30, 0 } };
	MUST(timerfd_settime(periodic, 0, &every, NULL));
	int expired = timerfd_create(CLOCK_MONOTONIC, TFD_NONBLOCK);
	MUST(expired);
	struct itimerspec once = { .it_value = { 0, 1000000 } };
	MUST(timerfd_settime(expired, 0, &once, NULL));

	char fifo_path[4096];
	snprintf(fifo_path, sizeof(fifo_path), "%s/fifo", argv[2]);
	MUST(mkfifo(fifo_path, 0600));
	int fifo_rw = open(fifo_path, O_RDWR);
	MUST(fifo_rw);
	int fifo_reader = open(fifo_path, O_RDONLY | O_NONBLOCK);
	MUST(fifo_reader);
	MUST(write(fifo_rw, FIFO_TEXT, sizeof(FIFO_TEXT)));

	int zero = open("/dev/zero", O_RDONLY);
	MUST(zero);

	int opath = open(argv[2], O_PATH | O_DIRECTORY);
	MUST(opath);
	char subdir[4200];
	snprintf(subdir, sizeof(subdir), "%s/listing", argv[2]);
	MUST(mkdir(subdir, 0700));
	for (int i = 0; i < 8; i++) {
		char entry[4300];
		snprintf(entry, sizeof(entry), "%s/entry-%d", subdir, i);
		MUST(close(open(entry, O_CREAT | O_WRONLY, 0600)));
	}
	int dirfd = open(subdir, O_RDONLY | O_DIRECTORY);
	MUST(dirfd);
	/* Read the directory part way: the rest must follow after restore, nothing twice. */
	char dirbuf[4096];
	int listed_before = 0;
	{
		long n = syscall(SYS_getdents64, dirfd, dirbuf, 80);
		for (long off = 0; off < n;) {
			unsigned short reclen = *(unsigned short *)(dirbuf + off + 16);
			listed_before++;
			off += reclen;
		}
		if (n <= 0 || listed_before >= 10) {
			dprintf(report_fd, "setup failed: getdents64 read %d entries\n", listed_before);
			_exit(99);
		}
	}
	char appended_path[4200];
	snprintf(appended_path, sizeof(appended_path), "%s/appended", argv[2]);
	int appended = open(appended_path, O_CREAT | O_WRONLY | O_APPEND, 0600);
	MUST(appended);
	MUST(write(appended, "0123456789", 10));
	char self_link[64];
	snprintf(self_link, sizeof(self_link), "/proc/self/fd/%d", appended);
	int reopened = open(self_link, O_RDONLY);
	MUST(reopened);
	MUST(lseek(reopened, 4, SEEK_SET));
	char replaced_path[4200], replacement[4200];
	snprintf(replaced_path, sizeof(replaced_path), "%s/replaced", argv[2]);
	snprintf(replacement, sizeof(replacement), "%s/replacement", argv[2]);
	int held = open(replaced_path, O_CREAT | O_RDWR, 0600);
	MUST(held);
	MUST(write(held, "original", 8));
	int other = open(replacement, O_CREAT | O_WRONLY, 0600);
	MUST(other);
	MUST(write(other, "newcomer", 8));
	close(other);
	MUST(rename(replacement, replaced_path)); /* the held file is unlinked; its path names the newcomer */

	int async_pipe[2];
	MUST(pipe2(async_pipe, O_NONBLOCK));
	sigset_t async_signal;
	sigemptyset(&async_signal);
	sigaddset(&async_signal, SIGRTMIN + 3);
	sigprocmask(SIG_BLOCK, &async_signal, NULL);
	MUST(fcntl(async_pipe[0], F_SETOWN, getpid()));
	MUST(fcntl(async_pipe[0], F_SETSIG, SIGRTMIN + 3));
	MUST(fcntl(async_pipe[0], F_SETFL, O_NONBLOCK | O_ASYNC));

	int sealed = memfd_create("keeper-data", MFD_ALLOW_SEALING);
	int plain = memfd_create("small", 0);
	MUST(sealed);
	MUST(plain);
	{
		char page[4096];
		for (int p = 0; p < 3; p++) {
			memset(page, 'a' + p, sizeof(page));
			MUST(pwrite(sealed, page, sizeof(page), p * 4096));
		}
		memset(page, 'z', sizeof(page));
		MUST(pwrite(sealed, page, sizeof(page), 1 << 20));
		MUST(ftruncate(sealed, 2 << 20));
		MUST(fcntl(sealed, F_ADD_SEALS, F_SEAL_SHRINK | F_SEAL_GROW));
		MUST(lseek(sealed, 5000, SEEK_SET));
		MUST(write(plain, "small data", 10));
	}

	/* A directory of its own: the test puts the images in WORK_DIR, which would show up as events. */
	char watched_dir[4200], watched_a[4300], watched_b[4300], watched_c[4300], created[4300];
	snprintf(watched_dir, sizeof(watched_dir), "%s/watched", argv[2]);
	MUST(mkdir(watched_dir, 0700));
	snprintf(watched_a, sizeof(watched_a), "%s/watched-a", watched_dir);
	snprintf(watched_b, sizeof(watched_b), "%s/watched-b", watched_dir);
	snprintf(watched_c, sizeof(watched_c), "%s/watched-c", watched_dir);
	snprintf(created, sizeof(created), "%s/created-after-restore", watched_dir);
	MUST(close(open(watched_a, O_CREAT | O_WRONLY, 0600)));
	MUST(close(open(watched_b, O_CREAT | O_WRONLY, 0600)));
	MUST(close(open(watched_c, O_CREAT | O_WRONLY, 0600)));
	int ino = inotify_init1(IN_NONBLOCK);
	MUST(ino);
	int wd_dir = inotify_add_watch(ino, watched_dir, IN_CREATE);
	int wd_a = inotify_add_watch(ino, watched_a, IN_MODIFY);
	int wd_b = inotify_add_watch(ino, watched_b, IN_MODIFY);
	MUST(inotify_rm_watch(ino, wd_b));
	int wd_c = inotify_add_watch(ino, watched_c, IN_MODIFY | IN_CLOSE_WRITE);
	if (wd_dir != 1 || wd_a != 2 || wd_b != 3 || wd_c != 4) {
		dprintf(report_fd, "setup failed: inotify wds %d %d %d %d\n", wd_dir, wd_a, wd_b, wd_c);
		_exit(99);
	}
	{
		char drain[4096];
		while (read(ino, drain, sizeof(drain)) > 0)
			; /* the IN_IGNORED of the removed watch */
	}

	signal(SIGUSR1, on_usr1);
	usleep(20 * 1000); /* the one-shot timer has expired: one tick waits to be read */
	say("ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	/* epoll first: reading the pipe or the eventfd would take their readiness away. */
	struct epoll_event got[8];
	int n = epoll_wait(ep, got, 8, 0);
	int saw_pipe = 0, saw_eventfd = 0;
	for (int i = 0; i < n; i++) {
		if (got[i].data.u64 == EPOLL_PIPE_DATA && (got[i].events & EPOLLIN))
			saw_pipe = 1;
		if (got[i].data.u64 == EPOLL_EVENTFD_DATA && (got[i].events & EPOLLIN))
			saw_eventfd = 1;
	}
	CHECK(n == 2 && saw_pipe && saw_eventfd, "epoll reports both targets with their data (%d events)", n);
	CHECK(fcntl(ep, F_GETFD) == FD_CLOEXEC, "epoll fd close-on-exec");

	char buf[256] = { 0 };
	CHECK(read(data_pipe[0], buf, sizeof(buf)) == sizeof(PIPE_TEXT) && memcmp(buf, PIPE_TEXT, sizeof(PIPE_TEXT)) == 0, "pipe data");
	CHECK(fcntl(data_pipe[0], F_GETPIPE_SZ) == 128 << 10, "pipe capacity");
	CHECK(write(HIGH_FD, "x", 1) == 1 && read(high_pipe[0], buf, sizeof(buf)) == 1 && buf[0] == 'x', "pipe end at fd %d", HIGH_FD);
	CHECK(fcntl(HIGH_FD, F_GETFD) == FD_CLOEXEC && !(fcntl(HIGH_FD, F_GETFL) & O_NONBLOCK), "fd %d flags", HIGH_FD);
	CHECK((fcntl(high_pipe[0], F_GETFL) & O_NONBLOCK) && read(high_pipe[0], buf, 1) < 0 && errno == EAGAIN, "non-blocking empty pipe");

	uint64_t count = 0;
	CHECK(read(counter, &count, 8) == 8 && count == 42, "eventfd counter (%llu)", (unsigned long long)count);
	int ones = 0;
	for (int i = 0; i < 4; i++)
		if (read(semaphore, &count, 8) == 8 && count == 1)
			ones++;
	CHECK(ones == 3, "eventfd semaphore mode (%d reads of 1)", ones);
	CHECK(read(watched_moved, &count, 8) == 8 && count == 5, "watched eventfd counter");
	/* Drained, the eventfd is no longer ready: epoll watches that very file, not a copy. */
	n = epoll_wait(ep, got, 8, 0);
	CHECK(n == 0, "epoll sees the targets drained (%d events)", n);

	struct signalfd_siginfo si;
	CHECK(read(sfd, &si, sizeof(si)) == sizeof(si) && si.ssi_signo == (uint32_t)(SIGRTMIN + 2) && si.ssi_int == 99, "signalfd delivers the queued signal");
	CHECK(read(sfd, &si, sizeof(si)) < 0 && errno == EAGAIN, "signalfd has nothing more");

	struct itimerspec left;
	timerfd_gettime(periodic, &left);
	CHECK(left.it_interval.tv_sec == 0 && left.it_interval.tv_nsec == 200 * 1000000 && left.it_value.tv_sec < 30 && left.it_value.tv_sec >= 20,
	      "periodic timerfd setting (%ld s left)", (long)left.it_value.tv_sec);
	uint64_t ticks = 0;
	CHECK(read(expired, &ticks, 8) == 8 && ticks == 1, "expired timerfd tick (%llu)", (unsigned long long)ticks);
	/* Still a timer that fires: re-armed from here, it ticks on its interval. */
	struct itimerspec soon = { .it_interval = { 0, 100 * 1000000 }, .it_value = { 0, 100 * 1000000 } };
	timerfd_settime(periodic, 0, &soon, NULL);
	int blocking = fcntl(periodic, F_GETFL) & ~O_NONBLOCK;
	fcntl(periodic, F_SETFL, blocking);
	double t0 = now_ms();
	CHECK(read(periodic, &ticks, 8) == 8 && now_ms() - t0 > 50 && now_ms() - t0 < 1000, "timerfd fires (%.0f ms)", now_ms() - t0);

	memset(buf, 0, sizeof(buf));
	CHECK(read(fifo_reader, buf, sizeof(buf)) == sizeof(FIFO_TEXT) && memcmp(buf, FIFO_TEXT, sizeof(FIFO_TEXT)) == 0, "fifo data");
	CHECK(write(fifo_rw, "y", 1) == 1 && read(fifo_reader, buf, 1) == 1 && buf[0] == 'y', "fifo still connects its ends");
	CHECK(read(zero, buf, 8) == 8 && buf[0] == 0 && buf[7] == 0, "/dev/zero");

	{
		/* inotify: the same watch descriptors report the same kinds of events, nothing else queued. */
		char events[4096] __attribute__((aligned(8)));
		CHECK(read(ino, events, sizeof(events)) < 0 && errno == EAGAIN, "inotify queue empty after restore");
		close(open(created, O_CREAT | O_WRONLY, 0600));
		int fa = open(watched_a, O_WRONLY), fc = open(watched_c, O_WRONLY);
		CHECK(write(fa, "a", 1) == 1 && write(fc, "c", 1) == 1, "write the watched files");
		close(fa);
		close(fc);
		ssize_t len = read(ino, events, sizeof(events));
		int got[4][2], n_events = 0, named = 0;
		for (ssize_t off = 0; len > 0 && off < len && n_events < 4;) {
			struct inotify_event *e = (struct inotify_event *)(events + off);
			got[n_events][0] = e->wd;
			got[n_events][1] = (int)e->mask;
			if (e->wd == 1 && e->len && strcmp(e->name, "created-after-restore") == 0)
				named = 1;
			n_events++;
			off += (ssize_t)(sizeof(*e) + e->len);
		}
		CHECK(n_events == 4 && got[0][0] == 1 && got[0][1] == IN_CREATE && named && got[1][0] == 2 && got[1][1] == IN_MODIFY &&
			      got[2][0] == 4 && got[2][1] == IN_MODIFY && got[3][0] == 4 && got[3][1] == IN_CLOSE_WRITE,
		      "inotify events with the dumped watch descriptors (%d events)", n_events);
	}

	{
		struct stat st;
		char page[4096], link[64], name[256] = { 0 };
		int pages_ok = 1;
		for (int p = 0; p < 3; p++)
			if (pread(sealed, page, sizeof(page), p * 4096) != sizeof(page) || page[0] != 'a' + p || page[4095] != 'a' + p)
				pages_ok = 0;
		if (pread(sealed, page, sizeof(page), 8192 + 4096) != sizeof(page) || page[0] != 0)
			pages_ok = 0;
		if (pread(sealed, page, sizeof(page), 1 << 20) != sizeof(page) || page[100] != 'z')
			pages_ok = 0;
		CHECK(pages_ok, "memfd contents (pages, hole, far page)");
		CHECK(fstat(sealed, &st) == 0 && st.st_size == 2 << 20, "memfd size");
		CHECK(fcntl(sealed, F_GET_SEALS) == (F_SEAL_SHRINK | F_SEAL_GROW) && ftruncate(sealed, 4096) < 0 && errno == EPERM, "memfd seals");
		CHECK(lseek(sealed, 0, SEEK_CUR) == 5000, "memfd offset");
		snprintf(link, sizeof(link), "/proc/self/fd/%d", sealed);
		CHECK(readlink(link, name, sizeof(name) - 1) > 0 && strncmp(name, "/memfd:keeper-data", 18) == 0, "memfd name (%s)", name);
		memset(page, 0, 16);
		CHECK(pread(plain, page, 16, 0) == 10 && memcmp(page, "small data", 10) == 0 && fcntl(plain, F_GET_SEALS) == F_SEAL_SEAL, "unsealable memfd");
	}

	{
		/* The owner and signal of an O_ASYNC file: data arriving raises SIGRTMIN+3 for us. */
		CHECK(fcntl(async_pipe[0], F_GETOWN) == getpid() && fcntl(async_pipe[0], F_GETSIG) == SIGRTMIN + 3 &&
			      (fcntl(async_pipe[0], F_GETFL) & O_ASYNC),
		      "F_SETOWN, F_SETSIG and O_ASYNC kept");
		struct timespec wait = { 1, 0 };
		siginfo_t si;
		CHECK(write(async_pipe[1], "!", 1) == 1 && sigtimedwait(&async_signal, &si, &wait) == SIGRTMIN + 3 && si.si_fd == async_pipe[0],
		      "data on the O_ASYNC pipe signals its owner");
	}

	{
		struct stat st;
		char buf2[64] = { 0 };
		CHECK(fcntl(opath, F_GETFL) & O_PATH && fstat(opath, &st) == 0 && S_ISDIR(st.st_mode), "O_PATH fd");
		int listed_after = 0;
		for (int round = 0; round < 20; round++) {
			long n = syscall(SYS_getdents64, dirfd, dirbuf, sizeof(dirbuf));
			if (n <= 0)
				break;
			for (long off = 0; off < n;) {
				listed_after++;
				off += *(unsigned short *)(dirbuf + off + 16);
			}
		}
		CHECK(listed_before + listed_after == 10, "directory read on from its position (%d + %d entries)", listed_before, listed_after);
		CHECK(lseek(reopened, 0, SEEK_CUR) == 4 && read(reopened, buf2, 3) == 3 && memcmp(buf2, "456", 3) == 0, "file reopened through /proc/self/fd keeps its own offset");
		CHECK((fcntl(appended, F_GETFL) & O_APPEND) && write(appended, "X", 1) == 1 && pread(reopened, buf2, 11, 0) == 11 && buf2[10] == 'X', "O_APPEND kept");
		CHECK(pread(held, buf2, 8, 0) == 8 && memcmp(buf2, "original", 8) == 0 && fstat(held, &st) == 0 && st.st_nlink == 0, "file replaced at its path: the held one comes back");
	}

	unlink(fifo_path);
	say("done %d\n", failures);
	return failures;
}

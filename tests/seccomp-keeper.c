/*
 * seccomp-keeper: seccomp filters or strict mode, to be checkpointed and restored; then the
 * filtered syscalls must still fail or kill as the filters say.
 *
 *   seccomp-keeper REPORT_FILE WORK_DIR split|tsync|strict
 *
 * Writes "ready <pid> <tid or child pids...>" when set up. On every SIGUSR1 it checks and appends
 * "ok"/"FAIL <what>" lines, then "done <failures>"; it stays alive (the test kills it).
 *
 * split: a main thread M and a thread T.
 *   F1, installed by M with SECCOMP_FILTER_FLAG_TSYNC (so T has it too): getpriority fails with
 *       errno 61, munmap with EPERM (criu-ts's own restore unmaps its control area last: the
 *       filter would forbid that without PTRACE_O_SUSPEND_SECCOMP).
 *   F2, installed by M alone (prctl PR_SET_SECCOMP): getpriority fails with errno 62 (the newer
 *       filter wins between equal actions: the order of the filters shows), getcpu kills the
 *       process (SECCOMP_RET_KILL_PROCESS).
 *   M checks: errno 62, EPERM from munmap, Seccomp 2 with 2 filters, and that a child it forks
 *   (inheriting M's filters) dies of SIGSYS on getcpu. T checks: errno 61, 1 filter, and getcpu
 *   works for it (if T had F2 the whole process would die).
 * tsync: F1 and F2 both installed with TSYNC: both threads have both filters (M and T check 62).
 * strict: the root R forks three children that enter strict mode (SECCOMP_MODE_STRICT) and serve
 *   pings over pipes. Each check: every child left is in mode 1 and answers a ping; then one
 *   child is told to call getpid and must die of SIGKILL (so three checks are possible).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include "keeper.h"

#define LOAD_NR BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr))
#define ON(nr, action) BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, (nr), 0, 1), BPF_STMT(BPF_RET | BPF_K, (action))
#define ALLOW BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)

static struct sock_filter f1_code[] = {
	LOAD_NR,
	ON(__NR_getpriority, SECCOMP_RET_ERRNO | 61),
	ON(__NR_munmap, SECCOMP_RET_ERRNO | EPERM),
	ALLOW,
};
static struct sock_filter f2_code[] = {
	LOAD_NR,
	ON(__NR_getpriority, SECCOMP_RET_ERRNO | 62),
	ON(__NR_getcpu, SECCOMP_RET_KILL_PROCESS),
	ALLOW,
};

/* "Seccomp:" and "Seccomp_filters:" of /proc/thread-self/status. */
static void seccomp_status(int *mode, int *filters)
{
	char buf[4096];
	*mode = *filters = -1;
	int fd = open("/proc/thread-self/status", O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return;
	buf[n] = 0;
	char *p = strstr(buf, "\nSeccomp:");
	if (p)
		*mode = atoi(p + 9);
	p = strstr(buf, "\nSeccomp_filters:");
	if (p)
		*filters = atoi(p + 17);
}

static int getpriority_errno(void)
{
	errno = 0;
	return syscall(SYS_getpriority, PRIO_PROCESS, 0) < 0 ? errno : 0;
}

/* ---- split / tsync */

static int tsync_mode;
static pid_t thread_tid;
static sem_t go, finished;

static void *thread_main(void *arg)
{
	thread_tid = (pid_t)syscall(SYS_gettid);
	for (;;) {
		while (sem_wait(&go) < 0)
			;
		int mode, filters;
		seccomp_status(&mode, &filters);
		int want = tsync_mode ? 62 : 61;
		CHECK(getpriority_errno() == want, "T: getpriority fails with errno %d\n", want);
		CHECK(mode == 2 && filters == (tsync_mode ? 2 : 1), "T: seccomp mode 2 with %d filter(s) (mode %d, %d)\n", tsync_mode ? 2 : 1, mode, filters);
		if (!tsync_mode) {
			unsigned cpu = ~0U;
			CHECK(syscall(SYS_getcpu, &cpu, NULL, NULL) == 0 && cpu != ~0U, "T: getcpu works (F2 is M's alone)\n");
		}
		sem_post(&finished);
	}
	return NULL;
}

static void check_filters(void)
{
	failures = 0;
	int mode, filters;
	seccomp_status(&mode, &filters);
	CHECK(getpriority_errno() == 62, "M: getpriority fails with errno 62 (F2, the newer filter, wins)\n");
	void *page = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	errno = 0;
	CHECK(page != MAP_FAILED && munmap(page, 4096) < 0 && errno == EPERM, "M: munmap fails with EPERM\n");
	CHECK(mode == 2 && filters == 2, "M: seccomp mode 2 with 2 filters (mode %d, %d)\n", mode, filters);
	pid_t child = fork();
	if (child == 0) {
		unsigned cpu;
		syscall(SYS_getcpu, &cpu, NULL, NULL);
		_exit(0);
	}
	int status = 0;
	CHECK(child > 0 && waitpid(child, &status, 0) == child && WIFSIGNALED(status) && WTERMSIG(status) == SIGSYS,
	      "a child of M dies of SIGSYS on getcpu (status %#x)\n", status);
	sem_post(&go);
	while (sem_wait(&finished) < 0)
		;
	say("done %d\n", failures);
}

static int setup_filters(const char *how)
{
	tsync_mode = strcmp(how, "tsync") == 0;
	sem_init(&go, 0, 0);
	sem_init(&finished, 0, 0);
	/* SIGUSR1 is for the main thread, which waits for it in pause(). */
	sigset_t usr1, saved;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, &saved);
	pthread_t t;
	pthread_create(&t, NULL, thread_main, NULL);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	while (!thread_tid)
		usleep(1000);
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) < 0)
		return -1;
	struct sock_fprog f1 = { sizeof(f1_code) / sizeof(f1_code[0]), f1_code };
	struct sock_fprog f2 = { sizeof(f2_code) / sizeof(f2_code[0]), f2_code };
	if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &f1) != 0)
		return -1;
	if (tsync_mode)
		return syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &f2) == 0 ? 0 : -1;
	return prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, &f2, 0, 0);
}

/* ---- strict */

#define NCHILDREN 3
static pid_t children[NCHILDREN];
static int cmd_fd[NCHILDREN], ack_fd[NCHILDREN];

static void strict_child(int cmd, int ack)
{
	if (prctl(PR_SET_SECCOMP, SECCOMP_MODE_STRICT, 0, 0, 0) < 0)
		syscall(SYS_exit, 1);
	for (;;) {
		char c;
		if (read(cmd, &c, 1) != 1)
			syscall(SYS_exit, 2);
		if (c == 'k')
			syscall(SYS_getpid); /* not read, write, exit or sigreturn: SIGKILL */
		if (write(ack, &c, 1) != 1)
			syscall(SYS_exit, 3);
	}
}

static int setup_strict(void)
{
	for (int i = 0; i < NCHILDREN; i++) {
		int to[2], from[2];
		if (pipe2(to, O_CLOEXEC) < 0 || pipe2(from, O_CLOEXEC) < 0)
			return -1;
		children[i] = fork();
		if (children[i] < 0)
			return -1;
		if (children[i] == 0) {
			close(to[1]);
			close(from[0]);
			strict_child(to[0], from[1]);
		}
		close(to[0]);
		close(from[1]);
		cmd_fd[i] = to[1];
		ack_fd[i] = from[0];
	}
	return 0;
}

static int child_mode(pid_t pid)
{
	char path[64], buf[4096];
	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	int fd = open(path, O_RDONLY);
	ssize_t n = fd < 0 ? -1 : read(fd, buf, sizeof(buf) - 1);
	if (fd >= 0)
		close(fd);
	if (n <= 0)
		return -1;
	buf[n] = 0;
	char *p = strstr(buf, "\nSeccomp:");
	return p ? atoi(p + 9) : -1;
}

static void check_strict(void)
{
	failures = 0;
	int victim = -1;
	for (int i = 0; i < NCHILDREN; i++) {
		if (!children[i])
			continue;
		if (victim < 0)
			victim = i;
		CHECK(child_mode(children[i]) == 1, "child %d is in seccomp strict mode\n", children[i]);
		char c = 'p';
		struct pollfd pfd = { ack_fd[i], POLLIN, 0 };
		CHECK(write(cmd_fd[i], &c, 1) == 1 && poll(&pfd, 1, 2000) == 1 && read(ack_fd[i], &c, 1) == 1 && c == 'p',
		      "child %d answers a ping (read and write are allowed)\n", children[i]);
	}
	CHECK(victim >= 0, "a strict child is left to kill\n");
	if (victim >= 0) {
		char c = 'k';
		int status = 0;
		pid_t pid = children[victim];
		CHECK(write(cmd_fd[victim], &c, 1) == 1 && waitpid(pid, &status, 0) == pid && WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL,
		      "child %d dies of SIGKILL on getpid (status %#x)\n", pid, status);
		children[victim] = 0;
		close(cmd_fd[victim]);
		close(ack_fd[victim]);
	}
	say("done %d\n", failures);
}

int main(int argc, char **argv)
{
	if (argc < 4)
		return 2;
	close_range(3, ~0U, 0);
	report_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (report_fd < 0 || chdir(argv[2]) < 0)
		return 3;
	signal(SIGUSR1, on_usr1);
	int strict = strcmp(argv[3], "strict") == 0;
	if (strict ? setup_strict() : setup_filters(argv[3])) {
		say("setup failed: %s\n", strerror(errno));
		return 4;
	}
	if (strict)
		say("ready %d %d %d %d\n", getpid(), children[0], children[1], children[2]);
	else
		say("ready %d %d\n", getpid(), thread_tid);
	for (;;) {
		usleep(1000); /* polled: a restored task re-enters pause() after a signal that came just before */
		if (check_requested) {
			check_requested = 0;
			strict ? check_strict() : check_filters();
		}
	}
}

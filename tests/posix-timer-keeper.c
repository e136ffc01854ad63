/*
 * posix-timer-keeper: POSIX timers (timer_create) of every kind a program uses, to be
 * checkpointed and restored; then each timer must still be there with its id, and fire with its
 * signal and value.
 *
 *   posix-timer-keeper REPORT_FILE WORK_DIR
 *
 * Writes "ready <pid> <worker tid>" when set up. On every SIGUSR1 it checks and appends "ok" or
 * "FAIL <what>" lines, then "done <failures>"; it stays alive (the test kills it), so it can be
 * checked after each of several restores.
 *
 * Timers are made with the raw syscalls (ids as the kernel hands them out, not glibc's timer_t):
 *   A  CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+1, value &cookie_a, every 10 ms
 *   X  made and deleted at once: a hole in the ids, so B's id is not the next free one
 *   B  CLOCK_REALTIME, SIGEV_SIGNAL SIGRTMIN+2, one shot in an hour
 *   D  CLOCK_BOOTTIME, SIGEV_THREAD_ID to the worker thread, SIGRTMIN+3, value 0xd00d, every 15 ms
 *   E  CLOCK_MONOTONIC, SIGEV_NONE, interval 5 s, first expiry in 100 s
 *   F  CLOCK_MONOTONIC, SIGEV_SIGNAL SIGRTMIN+4 (blocked in every thread: stays pending and
 *      overruns), value &cookie_f, every 1 ms
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#include "keeper.h"

#ifndef sigev_notify_thread_id
#define sigev_notify_thread_id _sigev_un._tid
#endif

static int cookie_a, cookie_f;
static int id_a, id_x, id_b, id_d, id_e, id_f;
static pid_t worker_tid;

/* What each handler saw last: firings, value, timer id, si_code, the thread it ran in. */
struct seen {
	volatile int count;
	volatile intptr_t value;
	volatile int timerid;
	volatile int code;
	volatile pid_t tid;
};
static struct seen seen_a, seen_d;

static void on_timer(int sig, siginfo_t *info, void *ctx)
{
	struct seen *s = sig == SIGRTMIN + 1 ? &seen_a : &seen_d;
	s->value = (intptr_t)info->si_value.sival_ptr;
	s->timerid = info->si_timerid;
	s->code = info->si_code;
	s->tid = (pid_t)syscall(SYS_gettid);
	s->count++;
}

static int make_timer(clockid_t clock, int notify, int signo, void *value, pid_t tid)
{
	struct sigevent ev;
	memset(&ev, 0, sizeof(ev));
	ev.sigev_notify = notify;
	ev.sigev_signo = signo;
	ev.sigev_value.sival_ptr = value;
	ev.sigev_notify_thread_id = tid;
	int id = -1;
	if (syscall(SYS_timer_create, clock, &ev, &id) < 0)
		return -1;
	return id;
}

static int arm(int id, long interval_ns, long value_s, long value_ns)
{
	struct itimerspec its = {
		.it_interval = { interval_ns / 1000000000L, interval_ns % 1000000000L },
		.it_value = { value_s, value_ns },
	};
	return (int)syscall(SYS_timer_settime, id, 0, &its, NULL);
}

static void *worker(void *arg)
{
	worker_tid = (pid_t)syscall(SYS_gettid);
	for (;;)
		pause();
	return NULL;
}

static int gettime(int id, struct itimerspec *its) { return (int)syscall(SYS_timer_gettime, id, its); }

static void wait_firings(struct seen *s, int more)
{
	int start = s->count;
	for (int i = 0; i < 400 && s->count < start + more; i++)
		usleep(1000);
}

static void check(void)
{
	failures = 0;
	struct itimerspec its;

	/* Exactly the timers made, with their ids (the kernel's list, newest first). */
	char want[128], got[4096] = "";
	snprintf(want, sizeof(want), "%d %d %d %d %d ", id_f, id_e, id_d, id_b, id_a);
	FILE *f = fopen("/proc/self/timers", "r");
	char line[256];
	while (f && fgets(line, sizeof(line), f)) {
		int id;
		if (sscanf(line, "ID: %d", &id) == 1)
			snprintf(got + strlen(got), sizeof(got) - strlen(got), "%d ", id);
	}
	if (f)
		fclose(f);
	CHECK(strcmp(want, got) == 0, "timer ids %s(hole at %d) in /proc/self/timers: %s\n", want, id_x, got);

	int before = seen_a.count;
	wait_firings(&seen_a, 3);
	CHECK(seen_a.count >= before + 3, "timer A (every 10 ms) fires: %d -> %d\n", before, seen_a.count);
	CHECK(seen_a.value == (intptr_t)&cookie_a && seen_a.timerid == id_a && seen_a.code == SI_TIMER,
	      "timer A's signal carries its value, its id %d and SI_TIMER (value %#lx, id %d, code %d)\n", id_a, (long)seen_a.value, seen_a.timerid, seen_a.code);
	CHECK(gettime(id_a, &its) == 0 && its.it_interval.tv_sec == 0 && its.it_interval.tv_nsec == 10000000,
	      "timer A's interval is 10 ms (%ld.%09ld)\n", (long)its.it_interval.tv_sec, its.it_interval.tv_nsec);

	CHECK(gettime(id_b, &its) == 0 && its.it_value.tv_sec > 3000 && its.it_value.tv_sec <= 3600 && its.it_interval.tv_sec == 0 && its.it_interval.tv_nsec == 0,
	      "timer B (one shot in an hour) still armed: %ld s left\n", (long)its.it_value.tv_sec);
	CHECK(gettime(id_x, &its) < 0 && errno == EINVAL, "the deleted timer %d stays deleted\n", id_x);

	before = seen_d.count;
	wait_firings(&seen_d, 3);
	CHECK(seen_d.count >= before + 3, "timer D (every 15 ms) fires: %d -> %d\n", before, seen_d.count);
	CHECK(seen_d.tid == worker_tid && seen_d.value == 0xd00d && seen_d.timerid == id_d,
	      "timer D's signal goes to the worker thread %d with value 0xd00d (thread %d, value %#lx, id %d)\n", worker_tid, seen_d.tid, (long)seen_d.value, seen_d.timerid);

	CHECK(gettime(id_e, &its) == 0 && its.it_interval.tv_sec == 5 && its.it_value.tv_sec > 0 && its.it_value.tv_sec <= 100,
	      "timer E (SIGEV_NONE) armed: interval %ld s, %ld s left\n", (long)its.it_interval.tv_sec, (long)its.it_value.tv_sec);

	/* F's signal is blocked: it is pending (from before the dump, or since), with F's id and value. */
	sigset_t only_f;
	sigemptyset(&only_f);
	sigaddset(&only_f, SIGRTMIN + 4);
	struct timespec wait = { 1, 0 };
	siginfo_t info;
	int fired = 0, right = 0;
	while (sigtimedwait(&only_f, &info, fired ? &(struct timespec){ 0, 0 } : &wait) == SIGRTMIN + 4) {
		fired++;
		if (info.si_timerid == id_f && info.si_value.sival_ptr == &cookie_f && info.si_code == SI_TIMER)
			right++;
	}
	CHECK(fired > 0 && right == fired, "timer F's blocked signal is pending with its id and value (%d of %d)\n", right, fired);
	CHECK(gettime(id_f, &its) == 0 && its.it_interval.tv_nsec == 1000000, "timer F still runs every 1 ms\n");
	say("done %d\n", failures);
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	close_range(3, ~0U, 0);
	report_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (report_fd < 0 || chdir(argv[2]) < 0)
		return 3;

	sigset_t block;
	sigemptyset(&block);
	sigaddset(&block, SIGRTMIN + 4);
	sigaddset(&block, SIGRTMIN + 3);
	pthread_sigmask(SIG_BLOCK, &block, NULL);
	struct sigaction sa = { .sa_sigaction = on_timer, .sa_flags = SA_SIGINFO | SA_RESTART };
	sigaction(SIGRTMIN + 1, &sa, NULL);
	sigaction(SIGRTMIN + 3, &sa, NULL);
	signal(SIGUSR1, on_usr1);

	pthread_t t;
	sigset_t worker_mask;
	sigemptyset(&worker_mask);
	sigaddset(&worker_mask, SIGRTMIN + 4);
	sigaddset(&worker_mask, SIGRTMIN + 1);
	sigaddset(&worker_mask, SIGUSR1);
	/* The worker takes D's signal only (A's and SIGUSR1 go to the main thread). */
	sigset_t saved;
	pthread_sigmask(SIG_SETMASK, &worker_mask, &saved);
	pthread_create(&t, NULL, worker, NULL);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	while (!worker_tid)
		usleep(1000);

	id_a = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 1, &cookie_a, 0);
	id_x = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 1, NULL, 0);
	syscall(SYS_timer_delete, id_x);
	id_b = make_timer(CLOCK_REALTIME, SIGEV_SIGNAL, SIGRTMIN + 2, NULL, 0);
	id_d = make_timer(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 3, (void *)0xd00d, worker_tid);
	id_e = make_timer(CLOCK_MONOTONIC, SIGEV_NONE, 0, NULL, 0);
	id_f = make_timer(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 4, &cookie_f, 0);
	if (id_a < 0 || id_b < 0 || id_d < 0 || id_e < 0 || id_f < 0 ||
	    arm(id_a, 10000000, 0, 10000000) || arm(id_b, 0, 3600, 0) || arm(id_d, 15000000, 0, 15000000) ||
	    arm(id_e, 5000000000L, 100, 0) || arm(id_f, 1000000, 0, 1000000)) {
		say("setup failed: %s\n", strerror(errno));
		return 4;
	}
	say("ready %d %d\n", getpid(), worker_tid);
	for (;;) {
		usleep(1000); /* polled: a restored task re-enters pause() after a signal that came just before */
		if (check_requested) {
			check_requested = 0;
			check();
		}
	}
}

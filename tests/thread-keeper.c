/*
 * thread-keeper: 16 threads, each stopped in a different blocking call (or spinning), each with
 * its own per-thread state, to be checkpointed and restored; then every thread checks its own
 * state and reports.
 *
 *   thread-keeper REPORT_FILE
 *
 * Writes "ready <pid> <tid>..." to REPORT_FILE once every thread is in its call. On SIGUSR1 (taken
 * by the main thread in sigwaitinfo) the main thread wakes every thread the way its call needs
 * (condition broadcast, sem_post, unlock, a thread-directed signal, a flag...); each thread then
 * appends "ok T<i> <what>" or "FAIL T<i> <what>" lines, and the main thread "done <failures>".
 * The process stays alive afterwards (the test kills it).
 *
 * Per thread: its exact TID; a __thread value and its address (TLS via fs_base); the fs base
 * itself; a sigaltstack of its own; a blocked mask of its own (signal 35+i, SIGUSR1, SIGUSR2, and
 * SIGWINCH unless the thread is woken by it); its name (comm); its robust futex list head; its
 * clear_child_tid (prctl PR_GET_TID_ADDRESS, and pthread_join relies on it); rseq still
 * registered; a thread-private pending SIGUSR2 in threads 4 and 15 and in no other; what its
 * blocking call returned. Thread 9 spins with values in r12-r15 and xmm9/xmm10.
 *
 *   T0 pthread_cond_wait   T4 nanosleep loop     T8 sigsuspend        T12 raw FUTEX_WAIT
 *   T1 pthread_join(T2)    T5 sigwaitinfo(40)    T9 spin, registers   T13 pthread_barrier_wait
 *   T2 sem_wait            T6 poll(NULL, 0, -1)  T10 spin, TLS math   T14 rwlock wrlock
 *   T3 mutex lock          T7 pause()            T11 select(no fds)   T15 clock_nanosleep loop
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <linux/futex.h>
#include <poll.h>
#include <pthread.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/rseq.h>
#include <sys/select.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 16
#define ALTSTACK_BYTES (64 << 10)
#define ARCH_GET_FS 0x1003

static int report_fd = -1;
static int failures;
static pthread_mutex_t say_lock = PTHREAD_MUTEX_INITIALIZER;

static void say(const char *fmt, ...) __attribute__((format(printf, 1, 2)));
static void say(const char *fmt, ...)
{
	char line[512];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	pthread_mutex_lock(&say_lock);
	if (n > 0 && write(report_fd, line, (size_t)n) < 0)
		_exit(100);
	if (!strncmp(line, "FAIL", 4))
		failures++;
	pthread_mutex_unlock(&say_lock);
}

static __thread uint64_t tls_value;

static volatile int go;
static volatile int ready[NTHREADS];
static volatile int finished[NTHREADS];
static pid_t tids[NTHREADS];
static pid_t main_pid;
static pthread_t threads[NTHREADS];

static pthread_mutex_t cond_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static sem_t sem;
static pthread_mutex_t held = PTHREAD_MUTEX_INITIALIZER;
static uint32_t futex_word;
static pthread_barrier_t barrier;
static pthread_rwlock_t rwlock = PTHREAD_RWLOCK_INITIALIZER;

static void on_winch(int sig) { (void)sig; }

static pid_t gettid_raw(void) { return (pid_t)syscall(SYS_gettid); }

/* Threads woken by a SIGWINCH sent to them keep it unblocked (sigsuspend unblocks it itself). */
static int woken_by_winch(int i) { return i == 6 || i == 7 || i == 11; }

static void own_mask(int i, sigset_t *set)
{
	sigemptyset(set);
	sigaddset(set, SIGUSR1);
	sigaddset(set, SIGUSR2);
	sigaddset(set, 35 + i);
	if (!woken_by_winch(i))
		sigaddset(set, SIGWINCH);
}

struct snapshot {
	pid_t tid;
	uint64_t fs;
	uint64_t *tls_addr;
	stack_t ss;
	sigset_t mask;
	char name[16];
	void *robust;
	size_t robust_len;
	int *tid_address;
};

static void take(struct snapshot *s)
{
	s->tid = gettid_raw();
	syscall(SYS_arch_prctl, ARCH_GET_FS, &s->fs);
	s->tls_addr = &tls_value;
	sigaltstack(NULL, &s->ss);
	pthread_sigmask(SIG_BLOCK, NULL, &s->mask);
	prctl(PR_GET_NAME, s->name);
	syscall(SYS_get_robust_list, 0, &s->robust, &s->robust_len);
	prctl(PR_GET_TID_ADDRESS, &s->tid_address);
}

static void compare(int i, const struct snapshot *a, const struct snapshot *b)
{
#define SAME(field, what) say("%s T%d %s\n", (a->field) == (b->field) ? "ok" : "FAIL", i, what)
	SAME(tid, "tid");
	SAME(fs, "fs_base");
	SAME(tls_addr, "TLS address");
	SAME(ss.ss_sp, "sigaltstack sp");
	SAME(ss.ss_size, "sigaltstack size");
	SAME(ss.ss_flags, "sigaltstack flags");
	SAME(robust, "robust list head");
	SAME(robust_len, "robust list length");
	SAME(tid_address, "clear_child_tid");
#undef SAME
	say("%s T%d blocked mask\n", !memcmp(&a->mask, &b->mask, 8) ? "ok" : "FAIL", i);
	say("%s T%d name %s\n", !strcmp(a->name, b->name) ? "ok" : "FAIL", i, b->name);
	say("%s T%d TLS value\n", tls_value == 0x7100000000000000ull + (uint64_t)i * 0x10001 ? "ok" : "FAIL", i);
	/* Re-registering the same rseq area answers EBUSY exactly when it is still registered. */
	struct rseq *area = (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
	long rc = __rseq_size ? syscall(SYS_rseq, area, sizeof(struct rseq), 0, RSEQ_SIG) : -1; /* glibc registers sizeof(struct rseq), not __rseq_size */
	say("%s T%d rseq registered (rc %ld errno %d)\n", __rseq_size && rc == -1 && errno == EBUSY ? "ok" : "FAIL", i, rc, errno);
	sigset_t pending;
	sigpending(&pending);
	int want = i == 4 || i == 15;
	say("%s T%d pending SIGUSR2 %d\n", sigismember(&pending, SIGUSR2) == want ? "ok" : "FAIL", i, want);
	say("%s T%d pid\n", getpid() == main_pid ? "ok" : "FAIL", i);
}

/* Spins with known values in r12-r15 and xmm9/xmm10 until `go`, then returns them. */
static void spin_with_registers(uint64_t out[6])
{
	__asm__ volatile(
		"movabsq $0x1122334455667788, %%r12\n\t"
		"movabsq $0x99aabbccddeeff00, %%r13\n\t"
		"movabsq $0x0123456789abcdef, %%r14\n\t"
		"movabsq $0x0fedcba987654321, %%r15\n\t"
		"movq %%r12, %%xmm9\n\t"
		"movq %%r15, %%xmm10\n\t"
		"1: pause\n\t"
		"cmpl $0, (%[flag])\n\t"
		"je 1b\n\t"
		"movq %%r12, 0(%[out])\n\t"
		"movq %%r13, 8(%[out])\n\t"
		"movq %%r14, 16(%[out])\n\t"
		"movq %%r15, 24(%[out])\n\t"
		"movq %%xmm9, 32(%[out])\n\t"
		"movq %%xmm10, 40(%[out])\n\t"
		:
		: [flag] "r"(&go), [out] "r"(out)
		: "r12", "r13", "r14", "r15", "xmm9", "xmm10", "memory", "cc");
}

static void *worker(void *arg)
{
	int i = (int)(intptr_t)arg;
	char name[16];
	snprintf(name, sizeof(name), "thr-%02d", i);
	prctl(PR_SET_NAME, name);
	tls_value = 0x7100000000000000ull + (uint64_t)i * 0x10001;
	stack_t ss = { .ss_sp = malloc(ALTSTACK_BYTES), .ss_size = ALTSTACK_BYTES - 64 * i, .ss_flags = 0 };
	if (i % 3 != 2)
		sigaltstack(&ss, NULL); /* every third thread keeps none */
	sigset_t mask;
	own_mask(i, &mask);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
	tids[i] = gettid_raw();
	struct snapshot before, after;
	take(&before);

	long result = 0;
	const char *what = "";
	struct timespec tick = { 0, 20 * 1000 * 1000 };
	switch (i) {
	case 0:
		what = "pthread_cond_wait";
		pthread_mutex_lock(&cond_lock);
		ready[i] = 1;
		while (!go && result == 0)
			result = pthread_cond_wait(&cond, &cond_lock);
		pthread_mutex_unlock(&cond_lock);
		break;
	case 1: {
		what = "pthread_join";
		while (!ready[2])
			usleep(1000);
		void *ret = NULL;
		ready[i] = 1;
		result = pthread_join(threads[2], &ret);
		if (result == 0 && ret != (void *)0x2222)
			result = -1;
		break;
	}
	case 2:
		what = "sem_wait";
		ready[i] = 1;
		while ((result = sem_wait(&sem)) == -1 && errno == EINTR)
			;
		break;
	case 3:
		what = "pthread_mutex_lock";
		ready[i] = 1;
		result = pthread_mutex_lock(&held);
		if (result == 0)
			pthread_mutex_unlock(&held);
		break;
	case 4:
	case 15:
		what = i == 4 ? "nanosleep loop" : "clock_nanosleep loop";
		ready[i] = 1;
		while (!go) {
			if (i == 4)
				nanosleep(&tick, NULL);
			else
				clock_nanosleep(CLOCK_MONOTONIC, 0, &tick, NULL);
		}
		break;
	case 5: {
		what = "sigwaitinfo";
		sigset_t wait;
		sigemptyset(&wait);
		sigaddset(&wait, 35 + i);
		ready[i] = 1;
		siginfo_t info;
		do
			result = sigwaitinfo(&wait, &info);
		while (result == -1 && errno == EINTR);
		result = result == 35 + i ? 0 : -1;
		break;
	}
	case 6:
		what = "poll";
		ready[i] = 1;
		while (!go)
			poll(NULL, 0, -1);
		break;
	case 7:
		what = "pause";
		ready[i] = 1;
		while (!go)
			pause();
		break;
	case 8: {
		what = "sigsuspend";
		sigset_t open = mask;
		sigdelset(&open, SIGWINCH);
		ready[i] = 1;
		while (!go)
			sigsuspend(&open);
		break;
	}
	case 9: {
		what = "registers r12-r15, xmm9, xmm10";
		uint64_t regs[6];
		ready[i] = 1;
		spin_with_registers(regs);
		if (regs[0] != 0x1122334455667788ull || regs[1] != 0x99aabbccddeeff00ull || regs[2] != 0x0123456789abcdefull ||
		    regs[3] != 0x0fedcba987654321ull || regs[4] != regs[0] || regs[5] != regs[3])
			result = -1;
		break;
	}
	case 10: {
		what = "spin on TLS";
		uint64_t sum = 0, n = 0;
		ready[i] = 1;
		while (!go) {
			sum += tls_value;
			n++;
		}
		result = sum == n * tls_value ? 0 : -1;
		break;
	}
	case 11:
		what = "select";
		ready[i] = 1;
		while (!go)
			select(0, NULL, NULL, NULL, NULL);
		break;
	case 12:
		what = "FUTEX_WAIT";
		ready[i] = 1;
		while (__atomic_load_n(&futex_word, __ATOMIC_SEQ_CST) == 0)
			syscall(SYS_futex, &futex_word, FUTEX_WAIT, 0, NULL, NULL, 0);
		break;
	case 13:
		what = "pthread_barrier_wait";
		ready[i] = 1;
		result = pthread_barrier_wait(&barrier);
		result = result == 0 || result == PTHREAD_BARRIER_SERIAL_THREAD ? 0 : -1;
		break;
	case 14:
		what = "pthread_rwlock_wrlock";
		ready[i] = 1;
		result = pthread_rwlock_wrlock(&rwlock);
		if (result == 0)
			pthread_rwlock_unlock(&rwlock);
		break;
	}
	take(&after);
	say("%s T%d %s returned %ld\n", result == 0 ? "ok" : "FAIL", i, what, result);
	compare(i, &before, &after);
	finished[i] = 1;
	if (i == 2)
		return (void *)0x2222;
	/* Stay alive: a finished thread would exit and its TID go away before the test looks. */
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s REPORT_FILE\n", argv[0]);
		return 2;
	}
	main_pid = getpid();
	/* Exactly the descriptors set up here, whatever the launcher leaked to us. */
	close_range(3, ~0U, 0);
	report_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (report_fd < 0)
		return 2;
	struct sigaction sa = { .sa_handler = on_winch };
	sigaction(SIGWINCH, &sa, NULL);
	sigset_t mask;
	sigemptyset(&mask);
	sigaddset(&mask, SIGUSR1);
	sigaddset(&mask, SIGUSR2);
	sigaddset(&mask, SIGWINCH);
	pthread_sigmask(SIG_SETMASK, &mask, NULL);
	sem_init(&sem, 0, 0);
	pthread_barrier_init(&barrier, NULL, 2);
	pthread_mutex_lock(&held);
	pthread_rwlock_rdlock(&rwlock);
	tls_value = 0x7100000000000000ull + 0x10001 * 100;
	struct snapshot before, after;
	take(&before);

	for (int i = 0; i < NTHREADS; i++)
		pthread_create(&threads[i], NULL, worker, (void *)(intptr_t)i);
	for (int i = 0; i < NTHREADS; i++)
		while (!ready[i])
			usleep(1000);
	usleep(200 * 1000); /* every thread is in its call by now */
	/* Thread-private pending signals, blocked in every thread. */
	syscall(SYS_tgkill, getpid(), tids[4], SIGUSR2);
	syscall(SYS_tgkill, getpid(), tids[15], SIGUSR2);
	char line[512];
	int n = snprintf(line, sizeof(line), "ready %d", getpid());
	for (int i = 0; i < NTHREADS; i++)
		n += snprintf(line + n, sizeof(line) - (size_t)n, " %d", tids[i]);
	say("%s\n", line);

	sigset_t usr1;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	while (sigwaitinfo(&usr1, NULL) != SIGUSR1)
		;
	take(&after);
	say("%s main tid\n", after.tid == before.tid && after.tid == getpid() ? "ok" : "FAIL");
	say("%s main fs_base\n", after.fs == before.fs ? "ok" : "FAIL");
	say("%s main blocked mask\n", !memcmp(&after.mask, &before.mask, 8) ? "ok" : "FAIL");
	say("%s main TLS value\n", tls_value == 0x7100000000000000ull + 0x10001 * 100 ? "ok" : "FAIL");

	go = 1;
	pthread_mutex_lock(&cond_lock);
	pthread_cond_broadcast(&cond);
	pthread_mutex_unlock(&cond_lock);
	sem_post(&sem);
	pthread_mutex_unlock(&held);
	syscall(SYS_tgkill, getpid(), tids[5], 35 + 5);
	__atomic_store_n(&futex_word, 1, __ATOMIC_SEQ_CST);
	syscall(SYS_futex, &futex_word, FUTEX_WAKE, 1, NULL, NULL, 0);
	pthread_barrier_wait(&barrier);
	pthread_rwlock_unlock(&rwlock);
	struct timespec deadline;
	clock_gettime(CLOCK_MONOTONIC, &deadline);
	deadline.tv_sec += 10;
	for (;;) {
		int all = 1;
		for (int i = 0; i < NTHREADS; i++) {
			if (finished[i])
				continue;
			all = 0;
			if (woken_by_winch(i) || i == 8)
				syscall(SYS_tgkill, getpid(), tids[i], SIGWINCH);
		}
		if (all)
			break;
		struct timespec now;
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (now.tv_sec > deadline.tv_sec) {
			for (int i = 0; i < NTHREADS; i++)
				if (!finished[i])
					say("FAIL T%d did not finish\n", i);
			break;
		}
		usleep(2000);
	}
	say("done %d\n", failures);
	for (;;)
		pause();
}

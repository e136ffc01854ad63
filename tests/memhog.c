/*
 * memhog: holds N MiB of random data in one anonymous mapping and waits to be checkpointed (the
 * program bench/dump-restore.mjs dumps and restores).
 *
 *   memhog MIB REPORT_FILE [THREADS]
 *
 * Fills the mapping from a xorshift64* generator seeded by getrandom() (every page distinct and
 * non-zero, so every page must be saved), writes "ready <pid> <checksum>" to REPORT_FILE, then
 * sleeps in sigsuspend(). On SIGUSR1 it checksums the whole mapping again and appends
 * "check <checksum> <microseconds the pass took>": the checksum equal to the ready line's only if
 * the memory came through intact (a restore that lost or misplaced pages gives another value).
 * SIGTERM/SIGINT: exits.
 * With THREADS, that many more threads wait in pause() with every signal blocked (a
 * multi-threaded target for the kill tests); each adds a "thread <tid> ok" line to a check.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t check_requested;

static void on_usr1(int sig) { check_requested = 1; }

#define MAX_THREADS 64
static volatile pid_t thread_tids[MAX_THREADS];

static void *waiter(void *arg)
{
	thread_tids[(long)arg] = gettid();
	for (;;)
		pause();
	return NULL;
}

/* A position-dependent mix so that swapped or shifted pages change the sum too. */
static uint64_t checksum(const uint64_t *p, size_t words)
{
	uint64_t h = 0x9e3779b97f4a7c15ULL;
	for (size_t i = 0; i < words; i++)
		h = (h ^ (p[i] + i)) * 0x100000001b3ULL;
	return h;
}

static void report(int fd, const char *line)
{
	size_t n = strlen(line);
	if (write(fd, line, n) != (ssize_t)n)
		_exit(100);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s MIB REPORT_FILE\n", argv[0]);
		return 2;
	}
	/* Exactly the descriptors set up here, whatever the launcher leaked to us. */
	close_range(3, ~0U, 0);
	size_t bytes = (size_t)strtoull(argv[1], NULL, 10) << 20;
	long nthreads = argc > 3 ? strtol(argv[3], NULL, 10) : 0;
	if (nthreads < 0 || nthreads > MAX_THREADS)
		return 2;
	int fd = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (bytes == 0 || fd < 0)
		return 3;

	uint64_t *mem = mmap(NULL, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 4;
	uint64_t s = 0;
	while (s == 0)
		if (getrandom(&s, sizeof(s), 0) != sizeof(s))
			return 5;
	size_t words = bytes / sizeof(uint64_t);
	for (size_t i = 0; i < words; i++) {
		s ^= s >> 12;
		s ^= s << 25;
		s ^= s >> 27;
		mem[i] = s * 0x2545f4914f6cdd1dULL;
	}

	struct sigaction sa = { .sa_handler = on_usr1 };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);
	/* SIGUSR1 is only let in inside sigsuspend(): none can slip in between the test and the wait. */
	sigset_t usr1, waitmask;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &waitmask);
	sigdelset(&waitmask, SIGUSR1);

	/* Threads start with every signal blocked (they inherit the mask): SIGUSR1 goes to main. */
	sigset_t all, old;
	sigfillset(&all);
	pthread_sigmask(SIG_BLOCK, &all, &old);
	for (long i = 0; i < nthreads; i++) {
		pthread_t t;
		if (pthread_create(&t, NULL, waiter, (void *)i) != 0)
			return 6;
	}
	pthread_sigmask(SIG_SETMASK, &old, NULL);
	for (long i = 0; i < nthreads; i++)
		while (!thread_tids[i])
			usleep(1000);

	char line[128];
	snprintf(line, sizeof(line), "ready %d %016llx\n", (int)getpid(), (unsigned long long)checksum(mem, words));
	report(fd, line);
	for (;;) {
		sigsuspend(&waitmask);
		if (check_requested) {
			check_requested = 0;
			/* The pass's time too: after a restore, it is the first touch of every page. */
			struct timespec t0, t1;
			clock_gettime(CLOCK_MONOTONIC, &t0);
			uint64_t sum = checksum(mem, words);
			clock_gettime(CLOCK_MONOTONIC, &t1);
			long long us = (t1.tv_sec - t0.tv_sec) * 1000000LL + (t1.tv_nsec - t0.tv_nsec) / 1000;
			snprintf(line, sizeof(line), "check %016llx %lld\n", (unsigned long long)sum, us);
			report(fd, line);
			for (long i = 0; i < nthreads; i++) {
				/* A thread that is gone (or not ours any more) has no /proc/self/task entry. */
				char path[64];
				snprintf(path, sizeof(path), "/proc/self/task/%d/stat", (int)thread_tids[i]);
				int tfd = open(path, O_RDONLY | O_CLOEXEC);
				snprintf(line, sizeof(line), "thread %d %s\n", (int)thread_tids[i], tfd >= 0 ? "ok" : "missing");
				if (tfd >= 0)
					close(tfd);
				report(fd, line);
			}
		}
	}
}

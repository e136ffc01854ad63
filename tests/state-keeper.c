/*
 * state-keeper: sets up one of each kind of single-process state criu-ts must carry across a
 * checkpoint, waits to be checkpointed (and restored), then checks every piece and reports.
 *
 *   state-keeper REPORT_FILE WORK_DIR
 *
 * Writes "ready <pid>" to REPORT_FILE when set up, then spins with a known value in ymm15
 * (checked at the end, so the FPU/AVX state must survive). On SIGUSR1 it verifies and appends
 * "ok" or "FAIL <what>" lines, then "done <failures>", and exits with the number of failures.
 *
 * State: patterns in anonymous, heap, stack, private-file (copied-on-write) memory; a
 * mprotect'ed PROT_NONE hole inside written memory and a never-touched PROT_NONE guard; sparse
 * memory (every other page of 2100 written) and a 9 MiB block; a file open at an offset; a file
 * deleted while open (contents kept); a SIGUSR2 handler with SA_RESTART; a blocked signal and a
 * pending one; an itimer; a sigaltstack; cwd and umask; an rlimit; argv and environment; the vDSO
 * (clock_gettime).
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
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/stat.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "keeper.h"

#define PAGE 4096
#define ANON_PAGES 64
#define SPARSE_PAGES 2100
#define BLOCK_BYTES (9 << 20)
#define HEAP_BYTES (1 << 20)
#define STACK_BYTES (16 << 10)

static volatile sig_atomic_t usr2_seen;

static void on_usr2(int sig) { usr2_seen++; }

static uint8_t pattern(uintptr_t i, unsigned seed) { return (uint8_t)(i * 7 + seed); }

static int pattern_ok(const uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != pattern(i, seed))
			return 0;
	return 1;
}

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pattern(i, seed);
}

int main(int argc, char **argv)
{
	if (argc < 3) {
		fprintf(stderr, "usage: %s REPORT_FILE WORK_DIR\n", argv[0]);
		return 2;
	}
	/* Exactly the descriptors set up here, whatever the launcher leaked to us. */
	close_range(3, ~0U, 0);
	report_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (report_fd < 0 || chdir(argv[2]) < 0)
		return 3;
	umask(027);

	/* Memory. */
	uint8_t *anon = mmap(NULL, ANON_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(anon, ANON_PAGES * PAGE, 11);
	uint8_t *heap = malloc(HEAP_BYTES);
	fill(heap, HEAP_BYTES, 23);
	volatile uint8_t stack[STACK_BYTES];
	for (size_t i = 0; i < STACK_BYTES; i++)
		stack[i] = pattern(i, 37);
	/* Three written pages; the middle one then made PROT_NONE (its contents must survive). */
	uint8_t *holed = mmap(NULL, 3 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(holed, 3 * PAGE, 41);
	mprotect(holed + PAGE, PAGE, PROT_NONE);
	/* Shared anonymous memory (MAP_SHARED|MAP_ANONYMOUS): four pages written, four never touched,
	 * and a read-only tail split off with mprotect (one object behind two VMAs). */
	uint8_t *shared = mmap(NULL, 10 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	fill(shared, 4 * PAGE, 67);
	fill(shared + 8 * PAGE, 2 * PAGE, 71);
	mprotect(shared + 8 * PAGE, 2 * PAGE, PROT_READ);
	/* A guard page never touched. */
	uint8_t *guard = mmap(NULL, PAGE, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	/* Sparse memory: every other page written, more separate runs of pages than one iovec
	 * array holds (IOV_MAX 1024); the pages between must stay zero. And one 9 MiB block written
	 * whole: longer than two of the 4 MiB chunks restore writes at a time, so one is cut. */
	uint8_t *sparse = mmap(NULL, SPARSE_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	for (size_t page = 0; page < SPARSE_PAGES; page += 2)
		fill(sparse + page * PAGE, PAGE, (unsigned)(83 + page));
	uint8_t *block = mmap(NULL, BLOCK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	fill(block, BLOCK_BYTES, 89);
	/* A private file mapping with one page written (copied on write) and one left as the file's. */
	int mf = open("mapped.bin", O_RDWR | O_CREAT | O_TRUNC, 0644);
	uint8_t filebuf[2 * PAGE];
	fill(filebuf, sizeof(filebuf), 53);
	if (write(mf, filebuf, sizeof(filebuf)) != sizeof(filebuf))
		return 4;
	uint8_t *fmap = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, mf, 0);
	close(mf);
	fill(fmap, PAGE, 59); /* first page now private */

	/* Files: one at an offset, one deleted while open. */
	int data = open("data.txt", O_RDWR | O_CREAT | O_TRUNC, 0640);
	for (int i = 0; i < 100; i++)
		if (write(data, "x", 1) != 1)
			return 5;
	lseek(data, 42, SEEK_SET);
	int gone = open("gone.txt", O_RDWR | O_CREAT | O_TRUNC, 0600);
	if (write(gone, "still here", 10) != 10)
		return 6;
	unlink("gone.txt");

	/* Signals. */
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	struct sigaction sa2 = { .sa_handler = on_usr2, .sa_flags = SA_RESTART };
	sigemptyset(&sa2.sa_mask);
	sigaddset(&sa2.sa_mask, SIGTERM);
	sigaction(SIGUSR2, &sa2, NULL);
	sigset_t blocked;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGRTMIN + 1);
	sigaddset(&blocked, SIGWINCH);
	sigprocmask(SIG_BLOCK, &blocked, NULL);
	union sigval value = { .sival_int = 4242 };
	sigqueue(getpid(), SIGRTMIN + 1, value); /* stays pending: blocked */
	struct itimerval it = { .it_interval = { 500, 0 }, .it_value = { 1000, 0 } };
	setitimer(ITIMER_REAL, &it, NULL);
	static uint8_t altstack[64 * 1024];
	stack_t ss = { .ss_sp = altstack, .ss_size = sizeof(altstack) };
	sigaltstack(&ss, NULL);
	struct rlimit rl = { .rlim_cur = 777, .rlim_max = 888 };
	setrlimit(RLIMIT_NOFILE, &rl);

	/* ymm15 holds a known value while we wait. Nothing of libc may run after it is loaded:
	 * glibc's AVX2 string functions (vsnprintf uses them on AVX2 machines) end with vzeroupper,
	 * which clears the upper halves of every ymm register. So the ready line is formatted first
	 * and written with a raw syscall. */
	static const uint64_t magic[4] = { 0x1122334455667788ull, 0x99aabbccddeeff00ull, 0x0123456789abcdefull, 0xfedcba9876543210ull };
	char ready[64];
	int ready_len = snprintf(ready, sizeof(ready), "ready %d\n", getpid());
	__asm__ volatile("vmovdqu %0, %%ymm15" : : "m"(magic) : "xmm15");
	/* With AVX-512: zmm5 (its upper half is in the component whose offset differs between Intel
	 * and AMD parts), zmm31 and the opmask k1, loaded the same way. */
	static const uint64_t magic512[8] = { 0xa1a2a3a4a5a6a7a8ull, 0xb1b2b3b4b5b6b7b8ull, 0xc1c2c3c4c5c6c7c8ull, 0xd1d2d3d4d5d6d7d8ull,
		0xe1e2e3e4e5e6e7e8ull, 0xf1f2f3f4f5f6f7f8ull, 0x0102030405060708ull, 0x1112131415161718ull };
	static const uint64_t kmagic = 0x5a5a0f0f3c3cc3c3ull;
	int avx512 = __builtin_cpu_supports("avx512f");
	if (avx512) {
		__asm__ volatile("vmovdqu64 %0, %%zmm5" : : "m"(magic512) : "xmm5");
		__asm__ volatile("vmovdqu64 %0, %%zmm31" : : "m"(magic512));
		__asm__ volatile("kmovq %0, %%k1" : : "m"(kmagic));
	}
	long written;
	__asm__ volatile("syscall" : "=a"(written) : "a"(1 /* write */), "D"(report_fd), "S"(ready), "d"((long)ready_len) : "rcx", "r11", "memory");
	if (written != ready_len)
		_exit(100);
	while (!check_requested)
		__asm__ volatile("pause");

	uint64_t seen[4];
	__asm__ volatile("vmovdqu %%ymm15, %0" : "=m"(seen));
	uint64_t zmm5[8], zmm31[8], k1 = 0;
	if (avx512) {
		__asm__ volatile("vmovdqu64 %%zmm5, %0" : "=m"(zmm5));
		__asm__ volatile("vmovdqu64 %%zmm31, %0" : "=m"(zmm31));
		__asm__ volatile("kmovq %%k1, %0" : "=m"(k1));
	}
	CHECK(memcmp(seen, magic, sizeof(magic)) == 0, "ymm15");
	if (avx512) {
		CHECK(memcmp(zmm5, magic512, sizeof(magic512)) == 0, "zmm5 (AVX-512)");
		CHECK(memcmp(zmm31, magic512, sizeof(magic512)) == 0, "zmm31 (AVX-512)");
		CHECK(k1 == kmagic, "k1 (AVX-512 opmask)");
	}

	CHECK(pattern_ok(anon, ANON_PAGES * PAGE, 11), "anonymous memory");
	CHECK(pattern_ok(heap, HEAP_BYTES, 23), "heap");
	int stack_ok = 1;
	for (size_t i = 0; i < STACK_BYTES; i++)
		if (stack[i] != pattern(i, 37))
			stack_ok = 0;
	CHECK(stack_ok, "stack");
	mprotect(holed + PAGE, PAGE, PROT_READ);
	CHECK(pattern_ok(holed, 3 * PAGE, 41), "mprotect'ed hole");
	CHECK(pattern_ok(fmap, PAGE, 59), "private file mapping, written page");
	{
		/* The second page as the file holds it (offset PAGE into the pattern). */
		int same = 1;
		for (size_t i = 0; i < PAGE; i++)
			if (fmap[PAGE + i] != pattern(PAGE + i, 53))
				same = 0;
		CHECK(same, "file page of a private mapping");
	}
	CHECK(mprotect(guard, PAGE, PROT_NONE) == 0, "guard mapping");
	{
		int sparse_ok = 1;
		for (size_t page = 0; page < SPARSE_PAGES && sparse_ok; page++) {
			if (page % 2 == 0) {
				sparse_ok = pattern_ok(sparse + page * PAGE, PAGE, (unsigned)(83 + page));
				continue;
			}
			for (size_t i = 0; i < PAGE; i++)
				if (sparse[page * PAGE + i] != 0)
					sparse_ok = 0;
		}
		CHECK(sparse_ok, "sparse memory (every other page written)");
	}
	CHECK(pattern_ok(block, BLOCK_BYTES, 89), "9 MiB block");
	{
		int untouched = 1;
		for (size_t i = 4 * PAGE; i < 8 * PAGE; i++)
			if (shared[i] != 0)
				untouched = 0;
		CHECK(pattern_ok(shared, 4 * PAGE, 67) && untouched && pattern_ok(shared + 8 * PAGE, 2 * PAGE, 71), "shared anonymous memory");
	}

	CHECK(lseek(data, 0, SEEK_CUR) == 42, "file offset");
	char buf[16] = { 0 };
	CHECK(pread(gone, buf, 10, 0) == 10 && memcmp(buf, "still here", 10) == 0, "deleted file contents");

	struct sigaction now;
	sigaction(SIGUSR2, NULL, &now);
	CHECK(now.sa_handler == on_usr2 && (now.sa_flags & SA_RESTART) && sigismember(&now.sa_mask, SIGTERM), "sigaction");
	sigset_t mask;
	sigprocmask(SIG_SETMASK, NULL, &mask);
	CHECK(sigismember(&mask, SIGRTMIN + 1) && sigismember(&mask, SIGWINCH) && !sigismember(&mask, SIGUSR2), "blocked mask");
	sigset_t pending;
	sigpending(&pending);
	CHECK(sigismember(&pending, SIGRTMIN + 1), "pending signal");
	struct timespec zero = { 0, 0 };
	siginfo_t info;
	CHECK(sigtimedwait(&blocked, &info, &zero) == SIGRTMIN + 1 && info.si_value.sival_int == 4242, "pending signal value");
	struct itimerval left;
	getitimer(ITIMER_REAL, &left);
	CHECK(left.it_interval.tv_sec == 500 && left.it_value.tv_sec > 900 && left.it_value.tv_sec <= 1000, "itimer");
	stack_t cur;
	sigaltstack(NULL, &cur);
	CHECK(cur.ss_sp == altstack && cur.ss_size == sizeof(altstack), "sigaltstack");
	raise(SIGUSR2);
	CHECK(usr2_seen == 1, "signal handler runs");

	char cwd[4096];
	CHECK(getcwd(cwd, sizeof(cwd)) && strcmp(cwd, argv[2]) == 0, "cwd");
	mode_t old = umask(0);
	CHECK(old == 027, "umask");
	getrlimit(RLIMIT_NOFILE, &rl);
	CHECK(rl.rlim_cur == 777 && rl.rlim_max == 888, "rlimit");
	CHECK(getenv("STATE_KEEPER_ENV") && strcmp(getenv("STATE_KEEPER_ENV"), "kept") == 0, "environment");
	struct timespec ts;
	CHECK(clock_gettime(CLOCK_MONOTONIC, &ts) == 0 && ts.tv_sec > 0, "vdso clock_gettime");

	say("done %d\n", failures);
	return failures;
}

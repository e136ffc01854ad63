/*
 * cow-pair: a parent and a child sharing MIB MiB of private anonymous memory copy on write (the
 * program bench/cow-restore.mjs dumps and restores).
 *
 *   cow-pair MIB REPORT_FILE
 *
 * The parent fills the mapping (every page distinct and non-zero), forks, and the child rewrites
 * one page in 64. Both write "ready <parent> <child>" (the parent, once the child is done) and
 * sleep in sigsuspend(); on SIGUSR1 each checksums its mapping and appends "check <pid> <sum>",
 * the same before a dump and after a restore only if the memory came through intact.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

#define PAGE 4096

static volatile sig_atomic_t check_requested;
static void on_usr1(int sig) { (void)sig; check_requested = 1; }

static uint64_t checksum(const uint64_t *p, size_t words)
{
	uint64_t sum = 0;
	for (size_t i = 0; i < words; i++)
		sum = (sum ^ p[i]) * 0x100000001b3ull;
	return sum;
}

static void fill(uint64_t *p, size_t pages, size_t from, size_t step, uint64_t seed)
{
	for (size_t i = from; i < pages; i += step)
		for (size_t w = 0; w < PAGE / 8; w++)
			p[i * (PAGE / 8) + w] = ((uint64_t)i << 32 | w) * 0x9e3779b97f4a7c15ull + seed;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	size_t pages = (size_t)atoi(argv[1]) * 256;
	int report = open(argv[2], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	uint64_t *mem = mmap(NULL, pages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	int done[2];
	if (report < 0 || mem == MAP_FAILED || pipe(done) < 0)
		return 99;
	struct sigaction sa = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &sa, NULL);
	sigset_t usr1, old;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	sigprocmask(SIG_BLOCK, &usr1, &old);
	fill(mem, pages, 0, 1, 1);
	pid_t parent = getpid();
	pid_t child = fork();
	if (child < 0)
		return 99;
	if (child == 0) {
		fill(mem, pages, 7, 64, 2);
		close(done[1]);
	} else {
		char c;
		close(done[1]);
		if (read(done[0], &c, 1) != 0)
			return 99;
		dprintf(report, "ready %d %d\n", parent, child);
	}
	close(done[0]);
	for (;;) {
		while (!check_requested)
			sigsuspend(&old);
		check_requested = 0;
		dprintf(report, "check %d %016llx\n", getpid(), (unsigned long long)checksum(mem, pages * PAGE / 8));
	}
}

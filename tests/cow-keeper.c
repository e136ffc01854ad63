/*
 * cow-keeper: private memory that a parent and its children still share copy on write after
 * fork, which a restore must give back with each process's own contents and, where they are
 * equal, as the same physical pages.
 *
 *   cow-keeper REPORT_FILE [WORK_DIR]
 *
 *   R   slot 0  the root: maps BUF (64 MiB private anonymous) and GROW (8 MiB private
 *       |       anonymous, then an 8 MiB PROT_NONE reservation right after it), writes both and
 *       |       the 16 pages of DATA (a global in .data: a private file mapping of the program),
 *       |       then forks C1 and C2; afterwards it rewrites BUF pages i % 64 == 3 and the
 *       |       first page of DATA2 (another global in .data, still the file's in the others)
 *       |-- C1  slot 1  rewrites BUF pages i % 64 == 5 and DATA page 3, unmaps BUF page 0 (its
 *       |               BUF is then a part of R's), then forks G
 *       |   `-- G   slot 2  rewrites BUF pages i % 64 == 11
 *       `-- C2  slot 3  rewrites BUF pages i % 64 == 7, drops pages i % 64 == 9 (MADV_DONTNEED:
 *                       zeros again, and never read: they stay out of memory, and out of
 *                       the images), and grows GROW in place to 16 MiB over the reservation
 *                       (munmap + mremap), writing the new half
 *
 * Every other page is still the one R wrote, shared by all four. A page's contents are
 * "generation" words: word w of page i of generation g is (i << 32 | w) * K + g.
 *
 * Writes "layout BUF PAGES GROW DATA DATA2" (hex addresses, BUF's page count), then "ready R C1 G C2"
 * (the pids). On SIGUSR1, R starts a check round: every process checks its pid, parent and
 * contents, then writes its own value into BUF page 1 (shared by all before), waits until every
 * process has, and checks that it still sees its own (writes stay private); then puts the page
 * back. Lines: "ok <slot> <what>" or "FAIL <slot> <what>", then "done <failures>" from R.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <sys/mman.h>
#include <time.h>

#include "keeper.h"

#define NPROC 4
#define PAGE 4096
#define BUF_PAGES (64 * 256)
#define GROW_PAGES (8 * 256)
#define DATA_PAGES 16
#define WORDS (PAGE / 8)

enum { R, C1, G, C2 };
static const int parent_of[NPROC] = { -1, R, C1, R };

struct shared {
	volatile int pid[NPROC];
	volatile int ready[NPROC];
	volatile int round;
	volatile int wrote[NPROC];
	volatile int checked[NPROC];
	volatile int failures;
};

static struct shared *sh;
static uint64_t *buf;
static uint64_t *grow;
static uint64_t data_area[DATA_PAGES * WORDS] __attribute__((aligned(PAGE))) = { 1 };
static uint64_t data2[WORDS] __attribute__((aligned(PAGE))) = { 2 };
static int slot;

static uint64_t word(size_t page, size_t w, uint64_t gen)
{
	return ((uint64_t)page << 32 | w) * 0x9e3779b97f4a7c15ull + gen;
}

static void fill(uint64_t *area, size_t page, uint64_t gen)
{
	for (size_t w = 0; w < WORDS; w++)
		area[page * WORDS + w] = word(page, w, gen);
}

static int page_is(const uint64_t *area, size_t page, uint64_t gen)
{
	for (size_t w = 0; w < WORDS; w++)
		if (area[page * WORDS + w] != word(page, w, gen))
			return 0;
	return 1;
}

/* Whether no mapping holds the page (mincore(2) fails with ENOMEM on an unmapped range). */
static int unmapped(const uint64_t *area, size_t page)
{
	unsigned char vec;
	return mincore((void *)(area + page * WORDS), PAGE, &vec) < 0 && errno == ENOMEM;
}

/* Whether the page is in memory (or swapped): bits 63 and 62 of /proc/self/pagemap. */
static int present(const uint64_t *area, size_t page)
{
	static int fd = -1;
	uint64_t entry = 0;
	if (fd < 0)
		fd = open("/proc/self/pagemap", O_RDONLY | O_CLOEXEC);
	off_t at = (off_t)((uintptr_t)(area + page * WORDS) / PAGE * 8);
	if (fd < 0 || pread(fd, &entry, 8, at) != 8)
		return 1;
	return (entry >> 62) != 0;
}

#define DROPPED (~0ull)
#define UNMAPPED (~1ull)

/* The generation page i of BUF holds in `s`'s memory; DROPPED: zeros, not in memory. */
static uint64_t buf_gen(int s, size_t i)
{
	if (i == 0 && (s == C1 || s == G))
		return UNMAPPED;
	switch (i % 64) {
	case 3: return s == R ? 1 : 0;
	case 5: return s == C1 || s == G ? 2 : 0;
	case 7: return s == C2 ? 3 : 0;
	case 9: return s == C2 ? DROPPED : 0;
	case 11: return s == G ? 4 : 0;
	default: return 0;
	}
}

#define SCHECK(cond, ...)                                                     \
	do {                                                                  \
		int good_ = (cond);                                           \
		char what_[300];                                              \
		snprintf(what_, sizeof(what_), __VA_ARGS__);                  \
		if (!good_)                                                   \
			__atomic_add_fetch(&sh->failures, 1, __ATOMIC_SEQ_CST); \
		say("%s %d %s\n", good_ ? "ok" : "FAIL", slot, what_);       \
	} while (0)

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static int wait_all(volatile int *flags, int value)
{
	for (int i = 0; i < 4000; i++) {
		int all = 1;
		for (int s = 0; s < NPROC; s++)
			if (__atomic_load_n(&flags[s], __ATOMIC_SEQ_CST) != value)
				all = 0;
		if (all)
			return 1;
		sleep_ms(1);
	}
	return 0;
}

static void check_self(int round)
{
	SCHECK(sh->pid[slot] == getpid(), "pid %d", getpid());
	if (parent_of[slot] >= 0)
		SCHECK(getppid() == sh->pid[parent_of[slot]], "parent %d (want %d)", getppid(), sh->pid[parent_of[slot]]);
	size_t bad = 0, first = 0;
	for (size_t i = 0; i < BUF_PAGES; i++) {
		uint64_t gen = buf_gen(slot, i);
		/* A dropped page is checked without reading it: a read would fault one in. */
		int good = gen == UNMAPPED ? unmapped(buf, i) : gen == DROPPED ? !present(buf, i) : page_is(buf, i, gen);
		if (!good && bad++ == 0)
			first = i;
	}
	SCHECK(bad == 0, "64 MiB buffer: %zu pages wrong (first %zu)", bad, first);
	size_t grow_pages = slot == C2 ? 2 * GROW_PAGES : GROW_PAGES;
	bad = 0;
	for (size_t i = 0; i < grow_pages; i++)
		if (!page_is(grow, i, i < GROW_PAGES ? 10 : 11))
			bad++;
	SCHECK(bad == 0, "grown area (%zu pages): %zu wrong", grow_pages, bad);
	bad = 0;
	for (size_t i = 0; i < DATA_PAGES; i++)
		if (!page_is(data_area, i, i == 3 && (slot == C1 || slot == G) ? 21 : 20))
			bad++;
	SCHECK(bad == 0, ".data pages: %zu wrong", bad);
	/* R's copy, or the program file's page (its initializer: 2, then zeros). */
	int data2_ok = slot == R ? page_is(data2, 0, 23) : data2[0] == 2;
	for (size_t w = 1; slot != R && w < WORDS; w++)
		data2_ok &= data2[w] == 0;
	SCHECK(data2_ok, ".data page written by R after fork");

	/* Writes stay private: everyone writes page 1, then each must still see its own. */
	fill(buf, 1, 100 + slot);
	__atomic_store_n(&sh->wrote[slot], round, __ATOMIC_SEQ_CST);
	SCHECK(wait_all(sh->wrote, round), "every process wrote page 1 in round %d", round);
	SCHECK(page_is(buf, 1, 100 + slot), "page 1 holds its own write");
	fill(buf, 1, 0);
	__atomic_store_n(&sh->checked[slot], round, __ATOMIC_SEQ_CST);
}

static void serve(void)
{
	for (;;) {
		if (check_requested) {
			check_requested = 0;
			if (slot == R) {
				int round = sh->round + 1;
				sh->round = round;
				for (int s = 1; s < NPROC; s++)
					kill(sh->pid[s], SIGUSR1);
				check_self(round);
				SCHECK(wait_all(sh->checked, round), "every process checked round %d", round);
				say("done %d\n", sh->failures);
			} else {
				check_self(sh->round);
			}
		}
		sleep_ms(5);
	}
}

static void become(int s)
{
	slot = s;
	sh->pid[s] = getpid();
}

static pid_t spawn(int s, void (*setup)(void))
{
	pid_t pid = fork();
	MUST(pid);
	if (pid == 0) {
		become(s);
		setup();
		__atomic_store_n(&sh->ready[s], 1, __ATOMIC_SEQ_CST);
		serve();
	}
	return pid;
}

static void setup_g(void)
{
	for (size_t i = 11; i < BUF_PAGES; i += 64)
		fill(buf, i, 4);
}

static void setup_c1(void)
{
	for (size_t i = 5; i < BUF_PAGES; i += 64)
		fill(buf, i, 2);
	fill(data_area, 3, 21);
	MUST(munmap(buf, PAGE));
	spawn(G, setup_g);
}

static void setup_c2(void)
{
	for (size_t i = 7; i < BUF_PAGES; i += 64)
		fill(buf, i, 3);
	for (size_t i = 9; i < BUF_PAGES; i += 64)
		MUST(madvise(buf + i * WORDS, PAGE, MADV_DONTNEED));
	MUST(munmap(grow + GROW_PAGES * WORDS, GROW_PAGES * PAGE));
	void *grown = mremap(grow, GROW_PAGES * PAGE, 2 * GROW_PAGES * PAGE, 0);
	MUST(grown == MAP_FAILED ? -1 : 0);
	for (size_t i = GROW_PAGES; i < 2 * GROW_PAGES; i++)
		fill(grow, i, 11);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s REPORT_FILE [WORK_DIR]\n", argv[0]);
		return 2;
	}
	if (keeper_open_report(argv[1]) < 0)
		return 99;
	struct sigaction sa = { .sa_handler = on_usr1 };
	MUST(sigaction(SIGUSR1, &sa, NULL));
	void *p = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	MUST(p == MAP_FAILED ? -1 : 0);
	sh = p;
	p = mmap(NULL, (size_t)BUF_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	MUST(p == MAP_FAILED ? -1 : 0);
	buf = p;
	/* GROW and its reservation: one mapping first, so that nothing else lands in between. */
	p = mmap(NULL, 2 * GROW_PAGES * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	MUST(p == MAP_FAILED ? -1 : 0);
	grow = p;
	MUST(mprotect(grow + GROW_PAGES * WORDS, GROW_PAGES * PAGE, PROT_NONE));
	become(R);
	for (size_t i = 0; i < BUF_PAGES; i++)
		fill(buf, i, 0);
	for (size_t i = 0; i < GROW_PAGES; i++)
		fill(grow, i, 10);
	for (size_t i = 0; i < DATA_PAGES; i++)
		fill(data_area, i, 20);

	spawn(C1, setup_c1);
	spawn(C2, setup_c2);
	for (size_t i = 3; i < BUF_PAGES; i += 64)
		fill(buf, i, 1);
	fill(data2, 0, 23);
	for (int s = 1; s < NPROC; s++)
		while (!__atomic_load_n(&sh->ready[s], __ATOMIC_SEQ_CST))
			sleep_ms(1);
	say("layout %lx %d %lx %lx %lx\n", (unsigned long)buf, BUF_PAGES, (unsigned long)grow, (unsigned long)data_area, (unsigned long)data2);
	say("ready %d %d %d %d\n", sh->pid[R], sh->pid[C1], sh->pid[G], sh->pid[C2]);
	serve();
}

/*
 * invariant-keeper: rewrites blocks of memory without pause while keeping an invariant over
 * them, for the soak test (many dumps with --leave-running, some of them restored).
 *
 *   invariant-keeper REPORT_FILE
 *
 * BLOCKS blocks of 16 KiB in one anonymous mapping. Block i is { u32 gen; u32 sum; u32
 * data[4094] }. A rewrite of block i makes gen odd (in progress), fills data[j] =
 * word(i, gen, j), stores sum = checksum(data), then makes gen even again; the stores are kept
 * in that order (signal fences: a ptrace stop, like a signal, lands between two instructions).
 * The invariant, true at every instruction boundary: at most one block has an odd gen, and
 * every block with an even gen holds exactly word(i, gen, j) and its checksum. A dump taken at
 * any moment must show it (tests check the pages in the images), and so must a restored process.
 *
 * Writes "ready <pid> <address in hex> <blocks> <block bytes>" to REPORT_FILE, then rewrites
 * blocks forever. On SIGUSR1 (looked at between two rewrites) it checks every block and appends
 * "check <bad blocks> <rewrites so far>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define BLOCKS 128
#define BLOCK_BYTES 16384
#define WORDS (BLOCK_BYTES / 4 - 2)

struct block {
	volatile uint32_t gen;
	uint32_t sum;
	uint32_t data[WORDS];
};

static volatile sig_atomic_t check_requested;
static void on_usr1(int sig) { check_requested = 1; }

/* The same function in packages/core/test (invariantWord): keep them equal. */
static uint32_t word(uint32_t i, uint32_t gen, uint32_t j)
{
	uint32_t h = (i * 0x9e3779b1u) ^ (gen * 0x85ebca6bu) ^ (j * 0xc2b2ae35u);
	h ^= h >> 16;
	h *= 0x7feb352du;
	h ^= h >> 15;
	return h;
}

static uint32_t checksum(const uint32_t *data)
{
	uint32_t s = 0;
	for (uint32_t j = 0; j < WORDS; j++)
		s = (s + (data[j] ^ j)) * 31u;
	return s;
}

static int block_ok(const struct block *b, uint32_t i)
{
	if (b->gen & 1)
		return 0;
	for (uint32_t j = 0; j < WORDS; j++)
		if (b->data[j] != word(i, b->gen, j))
			return 0;
	return b->sum == checksum(b->data);
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	close_range(3, ~0U, 0);
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return 3;
	struct block *blocks = mmap(NULL, (size_t)BLOCKS * BLOCK_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (blocks == MAP_FAILED)
		return 4;
	for (uint32_t i = 0; i < BLOCKS; i++) {
		for (uint32_t j = 0; j < WORDS; j++)
			blocks[i].data[j] = word(i, 0, j);
		blocks[i].sum = checksum(blocks[i].data);
	}
	struct sigaction sa = { .sa_handler = on_usr1, .sa_flags = SA_RESTART };
	sigemptyset(&sa.sa_mask);
	sigaction(SIGUSR1, &sa, NULL);

	char line[160];
	int n = snprintf(line, sizeof(line), "ready %d %lx %d %d\n", (int)getpid(), (unsigned long)blocks, BLOCKS, BLOCK_BYTES);
	if (write(fd, line, (size_t)n) != n)
		return 5;
	uint64_t rewrites = 0;
	uint32_t next = 0;
	for (;;) {
		if (check_requested) {
			check_requested = 0;
			int bad = 0;
			for (uint32_t i = 0; i < BLOCKS; i++)
				bad += !block_ok(&blocks[i], i);
			n = snprintf(line, sizeof(line), "check %d %llu\n", bad, (unsigned long long)rewrites);
			if (write(fd, line, (size_t)n) != n)
				return 5;
		}
		next = (next * 1103515245u + 12345u);
		uint32_t i = (next >> 8) % BLOCKS;
		struct block *b = &blocks[i];
		uint32_t gen = b->gen + 1;
		b->gen = gen; /* odd: in progress */
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		for (uint32_t j = 0; j < WORDS; j++)
			b->data[j] = word(i, gen + 1, j);
		b->sum = checksum(b->data);
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		b->gen = gen + 1; /* even: done */
		__atomic_signal_fence(__ATOMIC_SEQ_CST);
		rewrites++;
	}
}

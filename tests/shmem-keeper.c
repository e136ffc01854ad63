/*
 * shmem-keeper: memory shared through files that live in memory (memfd, /dev/shm), which a
 * checkpoint must give back as the same shared objects, not as copies.
 *
 *   shmem-keeper REPORT_FILE WORK_DIR SHM_PATH
 *
 * Sets up, then forks a child that inherits every mapping below and mirrors 32 "echo" bytes of
 * A, C and F from offset 0 to offset 64 of their echo areas, forever (so that the parent sees
 * the child's writes only if both map one object). Reports "child <pid>", then "ready <pid>";
 * on SIGUSR1 checks and reports (see keeper.h).
 *
 *   A  memfd "map-with-fd": 3 pages MAP_SHARED, its fd kept open, sealed F_SEAL_GROW|SHRINK;
 *      page 0 written through the fd, page 1 through the mapping, page 2 the echo area
 *   B  memfd "private-map": 2 pages MAP_PRIVATE, fd closed; page 1 copied on write
 *   C  memfd "map-only": 1 page MAP_SHARED, fd closed; echo area at 1024
 *   D  memfd "future-sealed": 1 page MAP_SHARED writable, then F_SEAL_FUTURE_WRITE (the
 *      mapping stays writable, write() is refused: restore must seal after mapping)
 *   E  SHM_PATH: 1 page MAP_SHARED, no fd; the file stays
 *   F  SHM_PATH.gone: 2 pages MAP_SHARED, no fd, deleted while mapped; page 1 the echo area
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "keeper.h"

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

#define PAGE 4096
#define ECHO 32

static uint8_t pattern(size_t i, unsigned seed) { return (uint8_t)(i * 13 + seed); }

static void fill(uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		p[i] = pattern(i, seed);
}

static int pattern_ok(const uint8_t *p, size_t n, unsigned seed)
{
	for (size_t i = 0; i < n; i++)
		if (p[i] != pattern(i, seed))
			return 0;
	return 1;
}

static void *map_or_die(size_t len, int prot, int flags, int fd)
{
	void *p = mmap(NULL, len, prot, flags, fd, 0);
	if (p == MAP_FAILED) {
		dprintf(report_fd, "setup failed: mmap: %s\n", strerror(errno));
		_exit(99);
	}
	return p;
}

/* /proc/self/map_files/START-END of the mapping at p. */
static void map_file_of(void *p, size_t len, char *out, size_t size)
{
	snprintf(out, size, "/proc/self/map_files/%lx-%lx", (unsigned long)p, (unsigned long)p + len);
}

static void child_loop(uint8_t *a_echo, uint8_t *c_echo, uint8_t *f_echo)
{
	prctl(PR_SET_PDEATHSIG, SIGKILL);
	for (;;) {
		uint8_t *areas[] = { a_echo, c_echo, f_echo };
		for (int i = 0; i < 3; i++)
			if (memcmp(areas[i], areas[i] + 64, ECHO) != 0)
				memcpy(areas[i] + 64, areas[i], ECHO);
		usleep(1000);
	}
}

/* Writes a fresh token with `put`, then waits (up to 2 s) for the child to mirror it (`get`). */
static int echoed(const char *what, void (*put)(const char *), void (*get)(char *))
{
	static int serial;
	char token[ECHO] = { 0 }, back[ECHO] = { 0 };
	snprintf(token, sizeof(token), "%s-%d-%ld", what, ++serial, (long)time(NULL));
	put(token);
	for (int i = 0; i < 2000; i++) {
		get(back);
		if (memcmp(back, token, ECHO) == 0)
			return 1;
		usleep(1000);
	}
	return 0;
}

static int fd_a;
static uint8_t *map_a, *map_c, *map_f;
static void put_a(const char *t) { (void)!pwrite(fd_a, t, ECHO, 2 * PAGE); }
static void get_a(char *b) { (void)!pread(fd_a, b, ECHO, 2 * PAGE + 64); }
static void put_c(const char *t) { memcpy(map_c + 1024, t, ECHO); }
static void get_c(char *b) { memcpy(b, map_c + 1024 + 64, ECHO); }
static void put_f(const char *t) { memcpy(map_f + PAGE, t, ECHO); }
static void get_f(char *b) { memcpy(b, map_f + PAGE + 64, ECHO); }

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: %s REPORT_FILE WORK_DIR SHM_PATH\n", argv[0]);
		return 2;
	}
	if (keeper_open_report(argv[1]) < 0 || chdir(argv[2]) < 0)
		return 3;
	const char *shm_path = argv[3];
	char gone_path[4096];
	snprintf(gone_path, sizeof(gone_path), "%s.gone", shm_path);
	uint8_t page[PAGE];

	/* A */
	fd_a = memfd_create("map-with-fd", MFD_ALLOW_SEALING);
	MUST(fd_a);
	fill(page, PAGE, 1);
	MUST(write(fd_a, page, PAGE));
	MUST(ftruncate(fd_a, 3 * PAGE));
	map_a = map_or_die(3 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_a);
	fill(map_a + PAGE, PAGE, 2);
	MUST(fcntl(fd_a, F_ADD_SEALS, F_SEAL_GROW | F_SEAL_SHRINK));

	/* B */
	int fd_b = memfd_create("private-map", 0);
	MUST(fd_b);
	uint8_t two[2 * PAGE];
	fill(two, sizeof(two), 5);
	MUST(write(fd_b, two, sizeof(two)));
	uint8_t *map_b = map_or_die(2 * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd_b);
	fill(map_b + PAGE, PAGE, 9);
	close(fd_b);

	/* C */
	int fd_c = memfd_create("map-only", 0);
	MUST(fd_c);
	MUST(ftruncate(fd_c, PAGE));
	map_c = map_or_die(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_c);
	strcpy((char *)map_c, "hello C");
	close(fd_c);

	/* D */
	int fd_d = memfd_create("future-sealed", MFD_ALLOW_SEALING);
	MUST(fd_d);
	MUST(ftruncate(fd_d, PAGE));
	uint8_t *map_d = map_or_die(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_d);
	fill(map_d, 512, 3);
	MUST(fcntl(fd_d, F_ADD_SEALS, F_SEAL_FUTURE_WRITE));

	/* E */
	int fd_e = open(shm_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	MUST(fd_e);
	MUST(ftruncate(fd_e, PAGE));
	uint8_t *map_e = map_or_die(PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_e);
	close(fd_e);
	fill(map_e, PAGE, 4);

	/* F */
	int fd_f = open(gone_path, O_RDWR | O_CREAT | O_TRUNC | O_CLOEXEC, 0600);
	MUST(fd_f);
	MUST(ftruncate(fd_f, 2 * PAGE));
	map_f = map_or_die(2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED, fd_f);
	close(fd_f);
	fill(map_f, PAGE, 6);
	MUST(unlink(gone_path));

	pid_t child = fork();
	MUST(child);
	if (child == 0)
		child_loop(map_a + 2 * PAGE, map_c + 1024, map_f + PAGE);

	signal(SIGUSR1, on_usr1);
	say("child %d\n", child);
	say("ready %d\n", getpid());
	while (!check_requested)
		usleep(1000);

	char path[256], link[512];
	struct stat st, st2;
	uint8_t buf[PAGE];

	/* A: contents, one inode behind fd and mapping, seals, name, the child's mapping too. */
	CHECK(pattern_ok(map_a, PAGE, 1) && pattern_ok(map_a + PAGE, PAGE, 2), "memfd A contents through the mapping");
	CHECK(pread(fd_a, buf, PAGE, PAGE) == PAGE && pattern_ok(buf, PAGE, 2), "memfd A page written through the mapping reads through the fd");
	map_file_of(map_a, 3 * PAGE, path, sizeof(path));
	CHECK(fstat(fd_a, &st) == 0 && stat(path, &st2) == 0 && st.st_ino == st2.st_ino && st.st_size == 3 * PAGE, "memfd A fd and mapping are one inode");
	CHECK(pwrite(fd_a, "via-fd", 6, 100) == 6 && memcmp(map_a + 100, "via-fd", 6) == 0, "memfd A write through the fd seen in the mapping");
	memcpy(map_a + 200, "via-map", 7);
	CHECK(pread(fd_a, buf, 7, 200) == 7 && memcmp(buf, "via-map", 7) == 0, "memfd A write through the mapping seen through the fd");
	CHECK(fcntl(fd_a, F_GET_SEALS) == (F_SEAL_GROW | F_SEAL_SHRINK), "memfd A seals");
	memset(link, 0, sizeof(link));
	CHECK(readlink(path, link, sizeof(link) - 1) > 0 && strcmp(link, "/memfd:map-with-fd (deleted)") == 0, "memfd A name (%s)", link);
	CHECK(echoed("A", put_a, get_a), "memfd A shared with the child (written through the fd, mirrored by the child's mapping)");

	/* B: the file's pages and the task's own copy; writes stay private. */
	CHECK(pattern_ok(map_b, PAGE, 5) && pattern_ok(map_b + PAGE, PAGE, 9), "memfd B private mapping: file page and copied-on-write page");
	map_file_of(map_b, 2 * PAGE, path, sizeof(path));
	int reopened = open(path, O_RDONLY);
	CHECK(reopened >= 0 && pread(reopened, buf, PAGE, PAGE) == PAGE && pattern_ok(buf, PAGE, 5), "memfd B file keeps its own page under the copy");
	map_b[0] ^= 0xff;
	CHECK(reopened >= 0 && pread(reopened, buf, 1, 0) == 1 && buf[0] == pattern(0, 5), "memfd B mapping stays private");
	if (reopened >= 0)
		close(reopened);
	memset(link, 0, sizeof(link));
	CHECK(readlink(path, link, sizeof(link) - 1) > 0 && strcmp(link, "/memfd:private-map (deleted)") == 0, "memfd B name (%s)", link);

	/* C */
	CHECK(strcmp((char *)map_c, "hello C") == 0, "memfd C (no fd) contents");
	CHECK(echoed("C", put_c, get_c), "memfd C shared with the child");

	/* D: sealed against new writes after it was mapped writable. */
	CHECK(pattern_ok(map_d, 512, 3), "memfd D contents");
	map_d[1000] = 0x5a;
	CHECK(map_d[1000] == 0x5a, "memfd D mapping still writable");
	int fd_d_now = -1;
	for (int fd = 3; fd < 64; fd++) {
		snprintf(path, sizeof(path), "/proc/self/fd/%d", fd);
		memset(link, 0, sizeof(link));
		if (readlink(path, link, sizeof(link) - 1) > 0 && strcmp(link, "/memfd:future-sealed (deleted)") == 0)
			fd_d_now = fd;
	}
	errno = 0;
	CHECK(fd_d_now == fd_d && fcntl(fd_d, F_GET_SEALS) == F_SEAL_FUTURE_WRITE && pwrite(fd_d, "x", 1, 0) < 0 && errno == EPERM, "memfd D seal F_SEAL_FUTURE_WRITE (fd %d)", fd_d_now);

	/* E: a /dev/shm file, still shared with the file. */
	CHECK(pattern_ok(map_e, PAGE, 4), "/dev/shm file mapping contents");
	memcpy(map_e + 300, "to-the-file", 11);
	int fd_e_now = open(shm_path, O_RDONLY);
	CHECK(fd_e_now >= 0 && pread(fd_e_now, buf, 11, 300) == 11 && memcmp(buf, "to-the-file", 11) == 0, "/dev/shm mapping writes into the file");
	if (fd_e_now >= 0)
		close(fd_e_now);

	/* F: deleted while mapped. */
	CHECK(pattern_ok(map_f, PAGE, 6), "deleted /dev/shm file mapping contents");
	map_file_of(map_f, 2 * PAGE, path, sizeof(path));
	memset(link, 0, sizeof(link));
	CHECK(readlink(path, link, sizeof(link) - 1) > 0 && strstr(link, " (deleted)") && access(gone_path, F_OK) < 0, "deleted /dev/shm file still deleted (%s)", link);
	CHECK(echoed("F", put_f, get_f), "deleted /dev/shm file shared with the child");

	CHECK(kill(child, 0) == 0, "child alive");
	say("done %d\n", failures);
	return failures;
}

/*
 * fill-floor PAGES_FILE: the two plain ways to put a pages file into fresh memory, timed in a
 * fresh process, so that the restore column can be read against what this machine allows.
 * Prints two numbers of milliseconds on one line:
 *   1. pread: map fresh anonymous memory of the file's size, populate it (MADV_POPULATE_WRITE)
 *      and pread the whole file into it in 64 MiB steps (the kernel copies through the new
 *      user addresses: on a shadow-paged VM each page's first write there costs a fault).
 *   2. process_vm_writev: the same fresh memory, unpopulated; the file is pread a 4 MiB chunk at
 *      a time into one reused buffer and written into the memory with process_vm_writev (the
 *      kernel pins the pages and copies through its own mapping), as restore does since
 *      session 7.
 * bench/dump-restore.mjs compiles and runs it beside each restore.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/uio.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

#define CHUNK (4u << 20)

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

static int pread_fully(int fd, char *to, size_t len, off_t at)
{
	for (size_t done = 0; done < len;) {
		ssize_t n = pread(fd, to + done, len - done, at + (off_t)done);
		if (n <= 0)
			return -1;
		done += (size_t)n;
	}
	return 0;
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	int fd = open(argv[1], O_RDONLY | O_CLOEXEC);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) != 0 || st.st_size == 0)
		return 3;
	size_t size = (size_t)st.st_size;

	double start = now_ms();
	char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED || madvise(mem, size, MADV_POPULATE_WRITE) != 0)
		return 4;
	for (size_t done = 0; done < size; done += 64u << 20)
		if (pread_fully(fd, mem + done, size - done < (64u << 20) ? size - done : (64u << 20), (off_t)done) != 0)
			return 5;
	double by_pread = now_ms() - start;
	munmap(mem, size);

	/* The buffer is warmed before the clock starts, as restore's is after its first chunk. */
	char *buffer = mmap(NULL, CHUNK, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (buffer == MAP_FAILED)
		return 4;
	memset(buffer, 0, CHUNK);
	start = now_ms();
	mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (mem == MAP_FAILED)
		return 4;
	for (size_t done = 0; done < size; done += CHUNK) {
		size_t len = size - done < CHUNK ? size - done : CHUNK;
		if (pread_fully(fd, buffer, len, (off_t)done) != 0)
			return 5;
		struct iovec local = { buffer, len }, remote = { mem + done, len };
		if (process_vm_writev(getpid(), &local, 1, &remote, 1, 0) != (ssize_t)len)
			return 6;
	}
	double by_writev = now_ms() - start;
	printf("%.3f %.3f\n", by_pread, by_writev);
	return 0;
}

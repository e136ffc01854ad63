/*
 * fill-floor PAGES_FILE: the least any restorer does with a pages file, timed in a fresh process:
 * map fresh anonymous memory of the file's size, populate it (MADV_POPULATE_WRITE) and pread the
 * whole file into it in 64 MiB steps. Prints the milliseconds. bench/dump-restore.mjs compiles and
 * runs it beside each restore, so the restore column can be read against what this machine's
 * memory allows (on a VM, first writes to fresh guest memory can dominate).
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdio.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
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
	for (size_t done = 0; done < size;) {
		size_t step = size - done < (64u << 20) ? size - done : (64u << 20);
		ssize_t n = pread(fd, mem + done, step, (off_t)done);
		if (n <= 0)
			return 5;
		done += (size_t)n;
	}
	printf("%.3f\n", now_ms() - start);
	return 0;
}

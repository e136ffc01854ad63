/*
 * run-clean: runs a program with no descriptor above 2, whatever the caller leaked to it.
 *
 *   run-clean PROGRAM [ARGS...]
 *
 * Test runners and shells leave pipes and sockets open in their children (a pipe at fd 251 here,
 * others in CI). A program that cannot close them itself (node: its own event loop's fds are
 * indistinguishable from leaked ones once it runs) is started through this, so that the fd table
 * a test dumps is the program's own.
 */
#define _GNU_SOURCE
#include <stdio.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: run-clean PROGRAM [ARGS...]\n");
		return 2;
	}
	for (int fd = 3; fd < 65536; fd++)
		close(fd);
	execvp(argv[1], argv + 1);
	perror(argv[1]);
	return 127;
}

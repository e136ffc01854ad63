/*
 * fork-storm: a process tree that never stops changing, for freezing under pressure.
 *
 *   fork-storm REPORT_FILE
 *
 * The root forks a child every millisecond or so and reaps whatever exited; each child forks
 * one grandchild, and both exit a few milliseconds later. Writes "ready <pid>" once, then
 * keeps a counter of forks in a shared page; "alive <forks>" is appended on SIGUSR1.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t report_requested;
static void on_usr1(int sig) { (void)sig; report_requested = 1; }

static void sleep_us(long us)
{
	struct timespec ts = { us / 1000000, (us % 1000000) * 1000 };
	nanosleep(&ts, NULL);
}

int main(int argc, char **argv)
{
	if (argc != 2)
		return 2;
	DIR *d = opendir("/proc/self/fd");
	if (d) {
		int keep = dirfd(d);
		struct dirent *e;
		while ((e = readdir(d)))
			if (atoi(e->d_name) > 2 && atoi(e->d_name) != keep)
				close(atoi(e->d_name));
		closedir(d);
	}
	int report = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	if (report < 0)
		return 2;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	char line[64];
	int n = snprintf(line, sizeof(line), "ready %d\n", getpid());
	if (write(report, line, n) != n)
		return 2;
	long forks = 0;
	for (;;) {
		pid_t child = fork();
		if (child == 0) {
			signal(SIGUSR1, SIG_DFL);
			if (fork() == 0) {
				sleep_us(2000);
				_exit(0);
			}
			sleep_us(3000);
			_exit(0); /* the grandchild goes to the subreaper (the test) or init */
		}
		if (child > 0)
			forks++;
		while (waitpid(-1, NULL, WNOHANG) > 0)
			;
		if (report_requested) {
			report_requested = 0;
			n = snprintf(line, sizeof(line), "alive %ld\n", forks);
			if (write(report, line, n) != n)
				return 2;
		}
		sleep_us(1000);
	}
}

/*
 * sigtrap-keeper: a process with a SIGTRAP handler (SA_SIGINFO) and a second thread that blocks
 * SIGTRAP, for the test that a dump (whose remote calls end in trap instructions) and a restore
 * leave both as they were: the kernel resets the disposition of a forced signal that is blocked
 * or ignored, and unblocks it.
 *
 *   sigtrap-keeper REPORT_FILE
 *
 * Writes "ready <pid> <tid>" once set up. On SIGUSR1 it raises SIGTRAP itself (the handler must
 * run) and appends "trap <times the handler ran> <handler still installed 0/1>".
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static volatile sig_atomic_t traps, usr1;
static volatile pid_t worker_tid;

static void on_trap(int sig, siginfo_t *info, void *ctx) { traps++; }
static void on_usr1(int sig) { usr1 = 1; }

static void *worker(void *arg)
{
	sigset_t trap;
	sigemptyset(&trap);
	sigaddset(&trap, SIGTRAP);
	sigaddset(&trap, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &trap, NULL);
	worker_tid = gettid();
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	if (argc < 2)
		return 2;
	close_range(3, ~0U, 0);
	int fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (fd < 0)
		return 3;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_sigaction = on_trap;
	sa.sa_flags = SA_SIGINFO | SA_RESTART;
	sigaction(SIGTRAP, &sa, NULL);
	struct sigaction su = { .sa_handler = on_usr1 };
	sigaction(SIGUSR1, &su, NULL);
	pthread_t t;
	pthread_create(&t, NULL, worker, NULL);
	while (!worker_tid)
		usleep(1000);
	dprintf(fd, "ready %d %d\n", getpid(), (int)worker_tid);
	/* Poll, not pause(): a restored task re-enters the syscall it was dumped in, and a SIGUSR1
	 * that lands just before it re-enters pause() would run the handler and then sleep forever. */
	for (;;) {
		usleep(1000);
		if (usr1) {
			usr1 = 0;
			raise(SIGTRAP);
			struct sigaction now;
			sigaction(SIGTRAP, NULL, &now);
			dprintf(fd, "trap %d %d\n", (int)traps, now.sa_sigaction == on_trap);
		}
	}
}

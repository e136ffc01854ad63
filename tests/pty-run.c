/*
 * pty-run: runs a program as the foreground job of a shell-like session on a new pseudo-terminal,
 * the way an interactive shell runs a command, and records what the program writes to it.
 *
 *   pty-run [--wait] LOG_FILE PROGRAM [ARGS...]
 *
 * Three processes: pty-run itself holds the pty master and copies everything written to the
 * terminal into LOG_FILE; its child plays the shell (a new session with the pty slave as its
 * controlling terminal and on 0/1/2); the shell's child runs PROGRAM in a process group of its
 * own, made the terminal's foreground group. So PROGRAM is not the leader of its session: what
 * criu calls a shell job. The shell lives on when PROGRAM dies (it may be dumped and restored
 * elsewhere), and everything ends after 10 minutes at the latest. With --wait, the shell ends
 * with its job instead, and pty-run exits with the job's status once the terminal is closed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	int wait_job = argc > 1 && strcmp(argv[1], "--wait") == 0;
	if (wait_job) {
		argv++;
		argc--;
	}
	if (argc < 3) {
		fprintf(stderr, "usage: pty-run [--wait] LOG_FILE PROGRAM [ARGS...]\n");
		return 2;
	}
	for (int fd = 3; fd < 1024; fd++)
		close(fd);
	int log = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	int master = posix_openpt(O_RDWR | O_NOCTTY | O_CLOEXEC);
	if (log < 0 || master < 0 || grantpt(master) < 0 || unlockpt(master) < 0)
		return 3;
	const char *slave_path = ptsname(master);
	struct winsize ws = { .ws_row = 24, .ws_col = 80 };
	ioctl(master, TIOCSWINSZ, &ws);

	pid_t shell = fork();
	if (shell == 0) {
		setsid();
		int slave = open(slave_path, O_RDWR);
		if (slave < 0 || ioctl(slave, TIOCSCTTY, 0) < 0)
			_exit(4);
		dup2(slave, 0);
		dup2(slave, 1);
		dup2(slave, 2);
		if (slave > 2)
			close(slave);
		pid_t job = fork();
		if (job == 0) {
			setpgid(0, 0);
			signal(SIGTTOU, SIG_IGN);
			tcsetpgrp(0, getpid());
			signal(SIGTTOU, SIG_DFL);
			execvp(argv[2], argv + 2);
			_exit(127);
		}
		setpgid(job, job);
		if (wait_job) {
			int status;
			if (waitpid(job, &status, 0) < 0)
				_exit(126);
			_exit(WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status));
		}
		/* The shell outlives its job: the job may be dumped and come back somewhere else. */
		signal(SIGHUP, SIG_IGN);
		for (int i = 0; i < 600; i++) {
			while (waitpid(-1, NULL, WNOHANG) > 0)
				;
			sleep(1);
		}
		_exit(0);
	}
	/* Copy what the terminal shows until every slave holder is gone (EIO) or time is up. */
	time_t end = time(NULL) + 600;
	char buf[4096];
	while (time(NULL) < end) {
		ssize_t n = read(master, buf, sizeof(buf));
		if (n > 0) {
			if (write(log, buf, (size_t)n) < 0)
				break;
		} else if (n < 0 && errno == EINTR) {
			continue;
		} else {
			break;
		}
	}
	int status = 0;
	if (!wait_job)
		kill(shell, SIGKILL);
	waitpid(shell, &status, 0);
	return wait_job && WIFEXITED(status) ? WEXITSTATUS(status) : 0;
}

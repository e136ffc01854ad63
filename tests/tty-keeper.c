/*
 * tty-keeper: a program that runs as a shell job on a terminal (see pty-run.c), to show that a
 * dump with --shell-job and a restore with --shell-job give it a working terminal again.
 *
 *   tty-keeper REPORT_FILE WORK_DIR
 *
 * Protocol as tests/state-keeper.c ("ready <pid>", SIGUSR1 -> ok/FAIL lines, "done N"). After
 * SIGUSR1 it checks that 0, 1 and 2 are terminals it can use (tcgetattr, window size), that it
 * leads its own process group inside a session it does not lead, and writes a line with a
 * counter to the terminal.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/ioctl.h>
#include <termios.h>
#include <unistd.h>

#include "keeper.h"


int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	if (keeper_open_report(argv[1]) < 0)
		return 3;
	int report = report_fd;

	int counter = 41;
	signal(SIGUSR1, on_usr1);
	dprintf(1, "tty-keeper %d started on %s\r\n", getpid(), ttyname(1));
	dprintf(report, "ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	struct termios t;
	struct winsize ws;
	CHECK(isatty(0) && isatty(1) && isatty(2), "stdin, stdout and stderr are terminals");
	CHECK(tcgetattr(0, &t) == 0, "tcgetattr");
	CHECK(ioctl(1, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0, "window size");
	CHECK(getpgid(0) == getpid(), "leads its own process group");
	CHECK(getsid(0) != getpid(), "in a session it does not lead (a shell job)");
	counter++;
	CHECK(dprintf(1, "tty-keeper says %d\r\n", counter) > 0, "writes to the terminal");
	dprintf(report, "done %d\n", failures);
	return failures;
}

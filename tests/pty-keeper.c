/*
 * pty-keeper: a process tree holding ptys of its own, to show that they come back from a dump
 * with their indexes, settings, queued bytes and sessions:
 *
 *   pty A  master (fd 10) and slave (fd 11) in the parent: its own termios (no echo, VINTR
 *          moved, ONLCR kept) and window size, with bytes queued both ways: "typed ahead\n" and
 *          an unfinished "half" written on the master and not read on the slave, "printed\n" written on the slave
 *          and not read on the master (which reads it as "printed\r\n");
 *   pty B  master (fd 12, packet mode) in the parent, slave (fd 13, exclusive) in a child that
 *          leads its own session with pty B as controlling terminal and is its foreground group,
 *          with /dev/tty open as fd 15;
 *   pty C  master only (fd 14, non-blocking), never unlocked (locked).
 *
 *   pty-keeper REPORT_FILE WORK_DIR
 *
 * Protocol as tests/state-keeper.c ("ready <pid>", SIGUSR1 -> ok/FAIL lines, "done N"). On
 * SIGUSR1 the parent checks its ptys and the queued bytes, passes the signal to the child, which
 * checks its session and terminal and talks to the parent over pty B, then exits.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/wait.h>
#include <termios.h>
#include <unistd.h>

#include "keeper.h"

#define MA 10
#define SA 11
#define MB 12
#define SB 13
#define MC 14
#define TT 15

/* Reads exactly strlen(want) bytes (waiting up to 2 s) and tells whether they are `want`. */
static int read_expect(int fd, const char *want, const char *what)
{
	char got[256] = "";
	size_t len = strlen(want), have = 0;
	while (have < len) {
		struct pollfd p = { .fd = fd, .events = POLLIN };
		if (poll(&p, 1, 2000) <= 0)
			break;
		ssize_t n = read(fd, got + have, len - have);
		if (n <= 0)
			break;
		have += (size_t)n;
	}
	got[have] = '\0';
	int good = have == len && memcmp(got, want, len) == 0;
	char shown[300];
	size_t j = 0;
	for (size_t i = 0; i < have && j < sizeof(shown) - 5; i++) {
		unsigned char c = (unsigned char)got[i];
		if (c >= 32 && c < 127)
			shown[j++] = (char)c;
		else
			j += (size_t)snprintf(shown + j, sizeof(shown) - j, "\\x%02x", c);
	}
	shown[j] = '\0';
	CHECK(good, "%s (read \"%s\")", what, shown);
	return good;
}

static int pty_index(int master)
{
	int n = -1;
	return ioctl(master, TIOCGPTN, &n) == 0 ? n : -1;
}

static int links_to_pts(int fd, int index)
{
	char link[64], path[64], want[64];
	snprintf(link, sizeof(link), "/proc/self/fd/%d", fd);
	ssize_t l = readlink(link, path, sizeof(path) - 1);
	if (l <= 0)
		return 0;
	path[l] = '\0';
	snprintf(want, sizeof(want), "/dev/pts/%d", index);
	return strcmp(path, want) == 0;
}

static int open_master(int flags, int at)
{
	int m = posix_openpt(O_RDWR | O_NOCTTY | flags);
	MUST(m);
	MUST(dup2(m, at));
	close(m);
	return at;
}

static void child_main(int index_b)
{
	close(MA);
	close(SA);
	close(MC);
	MUST(setsid());
	char name[64];
	MUST(ptsname_r(MB, name, sizeof(name)) == 0 ? 0 : -1);
	int s = open(name, O_RDWR); /* no O_NOCTTY: a session leader without a terminal takes it */
	MUST(s);
	MUST(dup2(s, SB));
	close(s);
	close(MB);
	MUST(ioctl(SB, TIOCSCTTY, 0));
	MUST(tcsetpgrp(SB, getpid()));
	MUST(ioctl(SB, TIOCEXCL));
	int tt = open("/dev/tty", O_RDWR);
	MUST(tt);
	MUST(dup2(tt, TT));
	close(tt);
	struct termios t;
	MUST(tcgetattr(SB, &t));
	t.c_lflag &= ~(tcflag_t)ECHO;
	MUST(tcsetattr(SB, TCSANOW, &t));
	MUST(write(SB, "child ready\n", 12));

	while (!check_requested)
		usleep(1000);
	CHECK(getsid(0) == getpid(), "child: leads its own session");
	CHECK(tcgetsid(SB) == getpid(), "child: pty B is its session's controlling terminal");
	CHECK(tcgetpgrp(SB) == getpid(), "child: its group is pty B's foreground group");
	int tty = open("/dev/tty", O_RDWR);
	CHECK(tty >= 0, "child: /dev/tty opens (it has a controlling terminal)");
	if (tty >= 0)
		close(tty);
	int excl = 0;
	CHECK(ioctl(SB, TIOCGEXCL, &excl) == 0 && excl == 1, "child: pty B's slave is still exclusive");
	CHECK(links_to_pts(SB, index_b), "child: fd %d is /dev/pts/%d again", SB, index_b);
	char link[64] = "";
	ssize_t l = readlink("/proc/self/fd/15", link, sizeof(link) - 1);
	if (l > 0)
		link[l] = '\0';
	CHECK(strcmp(link, "/dev/tty") == 0 && tcgetsid(TT) == getpid(), "child: fd %d is /dev/tty, its controlling terminal (%s)", TT, link);
	CHECK(write(SB, "from child\n", 11) == 11, "child: writes to pty B");
	read_expect(SB, "to child\n", "child: reads what the parent wrote on pty B's master");
	_exit(failures);
}

int main(int argc, char **argv)
{
	if (argc != 3)
		return 2;
	if (keeper_open_report(argv[1]) < 0)
		return 3;

	/* pty A: both ends here. */
	open_master(0, MA);
	MUST(unlockpt(MA));
	char name[64];
	MUST(ptsname_r(MA, name, sizeof(name)) == 0 ? 0 : -1);
	int s = open(name, O_RDWR | O_NOCTTY);
	MUST(s);
	MUST(dup2(s, SA));
	close(s);
	struct termios want;
	MUST(tcgetattr(SA, &want));
	want.c_lflag &= ~(tcflag_t)(ECHO | ECHOE | ECHOK);
	want.c_cc[VINTR] = 0x05;
	want.c_cc[VERASE] = 0x08;
	want.c_oflag |= OPOST | ONLCR;
	MUST(tcsetattr(SA, TCSANOW, &want));
	MUST(tcgetattr(SA, &want));
	struct winsize ws = { .ws_row = 33, .ws_col = 111, .ws_xpixel = 7, .ws_ypixel = 9 };
	MUST(ioctl(MA, TIOCSWINSZ, &ws));
	MUST(write(MA, "typed ahead\nhalf", 16)); /* a line, then a line not finished yet */
	MUST(write(SA, "printed\n", 8));

	/* pty B: master here (packet mode), slave in the child. */
	open_master(0, MB);
	MUST(unlockpt(MB));
	int one = 1;
	MUST(ioctl(MB, TIOCPKT, &one));

	/* pty C: a locked master alone. */
	open_master(O_NONBLOCK, MC);

	int index_a = pty_index(MA), index_b = pty_index(MB), index_c = pty_index(MC);
	signal(SIGUSR1, on_usr1);
	pid_t child = fork();
	MUST(child);
	if (child == 0)
		child_main(index_b);
	/* Packet mode: a 0 status byte before the data. */
	char ready[64];
	struct pollfd p = { .fd = MB, .events = POLLIN };
	MUST(poll(&p, 1, 5000) == 1 ? 0 : -1);
	ssize_t n = read(MB, ready, sizeof(ready));
	MUST(n == 14 && ready[0] == 0 && memcmp(ready + 1, "child ready\r\n", 13) == 0 ? 0 : -1);

	dprintf(report_fd, "ready %d\n", getpid());
	while (!check_requested) /* polled: a restored task re-enters pause() after a signal that came just before */
		usleep(1000);

	CHECK(pty_index(MA) == index_a && links_to_pts(SA, index_a), "pty A has index %d again (master %d, slave fd %d)", index_a, pty_index(MA), SA);
	CHECK(pty_index(MB) == index_b, "pty B has index %d again (%d)", index_b, pty_index(MB));
	CHECK(pty_index(MC) == index_c, "pty C has index %d again (%d)", index_c, pty_index(MC));
	int v = -1;
	CHECK(ioctl(MC, TIOCGPTLCK, &v) == 0 && v == 1, "pty C is still locked");
	CHECK(ioctl(MA, TIOCGPTLCK, &v) == 0 && v == 0, "pty A is unlocked");
	CHECK(ioctl(MB, TIOCGPKT, &v) == 0 && v == 1, "pty B's master is in packet mode");
	CHECK(ioctl(MA, TIOCGPKT, &v) == 0 && v == 0, "pty A's master is not");
	CHECK((fcntl(MC, F_GETFL) & O_NONBLOCK) != 0, "pty C's master is still non-blocking");
	struct termios now;
	memset(&now, 0, sizeof(now));
	int got_termios = tcgetattr(SA, &now) == 0;
	CHECK(got_termios && now.c_iflag == want.c_iflag && now.c_oflag == want.c_oflag && now.c_cflag == want.c_cflag &&
		      now.c_lflag == want.c_lflag && memcmp(now.c_cc, want.c_cc, NCCS) == 0,
	      "pty A's termios as set (lflag %o, VINTR %d)", now.c_lflag, now.c_cc[VINTR]);
	struct winsize w2 = { 0 };
	int got_winsize = ioctl(SA, TIOCGWINSZ, &w2) == 0;
	CHECK(got_winsize && w2.ws_row == 33 && w2.ws_col == 111 && w2.ws_xpixel == 7 && w2.ws_ypixel == 9,
	      "pty A's window size 33x111 (7x9 pixels): %dx%d", w2.ws_row, w2.ws_col);
	read_expect(SA, "typed ahead\n", "pty A: the line queued for the slave is still there");
	read_expect(MA, "printed\r\n", "pty A: the output queued for the master is still there, once");
	CHECK(write(MA, "ping\n", 5) == 5, "pty A: master writes");
	read_expect(SA, "halfping\n", "pty A: slave reads what the master wrote, after the unfinished line");
	CHECK(write(SA, "pong\n", 5) == 5, "pty A: slave writes");
	read_expect(MA, "pong\r\n", "pty A: master reads what the slave wrote");

	kill(child, SIGUSR1);
	/* One status byte (0: data), then the child's line. */
	char pkt[64] = "";
	p.fd = MB;
	int got = 0;
	if (poll(&p, 1, 5000) == 1) {
		ssize_t r = read(MB, pkt, sizeof(pkt) - 1);
		got = r == 13 && pkt[0] == 0 && memcmp(pkt + 1, "from child\r\n", 12) == 0;
	}
	CHECK(got, "pty B: the master reads the child's line in packet mode");
	CHECK(write(MB, "to child\n", 9) == 9, "pty B: the master writes to the child");
	int status = 0;
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0, "the child's checks passed (status 0x%x)", status);
	dprintf(report_fd, "done %d\n", failures);
	return failures;
}

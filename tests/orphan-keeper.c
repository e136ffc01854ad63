/*
 * orphan-keeper: a session and a group whose leaders are gone, to checkpoint and restore.
 *
 *   orphan-keeper REPORT_FILE
 *
 *   R     the root (setsid -f: leader of its session and group), a child subreaper
 *   |-- D1  session D, group D: D called setsid(), forked D1 and exited; R reaped D and D1
 *   |       was re-parented to R (the subreaper). D's PID is free, its session lives on in D1.
 *   `-- G1  session R, group G: G called setpgid(0, 0), forked G1 and exited; R reaped G.
 *
 * Writes "ready R D1 G1 D G" (pids) to REPORT_FILE. On SIGUSR1, R checks itself and sends
 * SIGUSR1 to D1 and G1, which check their pid, parent, session and group; then R writes
 * "done <failures>". Lines: "ok <slot> <what>" or "FAIL <slot> <what>".
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

enum { R, D1, G1, D, G, NSLOT };

struct shared {
	volatile int pid[NSLOT];
	volatile int ready[NSLOT];
	volatile int round;
	volatile int checked[NSLOT];
	volatile int failures;
};

static struct shared *sh;
static int report = -1;
static int slot;
static volatile sig_atomic_t check_requested;

static void on_usr1(int sig)
{
	(void)sig;
	check_requested = 1;
}

static void say(const char *fmt, ...)
{
	char line[256];
	va_list ap;
	va_start(ap, fmt);
	int n = vsnprintf(line, sizeof(line), fmt, ap);
	va_end(ap);
	if (n > (int)sizeof(line) - 1)
		n = sizeof(line) - 1;
	if (write(report, line, n) < 0)
		_exit(100);
}

#define CHECK(cond, ...)                                                        \
	do {                                                                    \
		char what[200];                                                 \
		snprintf(what, sizeof(what), __VA_ARGS__);                      \
		if (cond) {                                                     \
			say("ok %d %s\n", slot, what);                          \
		} else {                                                        \
			__atomic_add_fetch(&sh->failures, 1, __ATOMIC_SEQ_CST); \
			say("FAIL %d %s\n", slot, what);                        \
		}                                                               \
	} while (0)

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void wait_flag(volatile int *flag)
{
	while (!__atomic_load_n(flag, __ATOMIC_SEQ_CST))
		sleep_ms(1);
}

static void check_self(void)
{
	CHECK(getpid() == sh->pid[slot], "pid %d", getpid());
	if (slot == R) {
		int subreaper = 0;
		prctl(PR_GET_CHILD_SUBREAPER, &subreaper);
		CHECK(subreaper == 1, "child subreaper");
		CHECK(getsid(0) == sh->pid[R] && getpgid(0) == sh->pid[R], "leads its session and group");
		return;
	}
	CHECK(getppid() == sh->pid[R], "parent %d is the subreaper %d", getppid(), sh->pid[R]);
	int want_sid = slot == D1 ? sh->pid[D] : sh->pid[R];
	int want_pgid = slot == D1 ? sh->pid[D] : sh->pid[G];
	CHECK(getsid(0) == want_sid, "session %d (want %d, whose leader is gone)", getsid(0), want_sid);
	CHECK(getpgid(0) == want_pgid, "group %d (want %d, whose leader is gone)", getpgid(0), want_pgid);
	CHECK(kill(sh->pid[slot == D1 ? D : G], 0) < 0, "the dead leader %d does not exist", sh->pid[slot == D1 ? D : G]);
}

static void loop(void)
{
	__atomic_store_n(&sh->ready[slot], 1, __ATOMIC_SEQ_CST);
	for (;;) {
		while (!check_requested)
			sleep_ms(10);
		check_requested = 0;
		if (slot != R) {
			check_self();
			__atomic_store_n(&sh->checked[slot], sh->round, __ATOMIC_SEQ_CST);
			continue;
		}
		int round = ++sh->round;
		kill(sh->pid[D1], SIGUSR1);
		kill(sh->pid[G1], SIGUSR1);
		check_self();
		for (int waited = 0; waited < 10000 && (sh->checked[D1] != round || sh->checked[G1] != round); waited += 5)
			sleep_ms(5);
		CHECK(sh->checked[D1] == round && sh->checked[G1] == round, "D1 and G1 checked round %d", round);
		say("done %d\n", __atomic_load_n(&sh->failures, __ATOMIC_SEQ_CST));
		__atomic_store_n(&sh->failures, 0, __ATOMIC_SEQ_CST);
	}
}

/* A child that makes a session (setsid) or a group (setpgid), forks `slot_child`, and exits. */
static pid_t leader_then_exit(int leader_slot, int child_slot)
{
	pid_t pid = fork();
	if (pid != 0)
		return pid;
	if (leader_slot == D)
		setsid();
	else
		setpgid(0, 0);
	sh->pid[leader_slot] = getpid();
	if (fork() == 0) {
		slot = child_slot;
		sh->pid[child_slot] = getpid();
		loop();
	}
	wait_flag(&sh->ready[child_slot]);
	_exit(0);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s REPORT_FILE\n", argv[0]);
		return 2;
	}
	DIR *d = opendir("/proc/self/fd");
	if (d) {
		int keep = dirfd(d);
		struct dirent *e;
		while ((e = readdir(d)))
			if (atoi(e->d_name) > 2 && atoi(e->d_name) != keep)
				close(atoi(e->d_name));
		closedir(d);
	}
	report = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0600);
	sh = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (report < 0 || sh == MAP_FAILED) {
		perror("setup");
		return 2;
	}
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);
	/* Orphans come to us, so their sessions and groups outlive their leaders inside the tree. */
	prctl(PR_SET_CHILD_SUBREAPER, 1);
	slot = R;
	sh->pid[R] = getpid();
	pid_t dpid = leader_then_exit(D, D1);
	waitpid(dpid, NULL, 0);
	pid_t gpid = leader_then_exit(G, G1);
	waitpid(gpid, NULL, 0);
	wait_flag(&sh->ready[D1]);
	wait_flag(&sh->ready[G1]);
	say("ready %d %d %d %d %d\n", sh->pid[R], sh->pid[D1], sh->pid[G1], sh->pid[D], sh->pid[G]);
	loop();
	return 0;
}

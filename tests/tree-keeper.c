/*
 * tree-keeper: a 3-level tree of 10 processes to checkpoint and restore.
 *
 *   tree-keeper REPORT_FILE
 *
 *   R   slot 0  the root (started with setsid -f: leader of its session and group)
 *   |-- A   1   setsid(): a session of its own
 *   |   |-- A1  2   setpgid(0, 0): a group of its own inside A's session
 *   |   `-- A2  3   setpgid(0, A1): joins its sibling's group
 *   |-- B   4   setpgid(0, 0): a group of its own in R's session
 *   |   |-- B1  5   stays in B's group
 *   |   `-- B2  6   exits at once with status 7: a zombie B never reaps
 *   `-- C   7   stays in R's group
 *       |-- C1  8   setpgid(0, 0); a second thread counting in a loop
 *       `-- C2  9   setpgid(0, C1)
 *
 * Memory: one MAP_SHARED|MAP_ANONYMOUS area made by R before forking (the table below, seen by
 * everyone), a private page every process overwrites with its own pattern after fork (copy on
 * write: ten distinct pages), and a private page nobody writes after fork (still R's pattern
 * everywhere).
 *
 * Writes "ready R A A1 A2 B B1 B2 C C1 C2" (the pids) to REPORT_FILE once everyone is set up.
 * On SIGUSR1, R starts a check round: it sends SIGUSR1 to every live process; each checks its
 * pid, parent, group, session and memory, and writes a new value into its slot of the shared
 * area; R waits for every slot, then checks that it sees every value the others wrote (the
 * shared area is still one object after a restore). B checks that B2 is still its zombie child
 * with status 7 (waitid WNOWAIT: the zombie stays). Lines: "ok <what>" or "FAIL <slot> <what>",
 * then "done <failures>" from R.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <fcntl.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define NPROC 10
#define PAGE 4096

/* Parent, group leader and session leader of each slot (-1: outside the tree). */
static const int parent_of[NPROC] = { -1, 0, 1, 1, 0, 4, 4, 0, 7, 7 };
static const int group_of[NPROC] = { 0, 1, 2, 2, 4, 4, 4, 0, 8, 8 };
static const int session_of[NPROC] = { 0, 1, 1, 1, 0, 0, 0, 0, 0, 0 };
#define ZOMBIE 6

struct shared {
	volatile int pid[NPROC];
	volatile int ready[NPROC];
	volatile long before[NPROC]; /* written by each process before any dump */
	volatile long after[NPROC];  /* written by each process in a check round */
	volatile int round;          /* the check round R started */
	volatile int checked[NPROC]; /* the round each process finished */
	volatile int failures;
};

static struct shared *sh;
static unsigned char *cow_page;     /* overwritten by every process after fork */
static unsigned char *inherit_page; /* written by R before fork only */
static int report = -1;
static int slot;
static volatile sig_atomic_t check_requested;
static volatile long c1_thread_counter; /* counted by C1's second thread */

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
	/* O_APPEND: one write per line, whole lines whatever the process. */
	if (write(report, line, n) < 0)
		_exit(100);
}

static int failures;
#define CHECK(cond, ...)                                                          \
	do {                                                                      \
		char what[200];                                                   \
		snprintf(what, sizeof(what), __VA_ARGS__);                        \
		if (cond) {                                                       \
			say("ok %d %s\n", slot, what);                          \
		} else {                                                          \
			failures++;                                               \
			__atomic_add_fetch(&sh->failures, 1, __ATOMIC_SEQ_CST);   \
			say("FAIL %d %s\n", slot, what);                        \
		}                                                                 \
	} while (0)

static unsigned char cow_byte(int s)
{
	return (unsigned char)(0x11 + 13 * s);
}

static int page_is(const unsigned char *p, unsigned char byte, long head)
{
	if (*(const long *)p != head)
		return 0;
	for (int i = sizeof(long); i < PAGE; i++)
		if (p[i] != byte)
			return 0;
	return 1;
}

static void sleep_ms(int ms)
{
	struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
	nanosleep(&ts, NULL);
}

static void check_self(int round)
{
	int me = getpid();
	CHECK(sh->pid[slot] == me, "pid %d", me);
	if (parent_of[slot] >= 0)
		CHECK(getppid() == sh->pid[parent_of[slot]], "parent %d (want %d)", getppid(), sh->pid[parent_of[slot]]);
	CHECK(getpgid(0) == sh->pid[group_of[slot]], "group %d (want %d)", getpgid(0), sh->pid[group_of[slot]]);
	CHECK(getsid(0) == sh->pid[session_of[slot]], "session %d (want %d)", getsid(0), sh->pid[session_of[slot]]);
	CHECK(page_is(cow_page, cow_byte(slot), 1000L * slot + me), "own copy-on-write page");
	CHECK(page_is(inherit_page, 0x3c, 424242), "inherited private page");
	CHECK(sh->before[slot] == 1000L * slot + me, "shared slot written before the dump");
	if (slot == 8) {
		long before = __atomic_load_n(&c1_thread_counter, __ATOMIC_SEQ_CST);
		sleep_ms(50);
		CHECK(__atomic_load_n(&c1_thread_counter, __ATOMIC_SEQ_CST) > before, "its second thread runs");
	}
	if (slot == 4) {
		siginfo_t info;
		memset(&info, 0, sizeof(info));
		int rc = waitid(P_PID, sh->pid[ZOMBIE], &info, WEXITED | WNOHANG | WNOWAIT);
		CHECK(rc == 0 && info.si_pid == sh->pid[ZOMBIE] && info.si_code == CLD_EXITED && info.si_status == 7,
		      "zombie child %d exited with 7 (rc %d pid %d code %d status %d)", sh->pid[ZOMBIE], rc, info.si_pid, info.si_code,
		      info.si_status);
	}
	/* A new value in the shared area, for R to read: written after the restore, by this process. */
	sh->after[slot] = 100000L * round + me;
	__atomic_store_n(&sh->checked[slot], round, __ATOMIC_SEQ_CST);
}

static void check_tree(void)
{
	int round = sh->round + 1;
	sh->round = round;
	for (int s = 1; s < NPROC; s++)
		if (s != ZOMBIE)
			kill(sh->pid[s], SIGUSR1);
	check_self(round);
	for (int waited = 0; waited < 10000; waited += 5) {
		int all = 1;
		for (int s = 0; s < NPROC; s++)
			if (s != ZOMBIE && __atomic_load_n(&sh->checked[s], __ATOMIC_SEQ_CST) != round)
				all = 0;
		if (all)
			break;
		sleep_ms(5);
	}
	for (int s = 0; s < NPROC; s++) {
		if (s == ZOMBIE)
			continue;
		CHECK(sh->checked[s] == round, "slot %d checked round %d", s, round);
		CHECK(sh->after[s] == 100000L * round + sh->pid[s], "sees what slot %d wrote in round %d", s, round);
		CHECK(sh->before[s] == 1000L * s + sh->pid[s], "sees what slot %d wrote before the dump", s);
	}
	say("done %d\n", __atomic_load_n(&sh->failures, __ATOMIC_SEQ_CST));
	__atomic_store_n(&sh->failures, 0, __ATOMIC_SEQ_CST);
}

static void become(int s)
{
	slot = s;
	int me = getpid();
	memset(cow_page, cow_byte(s), PAGE);
	*(long *)cow_page = 1000L * s + me;
	sh->pid[s] = me;
	sh->before[s] = 1000L * s + me;
}

static void run(void)
{
	__atomic_store_n(&sh->ready[slot], 1, __ATOMIC_SEQ_CST);
	for (;;) {
		/* Polling with short sleeps: no wake-up can be lost whatever the signal mask. */
		while (!check_requested)
			sleep_ms(10);
		check_requested = 0;
		if (slot == 0)
			check_tree();
		else
			check_self(sh->round);
	}
}

static pid_t spawn(int s, void (*body)(void))
{
	pid_t pid = fork();
	if (pid < 0) {
		perror("fork");
		exit(2);
	}
	if (pid == 0) {
		become(s);
		body();
		run();
	}
	return pid;
}

static void wait_ready(int s)
{
	while (!__atomic_load_n(&sh->ready[s], __ATOMIC_SEQ_CST))
		sleep_ms(1);
}

static void body_a1(void) { setpgid(0, 0); }
static void body_a2(void)
{
	wait_ready(2);
	setpgid(0, sh->pid[2]);
}
static void body_a(void)
{
	setsid();
	spawn(2, body_a1);
	wait_ready(2);
	spawn(3, body_a2);
}
static void body_none(void) {}
static void body_b2(void) { _exit(7); }
static void body_b(void)
{
	setpgid(0, 0);
	spawn(5, body_none);
	pid_t z = spawn(6, body_b2);
	/* Until B2 is a zombie; WNOWAIT leaves it one. */
	siginfo_t info;
	while (waitid(P_PID, z, &info, WEXITED | WNOWAIT) < 0 && errno == EINTR)
		;
	__atomic_store_n(&sh->ready[ZOMBIE], 1, __ATOMIC_SEQ_CST);
}
static void *c1_thread(void *arg)
{
	(void)arg;
	for (;;) {
		__atomic_add_fetch(&c1_thread_counter, 1, __ATOMIC_SEQ_CST);
		sleep_ms(2);
	}
	return NULL;
}
static void body_c1(void)
{
	setpgid(0, 0);
	pthread_t t;
	if (pthread_create(&t, NULL, c1_thread, NULL) != 0)
		_exit(3);
}
static void body_c2(void)
{
	wait_ready(8);
	setpgid(0, sh->pid[8]);
}
static void body_c(void)
{
	spawn(8, body_c1);
	wait_ready(8);
	spawn(9, body_c2);
}

int main(int argc, char **argv)
{
	if (argc != 2) {
		fprintf(stderr, "usage: %s REPORT_FILE\n", argv[0]);
		return 2;
	}
	/* Only what this program opens: the caller may have leaked descriptors to us. */
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
	if (report < 0) {
		perror("open report");
		return 2;
	}
	sh = mmap(NULL, 2 * PAGE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	cow_page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	inherit_page = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (sh == MAP_FAILED || cow_page == MAP_FAILED || inherit_page == MAP_FAILED) {
		perror("mmap");
		return 2;
	}
	memset(inherit_page, 0x3c, PAGE);
	*(long *)inherit_page = 424242;
	struct sigaction sa;
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sigaction(SIGUSR1, &sa, NULL);

	slot = 0;
	sh->pid[0] = getpid();
	spawn(1, body_a);
	spawn(4, body_b);
	spawn(7, body_c);
	become(0);
	for (int s = 0; s < NPROC; s++)
		if (s != 0)
			wait_ready(s);
	char line[160];
	int n = snprintf(line, sizeof(line), "ready");
	for (int s = 0; s < NPROC; s++)
		n += snprintf(line + n, sizeof(line) - n, " %d", sh->pid[s]);
	say("%s\n", line);
	run();
	return 0;
}

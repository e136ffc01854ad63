/*
 * creds-keeper: per-thread credentials and the other per-task state prctl and /proc set, to be
 * checkpointed and restored; then every thread checks its own and the main thread the process's.
 *
 *   creds-keeper REPORT_FILE WORK_DIR
 *
 * Writes "ready <pid> <tid1> <tid2>" when set up. On every SIGUSR1 each thread checks itself and
 * appends "ok"/"FAIL <what>" lines, then the main thread "done <failures>"; it stays alive.
 *
 * Every thread: supplementary groups 1001 1002 1003 (set before the threads exist).
 * M (main): uid 0; capabilities: CAP_SYS_PTRACE permitted but not effective, inheritable
 *    {CHOWN, NET_RAW}, ambient {NET_RAW}, CAP_SYS_BOOT and CAP_MKNOD dropped from the bounding
 *    set; securebits KEEP_CAPS | NO_CAP_AMBIENT_RAISE; SCHED_RR priority 3; pdeath signal SIGWINCH.
 * T1: changed its own ids with raw syscalls (glibc's would change every thread): uids 1000 1001
 *    1002 fs 1000, gids 2000 2001 2002 fs 2003 (so no capabilities left); SCHED_FIFO priority 2
 *    (set while it could); pdeath signal SIGURG.
 * T2: no_new_privs; SCHED_BATCH, nice 7.
 * The process: not dumpable, child subreaper, THP disabled, oom_score_adj 500, personality
 *    ADDR_NO_RANDOMIZE, loginuid 4242 (when this kernel lets the process set it).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <grp.h>
#include <linux/capability.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/syscall.h>
#include <unistd.h>

#include "keeper.h"

#ifndef PR_SET_THP_DISABLE
#define PR_SET_THP_DISABLE 41
#define PR_GET_THP_DISABLE 42
#endif
#define SECBIT_KEEP_CAPS_BIT 0x10
#define SECBIT_NO_CAP_AMBIENT_RAISE_BIT 0x40

static int loginuid_set;

struct caps { unsigned long long eff, prm, inh; };

static struct caps get_caps(void)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = {};
	syscall(SYS_capget, &h, d);
	return (struct caps){
		d[0].effective | (unsigned long long)d[1].effective << 32,
		d[0].permitted | (unsigned long long)d[1].permitted << 32,
		d[0].inheritable | (unsigned long long)d[1].inheritable << 32,
	};
}

static int set_caps(struct caps c)
{
	struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
	struct __user_cap_data_struct d[2] = {
		{ (unsigned)c.eff, (unsigned)c.prm, (unsigned)c.inh },
		{ (unsigned)(c.eff >> 32), (unsigned)(c.prm >> 32), (unsigned)(c.inh >> 32) },
	};
	return (int)syscall(SYS_capset, &h, d);
}

#define BIT(cap) (1ULL << (cap))

/* Checks every thread makes: groups, and its own ids against the expected ones. */
static void check_ids(const char *who, uid_t u[4], gid_t g[4])
{
	uid_t r, e, s;
	gid_t gr, ge, gs;
	getresuid(&r, &e, &s);
	getresgid(&gr, &ge, &gs);
	uid_t fsu = (uid_t)syscall(SYS_setfsuid, -1);
	gid_t fsg = (gid_t)syscall(SYS_setfsgid, -1);
	CHECK(r == u[0] && e == u[1] && s == u[2] && fsu == u[3], "%s: uids %u %u %u fs %u (got %u %u %u %u)\n", who, u[0], u[1], u[2], u[3], r, e, s, fsu);
	CHECK(gr == g[0] && ge == g[1] && gs == g[2] && fsg == g[3], "%s: gids %u %u %u fs %u (got %u %u %u %u)\n", who, g[0], g[1], g[2], g[3], gr, ge, gs, fsg);
	gid_t groups[16];
	int n = getgroups(16, groups);
	CHECK(n == 3 && groups[0] == 1001 && groups[1] == 1002 && groups[2] == 1003, "%s: groups 1001 1002 1003 (%d groups)\n", who, n);
}

static void check_sched(const char *who, int policy, int prio, int nice)
{
	struct sched_param p;
	int got = sched_getscheduler(0);
	sched_getparam(0, &p);
	errno = 0;
	int n = getpriority(PRIO_PROCESS, (id_t)syscall(SYS_gettid));
	CHECK(got == policy && p.sched_priority == prio && n == nice, "%s: scheduling policy %d priority %d nice %d (got %d %d %d)\n", who, policy, prio, nice, got, p.sched_priority, n);
}

static sem_t go[2], finished[2];
static pid_t tids[2];
static unsigned long long full_prm; /* the permitted set the program started with */

static void *t1_main(void *arg)
{
	tids[0] = (pid_t)syscall(SYS_gettid);
	struct sched_param p = { .sched_priority = 2 };
	/* The pdeath signal last: the kernel clears it when the thread's ids change. */
	if (sched_setscheduler(0, SCHED_FIFO, &p) ||
	    syscall(SYS_setresgid, 2000, 2001, 2002) || (syscall(SYS_setfsgid, 2003), 0) ||
	    syscall(SYS_setresuid, 1000, 1001, 1002) || (syscall(SYS_setfsuid, 1000), 0) ||
	    prctl(PR_SET_PDEATHSIG, SIGURG)) {
		say("setup failed: T1 ids: %s\n", strerror(errno));
		_exit(4);
	}
	for (;;) {
		while (sem_wait(&go[0]) < 0)
			;
		uid_t u[4] = { 1000, 1001, 1002, 1000 };
		gid_t g[4] = { 2000, 2001, 2002, 2003 };
		check_ids("T1", u, g);
		struct caps c = get_caps();
		CHECK(c.eff == 0 && c.prm == 0 && c.inh == 0, "T1: no capabilities left (%llx %llx %llx)\n", c.eff, c.prm, c.inh);
		CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_BOOT) == 1, "T1: its bounding set still has CAP_SYS_BOOT (M dropped it for M only)\n");
		int sig = 0;
		prctl(PR_GET_PDEATHSIG, &sig);
		CHECK(sig == SIGURG, "T1: pdeath signal SIGURG (%d)\n", sig);
		CHECK(prctl(PR_GET_NO_NEW_PRIVS) == 0, "T1: no_new_privs unset\n");
		check_sched("T1", SCHED_FIFO, 2, 0);
		sem_post(&finished[0]);
	}
	return NULL;
}

static void *t2_main(void *arg)
{
	tids[1] = (pid_t)syscall(SYS_gettid);
	struct sched_param p = { .sched_priority = 0 };
	if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) || sched_setscheduler(0, SCHED_BATCH, &p) || setpriority(PRIO_PROCESS, (id_t)tids[1], 7)) {
		say("setup failed: T2: %s\n", strerror(errno));
		_exit(4);
	}
	for (;;) {
		while (sem_wait(&go[1]) < 0)
			;
		uid_t u[4] = { 0, 0, 0, 0 };
		gid_t g[4] = { 0, 0, 0, 0 };
		check_ids("T2", u, g);
		CHECK(prctl(PR_GET_NO_NEW_PRIVS) == 1, "T2: no_new_privs set\n");
		struct caps c = get_caps();
		CHECK(c.prm == full_prm && c.eff == full_prm && c.inh == 0, "T2: every capability it started with (%llx %llx %llx)\n", c.eff, c.prm, c.inh);
		check_sched("T2", SCHED_BATCH, 0, 7);
		sem_post(&finished[1]);
	}
	return NULL;
}

static void check(void)
{
	failures = 0;
	uid_t u[4] = { 0, 0, 0, 0 };
	gid_t g[4] = { 0, 0, 0, 0 };
	check_ids("M", u, g);
	struct caps c = get_caps();
	unsigned long long inh = BIT(CAP_CHOWN) | BIT(CAP_NET_RAW);
	CHECK(c.prm == full_prm && c.eff == (full_prm & ~BIT(CAP_SYS_PTRACE)) && c.inh == inh,
	      "M: permitted all, effective all but CAP_SYS_PTRACE, inheritable CHOWN+NET_RAW (%llx %llx %llx)\n", c.eff, c.prm, c.inh);
	CHECK(prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_NET_RAW, 0, 0) == 1 && prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_IS_SET, CAP_CHOWN, 0, 0) == 0,
	      "M: ambient set is CAP_NET_RAW alone\n");
	CHECK(prctl(PR_CAPBSET_READ, CAP_SYS_BOOT) == 0 && prctl(PR_CAPBSET_READ, CAP_MKNOD) == 0 && prctl(PR_CAPBSET_READ, CAP_KILL) == 1,
	      "M: CAP_SYS_BOOT and CAP_MKNOD out of the bounding set, CAP_KILL in\n");
	int bits = prctl(PR_GET_SECUREBITS);
	CHECK(bits == (SECBIT_KEEP_CAPS_BIT | SECBIT_NO_CAP_AMBIENT_RAISE_BIT), "M: securebits KEEP_CAPS|NO_CAP_AMBIENT_RAISE (%#x)\n", bits);
	CHECK(prctl(PR_GET_NO_NEW_PRIVS) == 0, "M: no_new_privs unset\n");
	int sig = 0;
	prctl(PR_GET_PDEATHSIG, &sig);
	CHECK(sig == SIGWINCH, "M: pdeath signal SIGWINCH (%d)\n", sig);
	check_sched("M", SCHED_RR, 3, 0);

	CHECK(prctl(PR_GET_DUMPABLE) == 0, "process not dumpable\n");
	int sub = 0;
	prctl(PR_GET_CHILD_SUBREAPER, &sub);
	CHECK(sub == 1, "process is a child subreaper\n");
	CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP disabled\n");
	CHECK((personality(0xffffffff) & ADDR_NO_RANDOMIZE) != 0, "personality ADDR_NO_RANDOMIZE\n");
	char buf[32] = "";
	int fd = open("/proc/self/oom_score_adj", O_RDONLY);
	if (fd >= 0) {
		if (read(fd, buf, sizeof(buf) - 1) < 0)
			buf[0] = 0;
		close(fd);
	}
	CHECK(atoi(buf) == 500, "oom_score_adj 500 (%d)\n", atoi(buf));
	if (loginuid_set) {
		memset(buf, 0, sizeof(buf));
		fd = open("/proc/self/loginuid", O_RDONLY);
		if (fd >= 0) {
			if (read(fd, buf, sizeof(buf) - 1) < 0)
				buf[0] = 0;
			close(fd);
		}
		CHECK(atoi(buf) == 4242, "loginuid 4242 (%s)\n", buf);
	} else {
		say("ok loginuid not settable on this kernel: not checked\n");
	}
	for (int i = 0; i < 2; i++) {
		sem_post(&go[i]);
		while (sem_wait(&finished[i]) < 0)
			;
	}
	say("done %d\n", failures);
}

static int write_file(const char *path, const char *text)
{
	int fd = open(path, O_WRONLY);
	if (fd < 0)
		return -1;
	int ok = write(fd, text, strlen(text)) == (ssize_t)strlen(text);
	close(fd);
	return ok ? 0 : -1;
}

int main(int argc, char **argv)
{
	if (argc < 3)
		return 2;
	close_range(3, ~0U, 0);
	report_fd = open(argv[1], O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
	if (report_fd < 0 || chdir(argv[2]) < 0)
		return 3;
	signal(SIGUSR1, on_usr1);
	full_prm = get_caps().prm;
	gid_t groups[] = { 1001, 1002, 1003 };
	for (int i = 0; i < 2; i++) {
		sem_init(&go[i], 0, 0);
		sem_init(&finished[i], 0, 0);
	}
	if (setgroups(3, groups) || write_file("/proc/self/oom_score_adj", "500") ||
	    prctl(PR_SET_CHILD_SUBREAPER, 1) || prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0) || personality(ADDR_NO_RANDOMIZE) < 0) {
		say("setup failed: process: %s\n", strerror(errno));
		return 4;
	}
	loginuid_set = write_file("/proc/self/loginuid", "4242") == 0;

	sigset_t usr1, saved;
	sigemptyset(&usr1);
	sigaddset(&usr1, SIGUSR1);
	pthread_sigmask(SIG_BLOCK, &usr1, &saved);
	pthread_t t;
	pthread_create(&t, NULL, t1_main, NULL);
	pthread_create(&t, NULL, t2_main, NULL);
	pthread_sigmask(SIG_SETMASK, &saved, NULL);
	while (!tids[0] || !tids[1])
		usleep(1000);
	usleep(20000); /* both threads done with their own setup */

	struct sched_param p = { .sched_priority = 3 };
	if (sched_setscheduler(0, SCHED_RR, &p) || prctl(PR_SET_PDEATHSIG, SIGWINCH) ||
	    set_caps((struct caps){ full_prm, full_prm, BIT(CAP_CHOWN) | BIT(CAP_NET_RAW) }) ||
	    prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_RAW, 0, 0) ||
	    prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT) || prctl(PR_CAPBSET_DROP, CAP_MKNOD) ||
	    prctl(PR_SET_SECUREBITS, SECBIT_KEEP_CAPS_BIT | SECBIT_NO_CAP_AMBIENT_RAISE_BIT) ||
	    set_caps((struct caps){ full_prm & ~BIT(CAP_SYS_PTRACE), full_prm, BIT(CAP_CHOWN) | BIT(CAP_NET_RAW) }) ||
	    prctl(PR_SET_DUMPABLE, 0)) {
		say("setup failed: M: %s\n", strerror(errno));
		return 4;
	}
	say("ready %d %d %d\n", getpid(), tids[0], tids[1]);
	for (;;) {
		usleep(1000); /* polled: a restored task re-enters pause() after a signal that came just before */
		if (check_requested) {
			check_requested = 0;
			check();
		}
	}
}

/*
 * sysv-keeper: SysV shared memory segments attached in a parent and its child.
 *
 *   sysv-keeper REPORT_FILE                 the tree (tests/programs.ts TreeKeeper protocol)
 *   sysv-keeper REPORT_FILE WORK_DIR attach ID
 *                                           a lone process attaching segment ID (StateKeeper
 *                                           protocol): an attachment outside a dumped tree
 *
 * The tree: segment A (key 0x5e<pid>, 3 pages + 100 bytes, mode 0640, made under effective
 * ids 1234:5678 (its creator), owner 1234:5678 by IPC_SET, left in the namespace: no IPC_RMID) filled with a pattern, attached read-write and
 * read-only (SHM_RDONLY) in the parent and inherited by the child across fork; segment B
 * (IPC_PRIVATE, 8192 bytes, marked for removal) with a string, attached in the parent only.
 * Reports "segments <A> <B>" and "ready <parent> <child>".
 * On SIGUSR1 (to the parent, which passes it on): the child checks its view of A and writes
 * into it, then exits with its failures; the parent checks A (pattern, the child's write, the
 * read-only attachment showing the same bytes and still read-only), B (contents, still marked
 * for removal) and both segments' ids, keys, sizes, owners and attachment counts, then
 * "done <failures>".
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <sys/ipc.h>
#include <sys/prctl.h>
#include <sys/shm.h>
#include <sys/wait.h>

#include "keeper.h"

#define A_SIZE (3 * 4096 + 100)
#define B_SIZE 8192

static int pattern_ok(const unsigned char *p, size_t from, size_t to)
{
	for (size_t i = from; i < to; i++)
		if (p[i] != (unsigned char)(i % 251))
			return 0;
	return 1;
}

/* The permissions /proc/self/maps shows for the mapping at `addr` ("r--s"...), or "?". */
static void perms_of(void *addr, char out[5])
{
	strcpy(out, "?");
	FILE *f = fopen("/proc/self/maps", "r");
	if (!f)
		return;
	char line[512];
	while (fgets(line, sizeof(line), f)) {
		unsigned long start;
		char perms[5];
		if (sscanf(line, "%lx-%*x %4s", &start, perms) == 2 && start == (unsigned long)addr) {
			strcpy(out, perms);
			break;
		}
	}
	fclose(f);
}

static int attach_only(int id)
{
	void *p = shmat(id, NULL, 0);
	if (p == (void *)-1) {
		dprintf(report_fd, "setup failed: shmat %d: %s\n", id, strerror(errno));
		_exit(99);
	}
	signal(SIGUSR1, on_usr1);
	say("ready %d\n", getpid());
	while (!check_requested)
		usleep(1000);
	CHECK(1, "attached to segment %d", id);
	say("done %d\n", failures);
	return failures;
}

int main(int argc, char **argv)
{
	if (argc < 2 || keeper_open_report(argv[1]) < 0)
		return 3;
	if (argc == 5 && strcmp(argv[3], "attach") == 0)
		return attach_only(atoi(argv[4]));

	key_t key = (key_t)(0x5e000000 | (getpid() & 0xffffff));
	/* Made under other effective ids: its creator (cuid/cgid) is 1234:5678, which only shmget sets. */
	MUST(setegid(5678));
	MUST(seteuid(1234));
	int a = shmget(key, A_SIZE, IPC_CREAT | IPC_EXCL | 0640);
	MUST(a);
	MUST(seteuid(0));
	MUST(setegid(0));
	struct shmid_ds ds;
	MUST(shmctl(a, IPC_STAT, &ds));
	ds.shm_perm.uid = 1234;
	ds.shm_perm.gid = 5678;
	MUST(shmctl(a, IPC_SET, &ds));
	unsigned char *rw = shmat(a, NULL, 0);
	unsigned char *ro = shmat(a, NULL, SHM_RDONLY);
	if (rw == (void *)-1 || ro == (void *)-1) {
		dprintf(report_fd, "setup failed: shmat A: %s\n", strerror(errno));
		shmctl(a, IPC_RMID, NULL);
		_exit(99);
	}
	for (size_t i = 0; i < A_SIZE; i++)
		rw[i] = (unsigned char)(i % 251);
	int b = shmget(IPC_PRIVATE, B_SIZE, IPC_CREAT | 0600);
	MUST(b);
	char *pb = shmat(b, NULL, 0);
	if (pb == (void *)-1) {
		dprintf(report_fd, "setup failed: shmat B: %s\n", strerror(errno));
		_exit(99);
	}
	MUST(shmctl(b, IPC_RMID, NULL));
	strcpy(pb + 4000, "sysv segment data");

	signal(SIGUSR1, on_usr1);
	int ready[2];
	MUST(pipe(ready));
	pid_t parent = getpid();
	pid_t child = fork();
	MUST(child);
	if (child == 0) {
		/* Goes with the parent (a test that kills the parent leaves no child behind). */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (getppid() != parent)
			_exit(1);
		shmdt(pb); /* the child has A only */
		MUST(write(ready[1], "r", 1));
		while (!check_requested)
			usleep(1000);
		CHECK(pattern_ok(rw, 200, A_SIZE), "child: segment A holds its pattern");
		memcpy(rw + 100, "child was here", 14);
		_exit(failures);
	}
	char r;
	if (read(ready[0], &r, 1) != 1) {
		dprintf(report_fd, "setup failed: the child did not get ready\n");
		_exit(99);
	}
	say("segments %d %d\n", a, b);
	say("ready %d %d\n", parent, child);
	while (!check_requested)
		usleep(1000);

	kill(child, SIGUSR1);
	int status;
	CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status), "the child ran its checks and exited");
	if (WIFEXITED(status))
		failures += WEXITSTATUS(status);
	CHECK(pattern_ok(rw, 0, 100) && pattern_ok(rw, 114, A_SIZE), "parent: segment A holds its pattern");
	CHECK(memcmp(rw + 100, "child was here", 14) == 0, "parent: segment A shows the child's write (one segment for both)");
	CHECK(memcmp(ro, rw, A_SIZE) == 0, "parent: the read-only attachment shows the same bytes");
	char perms[5];
	perms_of(ro, perms);
	CHECK(strcmp(perms, "r--s") == 0, "parent: the read-only attachment is r--s (%s)", perms);
	perms_of(rw, perms);
	CHECK(strcmp(perms, "rw-s") == 0, "parent: the read-write attachment is rw-s (%s)", perms);
	CHECK(strcmp(pb + 4000, "sysv segment data") == 0, "parent: segment B holds its string");

	struct shmid_ds sa, sb;
	CHECK(shmctl(a, IPC_STAT, &sa) == 0, "segment A has its id %d", a);
	CHECK(sa.shm_perm.__key == key && sa.shm_segsz == A_SIZE, "segment A has its key and size");
	CHECK(sa.shm_perm.uid == 1234 && sa.shm_perm.gid == 5678 && (sa.shm_perm.mode & 0777) == 0640, "segment A has its owner and mode (%u:%u %o)",
	      sa.shm_perm.uid, sa.shm_perm.gid, sa.shm_perm.mode & 0777);
	CHECK(sa.shm_perm.cuid == 1234 && sa.shm_perm.cgid == 5678, "segment A has its creator (%u:%u)", sa.shm_perm.cuid, sa.shm_perm.cgid);
	CHECK(sa.shm_nattch == 2, "segment A has the parent's two attachments (%lu)", (unsigned long)sa.shm_nattch);
	CHECK(shmctl(b, IPC_STAT, &sb) == 0, "segment B has its id %d", b);
	CHECK((sb.shm_perm.mode & SHM_DEST) != 0, "segment B is still marked for removal");
	say("done %d\n", failures);
	return failures;
}

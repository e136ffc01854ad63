/*
 * sysv-keeper: a SysV shared memory segment (shmget/shmat), marked for removal so it goes when
 * the program does. criu-ts refuses to dump it (naming the segment); the program must run on
 * unharmed by the attempt.
 *
 *   sysv-keeper REPORT_FILE WORK_DIR
 *
 * Reports "segment <id>" and "ready <pid>", then on SIGUSR1 checks the segment's contents.
 */
#define _GNU_SOURCE
#include <sys/ipc.h>
#include <sys/shm.h>

#include "keeper.h"

int main(int argc, char **argv)
{
	if (argc < 3 || keeper_open_report(argv[1]) < 0)
		return 3;
	int id = shmget(IPC_PRIVATE, 8192, IPC_CREAT | 0600);
	MUST(id);
	char *p = shmat(id, NULL, 0);
	if (p == (void *)-1) {
		dprintf(report_fd, "setup failed: shmat: %s\n", strerror(errno));
		_exit(99);
	}
	MUST(shmctl(id, IPC_RMID, NULL));
	strcpy(p, "sysv segment data");
	signal(SIGUSR1, on_usr1);
	say("segment %d\n", id);
	say("ready %d\n", getpid());
	while (!check_requested)
		usleep(1000);
	CHECK(strcmp(p, "sysv segment data") == 0, "SysV segment contents");
	say("done %d\n", failures);
	return failures;
}

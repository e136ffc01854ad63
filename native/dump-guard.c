/*
 * dump-guard: releases what a dump holds in the network if criu-ts dies in the middle of it.
 *
 * A dump of established TCP connections puts their sockets in repair mode and locks them with
 * firewall rules; a dump that fails undoes that itself, but a criu-ts killed outright (SIGKILL)
 * cannot. criu-ts starts this program before it freezes anything, with the read end of a pipe as
 * stdin whose write end only criu-ts holds. It writes the PIDs whose connections it locks as it
 * locks them, and a final 'd' once it no longer needs the guard. EOF without that 'd' means
 * criu-ts is gone: the program then becomes
 *
 *   NODE SCRIPT ARGS... "PIDS"      (@criu-ts/core's dump/release-after-death.js)
 *
 * which takes those processes' connections out of repair mode and removes the dump's locks.
 * Static and without libc, like the restore stub: it only waits, and costs nothing meanwhile.
 *
 *   dump-guard NODE SCRIPT ARGS...
 */
#include "raw-syscall.h"

#define NR_read 0
#define NR_execve 59
#define NR_exit 60
#define MAX_ARGS 32

static char received[4096];
static char *args[MAX_ARGS + 2];

__attribute__((used)) void guard_main(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	char **envp = argv + argc + 1;
	unsigned long used = 0;

	if (argc < 3 || argc > MAX_ARGS)
		sys3(NR_exit, 2, 0, 0);
	for (;;) {
		long n = sys3(NR_read, 0, (long)(received + used), (long)(sizeof(received) - 1 - used));
		if (n == -4 /* EINTR */)
			continue;
		if (n <= 0)
			break;
		used += (unsigned long)n;
		if (used == sizeof(received) - 1)
			used = 0; /* more PIDs than fit: keep reading, pass none (the script then finds none) */
	}
	if (used > 0 && received[used - 1] == 'd')
		sys3(NR_exit, 0, 0, 0); /* disarmed: criu-ts was done with the connections */
	received[used] = 0;
	long i;
	for (i = 1; i < argc; i++)
		args[i - 1] = argv[i];
	args[argc - 1] = received;
	args[argc] = 0;
	sys3(NR_execve, (long)args[0], (long)args, (long)envp);
	sys3(NR_exit, 127, 0, 0);
}

/* The kernel enters at _start with RSP at argc; keep the ABI's 16-byte alignment for the call. */
__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call guard_main\n"
	"	hlt\n");

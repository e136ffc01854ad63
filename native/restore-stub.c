/*
 * restore-stub: the process criu-ts restores into.
 *
 * Node must not fork itself, so restore starts this tiny static program, which stops itself
 * and waits to be seized. criu-ts then drives it with remote syscalls (clone3 with set_tid for
 * the exact PID, then munmap/mmap/preadv/prctl... in the new task) through the
 * `syscall; int3` gadget below, and finally replaces everything it is with the dumped process.
 *
 * No libc: the program must not leave anything (TLS, atexit handlers, locale files) that the
 * restored process could inherit; its whole address space is unmapped during restore anyway.
 *
 *   restore-stub PARENT_PID      stop with SIGSTOP and wait to be seized (dies with the parent)
 */
#include "raw-syscall.h"

#define NR_pause 34
#define NR_getpid 39
#define NR_exit 60
#define NR_kill 62
#define NR_getppid 110
#define NR_prctl 157
#define PR_SET_PDEATHSIG 1
#define SIGKILL 9
#define SIGSTOP 19

/* The gadget remote syscalls jump to: the tracer sets RAX and the arguments, points RIP here
 * and continues; the int3 returns control to it right after the syscall (no single-stepping). */
__asm__(".text\n"
	".globl restore_stub_gadget\n"
	"restore_stub_gadget:\n"
	"	syscall\n"
	"	int3\n");

static unsigned long parse_u(const char *s)
{
	unsigned long v = 0;
	while (*s >= '0' && *s <= '9')
		v = v * 10 + (unsigned long)(*s++ - '0');
	return v;
}

__attribute__((used)) void stub_main(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);

	/* Die with criu-ts: a stub nobody drives must not stay stopped forever. The parent may
	 * already be gone before the prctl: then our parent is no longer the pid we were given. */
	sys3(NR_prctl, PR_SET_PDEATHSIG, SIGKILL, 0);
	if (argc > 1 && (unsigned long)sys3(NR_getppid, 0, 0, 0) != parse_u(argv[1]))
		sys3(NR_exit, 3, 0, 0);
	sys3(NR_kill, sys3(NR_getpid, 0, 0, 0), SIGSTOP, 0);
	for (;;)
		sys3(NR_pause, 0, 0, 0);
}

/* The kernel enters at _start with RSP at argc; keep the ABI's 16-byte alignment for the call. */
__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	and $-16, %rsp\n"
	"	call stub_main\n"
	"	hlt\n");

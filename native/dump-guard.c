/*
 * dump-guard: releases what a dump holds in the network if criu-ts dies in the middle of it.
 *
 * A dump of established TCP connections puts their sockets in repair mode and locks them with
 * firewall rules; a dump that fails undoes that itself, but a criu-ts killed outright (SIGKILL)
 * cannot. criu-ts starts this program before it freezes anything, with one end of a unix stream
 * socket as stdin whose other end only criu-ts holds. It writes the PIDs whose connections it
 * locks as it locks them, and a final 'd' once it no longer needs the guard. Connections it took
 * out of a listener's accept queue live only in criu-ts: it sends each here ("Q" with two fds,
 * the listener's and the connection's), so that they outlive it; this program keeps them open,
 * across the exec below, and notes them as "Q<listener fd>:<connection fd>". EOF without the 'd'
 * means criu-ts is gone: the program then becomes
 *
 *   NODE SCRIPT ARGS... "PIDS AND Qs"      (@criu-ts/core's dump/release-after-death.js)
 *
 * which puts those connections back in their queues, takes the processes' connections out of
 * repair mode and removes the dump's locks.
 * Static and without libc, like the restore stub: it only waits, and costs nothing meanwhile.
 *
 *   dump-guard NODE SCRIPT ARGS...
 */
#include "raw-syscall.h"

#define NR_recvmsg 47
#define NR_execve 59
#define NR_exit 60
#define MAX_ARGS 32

static char received[4096];
static char *args[MAX_ARGS + 2];

struct iovec_raw {
	void *base;
	unsigned long len;
};
struct msghdr_raw {
	void *name;
	int namelen;
	struct iovec_raw *iov;
	unsigned long iovlen;
	void *control;
	unsigned long controllen;
	int flags;
};
#define SOL_SOCKET 1
#define SCM_RIGHTS 1
#define CMSG_HEADER 16 /* cmsg_len (8), cmsg_level (4), cmsg_type (4) */

/* Appends the decimal form of `v` at received[*used]; returns 0 when it does not fit. */
static int append_number(unsigned long *used, unsigned long v)
{
	char digits[20];
	int n = 0;
	do {
		digits[n++] = (char)('0' + v % 10);
		v /= 10;
	} while (v);
	if (*used + (unsigned long)n + 2 >= sizeof(received))
		return 0;
	while (n)
		received[(*used)++] = digits[--n];
	return 1;
}

__attribute__((used)) void guard_main(long *sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	char **envp = argv + argc + 1;
	unsigned long used = 0;

	if (argc < 3 || argc > MAX_ARGS)
		sys3(NR_exit, 2, 0, 0);
	for (;;) {
		union {
			char bytes[CMSG_HEADER + 8 * sizeof(int)];
			long align;
		} control;
		struct iovec_raw iov = { received + used, sizeof(received) - 64 - used };
		struct msghdr_raw mh = { 0, 0, &iov, 1, control.bytes, sizeof(control.bytes), 0 };
		long n = sys3(NR_recvmsg, 0, (long)&mh, 0);
		if (n == -4 /* EINTR */)
			continue;
		if (n <= 0)
			break;
		used += (unsigned long)n;
		/* The fds of a "Q" (a unix stream read ends at the message that carries them). */
		if (mh.controllen >= CMSG_HEADER && *(int *)(control.bytes + 8) == SOL_SOCKET && *(int *)(control.bytes + 12) == SCM_RIGHTS) {
			unsigned long count = (*(unsigned long *)control.bytes - CMSG_HEADER) / sizeof(int);
			int *fds = (int *)(control.bytes + CMSG_HEADER);
			for (unsigned long i = 0; i < count; i++) {
				if (i > 0 && used + 2 < sizeof(received))
					received[used++] = ':';
				if (!append_number(&used, (unsigned long)fds[i]))
					break;
			}
			if (used + 1 < sizeof(received))
				received[used++] = ' ';
		}
		if (used >= sizeof(received) - 64)
			used = 0; /* more than fits: keep reading, pass nothing (the script then finds nothing) */
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

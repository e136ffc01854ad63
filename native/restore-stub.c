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
 *   restore-stub --xstate        print the CPU's XSAVE component layout (CPUID leaf 0xD) as JSON
 */
#define NR_write 1
#define NR_pause 34
#define NR_getpid 39
#define NR_exit 60
#define NR_kill 62
#define NR_getppid 110
#define NR_prctl 157
#define PR_SET_PDEATHSIG 1
#define SIGKILL 9
#define SIGSTOP 19

static long sys3(long nr, long a1, long a2, long a3)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2), "d"(a3) : "rcx", "r11", "memory");
	return ret;
}

/* The gadget remote syscalls jump to: the tracer sets RAX and the arguments, points RIP here
 * and continues; the int3 returns control to it right after the syscall (no single-stepping). */
__asm__(".text\n"
	".globl restore_stub_gadget\n"
	"restore_stub_gadget:\n"
	"	syscall\n"
	"	int3\n");

static void put(const char *s)
{
	long n = 0;
	while (s[n])
		n++;
	sys3(NR_write, 1, (long)s, n);
}

static void put_u(unsigned long v)
{
	char buf[24];
	int i = sizeof(buf) - 1;
	buf[i] = 0;
	do {
		buf[--i] = (char)('0' + v % 10);
		v /= 10;
	} while (v && i > 0);
	put(buf + i);
}

static void cpuid(unsigned leaf, unsigned sub, unsigned *a, unsigned *b, unsigned *c, unsigned *d)
{
	__asm__ volatile("cpuid" : "=a"(*a), "=b"(*b), "=c"(*c), "=d"(*d) : "a"(leaf), "c"(sub));
}

/* Standard-format (non-compacted) offsets and sizes of XSAVE components 2..9: the layout
 * PTRACE_GETREGSET(NT_X86_XSTATE) uses. Only CPUID knows them (Intel SDM vol. 1, 13.4.3). */
static void print_xstate(void)
{
	unsigned a, b, c, d;
	cpuid(0xd, 0, &a, &b, &c, &d);
	put("{\"size\":");
	put_u(b);
	put(",\"features\":");
	put_u(((unsigned long)d << 32) | a);
	put(",\"components\":{");
	for (unsigned i = 2; i < 20; i++) {
		cpuid(0xd, i, &a, &b, &c, &d);
		if (i > 2)
			put(",");
		put("\"");
		put_u(i);
		put("\":[");
		put_u(b);
		put(",");
		put_u(a);
		put("]");
	}
	put("}}\n");
}

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

	if (argc > 1 && argv[1][0] == '-' && argv[1][1] == '-' && argv[1][2] == 'x') {
		print_xstate();
		sys3(NR_exit, 0, 0, 0);
	}
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

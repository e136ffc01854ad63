/*
 * cpu-xstate: prints this CPU's XSAVE layout as JSON, for criu-ts (@criu-ts/compel's
 * cpuXstateLayout). Only the CPUID instruction knows where each XSAVE component sits in the
 * standard (non-compacted) format that PTRACE_GETREGSET(NT_X86_XSTATE), signal frames and
 * CRIU's images use, and vendors differ (AMD Zen 4 puts the AVX-512 opmask at 832, Intel at
 * 1088), so criu-ts asks the CPU instead of keeping a table (Intel SDM vol. 1, 13.4.3).
 *
 *   {"size": S, "components": {"2": [offset, size, flags], ...}}
 *
 * size: CPUID(0xD, 0).EBX, the standard-format area for every feature enabled in XCR0.
 * One entry per component 2..63 the CPU describes (size > 0); flags is CPUID(0xD, i).ECX
 * (bit 2: the component can be armed in XFD, i.e. it is given to a task on first use: AMX).
 *
 * Static and without libc, like the restore stub: it runs once per criu-ts process and must
 * start in well under a millisecond.
 */
#include "raw-syscall.h"

#define NR_write 1
#define NR_exit 60

static char out[4096];
static unsigned long used;

static void put(const char *s)
{
	while (*s && used < sizeof(out))
		out[used++] = *s++;
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

__attribute__((used)) void cpu_xstate_main(void)
{
	unsigned a, b, c, d;
	cpuid(0, 0, &a, &b, &c, &d);
	unsigned max_leaf = a;
	put("{\"size\":");
	if (max_leaf >= 0xd) {
		cpuid(0xd, 0, &a, &b, &c, &d);
		put_u(b);
	} else {
		put("0");
	}
	put(",\"components\":{");
	const char *sep = "";
	for (unsigned i = 2; max_leaf >= 0xd && i < 64; i++) {
		cpuid(0xd, i, &a, &b, &c, &d);
		if (a == 0)
			continue;
		put(sep);
		sep = ",";
		put("\"");
		put_u(i);
		put("\":[");
		put_u(b);
		put(",");
		put_u(a);
		put(",");
		put_u(c);
		put("]");
	}
	put("}}\n");
	long status = sys3(NR_write, 1, (long)out, (long)used) == (long)used ? 0 : 1;
	sys3(NR_exit, status, 0, 0);
}

__asm__(".text\n"
	".globl _start\n"
	"_start:\n"
	"	and $-16, %rsp\n"
	"	call cpu_xstate_main\n"
	"	hlt\n");

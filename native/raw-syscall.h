/*
 * A system call with up to three arguments, for the static programs built without libc
 * (restore-stub.c, cpu-xstate.c): they must not load or leave anything but their own code.
 */
#ifndef CRIU_TS_RAW_SYSCALL_H
#define CRIU_TS_RAW_SYSCALL_H

static inline long sys3(long nr, long a1, long a2, long a3)
{
	long ret;
	__asm__ volatile("syscall" : "=a"(ret) : "a"(nr), "D"(a1), "S"(a2), "d"(a3) : "rcx", "r11", "memory");
	return ret;
}

#endif

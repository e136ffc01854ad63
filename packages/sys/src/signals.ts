// x86_64 Linux signal numbers (arch/x86/include/uapi/asm/signal.h) and the signal-set helpers
// ptrace and the parasite need. A kernel sigset_t is 64 bits on x86_64 (_NSIG = 64): bit n-1 is signal n.

export const SIGNALS = {
  SIGHUP: 1, SIGINT: 2, SIGQUIT: 3, SIGILL: 4, SIGTRAP: 5, SIGABRT: 6, SIGBUS: 7, SIGFPE: 8,
  SIGKILL: 9, SIGUSR1: 10, SIGSEGV: 11, SIGUSR2: 12, SIGPIPE: 13, SIGALRM: 14, SIGTERM: 15,
  SIGSTKFLT: 16, SIGCHLD: 17, SIGCONT: 18, SIGSTOP: 19, SIGTSTP: 20, SIGTTIN: 21, SIGTTOU: 22,
  SIGURG: 23, SIGXCPU: 24, SIGXFSZ: 25, SIGVTALRM: 26, SIGPROF: 27, SIGWINCH: 28, SIGIO: 29,
  SIGPWR: 30, SIGSYS: 31,
} as const;
export type SignalName = keyof typeof SIGNALS;

/** First real-time signal as the kernel numbers it (glibc reserves 32..34 and reports SIGRTMIN as 34). */
export const SIGRTMIN_KERNEL = 32;
/** Highest signal number (_NSIG). */
export const NSIG = 64;

const NAMES = new Map<number, string>(Object.entries(SIGNALS).map(([n, v]) => [v, n]));

/** 'SIGTERM' for 15, 'SIGRT3' for 35, 'SIG<n>' for anything else. */
export function signalName(signo: number): string {
  const name = NAMES.get(signo);
  if (name) return name;
  if (signo >= SIGRTMIN_KERNEL && signo <= NSIG) return `SIGRT${signo - SIGRTMIN_KERNEL}`;
  return `SIG${signo}`;
}

export function signalNumber(name: SignalName | string): number {
  const v = (SIGNALS as Record<string, number>)[name];
  if (v === undefined) throw new RangeError(`unknown signal name '${name}'`);
  return v;
}

/** Kernel sigset_t (64 bits) with signal n at bit n-1. */
export function sigsetOf(...signals: number[]): bigint {
  let set = 0n;
  for (const s of signals) set |= 1n << BigInt(s - 1);
  return set;
}

export function sigsetHas(set: bigint, signo: number): boolean {
  return ((set >> BigInt(signo - 1)) & 1n) === 1n;
}

/** Every signal: what a tracer sets as the mask while it runs code in a tracee (SIGKILL/SIGSTOP stay unblockable). */
export const SIGSET_ALL = 0xffff_ffff_ffff_ffffn;

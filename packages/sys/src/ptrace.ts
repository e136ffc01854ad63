// ptrace(2), one function per request. Each is the raw kernel call (not glibc's wrapper): PEEK*
// requests store the word at `data`, as the kernel does.
//
// Precondition for everything except seize/interrupt/kill: the tracee is in a ptrace-stop, and
// the caller is the thread that seized it (ptrace is per tracer *thread*). Calls on a tracee that
// is running or gone fail with ESRCH.
import { addressOf, sysCall, sysCallNumber } from './ffi.js';
import { SYSCALL_NUMBERS } from './syscall-numbers.js';
import { decodeUserRegs, encodeUserRegs, USER_FPREGS_SIZE, USER_REGS_SIZE, type UserRegs } from './regs.js';
import type { Pid, RemoteAddress } from './types.js';

export const PTRACE = {
  TRACEME: 0, PEEKTEXT: 1, PEEKDATA: 2, PEEKUSER: 3, POKETEXT: 4, POKEDATA: 5, POKEUSER: 6,
  CONT: 7, KILL: 8, SINGLESTEP: 9, GETREGS: 12, SETREGS: 13, GETFPREGS: 14, SETFPREGS: 15,
  ATTACH: 16, DETACH: 17, SYSCALL: 24, ARCH_PRCTL: 30,
  SETOPTIONS: 0x4200, GETEVENTMSG: 0x4201, GETSIGINFO: 0x4202, SETSIGINFO: 0x4203,
  GETREGSET: 0x4204, SETREGSET: 0x4205, SEIZE: 0x4206, INTERRUPT: 0x4207, LISTEN: 0x4208,
  PEEKSIGINFO: 0x4209, GETSIGMASK: 0x420a, SETSIGMASK: 0x420b, SECCOMP_GET_FILTER: 0x420c,
  SECCOMP_GET_METADATA: 0x420d, GET_SYSCALL_INFO: 0x420e, GET_RSEQ_CONFIGURATION: 0x420f,
} as const;

export const PTRACE_O = {
  TRACESYSGOOD: 1, TRACEFORK: 2, TRACEVFORK: 4, TRACECLONE: 8, TRACEEXEC: 0x10,
  TRACEVFORKDONE: 0x20, TRACEEXIT: 0x40, TRACESECCOMP: 0x80, EXITKILL: 0x10_0000,
  SUSPEND_SECCOMP: 0x20_0000,
} as const;

/** PTRACE_EVENT_* as found in bits 16..23 of a stop status. STOP marks group-stop and PTRACE_INTERRUPT stops of seized tracees. */
export const PTRACE_EVENT = {
  FORK: 1, VFORK: 2, CLONE: 3, EXEC: 4, VFORK_DONE: 5, EXIT: 6, SECCOMP: 7, STOP: 128,
} as const;

/** ELF note types for PTRACE_GETREGSET/SETREGSET (uapi/linux/elf.h). */
export const NT = { PRSTATUS: 1, PRFPREG: 2, PRXFPREG: 0x46e62b7f, X86_XSTATE: 0x202 } as const;

/** PTRACE_PEEKSIGINFO flag: read the process-wide (shared) queue instead of the thread's own. */
export const PTRACE_PEEKSIGINFO_SHARED = 1;
/** Size of a kernel siginfo_t. */
export const SIGINFO_SIZE = 128;

const NR = SYSCALL_NUMBERS.ptrace;

function ptrace(name: string, request: number, pid: Pid, addr: number | bigint | Uint8Array, data: number | bigint | Uint8Array): number {
  return sysCallNumber(`ptrace(${name})`, NR, [request, pid, addr, data], `pid ${pid}`);
}

/** PTRACE_SEIZE: attach without stopping the tracee; `options` are PTRACE_O_* flags. */
export function ptraceSeize(pid: Pid, options = 0): void {
  ptrace('PTRACE_SEIZE', PTRACE.SEIZE, pid, 0, options);
}

/** PTRACE_INTERRUPT: make a seized tracee enter a ptrace-stop (reported as PTRACE_EVENT_STOP). */
export function ptraceInterrupt(pid: Pid): void {
  ptrace('PTRACE_INTERRUPT', PTRACE.INTERRUPT, pid, 0, 0);
}

/** PTRACE_CONT: resume a stopped tracee, delivering `signal` (0: none). */
export function ptraceCont(pid: Pid, signal = 0): void {
  ptrace('PTRACE_CONT', PTRACE.CONT, pid, 0, signal);
}

/** PTRACE_SINGLESTEP: resume for one instruction (a `syscall` instruction runs the whole call). */
export function ptraceSingleStep(pid: Pid, signal = 0): void {
  ptrace('PTRACE_SINGLESTEP', PTRACE.SINGLESTEP, pid, 0, signal);
}

/** PTRACE_SYSCALL: resume until the next syscall entry or exit. */
export function ptraceSyscall(pid: Pid, signal = 0): void {
  ptrace('PTRACE_SYSCALL', PTRACE.SYSCALL, pid, 0, signal);
}

/** PTRACE_LISTEN: let a seized tracee in group-stop stay stopped but report the next stop change. */
export function ptraceListen(pid: Pid): void {
  ptrace('PTRACE_LISTEN', PTRACE.LISTEN, pid, 0, 0);
}

/** PTRACE_DETACH: stop tracing; the tracee resumes (or stays in group-stop if its group is stopped). */
export function ptraceDetach(pid: Pid, signal = 0): void {
  ptrace('PTRACE_DETACH', PTRACE.DETACH, pid, 0, signal);
}

/** PTRACE_SETOPTIONS. */
export function ptraceSetOptions(pid: Pid, options: number): void {
  ptrace('PTRACE_SETOPTIONS', PTRACE.SETOPTIONS, pid, 0, options);
}

const word = Buffer.alloc(8);

/** PTRACE_GETEVENTMSG: the message of the last PTRACE_EVENT stop (new pid for FORK/CLONE, exit status for EXIT). */
export function ptraceGetEventMsg(pid: Pid): bigint {
  ptrace('PTRACE_GETEVENTMSG', PTRACE.GETEVENTMSG, pid, 0, word);
  return word.readBigUInt64LE(0);
}

/** PTRACE_PEEKDATA: one 8-byte word of the tracee's memory. */
export function ptracePeekData(pid: Pid, addr: RemoteAddress): bigint {
  ptrace('PTRACE_PEEKDATA', PTRACE.PEEKDATA, pid, addr, word);
  return word.readBigUInt64LE(0);
}

/** PTRACE_POKEDATA: write one 8-byte word of the tracee's memory (works on read-only pages: FOLL_FORCE). */
export function ptracePokeData(pid: Pid, addr: RemoteAddress, value: bigint): void {
  ptrace('PTRACE_POKEDATA', PTRACE.POKEDATA, pid, addr, BigInt.asIntN(64, value));
}

/** PTRACE_PEEKUSER: a word of struct user (registers at offsets of user_regs_struct, debug registers further on). */
export function ptracePeekUser(pid: Pid, offset: number): bigint {
  ptrace('PTRACE_PEEKUSER', PTRACE.PEEKUSER, pid, offset, word);
  return word.readBigUInt64LE(0);
}

/** PTRACE_POKEUSER. */
export function ptracePokeUser(pid: Pid, offset: number, value: bigint): void {
  ptrace('PTRACE_POKEUSER', PTRACE.POKEUSER, pid, offset, BigInt.asIntN(64, value));
}

const regsBuf = Buffer.alloc(USER_REGS_SIZE);

/** PTRACE_GETREGS: the general registers (user_regs_struct), fs_base and gs_base included. */
export function ptraceGetRegs(pid: Pid): UserRegs {
  ptrace('PTRACE_GETREGS', PTRACE.GETREGS, pid, 0, regsBuf);
  return decodeUserRegs(regsBuf);
}

/** PTRACE_SETREGS. The kernel validates segment selectors and masks eflags to user-changeable bits. */
export function ptraceSetRegs(pid: Pid, regs: UserRegs): void {
  ptrace('PTRACE_SETREGS', PTRACE.SETREGS, pid, 0, encodeUserRegs(regs, regsBuf));
}

/** PTRACE_GETFPREGS: the 512-byte FXSAVE image (x87, SSE registers and MXCSR). */
export function ptraceGetFpRegs(pid: Pid): Buffer {
  const buf = Buffer.alloc(USER_FPREGS_SIZE);
  ptrace('PTRACE_GETFPREGS', PTRACE.GETFPREGS, pid, 0, buf);
  return buf;
}

/** PTRACE_SETFPREGS. */
export function ptraceSetFpRegs(pid: Pid, fxsave: Uint8Array): void {
  if (fxsave.byteLength < USER_FPREGS_SIZE) throw new RangeError(`FXSAVE image is ${fxsave.byteLength} bytes, need ${USER_FPREGS_SIZE}`);
  ptrace('PTRACE_SETFPREGS', PTRACE.SETFPREGS, pid, 0, fxsave);
}

const iov = Buffer.alloc(16);
/** Larger than any XSAVE area the kernel supports today (AMX tiles bring it to ~11 KiB). */
const REGSET_MAX = 64 * 1024;

/**
 * PTRACE_GETREGSET: register set `type` (NT_*). The kernel shrinks the iovec to the size it
 * filled, so the returned buffer has the real size (for NT_X86_XSTATE: the CPU's XSAVE size).
 */
export function ptraceGetRegset(pid: Pid, type: number, maxSize = REGSET_MAX): Buffer {
  // Not zeroed: the kernel fills the first `len` bytes, and only those are copied out. (Zeroing
  // the whole buffer cost a seize 0.14 ms, with the task frozen.)
  const buf = Buffer.allocUnsafe(maxSize);
  iov.writeBigUInt64LE(addressOf(buf), 0);
  iov.writeBigUInt64LE(BigInt(maxSize), 8);
  ptrace('PTRACE_GETREGSET', PTRACE.GETREGSET, pid, type, iov);
  const len = Number(iov.readBigUInt64LE(8));
  return Buffer.from(buf.subarray(0, len));
}

/** PTRACE_SETREGSET. */
export function ptraceSetRegset(pid: Pid, type: number, data: Uint8Array): void {
  iov.writeBigUInt64LE(addressOf(data), 0);
  iov.writeBigUInt64LE(BigInt(data.byteLength), 8);
  ptrace('PTRACE_SETREGSET', PTRACE.SETREGSET, pid, type, iov);
}

/** PTRACE_GETSIGMASK: the blocked-signal mask (kernel sigset_t, 8 bytes on x86_64). */
export function ptraceGetSigmask(pid: Pid): bigint {
  ptrace('PTRACE_GETSIGMASK', PTRACE.GETSIGMASK, pid, 8, word);
  return word.readBigUInt64LE(0);
}

/** PTRACE_SETSIGMASK. SIGKILL and SIGSTOP are silently kept unblocked by the kernel. */
export function ptraceSetSigmask(pid: Pid, mask: bigint): void {
  const buf = Buffer.alloc(8);
  buf.writeBigUInt64LE(BigInt.asUintN(64, mask), 0);
  ptrace('PTRACE_SETSIGMASK', PTRACE.SETSIGMASK, pid, 8, buf);
}

/** PTRACE_GETSIGINFO: the siginfo of the signal that caused the current stop (128 raw bytes). */
export function ptraceGetSiginfo(pid: Pid): Buffer {
  const buf = Buffer.alloc(SIGINFO_SIZE);
  ptrace('PTRACE_GETSIGINFO', PTRACE.GETSIGINFO, pid, 0, buf);
  return buf;
}

/** PTRACE_SETSIGINFO. */
export function ptraceSetSiginfo(pid: Pid, siginfo: Uint8Array): void {
  ptrace('PTRACE_SETSIGINFO', PTRACE.SETSIGINFO, pid, 0, siginfo);
}

/**
 * PTRACE_PEEKSIGINFO: copy up to `count` queued siginfos starting at `offset` without dequeuing
 * them, from the thread's queue or (shared) the process's. Returns one 128-byte buffer each.
 */
export function ptracePeekSiginfo(pid: Pid, offset: number, count: number, shared: boolean): Buffer[] {
  const args = Buffer.alloc(16);
  args.writeBigUInt64LE(BigInt(offset), 0);
  args.writeUInt32LE(shared ? PTRACE_PEEKSIGINFO_SHARED : 0, 8);
  args.writeInt32LE(count, 12);
  const out = Buffer.alloc(SIGINFO_SIZE * count);
  const n = ptrace('PTRACE_PEEKSIGINFO', PTRACE.PEEKSIGINFO, pid, args, out);
  const list: Buffer[] = [];
  for (let i = 0; i < n; i++) list.push(Buffer.from(out.subarray(i * SIGINFO_SIZE, (i + 1) * SIGINFO_SIZE)));
  return list;
}

/** PTRACE_ARCH_PRCTL: arch_prctl(code, addr) applied to the tracee (ARCH_GET_FS etc.). */
export function ptraceArchPrctl(pid: Pid, code: number, addr: number | bigint | Uint8Array): number {
  // Note the argument order: the kernel takes addr in `data` and code in `addr` for this request.
  return ptrace('PTRACE_ARCH_PRCTL', PTRACE.ARCH_PRCTL, pid, addr, code);
}

/** PTRACE_GET_SYSCALL_INFO: raw struct ptrace_syscall_info (op, arch, ip, sp, then entry/exit/seccomp data). */
export function ptraceGetSyscallInfo(pid: Pid): Buffer {
  const buf = Buffer.alloc(88);
  const n = ptrace('PTRACE_GET_SYSCALL_INFO', PTRACE.GET_SYSCALL_INFO, pid, buf.byteLength, buf);
  return Buffer.from(buf.subarray(0, Math.min(n, buf.byteLength)));
}

/** PTRACE_KILL (deprecated by the kernel in favour of kill(SIGKILL), kept for completeness). */
export function ptraceKill(pid: Pid): void {
  ptrace('PTRACE_KILL', PTRACE.KILL, pid, 0, 0);
}

/** Raw ptrace for requests without a wrapper: returns the kernel's non-negative result. */
export function ptraceRaw(request: number, pid: Pid, addr: number | bigint | Uint8Array, data: number | bigint | Uint8Array): bigint {
  return sysCall(`ptrace(${request})`, NR, [request, pid, addr, data], `pid ${pid}`);
}

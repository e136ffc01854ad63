// The only module of criu-ts that loads koffi. Every system call goes through libc's `syscall(2)`
// entry with the x86_64 numbers from syscall-numbers.ts, so that what runs is exactly the kernel
// call the wrapper documents (glibc's own wrappers add behaviour: ptrace(PTRACE_PEEK*) returns the
// word instead of storing it, waitpid hides __WALL, getpid used to be cached).
//
// koffi calls are synchronous on the calling thread. ptrace is per thread (the tracer is the
// thread that attached), so every ptrace wrapper must only be called from the thread that seized
// the tracee; we never use koffi's `.async` variants, which run on a worker thread.
import koffi, { type TypeObject } from 'koffi';
import { SysError } from './errors.js';

const libc = koffi.load('libc.so.6');

// glibc's syscall() is variadic, but its x86_64 implementation is a few instructions of assembly
// that move the six argument registers into the syscall registers: declaring it with six fixed
// 64-bit arguments is exact on this ABI (integer arguments go in rdi, rsi, rdx, rcx, r8, r9 either way).
const syscall6 = libc.func('syscall', 'int64_t', [
  'int64_t', 'int64_t', 'int64_t', 'int64_t', 'int64_t', 'int64_t', 'int64_t',
]) as (nr: number, a: Arg64, b: Arg64, c: Arg64, d: Arg64, e: Arg64, f: Arg64) => number | bigint;

type Arg64 = number | bigint;

/** An argument of a raw system call: an integer, or a buffer whose address is passed. */
export type SysArg = number | bigint | Uint8Array | null | undefined;

/**
 * The address of a buffer's first byte, for passing to a system call. Node's Buffer and
 * Uint8Array contents live outside the V8 heap and do not move, so the address stays valid as
 * long as the caller keeps a reference to the buffer for the duration of the call.
 */
export function addressOf(buf: Uint8Array): bigint {
  return buf.byteLength === 0 ? 0n : koffi.address(buf);
}

function arg(a: SysArg): Arg64 {
  if (a === null || a === undefined) return 0;
  if (typeof a === 'number' || typeof a === 'bigint') return a;
  return addressOf(a);
}

/** The errno of the last call made through koffi on this thread (koffi saves it right after the call). */
export function lastErrno(): number {
  return koffi.errno();
}

/**
 * Makes the system call `nr` and returns its result, or throws SysError named `name` when the
 * kernel returned an error (libc's syscall() turns -4095..-1 into -1 + errno).
 * `detail` is added to the error message (the pid, fd or path the call was about).
 */
export function sysCall(name: string, nr: number, args: readonly SysArg[], detail?: string): bigint {
  const r = syscall6(nr, arg(args[0]), arg(args[1]), arg(args[2]), arg(args[3]), arg(args[4]), arg(args[5]));
  if (r === -1 || r === -1n) throw new SysError(name, koffi.errno(), detail);
  return typeof r === 'bigint' ? r : BigInt(r);
}

/** Like sysCall, for results known to fit in a double (fds, counts, pids): no bigint on hot paths. */
export function sysCallNumber(name: string, nr: number, args: readonly SysArg[], detail?: string): number {
  const r = syscall6(nr, arg(args[0]), arg(args[1]), arg(args[2]), arg(args[3]), arg(args[4]), arg(args[5]));
  if (r === -1 || r === -1n) throw new SysError(name, koffi.errno(), detail);
  return Number(r);
}

/**
 * The raw result of system call `nr` without interpretation: -errno on failure, as the kernel
 * returns it. For callers that must look at the errno without paying for an exception.
 */
export function sysCallRaw(nr: number, args: readonly SysArg[]): bigint {
  const r = syscall6(nr, arg(args[0]), arg(args[1]), arg(args[2]), arg(args[3]), arg(args[4]), arg(args[5]));
  if (r === -1 || r === -1n) return -BigInt(koffi.errno());
  return typeof r === 'bigint' ? r : BigInt(r);
}

/** Struct layout helpers, re-exported for layout tests: size and member offset as koffi computes them. */
export const layout = {
  struct: (name: string, def: Record<string, string | [number, string] | TypeObject>) =>
    koffi.struct(name, def as never),
  array: (type: string | TypeObject, length: number) => koffi.array(type, length),
  sizeof: (type: TypeObject | string) => koffi.sizeof(type),
  offsetof: (type: TypeObject | string, member: string) => koffi.offsetof(type, member),
};
export type LayoutType = TypeObject;

// @criu-ts/sys: typed Linux x86_64 system calls for criu-ts, and the only package that loads koffi.
//
// Every wrapper is the kernel call it is named after, made synchronously on the calling thread;
// a failure is a SysError { errno, code: 'ESRCH', syscall }.
export * from './types.js';
export * from './errors.js';
export * from './signals.js';
export * from './syscall-numbers.js';
export { sysCall, sysCallNumber, sysCallRaw, addressOf, lastErrno, type SysArg } from './ffi.js';
export * from './regs.js';
export * from './ptrace.js';
export * from './wait.js';
export * from './memory.js';
export * from './files.js';
export * from './socket.js';
export * from './sock-diag.js';
export * from './bpf.js';
export * from './bpf-asm.js';
export * from './btf.js';
export * from './process.js';
export * from './sysv-shm.js';
export * from './tty.js';
export { STRUCTS } from './layouts.js';
/** TCP repair socket calls for @criu-ts/soccr, as a namespace so short names (bind, send) do not clash. */
export * as sock from './socket-tcp-repair.js';

import { sysCall } from './ffi.js';
import { syscallNumber, type SyscallName } from './syscall-numbers.js';
import type { SysArg } from './ffi.js';

/** Any system call by name or number in this process (for calls without a dedicated wrapper). */
export function syscall(nameOrNr: SyscallName | number, ...args: SysArg[]): bigint {
  const nr = typeof nameOrNr === 'number' ? nameOrNr : syscallNumber(nameOrNr);
  return sysCall(typeof nameOrNr === 'number' ? `syscall ${nr}` : nameOrNr, nr, args);
}

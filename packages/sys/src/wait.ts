// wait4(2) and the decoding of its status word (the kernel's encoding, which glibc's W* macros read).
import { sysCallNumber } from './ffi.js';
import { SYSCALL_NUMBERS } from './syscall-numbers.js';
import type { Pid } from './types.js';

export const WNOHANG = 1;
export const WUNTRACED = 2;
export const WCONTINUED = 8;
/** Wait for this thread only, not for children of other threads in the group. */
export const __WNOTHREAD = 0x2000_0000;
/** Wait for every child, clone or not: needed to wait for traced threads (ptrace(2), "Attaching"). */
export const __WALL = 0x4000_0000;

/** A decoded wait status. `event` is the PTRACE_EVENT_* in bits 16..23 of a ptrace stop. */
export type WaitStatus =
  | { kind: 'exited'; pid: Pid; code: number; raw: number }
  | { kind: 'signaled'; pid: Pid; signal: number; coreDumped: boolean; raw: number }
  | { kind: 'stopped'; pid: Pid; signal: number; event: number; raw: number }
  | { kind: 'continued'; pid: Pid; raw: number }
  | { kind: 'none' };

export function decodeWaitStatus(pid: Pid, status: number): WaitStatus {
  const low = status & 0x7f;
  if (low === 0) return { kind: 'exited', pid, code: (status >> 8) & 0xff, raw: status };
  if ((status & 0xff) === 0x7f) {
    return { kind: 'stopped', pid, signal: (status >> 8) & 0xff, event: (status >>> 16) & 0xff, raw: status };
  }
  if (status === 0xffff) return { kind: 'continued', pid, raw: status };
  return { kind: 'signaled', pid, signal: low, coreDumped: (status & 0x80) !== 0, raw: status };
}

const statusBuf = Buffer.alloc(4);

/**
 * wait4(pid, &status, options, NULL). Blocks the calling thread unless WNOHANG is given; returns
 * { kind: 'none' } when WNOHANG found nothing. Throws SysError (ECHILD when `pid` is neither our
 * child nor our tracee, EINTR is retried).
 */
export function wait4(pid: Pid | -1, options: number): WaitStatus {
  for (let attempt = 0; attempt < 1000; attempt++) {
    try {
      const got = sysCallNumber('wait4', SYSCALL_NUMBERS.wait4, [pid, statusBuf, options, 0], `pid ${pid}`);
      if (got === 0) return { kind: 'none' };
      return decodeWaitStatus(got as Pid, statusBuf.readInt32LE(0));
    } catch (err) {
      if ((err as { code?: string }).code === 'EINTR') continue;
      throw err;
    }
  }
  throw new Error(`wait4(${pid}): interrupted 1000 times in a row`);
}

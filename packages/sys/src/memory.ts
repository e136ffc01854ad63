// Reading and writing another process's memory without ptrace round trips per word.
//
// - process_vm_readv/writev(2): one call, many ranges; honours page protections (a write to a
//   read-only or executable page fails with EFAULT), needs PTRACE_MODE_ATTACH_REALCREDS.
// - /proc/PID/mem (proc(5)): pread/pwrite at the address; the kernel uses FOLL_FORCE, so a tracer
//   may write read-only and executable pages (a private page is copied on write, as for breakpoints).
import { addressOf, sysCallNumber } from './ffi.js';
import { SYSCALL_NUMBERS } from './syscall-numbers.js';
import type { Pid, RemoteAddress } from './types.js';

/** A range of a remote address space. */
export interface RemoteRange {
  addr: RemoteAddress;
  len: number;
}

/** IOV_MAX: the kernel refuses more iovecs per call (UIO_MAXIOV). */
export const IOV_MAX = 1024;

function iovecs(entries: Array<[bigint, number]>): Buffer {
  const buf = Buffer.alloc(entries.length * 16);
  entries.forEach(([addr, len], i) => {
    buf.writeBigUInt64LE(addr, i * 16);
    buf.writeBigUInt64LE(BigInt(len), i * 16 + 8);
  });
  return buf;
}

/**
 * process_vm_readv(pid, [local], 1, ranges, n, 0): fills `local` from the remote ranges in order.
 * Returns the number of bytes read, which is short when a range crosses into unmapped memory.
 */
export function processVmReadv(pid: Pid, local: Uint8Array, ranges: readonly RemoteRange[]): number {
  if (ranges.length > IOV_MAX) throw new RangeError(`process_vm_readv: ${ranges.length} ranges > IOV_MAX`);
  const liov = iovecs([[addressOf(local), local.byteLength]]);
  const riov = iovecs(ranges.map((r) => [r.addr, r.len]));
  return sysCallNumber('process_vm_readv', SYSCALL_NUMBERS.process_vm_readv, [pid, liov, 1, riov, ranges.length, 0], `pid ${pid}`);
}

/** process_vm_writev(pid, [local], 1, ranges, n, 0). Returns bytes written. */
export function processVmWritev(pid: Pid, local: Uint8Array, ranges: readonly RemoteRange[]): number {
  if (ranges.length > IOV_MAX) throw new RangeError(`process_vm_writev: ${ranges.length} ranges > IOV_MAX`);
  const liov = iovecs([[addressOf(local), local.byteLength]]);
  const riov = iovecs(ranges.map((r) => [r.addr, r.len]));
  return sysCallNumber('process_vm_writev', SYSCALL_NUMBERS.process_vm_writev, [pid, liov, 1, riov, ranges.length, 0], `pid ${pid}`);
}

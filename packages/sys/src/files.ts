// File-descriptor level calls: open/close/read/write at offsets, pipes, splice/vmsplice, memfd,
// mmap, ioctl, fcntl. Node's fs covers some of these, but not with 64-bit offsets beyond 2^53
// (/proc/PID/mem addresses), nor pipes, splice, memfd or mmap.
import { addressOf, sysCall, sysCallNumber } from './ffi.js';
import { SYSCALL_NUMBERS as N } from './syscall-numbers.js';
import { asFd, type Fd } from './types.js';

export const O = {
  RDONLY: 0, WRONLY: 1, RDWR: 2, CREAT: 0o100, EXCL: 0o200, NOCTTY: 0o400, TRUNC: 0o1000,
  APPEND: 0o2000, NONBLOCK: 0o4000, DIRECTORY: 0o200000, NOFOLLOW: 0o400000, CLOEXEC: 0o2000000,
  PATH: 0o10000000,
} as const;
export const AT_FDCWD = -100;

function cstr(s: string): Buffer {
  return Buffer.from(`${s}\0`, 'utf8');
}

/** openat(AT_FDCWD, path, flags, mode). */
export function open(path: string, flags: number, mode = 0o600): Fd {
  return asFd(sysCallNumber('openat', N.openat, [AT_FDCWD, cstr(path), flags | O.CLOEXEC, mode], path));
}

/**
 * open_by_handle_at(mountFd, handle, flags): opens the inode a file handle (name_to_handle_at,
 * or the f_handle of /proc/PID/fdinfo) names, on the filesystem `mountFd` is on. Needs
 * CAP_DAC_READ_SEARCH.
 */
export function openByHandleAt(mountFd: Fd, handleType: number, handle: Uint8Array, flags: number): Fd {
  const fh = Buffer.alloc(8 + handle.byteLength);
  fh.writeUInt32LE(handle.byteLength, 0);
  fh.writeInt32LE(handleType, 4);
  fh.set(handle, 8);
  return asFd(sysCallNumber('open_by_handle_at', N.open_by_handle_at, [mountFd, fh, flags | O.CLOEXEC], `handle type ${handleType}`));
}

/** linkat flags (linkat(2)). */
export const AT_SYMLINK_FOLLOW = 0x400;
export const AT_EMPTY_PATH = 0x1000;

/**
 * linkat(AT_FDCWD, oldPath, AT_FDCWD, newPath, flags): a new name for an inode. With
 * AT_SYMLINK_FOLLOW, `oldPath` may be a /proc/PID/fd/N link, which names the open file itself:
 * that links a file whose own name is gone, as long as the kernel still allows it a name (it has
 * other links, or it is an O_TMPFILE opened without O_EXCL); an unlinked file with no link left
 * fails with ENOENT (fs/namei.c refuses nlink 0 inodes not marked I_LINKABLE).
 */
export function linkat(oldPath: string, newPath: string, flags = AT_SYMLINK_FOLLOW): void {
  sysCallNumber('linkat', N.linkat, [AT_FDCWD, cstr(oldPath), AT_FDCWD, cstr(newPath), flags], `${oldPath} -> ${newPath}`);
}

/** close(fd). */
export function close(fd: Fd): void {
  sysCallNumber('close', N.close, [fd], `fd ${fd}`);
}

/** read(fd, buf, len). */
export function read(fd: Fd, buf: Uint8Array, len = buf.byteLength): number {
  return sysCallNumber('read', N.read, [fd, buf, len], `fd ${fd}`);
}

/** write(fd, buf, len). */
export function write(fd: Fd, buf: Uint8Array, len = buf.byteLength): number {
  return sysCallNumber('write', N.write, [fd, buf, len], `fd ${fd}`);
}

/** pread64(fd, buf, len, offset): offset is a bigint so that any user address of /proc/PID/mem fits. */
export function pread(fd: Fd, buf: Uint8Array, offset: bigint, len = buf.byteLength): number {
  return sysCallNumber('pread64', N.pread64, [fd, buf, len, offset], `fd ${fd} @0x${offset.toString(16)}`);
}

/** pwrite64(fd, buf, len, offset). */
export function pwrite(fd: Fd, buf: Uint8Array, offset: bigint, len = buf.byteLength): number {
  return sysCallNumber('pwrite64', N.pwrite64, [fd, buf, len, offset], `fd ${fd} @0x${offset.toString(16)}`);
}

/** ftruncate(fd, length). */
export function ftruncate(fd: Fd, length: number | bigint): void {
  sysCallNumber('ftruncate', N.ftruncate, [fd, length], `fd ${fd}`);
}

/** lseek(2) whence values. */
export const SEEK = { SET: 0, CUR: 1, END: 2 } as const;

/** lseek(fd, offset, whence): the new offset. SEEK.CUR with 0 reads the position (shared by every copy of the open file). */
export function lseek(fd: Fd, offset: number | bigint, whence: number): number {
  return sysCallNumber('lseek', N.lseek, [fd, offset, whence], `fd ${fd}`);
}

/** sync_file_range(2) flags. */
export const SYNC_FILE_RANGE = { WAIT_BEFORE: 1, WRITE: 2, WAIT_AFTER: 4 } as const;

/** sync_file_range(fd, offset, nbytes, flags): with WRITE alone, starts the writeback of that range and returns. */
export function syncFileRange(fd: Fd, offset: number | bigint, nbytes: number | bigint, flags: number): void {
  sysCallNumber('sync_file_range', N.sync_file_range, [fd, offset, nbytes, flags], `fd ${fd}`);
}

/** Page-cache state of a file range (cachestat(2), Linux 6.5+), in pages. */
export interface CacheStat {
  readonly cache: number;
  readonly dirty: number;
  readonly writeback: number;
  readonly evicted: number;
  readonly recentlyEvicted: number;
}

/** cachestat(fd, {off, len}, &cstat, 0): the page cache of bytes [off, off + len) of the file (len 0: to its end). */
export function cachestat(fd: Fd, off: number | bigint, len: number | bigint): CacheStat {
  const range = Buffer.alloc(16);
  range.writeBigUInt64LE(BigInt(off), 0);
  range.writeBigUInt64LE(BigInt(len), 8);
  const out = Buffer.alloc(40); // struct cachestat: five __u64
  sysCallNumber('cachestat', N.cachestat, [fd, range, out, 0], `fd ${fd}`);
  const word = (i: number) => Number(out.readBigUInt64LE(i * 8));
  return { cache: word(0), dirty: word(1), writeback: word(2), evicted: word(3), recentlyEvicted: word(4) };
}

export const F = { DUPFD: 0, GETFD: 1, SETFD: 2, GETFL: 3, SETFL: 4, SETLEASE: 1024, GETLEASE: 1025, DUPFD_CLOEXEC: 1030, SETPIPE_SZ: 1031, GETPIPE_SZ: 1032 } as const;
export const FD_CLOEXEC = 1;

/** fcntl(fd, cmd, arg): arg is an integer, or a buffer for commands that read or fill a struct. */
export function fcntl(fd: Fd, cmd: number, arg: number | bigint | Uint8Array = 0): number {
  return sysCallNumber('fcntl', N.fcntl, [fd, cmd, arg], `fd ${fd} cmd ${cmd}`);
}

/** ioctl(fd, request, arg): arg is an integer or a buffer the kernel reads or fills. */
export function ioctl(fd: Fd, request: number | bigint, arg: number | bigint | Uint8Array = 0): number {
  return sysCallNumber('ioctl', N.ioctl, [fd, request, arg], `fd ${fd} request 0x${request.toString(16)}`);
}

/** pipe2(flags): [read end, write end]. */
export function pipe2(flags: number = O.CLOEXEC): [Fd, Fd] {
  const fds = Buffer.alloc(8);
  sysCallNumber('pipe2', N.pipe2, [fds, flags]);
  return [asFd(fds.readInt32LE(0)), asFd(fds.readInt32LE(4))];
}

export const SPLICE_F = { MOVE: 1, NONBLOCK: 2, MORE: 4, GIFT: 8 } as const;

/**
 * splice(fdIn, offIn, fdOut, offOut, len, flags). Offsets are null for pipes and sockets (and
 * then the file position is used); a given offset is read and not updated here.
 */
export function splice(fdIn: Fd, offIn: bigint | null, fdOut: Fd, offOut: bigint | null, len: number, flags = 0): number {
  const inOff = offIn === null ? null : Buffer.alloc(8);
  const outOff = offOut === null ? null : Buffer.alloc(8);
  if (inOff && offIn !== null) inOff.writeBigInt64LE(offIn);
  if (outOff && offOut !== null) outOff.writeBigInt64LE(offOut);
  return sysCallNumber('splice', N.splice, [fdIn, inOff, fdOut, outOff, len, flags], `fd ${fdIn} -> fd ${fdOut}`);
}

/** tee(fdIn, fdOut, len, flags): copies up to len bytes between two pipes without consuming them. */
export function tee(fdIn: Fd, fdOut: Fd, len: number, flags = 0): number {
  return sysCallNumber('tee', N.tee, [fdIn, fdOut, len, flags], `fd ${fdIn} -> fd ${fdOut}`);
}

/** vmsplice(fd, iov, n, flags) with local buffers. */
export function vmsplice(fd: Fd, buffers: readonly Uint8Array[], flags = 0): number {
  const iov = Buffer.alloc(buffers.length * 16);
  buffers.forEach((b, i) => {
    iov.writeBigUInt64LE(addressOf(b), i * 16);
    iov.writeBigUInt64LE(BigInt(b.byteLength), i * 16 + 8);
  });
  return sysCallNumber('vmsplice', N.vmsplice, [fd, iov, buffers.length, flags], `fd ${fd}`);
}

export const MFD = { CLOEXEC: 1, ALLOW_SEALING: 2, NOEXEC_SEAL: 8, EXEC: 0x10 } as const;

/** memfd_create(name, flags). */
export function memfdCreate(name: string, flags: number = MFD.CLOEXEC): Fd {
  return asFd(sysCallNumber('memfd_create', N.memfd_create, [cstr(name), flags], name));
}

export const PROT = { NONE: 0, READ: 1, WRITE: 2, EXEC: 4 } as const;
export const MAP = {
  SHARED: 1, PRIVATE: 2, FIXED: 0x10, ANONYMOUS: 0x20, GROWSDOWN: 0x100, NORESERVE: 0x4000,
  POPULATE: 0x8000, FIXED_NOREPLACE: 0x10_0000,
} as const;

/** mmap(addr, len, prot, flags, fd, off) in this process; returns the mapping address. */
export function mmap(addr: bigint, len: number | bigint, prot: number, flags: number, fd: number, off: bigint | number = 0): bigint {
  return sysCall('mmap', N.mmap, [addr, len, prot, flags, fd, off]);
}

/** munmap(addr, len). */
export function munmap(addr: bigint, len: number | bigint): void {
  sysCall('munmap', N.munmap, [addr, len]);
}

/** poll(2) event bits. */
export const POLL = { IN: 0x001, PRI: 0x002, OUT: 0x004, ERR: 0x008, HUP: 0x010, NVAL: 0x020 } as const;

/** poll(2) on one fd: the revents bits, 0 when `timeoutMs` passed (0: do not wait). */
export function pollOne(fd: Fd, events: number, timeoutMs: number): number {
  const pfd = Buffer.alloc(8);
  pfd.writeInt32LE(fd, 0);
  pfd.writeInt16LE(events, 4);
  const ready = sysCallNumber('poll', N.poll, [pfd, 1, timeoutMs], `fd ${fd}`);
  return ready === 0 ? 0 : pfd.readUInt16LE(6);
}

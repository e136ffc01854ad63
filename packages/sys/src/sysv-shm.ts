// SysV shared memory in this process: shmget(2), shmat(2), shmdt(2), shmctl(2) (IPC_STAT,
// IPC_SET, IPC_RMID), and the IPC namespace's shm_next_id, which makes the next shmget of the
// namespace take a chosen id (proc(5) /proc/sys/kernel/shm_next_id: needs CAP_CHECKPOINT_RESTORE
// or CAP_SYS_ADMIN; the kernel sets it back to -1 once a segment is made, and refuses a write
// of -1 itself).
//
// On x86_64 the shmctl system call always uses the 64-bit structures (IPC_64): struct
// shmid64_ds, which begins with struct ipc64_perm.
import { readFileSync, writeFileSync } from 'node:fs';
import { sysCall, sysCallNumber } from './ffi.js';
import { SYSCALL_NUMBERS as N } from './syscall-numbers.js';

export const IPC = { PRIVATE: 0, CREAT: 0o1000, EXCL: 0o2000, RMID: 0, SET: 1, STAT: 2 } as const;
/** shmat flags, and the kernel's own bits in shm_perm.mode (SHM_DEST: IPC_RMID was called; SHM_LOCKED: SHM_LOCK). */
export const SHM = { RDONLY: 0o10000, RND: 0o20000, REMAP: 0o40000, EXEC: 0o100000, DEST: 0o1000, LOCKED: 0o2000 } as const;

/** What shmctl(IPC_STAT) reports of a segment (struct shmid64_ds). */
export interface ShmStat {
  readonly key: number;
  readonly uid: number;
  readonly gid: number;
  readonly cuid: number;
  readonly cgid: number;
  /** Permission bits with SHM_DEST and SHM_LOCKED. */
  readonly mode: number;
  readonly size: bigint;
  readonly cpid: number;
  readonly lpid: number;
  /** Current attachments (each mapping of it counts, in any process). */
  readonly nattch: number;
}

/** sizeof(struct shmid64_ds) on x86_64: ipc64_perm (48) + segsz, 3 times, 2 pids, nattch, 2 unused. */
const SHMID64_DS_SIZE = 112;

/** shmget(key, size, flags): the id of the segment with `key` (made with IPC_CREAT). */
export function shmget(key: number, size: bigint | number, flags: number): number {
  return sysCallNumber('shmget', N.shmget, [key, size, flags], `key 0x${(key >>> 0).toString(16)}`);
}

/** shmat(id, addr, flags) in this process: the address it is attached at. */
export function shmat(id: number, addr: bigint = 0n, flags = 0): bigint {
  return sysCall('shmat', N.shmat, [id, addr, flags], `segment ${id}`);
}

/** shmdt(addr). */
export function shmdt(addr: bigint): void {
  sysCallNumber('shmdt', N.shmdt, [addr], `0x${addr.toString(16)}`);
}

/** shmctl(id, IPC_STAT). */
export function shmStat(id: number): ShmStat {
  const ds = Buffer.alloc(SHMID64_DS_SIZE);
  sysCallNumber('shmctl', N.shmctl, [id, IPC.STAT, ds], `IPC_STAT of segment ${id}`);
  return {
    key: ds.readInt32LE(0), uid: ds.readUInt32LE(4), gid: ds.readUInt32LE(8), cuid: ds.readUInt32LE(12), cgid: ds.readUInt32LE(16),
    mode: ds.readUInt32LE(20) & 0xffff, size: ds.readBigUInt64LE(48), cpid: ds.readInt32LE(80), lpid: ds.readInt32LE(84),
    nattch: Number(ds.readBigUInt64LE(88)),
  };
}

/** shmctl(id, IPC_SET): owner and permission bits (the low 9 bits of `mode`), as IPC_SET allows. */
export function shmSetOwner(id: number, uid: number, gid: number, mode: number): void {
  const ds = Buffer.alloc(SHMID64_DS_SIZE);
  ds.writeUInt32LE(uid, 4);
  ds.writeUInt32LE(gid, 8);
  ds.writeUInt32LE(mode & 0o777, 20);
  sysCallNumber('shmctl', N.shmctl, [id, IPC.SET, ds], `IPC_SET of segment ${id}`);
}

/** shmctl(id, IPC_RMID): the segment goes once its last attachment does. */
export function shmRemove(id: number): void {
  sysCallNumber('shmctl', N.shmctl, [id, IPC.RMID, 0], `IPC_RMID of segment ${id}`);
}

const SHM_NEXT_ID = '/proc/sys/kernel/shm_next_id';

/** The id the next shmget of this IPC namespace takes (-1: the kernel's own choice). */
export function shmNextId(): number {
  return Number(readFileSync(SHM_NEXT_ID, 'utf8').trim());
}

/** Makes the next shmget of this IPC namespace take id `id` (or the next free index after it, if its index is taken). */
export function setShmNextId(id: number): void {
  writeFileSync(SHM_NEXT_ID, String(id));
}

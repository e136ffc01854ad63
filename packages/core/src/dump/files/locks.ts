// File locks held through a task's descriptors (criu's --file-locks): flock(2) locks, POSIX
// record locks (fcntl F_SETLK), open-file-description locks (F_OFD_SETLK) and leases
// (F_SETLEASE). The kernel lists them per descriptor in /proc/PID/fdinfo/N ("lock:" lines, the
// /proc/locks format), so nothing runs in the task to find them. Entries are file_lock_entry as
// CRIU 4.2 writes them (filelocks.img).

/**
 * The lock kinds CRIU stores in `flag`: CRIU's own numbering (criu/include/file-lock.h: FL_POSIX
 * 1, FL_FLOCK 2, FL_OFD 4, FL_LEASE 8), not the kernel's fl_flags (where OFD is 1024 and LEASE
 * 32): CRIU's restore reads any other value as "Unknown file lock style".
 */
export const FILE_LOCK_FLAG = { POSIX: 1, FLOCK: 2, OFD: 4, LEASE: 8 } as const;
/** F_RDLCK, F_WRLCK (for a lease: its type, as F_SETLEASE takes it). */
export const FILE_LOCK_TYPE = { READ: 0, WRITE: 1 } as const;
/**
 * CRIU's LEASE_BREAKING bit in `type` of a lease being broken: type = the type the lease must go
 * down to (F_RDLCK 0 for a write lease a reader broke, F_UNLCK 2 for one a writer broke) | 4.
 */
export const LEASE_BREAKING = 4;
const F_UNLCK = 2;

export interface FileLockLine {
  readonly flag: number;
  readonly type: number;
  /** The holder /proc shows: the process for POSIX and flock locks and leases, -1 for OFD locks. */
  readonly holder: number;
  readonly device: string;
  readonly inode: string;
  readonly start: bigint;
  /** 0: to the end of the file, as struct flock's l_len says it. */
  readonly len: bigint;
}

const KINDS: Readonly<Record<string, number>> = { POSIX: FILE_LOCK_FLAG.POSIX, FLOCK: FILE_LOCK_FLAG.FLOCK, OFDLCK: FILE_LOCK_FLAG.OFD, LEASE: FILE_LOCK_FLAG.LEASE };

/** The "lock:" lines of one fdinfo text, or an error naming a kind or state criu-ts cannot restore. */
export function fileLocks(fdinfo: string, what: string): FileLockLine[] {
  const locks: FileLockLine[] = [];
  const line = /^lock:\s+\d+:\s+(\S+)\s+(\S+)\s+(\S+)\s+(-?\d+)\s+([0-9a-f]+:[0-9a-f]+):(\d+)\s+(\d+)\s+(\S+)/gm;
  for (let m = line.exec(fdinfo); m; m = line.exec(fdinfo)) {
    const [, kind, mode, access, holder, device, inode, start, end] = m;
    const flag = KINDS[kind!];
    if (flag === undefined) throw new Error(`${what} holds a ${kind} lock; only flock, POSIX and OFD locks and leases can be dumped`);
    if (flag === FILE_LOCK_FLAG.LEASE) {
      // fs/locks.c prints a lease as ACTIVE, BREAKING (a conflicting open started breaking it:
      // the holder has been signalled and the opener waits up to lease-break-time) or BREAKER
      // (the opener's own record, which no fdinfo shows). For a lease being broken it prints
      // the type the lease must go down to (target_leasetype: READ, or UNLCK), which is what
      // CRIU records, with LEASE_BREAKING.
      if (mode === 'BREAKING') {
        if (access !== 'READ' && access !== 'UNLCK') throw new Error(`${what} holds a lease being broken to ${access}, which no lease break does`);
        locks.push({
          flag, type: (access === 'READ' ? FILE_LOCK_TYPE.READ : F_UNLCK) | LEASE_BREAKING, holder: Number(holder), device: device!, inode: inode!, start: BigInt(start!), len: end === 'EOF' ? 0n : BigInt(end!) - BigInt(start!) + 1n,
        });
        continue;
      }
      if (mode !== 'ACTIVE') throw new Error(`${what} holds a lease in state ${mode}; only active leases and leases being broken can be dumped`);
    } else if (mode !== 'ADVISORY') {
      throw new Error(`${what} holds a ${mode} ${kind} lock; only advisory locks can be dumped`);
    }
    if (access !== 'READ' && access !== 'WRITE') throw new Error(`${what} holds a ${kind} lock in state ${access}`);
    const first = BigInt(start!);
    locks.push({
      flag, type: access === 'READ' ? FILE_LOCK_TYPE.READ : FILE_LOCK_TYPE.WRITE, holder: Number(holder), device: device!, inode: inode!,
      start: first, len: end === 'EOF' ? 0n : BigInt(end!) - first + 1n,
    });
  }
  return locks;
}

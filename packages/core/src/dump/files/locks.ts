// File locks held through a task's descriptors (criu's --file-locks): flock(2) locks, POSIX
// record locks (fcntl F_SETLK) and open-file-description locks (F_OFD_SETLK). The kernel lists
// them per descriptor in /proc/PID/fdinfo/N ("lock:" lines, the /proc/locks format), so nothing
// runs in the task to find them. Entries are file_lock_entry as CRIU writes them (file-lock.img).

/** The kernel's fl_flags bits CRIU stores in `flag`. */
export const FILE_LOCK_FLAG = { POSIX: 1, FLOCK: 2, LEASE: 32, OFD: 1024 } as const;
/** F_RDLCK, F_WRLCK. */
export const FILE_LOCK_TYPE = { READ: 0, WRITE: 1 } as const;

export interface FileLockLine {
  readonly flag: number;
  readonly type: number;
  /** The holder /proc shows: the process for POSIX and flock locks, -1 for OFD locks. */
  readonly holder: number;
  readonly device: string;
  readonly inode: string;
  readonly start: bigint;
  /** 0: to the end of the file, as struct flock's l_len says it. */
  readonly len: bigint;
}

/** The "lock:" lines of one fdinfo text, or an error naming a kind criu-ts cannot restore. */
export function fileLocks(fdinfo: string, what: string): FileLockLine[] {
  const locks: FileLockLine[] = [];
  const line = /^lock:\s+\d+:\s+(\S+)\s+(\S+)\s+(\S+)\s+(-?\d+)\s+([0-9a-f]+:[0-9a-f]+):(\d+)\s+(\d+)\s+(\S+)/gm;
  for (let m = line.exec(fdinfo); m; m = line.exec(fdinfo)) {
    const [, kind, mode, access, holder, device, inode, start, end] = m;
    const flag = kind === 'POSIX' ? FILE_LOCK_FLAG.POSIX : kind === 'FLOCK' ? FILE_LOCK_FLAG.FLOCK : kind === 'OFDLCK' ? FILE_LOCK_FLAG.OFD : undefined;
    if (flag === undefined) throw new Error(`${what} holds a ${kind} lock; only flock, POSIX and OFD locks can be dumped`);
    if (mode !== 'ADVISORY') throw new Error(`${what} holds a ${mode} ${kind} lock; only advisory locks can be dumped`);
    if (access !== 'READ' && access !== 'WRITE') throw new Error(`${what} holds a ${kind} lock in state ${access}`);
    const first = BigInt(start!);
    locks.push({
      flag, type: access === 'READ' ? FILE_LOCK_TYPE.READ : FILE_LOCK_TYPE.WRITE, holder: Number(holder), device: device!, inode: inode!,
      start: first, len: end === 'EOF' ? 0n : BigInt(end!) - first + 1n,
    });
  }
  return locks;
}

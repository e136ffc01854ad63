// Open files of a task: files.img (one file_entry per open file description), fdinfo-N.img (one
// entry per descriptor, pointing at its file id), and what deleted files need (remap-fpath.img
// plus a ghost-file-N.img holding the contents).
//
// Regular files, directories and character devices such as /dev/null are REG entries, named by
// path, with the open flags and position /proc/PID/fdinfo shows. A file that was unlinked while
// open keeps its name with " (deleted)" stripped; its contents go to a ghost image so restore can
// recreate it. Other kinds of descriptors (pipes, sockets, eventfd...) are refused with a clear
// error until their dumpers exist.
import { closeSync, fstatSync, openSync, readFileSync, readSync, readlinkSync, statSync, type Stats } from 'node:fs';
import type { DecodedMessage } from '@criu-ts/images';

/** fd_types values (fdinfo.proto). */
export const FD_TYPE = { REG: 1, PIPE: 2, FIFO: 3, INETSK: 4, UNIXSK: 5, TTY: 11 } as const;
const O_CLOEXEC = 0o2000000;
const FD_CLOEXEC = 1;

export class UnsupportedFileError extends Error {
  constructor(
    readonly fd: number,
    readonly target: string,
  ) {
    super(`fd ${fd} (${target}) is of a kind criu-ts cannot dump yet`);
    this.name = 'UnsupportedFileError';
  }
}

export interface GhostFile {
  readonly id: number;
  readonly entry: DecodedMessage;
  /** Where to read the contents from: the task's fd through /proc (the file has no name any more). */
  readonly source: string;
  readonly size: number;
}

const noOwner = () => ({ uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 });

export class FileTable {
  private nextId = 1;
  readonly files: DecodedMessage[] = [];
  readonly remaps: DecodedMessage[] = [];
  readonly ghosts: GhostFile[] = [];
  private readonly mappedFiles = new Map<string, number>();
  private nextGhostId = 1;

  constructor(private readonly ghostLimit: number) {}

  private allocate(): number {
    return this.nextId++;
  }

  private regEntry(id: number, path: string, flags: number, pos: bigint, stats: Stats | undefined, sizeFromStat: boolean): DecodedMessage {
    const reg: DecodedMessage = { id, flags, pos, fown: noOwner(), name: path };
    if (stats) {
      if (sizeFromStat && stats.isFile()) reg.size = BigInt(stats.size);
      reg.mode = stats.mode;
    }
    return reg;
  }

  /** The file of a file-backed mapping (one id per file, whatever the number of VMAs). */
  mappedFile(path: string, openFlags: number, statSource: string): number {
    const key = `${path}\0${openFlags}`;
    const known = this.mappedFiles.get(key);
    if (known !== undefined) return known;
    const id = this.allocate();
    let stats: Stats | undefined;
    try {
      stats = statSync(statSource);
    } catch {
      stats = undefined;
    }
    this.files.push({ type: FD_TYPE.REG, id, reg: this.regEntry(id, path, openFlags, 0n, stats, true) });
    this.mappedFiles.set(key, id);
    return id;
  }

  /** A directory given by path (cwd, root): CRIU records these with no open flags. */
  directory(path: string, statSource: string): number {
    const id = this.allocate();
    this.files.push({ type: FD_TYPE.REG, id, reg: this.regEntry(id, path, 0, 0n, statSync(statSource), false) });
    return id;
  }

  /**
   * One descriptor of task `pid`. `sameAs` finds an earlier fd sharing the open file description
   * (dup, inherited): such fds share one file entry, as they share one offset.
   */
  descriptor(pid: number, fd: number, sameAs: (fd: number) => number | undefined): DecodedMessage {
    const procFd = `/proc/${pid}/fd/${fd}`;
    const info = parseFdinfo(readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8'));
    const fdinfoFlags = info.flags & O_CLOEXEC ? FD_CLOEXEC : 0;
    const shared = sameAs(fd);
    if (shared !== undefined) return { id: shared, flags: fdinfoFlags, type: FD_TYPE.REG, fd };

    let target = readlinkSync(procFd);
    const stats = statSync(procFd);
    if (!stats.isFile() && !stats.isDirectory() && !stats.isCharacterDevice() && !stats.isBlockDevice()) {
      throw new UnsupportedFileError(fd, target);
    }
    if (stats.isCharacterDevice() && /^\/dev\/(pts\/|tty)/.test(target)) throw new UnsupportedFileError(fd, `${target}, a terminal (use --shell-job)`);
    const id = this.allocate();
    const flags = info.flags & ~O_CLOEXEC;
    const deleted = target.endsWith(' (deleted)') && stats.nlink === 0;
    if (deleted) target = target.slice(0, -' (deleted)'.length);
    this.files.push({ type: FD_TYPE.REG, id, reg: this.regEntry(id, target, flags, info.pos, stats, true) });
    if (deleted) this.ghost(id, procFd, stats);
    return { id, flags: fdinfoFlags, type: FD_TYPE.REG, fd };
  }

  private ghost(originalId: number, procFd: string, stats: Stats): void {
    if (stats.isFile() && stats.size > this.ghostLimit) {
      throw new Error(`deleted file behind ${procFd} is ${stats.size} bytes, over the ghost limit of ${this.ghostLimit} (--ghost-limit)`);
    }
    const ghostId = this.nextGhostId++;
    const entry: DecodedMessage = {
      uid: stats.uid, gid: stats.gid, mode: stats.mode,
      dev: encodeKernelDev(stats.dev), ino: BigInt(stats.ino),
      atim: timeval(stats.atimeMs), mtim: timeval(stats.mtimeMs),
    };
    this.remaps.push({ orig_id: originalId, remap_id: ghostId, remap_type: 1 /* GHOST */ });
    this.ghosts.push({ id: ghostId, entry, source: procFd, size: stats.isFile() ? stats.size : 0 });
  }
}

/** Reads a ghost file's contents through the task's fd link. */
export function readGhostContents(ghost: GhostFile): Uint8Array {
  const fd = openSync(ghost.source, 'r');
  try {
    const size = fstatSync(fd).size;
    const out = Buffer.alloc(size);
    for (let done = 0; done < size; ) {
      const n = readSync(fd, out, done, size - done, done);
      if (n === 0) break;
      done += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

function timeval(ms: number): DecodedMessage {
  const sec = Math.floor(ms / 1000);
  return { tv_sec: BigInt(sec), tv_usec: BigInt(Math.round((ms - sec * 1000) * 1000)) };
}

/** st_dev as the kernel encodes it for CRIU's `(criu).dev` fields: major << 20 | minor. */
export function encodeKernelDev(dev: number): number {
  // glibc's st_dev encoding: major in bits 8-19 (and 32+), minor in bits 0-7 and 20+.
  const major = ((dev >>> 8) & 0xfff) | Math.floor(dev / 2 ** 32) & ~0xfff;
  const minor = (dev & 0xff) | ((dev >>> 12) & ~0xff & 0xfff00);
  return ((major << 20) | minor) >>> 0;
}

export interface Fdinfo {
  readonly pos: bigint;
  readonly flags: number;
  readonly mntId: number;
}

export function parseFdinfo(text: string): Fdinfo {
  const field = (name: string): string | undefined => new RegExp(`^${name}:\\s*(\\S+)`, 'm').exec(text)?.[1];
  return {
    pos: BigInt(field('pos') ?? '0'),
    flags: parseInt(field('flags') ?? '0', 8),
    mntId: Number(field('mnt_id') ?? '-1'),
  };
}

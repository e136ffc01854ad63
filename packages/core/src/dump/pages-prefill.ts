// Page-cache pages for the pages files, made before the freeze.
//
// The copy of a task's pages into a new file allocates one page-cache page per page it writes,
// while the task is frozen. Where the kernel has to find those pages, that costs more than the
// copy itself: on these machines (a PVM guest whose free memory goes back to the host), a page
// the guest has not used lately costs a host fault on its first touch. Measured in C
// (vmsplice + splice of 64 MiB into a new file): 148-161 ms when the guest's free memory was
// cold, 12-14 ms when it was warm; into a file whose pages are there already and dirty,
// 8.5-10 ms in both cases. For 1 GiB: 2.5-3.0 s into a new file when cold, 0.2 s over present
// pages. A dump of a process restored a few seconds before meets the cold case every time.
//
// So before the freeze, each process of the tree holding at least PREFILL_MIN_BYTES of anonymous
// memory gets an unnamed file (O_TMPFILE) in the images directory, filled with as many zero
// bytes as its RssAnon. The copy overwrites them; the memory stage gives the file its name
// (pages-N.img) when it opens it and cuts it to what the copy wrote. A file nobody takes (its
// process exited, or the dump failed) is closed and, never having had a name, is gone.
//
// The zeros are dirty pages: so that the flusher never writes them out, the total stays within
// half of what is left below the kernel's background writeback threshold, and within half the
// room criu-ts's memory cgroups have left: the file pages are charged there (our writes), not to
// the frozen task's group, and a group at its limit would reclaim them by writing them out.
//
// The fill takes ~15 ms per 64 MiB here. `forTree` fills synchronously (what dump() does when
// given nothing); `start` fills on libuv's thread pool, so that a caller with other work before
// the dump (the criu-ts command loads its native side meanwhile) gets the files for free, and
// passes them to dump() once `ready` has settled. This module loads no native code for that
// reason: only node:fs and /proc readers.
import { closeSync, openSync, readdirSync, readFileSync, writeSync, writev } from 'node:fs';
import { asFd, asPid, type Fd } from '@criu-ts/sys/types';
import { memoryHeadroom } from '../proc/memory-cgroup.js';
import { readChildren, readStatus } from '../proc/task-files.js';

/** open(2) O_TMPFILE (__O_TMPFILE | O_DIRECTORY), with O_RDWR: an unnamed file in a directory. */
const O_TMPFILE_RDWR = 0o20200000 | 0o2;
/** A process with less anonymous memory than this gets no prefilled file: too little to matter. */
const PREFILL_MIN_BYTES = 4 << 20;
/** The tree walk stops after this many processes (the rest get no prefill). */
const MAX_PROCESSES = 4096;
/** Bytes written per call; the zero buffer is made on first use, not when criu-ts starts. */
const CHUNK = 1 << 20;
/** Buffers per writev(2) of the asynchronous fill (IOV_MAX is 1024). */
const CHUNKS_PER_WRITEV = 256;
let zeros: Buffer | undefined;

export class PagesPrefill {
  private readonly files = new Map<number, FileState>();
  private filling = false;
  /** Settles (never rejects) once every file is filled; a file whose fill failed is dropped. */
  readonly ready: Promise<void>;

  private constructor(directory: string, rootPid: number, background: boolean) {
    const plan = planFiles(directory, rootPid);
    for (const f of plan) this.files.set(f.pid, f);
    if (!background || plan.length === 0) {
      for (const f of plan) {
        try {
          zeros ??= Buffer.alloc(CHUNK);
          for (let at = 0; at < f.bytes; ) at += writeSync(f.fd, zeros, 0, Math.min(CHUNK, f.bytes - at), at);
        } catch {
          this.drop(f.pid);
        }
      }
      this.ready = Promise.resolve();
      return;
    }
    this.filling = true;
    this.ready = Promise.all(plan.map((f) => fillInBackground(f).catch(() => this.drop(f.pid)))).then(() => {
      this.filling = false;
    });
  }

  /**
   * Prefills files in `directory` for `rootPid` and its descendants (as /proc shows them now;
   * only an estimate), before returning. Never throws: a file system without O_TMPFILE, or any
   * other failure, leaves the processes concerned without a prefilled file.
   */
  static forTree(directory: string, rootPid: number): PagesPrefill {
    return new PagesPrefill(directory, rootPid, false);
  }

  /**
   * The same files as forTree, filled in the background (libuv's thread pool): pass the result
   * to dump() once `ready` has settled. Opening them is synchronous (and quick); never throws.
   */
  static start(directory: string, rootPid: number): PagesPrefill {
    return new PagesPrefill(directory, rootPid, true);
  }

  /** Whether the background fill of {@link start} is still running: the files are not ready. */
  get stillFilling(): boolean {
    return this.filling;
  }

  /** Bytes prefilled in all, for the stats and the log. */
  get totalBytes(): number {
    let n = 0;
    for (const f of this.files.values()) n += f.bytes;
    return n;
  }

  /**
   * The unnamed file prefilled for `pid` (ImageDir.linkUnnamed names it), or undefined when there
   * is none. The caller owns the descriptor from then on, and cuts the file to what it wrote.
   */
  take(pid: number): Fd | undefined {
    if (this.filling) throw new Error('the pages prefill is still being written: await its ready first');
    const file = this.files.get(pid);
    this.files.delete(pid);
    return file?.fd;
  }

  /**
   * Closes every file not taken (unnamed: they are gone). One still being filled is closed when
   * its write in flight returns, not before: its number must not be reused by another file
   * while the thread pool may still write zeros to it.
   */
  closeAll(): void {
    for (const pid of [...this.files.keys()]) this.drop(pid);
  }

  private drop(pid: number): void {
    const file = this.files.get(pid);
    this.files.delete(pid);
    if (file === undefined) return;
    file.dropped = true;
    if (!file.filling) closeQuietly(file.fd);
  }
}

/** A file to prefill, and where its background fill stands. */
interface FileState {
  readonly pid: number;
  readonly fd: Fd;
  readonly bytes: number;
  /** A write of the background fill is in flight (or about to be): closing must wait. */
  filling: boolean;
  /** Given up: the fill stops and closes the file. */
  dropped: boolean;
}

function closeQuietly(fd: Fd): void {
  try {
    closeSync(fd);
  } catch {
    /* nothing left to do */
  }
}

/** Opens (unnamed, still empty) the files to prefill, within the dirty budget. */
function planFiles(directory: string, rootPid: number): FileState[] {
  const plan: FileState[] = [];
  let budget = dirtyBudget();
  for (const pid of treeOf(rootPid)) {
    // Whole MiB, rounded up: the copy ends inside the zeros, not past them.
    const want = Math.min(Math.ceil(anonymousBytes(pid) / CHUNK) * CHUNK, budget - (budget % CHUNK));
    if (want < PREFILL_MIN_BYTES) continue;
    try {
      plan.push({ pid, fd: asFd(openSync(directory, O_TMPFILE_RDWR, 0o600)), bytes: want, filling: false, dropped: false });
      budget -= want;
    } catch {
      // O_TMPFILE unsupported here (EOPNOTSUPP, EISDIR), or no directory: the copy allocates as
      // it goes. A fill that fails (no space) drops its own file only.
      break;
    }
  }
  return plan;
}

/** Writes f.bytes of zeros into f.fd from its start, up to 256 MiB per writev, off this thread. */
async function fillInBackground(f: FileState): Promise<void> {
  zeros ??= Buffer.alloc(CHUNK);
  const zero = zeros;
  f.filling = true;
  try {
    for (let at = 0; at < f.bytes && !f.dropped; ) {
      const buffers: Buffer[] = [];
      for (let left = f.bytes - at; left > 0 && buffers.length < CHUNKS_PER_WRITEV; left -= CHUNK) buffers.push(left >= CHUNK ? zero : zero.subarray(0, left));
      const written = await new Promise<number>((resolve, reject) => {
        writev(f.fd, buffers, at, (error, n) => (error ? reject(error) : resolve(n)));
      });
      if (written <= 0) throw new Error(`writev of zeros wrote ${written} bytes`);
      at += written;
    }
  } finally {
    f.filling = false;
    if (f.dropped) closeQuietly(f.fd);
  }
}

/** rootPid and its descendants, parents first (as /proc shows them now). */
function treeOf(rootPid: number): number[] {
  const out: number[] = [];
  const queue = [rootPid];
  while (queue.length > 0 && out.length < MAX_PROCESSES) {
    const pid = queue.shift()!;
    out.push(pid);
    try {
      queue.push(...readChildren(asPid(pid), readdirSync(`/proc/${pid}/task`).map(Number)));
    } catch {
      /* gone meanwhile */
    }
  }
  return out;
}

/** RssAnon of `pid` in bytes (0 when unreadable). */
function anonymousBytes(pid: number): number {
  try {
    return (Number.parseInt(readStatus(pid).get('RssAnon') ?? '0', 10) || 0) * 1024; // "NNN kB"
  } catch {
    return 0;
  }
}

/**
 * Bytes of dirty page cache this dump may add before the kernel's background writeback would
 * start: half of what is left below its threshold (vm.dirty_background_bytes, or
 * vm.dirty_background_ratio percent of the memory that can hold dirty pages: free + file cache).
 */
export function dirtyBudget(): number {
  try {
    const meminfo = new Map<string, number>();
    for (const line of readFileSync('/proc/meminfo', 'utf8').split('\n')) {
      const m = /^([^:]+):\s+(\d+) kB$/.exec(line);
      if (m) meminfo.set(m[1]!, Number(m[2]) * 1024);
    }
    const kb = (name: string) => meminfo.get(name) ?? 0;
    const bytes = Number(readFileSync('/proc/sys/vm/dirty_background_bytes', 'utf8'));
    const threshold = bytes > 0
      ? bytes
      : (Number(readFileSync('/proc/sys/vm/dirty_background_ratio', 'utf8')) / 100) * (kb('MemFree') + kb('Active(file)') + kb('Inactive(file)'));
    // criu-ts's own memory cgroups are charged for these pages: stay within half their room too,
    // or the group would reclaim (write back the zeros) to make space.
    return Math.max(0, Math.floor(Math.min(threshold - kb('Dirty') - kb('Writeback'), memoryHeadroom('self')) / 2));
  } catch {
    return 0;
  }
}

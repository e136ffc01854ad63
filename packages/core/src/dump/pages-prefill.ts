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
import { closeSync, openSync, readdirSync, readFileSync, writeSync } from 'node:fs';
import { asFd, asPid, close, type Fd } from '@criu-ts/sys';
import { memoryHeadroom } from '../proc/memory-cgroup.js';
import { readStatus } from '../proc/task-files.js';
import { readChildren } from './tree.js';

/** open(2) O_TMPFILE (__O_TMPFILE | O_DIRECTORY), with O_RDWR: an unnamed file in a directory. */
const O_TMPFILE_RDWR = 0o20200000 | 0o2;
/** A process with less anonymous memory than this gets no prefilled file: too little to matter. */
const PREFILL_MIN_BYTES = 4 << 20;
/** The tree walk stops after this many processes (the rest get no prefill). */
const MAX_PROCESSES = 4096;
/** Bytes written per call; the zero buffer is made on first use, not when criu-ts starts. */
const CHUNK = 1 << 20;
let zeros: Buffer | undefined;

/** One process's prefilled, still unnamed pages file. */
export interface PrefilledFile {
  readonly fd: Fd;
  /** Bytes of zeros written. */
  readonly bytes: number;
}

export class PagesPrefill {
  private readonly files = new Map<number, PrefilledFile>();

  /**
   * Prefills files in `directory` for `rootPid` and its descendants (as /proc shows them now;
   * only an estimate). Never throws: a file system without O_TMPFILE, or any other failure,
   * leaves the processes concerned without a prefilled file.
   */
  static forTree(directory: string, rootPid: number): PagesPrefill {
    const prefill = new PagesPrefill();
    let budget = dirtyBudget();
    for (const pid of treeOf(rootPid)) {
      // Whole MiB, rounded up: the copy ends inside the zeros, not past them.
      const want = Math.min(Math.ceil(anonymousBytes(pid) / CHUNK) * CHUNK, budget - (budget % CHUNK));
      if (want < PREFILL_MIN_BYTES) continue;
      let fd: number | undefined;
      try {
        fd = openSync(directory, O_TMPFILE_RDWR, 0o600);
        zeros ??= Buffer.alloc(CHUNK);
        for (let at = 0; at < want; ) at += writeSync(fd, zeros, 0, Math.min(CHUNK, want - at), at);
        prefill.files.set(pid, { fd: asFd(fd), bytes: want });
        budget -= want;
      } catch {
        if (fd !== undefined) closeSync(fd);
        // O_TMPFILE unsupported here (EOPNOTSUPP, EISDIR), or no space: the copy allocates as it goes.
        break;
      }
    }
    return prefill;
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
    const file = this.files.get(pid);
    this.files.delete(pid);
    return file?.fd;
  }

  /** Closes every file not taken (unnamed: they are gone). */
  closeAll(): void {
    for (const file of this.files.values()) {
      try {
        close(file.fd);
      } catch {
        /* nothing left to do */
      }
    }
    this.files.clear();
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

// Memory of a task: the VMA list for mm-PID.img, and the pages for pagemap-PID.img + pages-N.img.
//
// Which pages are written (only pages that hold data):
// - /proc/PID/pagemap gives, per page, present (bit 63), swapped (bit 62), file-page-or-shared
//   (bit 61) and the PFN (bits 0-54, visible to us as root);
// - a page not present and not swapped was never touched: nothing to save;
// - a present page whose PFN is the kernel's zero page reads as zeros: skipped too;
// - in a private file mapping, a page that is still the file's own page (bit 61) comes back from
//   the file on restore: skipped; one written by the task (copied on write) is saved.
// [vvar]/[vvar_vclock] are kernel data and [vdso] kernel text of this same kernel: restore maps
// them afresh, so their pages are not saved. [vsyscall] is not a real mapping.
//
// Page contents move with the parasite: vmsplice of the task's pages into a pipe, splice from the
// pipe into the pages file (one copy, nothing through JS buffers). Pages of VMAs the task cannot
// read (PROT_NONE, or write-only) are read through /proc/PID/mem instead, which the kernel allows
// to a tracer (FOLL_FORCE) for mappings that may be made readable.
import { closeSync, openSync, readFileSync, readSync, writeSync } from 'node:fs';
import type { DecodedMessage } from '@criu-ts/images';
import type { Parasite } from '@criu-ts/compel';
import { asRemoteAddress, lseek, mmap, munmap, PAGE_IS, pagemapScan, processVmReadv, getpid, SEEK, syncFileRange, SYNC_FILE_RANGE, SysError, type Fd } from '@criu-ts/sys';
import { memoryCgroups, memoryHeadroom } from '../proc/memory-cgroup.js';
import type { ProcVma } from '../proc/smaps.js';
import type { FileTable } from './files.js';
import type { SysvShmDumper } from './sysv-shm.js';

export const PAGE_SIZE = 4096;
const PAGE = BigInt(PAGE_SIZE);

// CRIU's VMA status bits (mm.proto users; see images' crit-format tables).
export const VMA = {
  REGULAR: 1 << 0, STACK: 1 << 1, VSYSCALL: 1 << 2, VDSO: 1 << 3, HEAP: 1 << 5, FILE_PRIVATE: 1 << 6,
  FILE_SHARED: 1 << 7, ANON_SHARED: 1 << 8, ANON_PRIVATE: 1 << 9, SYSVIPC: 1 << 10, SOCKET: 1 << 11,
  VVAR: 1 << 12, AIORING: 1 << 13, MEMFD: 1 << 14,
} as const;
const PROT_READ = 1;
const PROT_WRITE = 2;
const PROT_EXEC = 4;
const MAP_SHARED = 0x1;
const MAP_PRIVATE = 0x2;
const MAP_ANONYMOUS = 0x20;
const MAP_GROWSDOWN = 0x100;
const MAP_NORESERVE = 0x4000;
const O_RDWR = 2;

/** VmFlags mnemonic -> madvise advice number, recorded as 1 << advice (CRIU's vma_entry.madv). */
const MADVISE_OF_VMFLAG: Record<string, number> = { rr: 1, sr: 2, dc: 10, mg: 12, hg: 14, nh: 15, dd: 16, wf: 18 };

/** Pagemap entry flags. */
const PE_LAZY = 1 << 1;
const PE_PRESENT = 1 << 2;

export interface DumpVma {
  readonly entry: DecodedMessage;
  readonly proc: ProcVma;
  /** Whether pages of this VMA are saved, and how. */
  readonly pages: 'none' | 'private' | 'shared';
  /** describeVmas set the mmap flags outright: VmFlags add no MAP_GROWSDOWN/NORESERVE to them. */
  readonly flagsFixed?: boolean;
}

/** `sysv`: the dump's SysV segments (an attachment is refused without it). */
export function describeVmas(pid: number, vmas: readonly ProcVma[], files: FileTable, sysv?: SysvShmDumper): DumpVma[] {
  const out: DumpVma[] = [];
  for (let i = 0; i < vmas.length; i++) {
    const v = vmas[i]!;
    const prot = (v.read ? PROT_READ : 0) | (v.write ? PROT_WRITE : 0) | (v.exec ? PROT_EXEC : 0);
    const flags = v.shared ? MAP_SHARED : MAP_PRIVATE;
    const entry: DecodedMessage = { start: v.start, end: v.end, pgoff: 0n, shmid: 0n, prot, flags, status: 0, fd: -1n };
    let pages: DumpVma['pages'] = 'private';
    let flagsFixed = true; // every branch but the anonymous private and file ones sets the flags

    if (v.name === '[vsyscall]') {
      entry.flags = MAP_PRIVATE | MAP_ANONYMOUS;
      entry.status = VMA.VSYSCALL | VMA.ANON_PRIVATE;
      pages = 'none';
    } else if (v.name === '[vvar]' || v.name === '[vvar_vclock]') {
      // This kernel maps [vvar] (4 pages) and [vvar_vclock] (2 pages) back to back; CRIU records
      // the pair as one VVAR area, and restore maps the whole vDSO block from its start.
      const previous = out.at(-1);
      if (v.name === '[vvar_vclock]' && previous && previous.proc.name === '[vvar]' && previous.entry.end === v.start) {
        (previous.entry as { end: bigint }).end = v.end;
        continue;
      }
      entry.flags = MAP_PRIVATE | MAP_ANONYMOUS;
      entry.status = VMA.REGULAR | VMA.ANON_PRIVATE | VMA.VVAR;
      pages = 'none';
    } else if (v.name === '[vdso]') {
      entry.flags = MAP_PRIVATE | MAP_ANONYMOUS;
      entry.status = VMA.REGULAR | VMA.VDSO | VMA.ANON_PRIVATE;
      pages = 'none';
    } else if (v.name.startsWith('/SYSV')) {
      // Before the anonymous case: a segment's id is its inode number, and id 0 is a real one.
      if (!sysv) throw new Error(sysvRefusal(v));
      sysv.attach(pid, v);
      // As CRIU records an attachment: shared, shmid = the segment id, no file. fdflags says
      // whether it may be made writable (VM_MAYWRITE: not attached SHM_RDONLY), for restore.
      entry.flags = MAP_SHARED;
      entry.status = VMA.REGULAR | VMA.SYSVIPC;
      entry.shmid = BigInt(v.inode);
      entry.fdflags = v.vmFlags.has('mw') ? O_RDWR : 0;
      pages = 'none';
    } else if (/^socket:\[\d+\]$/.test(v.name)) {
      // A packet socket's rings (the only sockets one can map here): as CRIU records them,
      // status SOCKET, shmid the socket's file id; their bytes go with the socket (files stage).
      entry.flags = MAP_SHARED;
      entry.status = VMA.REGULAR | VMA.SOCKET;
      entry.shmid = BigInt(files.mappedSocket(Number(v.name.slice('socket:['.length, -1)), pid, v.start, v.end, v.offset));
      pages = 'none';
    } else if (v.inode === 0 || v.name === '' || v.name === '[heap]' || v.name === '[stack]' || v.name.startsWith('[anon:')) {
      if (v.shared) throw new Error(`shared anonymous mapping without a backing inode at 0x${v.start.toString(16)}`);
      entry.flags = (entry.flags as number) | MAP_ANONYMOUS;
      entry.status = VMA.REGULAR | VMA.ANON_PRIVATE | (v.name === '[heap]' ? VMA.HEAP : 0);
      flagsFixed = false;
    } else if (v.shared && v.name === '/dev/zero') {
      // MAP_SHARED|MAP_ANONYMOUS memory is a shmem file named /dev/zero (deleted); its inode
      // identifies it across tasks.
      entry.flags = MAP_SHARED | MAP_ANONYMOUS;
      entry.status = VMA.REGULAR | VMA.ANON_SHARED;
      entry.shmid = BigInt(v.inode);
      // Offset of this VMA in the shared object: its pages are recorded by object offset.
      entry.pgoff = v.offset;
      pages = 'shared';
    } else {
      const openFlags = v.shared && v.vmFlags.has('mw') ? O_RDWR : 0;
      const mapFile = `/proc/${pid}/map_files/${v.start.toString(16)}-${v.end.toString(16)}`;
      // A memfd is a file of the kernel's internal shmem mount, always shown as deleted. As in
      // CRIU: shmid names a MEMFD file (its inode in memfd.img, contents in pagemap-shmem-<ino>),
      // status has VMA_AREA_MEMFD; private pages the task wrote are saved like any file's.
      const memfd = v.deleted && v.name.startsWith('/memfd:');
      entry.shmid = BigInt(memfd ? files.mappedMemfd(v.name.slice('/memfd:'.length), mapFile) : files.mappedFile(v.name, openFlags, mapFile, v.deleted));
      entry.pgoff = v.offset;
      entry.status = VMA.REGULAR | (v.shared ? VMA.FILE_SHARED : VMA.FILE_PRIVATE) | (memfd ? VMA.MEMFD : 0);
      entry.fdflags = openFlags;
      flagsFixed = false;
      // A shared file mapping's pages are in the file itself.
      if (v.shared) pages = 'none';
    }
    applyVmFlags(entry, v, flagsFixed);
    out.push({ entry, proc: v, pages, flagsFixed });
  }
  return out;
}

/** What the VmFlags of `v` give its vma_entry: the madvise bits, and MAP_GROWSDOWN/NORESERVE unless its flags are fixed. */
function applyVmFlags(entry: DecodedMessage, v: ProcVma, flagsFixed: boolean): void {
  let madv = 0n;
  for (const [flag, advice] of Object.entries(MADVISE_OF_VMFLAG)) if (v.vmFlags.has(flag)) madv |= 1n << BigInt(advice);
  if (madv !== 0n) entry.madv = madv;
  if (flagsFixed) return;
  if (v.vmFlags.has('gd')) entry.flags = (entry.flags as number) | MAP_GROWSDOWN;
  if (v.vmFlags.has('nr')) entry.flags = (entry.flags as number) | MAP_NORESERVE;
}

/**
 * Whether describeVmas can work from /proc/PID/maps, with the VmFlags added later by
 * addVmFlags: it needs them itself only for shared mappings other than shared anonymous memory
 * (VM_MAYWRITE gives a shared file's open mode and a SysV attachment's; SysV segments on huge
 * pages are refused).
 */
export function vmFlagsCanWait(vmas: readonly ProcVma[]): boolean {
  return !vmas.some((v) => v.shared && v.name !== '/dev/zero');
}

/**
 * The VMAs described from /proc/PID/maps, completed with the VmFlags of `smaps` (read later, the
 * task still frozen: its layout is the same, but for mappings of ours, which are not in `vmas`).
 * Every VMA of `vmas` must be found there with the same range.
 */
export function addVmFlags(vmas: readonly DumpVma[], smaps: readonly ProcVma[]): DumpVma[] {
  const byStart = new Map(smaps.map((v) => [v.start, v]));
  return vmas.map((d) => {
    const v = byStart.get(d.proc.start);
    if (!v || v.end !== d.proc.end) {
      throw new Error(`the VMA at 0x${d.proc.start.toString(16)}-0x${d.proc.end.toString(16)} is not in /proc/PID/smaps as it was in /proc/PID/maps`);
    }
    const entry: DecodedMessage = { ...d.entry };
    applyVmFlags(entry, v, d.flagsFixed === true);
    return { ...d, entry, proc: v };
  });
}

/**
 * Why a SysV shared memory attachment (shmget/shmat) is refused, naming the segment: its id is
 * the mapping's inode number, its key the hex in the name /SYSV<key>; /proc/sysvipc/shm adds
 * its size and attach count. Restoring one properly means recreating it with the same key and
 * id (ipcns-shm images, as CRIU does with the IPC namespace), which criu-ts does not do yet.
 */
function sysvRefusal(v: ProcVma): string {
  const id = v.inode;
  const key = `0x${v.name.slice('/SYSV'.length)}`;
  let details = '';
  try {
    const row = readFileSync('/proc/sysvipc/shm', 'utf8').split('\n').slice(1).map((l) => l.trim().split(/\s+/)).find((f) => Number(f[1]) === id);
    if (row) {
      // perms is octal with the kernel's SHM_DEST (01000) bit: IPC_RMID was called on it.
      const perms = parseInt(row[2]!, 8);
      details = `, ${row[3]} bytes, mode ${(perms & 0o777).toString(8)}, ${row[6]} attachment(s)${perms & 0o1000 ? ', marked for removal (IPC_RMID)' : ''}`;
    }
  } catch {
    /* no /proc/sysvipc: the name and id say enough */
  }
  return `SysV shared memory segment id ${id} (key ${key}${details}) attached at 0x${v.start.toString(16)}-0x${v.end.toString(16)}: `
    + 'SysV shared memory is not supported yet (detach it with shmdt, or use a memfd or shm_open)';
}

/** A run of pages to save: consecutive, same pagemap flags. */
export interface PageRun {
  start: bigint;
  pages: number;
  flags: number;
  /** The task can read it (vmsplice works); otherwise /proc/PID/mem is used. */
  readable: boolean;
}

const PM_PRESENT = 1n << 63n;
const PM_SWAPPED = 1n << 62n;
const PM_FILE = 1n << 61n;
const PFN_MASK = (1n << 55n) - 1n;

let zeroPagePfn: bigint | undefined;
/** /proc/kpageflags bit of the kernel's zero page (KPF_ZERO_PAGE). */
const KPF_ZERO_PAGE = 24n;

/**
 * PFN of the kernel's shared zero page, as a private anonymous page that was only read maps it;
 * -1 when it cannot be known for sure, and then no page is skipped as a zero page.
 *
 * Why the check: a read fault does not always map the zero page (on this machine's kernel every
 * read of fresh anonymous memory, through process_vm_readv, MAP_POPULATE or MADV_POPULATE_READ,
 * gets a page of its own). Taking such a page for the zero page was a data-loss bug: once it was
 * freed and handed to the dumped task, that one page of the task was skipped as "zero" and came
 * back as zeros. So the candidate counts only if /proc/kpageflags says it is the zero page.
 */
export function zeroPfn(): bigint {
  if (zeroPagePfn !== undefined) return zeroPagePfn;
  let candidate = -1n;
  const addr = mmap(0n, PAGE_SIZE, PROT_READ, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  try {
    processVmReadv(getpid(), Buffer.alloc(8), [{ addr: asRemoteAddress(addr), len: 8 }]); // a read fault
    const entry = Buffer.alloc(8);
    const fd = openSync('/proc/self/pagemap', 'r');
    try {
      readSync(fd, entry, 0, 8, Number(addr / PAGE) * 8);
    } finally {
      closeSync(fd);
    }
    const value = entry.readBigUInt64LE(0);
    if (value & PM_PRESENT) {
      const pfn = value & PFN_MASK;
      const flags = Buffer.alloc(8);
      const kpf = openSync('/proc/kpageflags', 'r');
      try {
        if (readSync(kpf, flags, 0, 8, Number(pfn) * 8) === 8 && (flags.readBigUInt64LE(0) >> KPF_ZERO_PAGE) & 1n) candidate = pfn;
      } finally {
        closeSync(kpf);
      }
    }
  } catch {
    candidate = -1n; // no pagemap PFNs or no kpageflags: skip nothing
  } finally {
    munmap(addr, PAGE_SIZE);
  }
  zeroPagePfn = candidate;
  return zeroPagePfn;
}

const SCAN_CHUNK_PAGES = 1 << 16;
// The pagemap bits above, in the high 32-bit half of an entry (read as two u32: the frozen
// task waits on this loop, and BigInt arithmetic per page cost milliseconds per 64 MiB).
const HI_PRESENT = 1 << 31;
const HI_SWAPPED = 1 << 30;
const HI_FILE = 1 << 29;
const HI_PFN_MASK = (1 << 23) - 1; // PFN bits 32-54

/** Whether this kernel has PAGEMAP_SCAN (Linux 6.7); undefined until first tried. */
let pagemapScanWorks: boolean | undefined;
/** Regions asked of PAGEMAP_SCAN per call. */
const SCAN_REGIONS = 512;

/**
 * The runs of pages worth saving in `vmas` (those of one kind: private or shared): present or
 * swapped, not the kernel's zero page, and in a private file mapping not the file's own page
 * (it comes back from the file). With PAGEMAP_SCAN the kernel finds them and hands back whole
 * runs (64 MiB of present memory: one region, in well under a millisecond); without it, every
 * page's /proc/PID/pagemap entry is read and tested here. `method` forces one way (tests).
 */
export function scanPages(pid: number, vmas: readonly DumpVma[], kind: 'private' | 'shared', method: 'auto' | 'ioctl' | 'entries' = 'auto'): PageRun[] {
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    if (method === 'ioctl') return scanPagesByIoctl(fd, vmas, kind);
    if (method === 'auto' && pagemapScanWorks !== false) {
      try {
        const runs = scanPagesByIoctl(fd, vmas, kind);
        pagemapScanWorks = true;
        return runs;
      } catch (error) {
        // ENOTTY/EINVAL: a kernel before 6.7. Anything else is a real failure.
        if (pagemapScanWorks !== undefined || !(error instanceof SysError) || (error.code !== 'ENOTTY' && error.code !== 'EINVAL')) throw error;
        pagemapScanWorks = false;
      }
    }
    return scanPagesByEntries(fd, pid, vmas, kind);
  } finally {
    closeSync(fd);
  }
}

/** scanPages with PAGEMAP_SCAN: one region per run of pages to save, found by the kernel. */
function scanPagesByIoctl(fd: number, vmas: readonly DumpVma[], kind: 'private' | 'shared'): PageRun[] {
  const runs: PageRun[] = [];
  for (const vma of vmas) {
    if (vma.pages !== kind) continue;
    const anon = (Number(vma.entry.status) & VMA.ANON_PRIVATE) !== 0;
    const flags = anon ? PE_LAZY | PE_PRESENT : PE_PRESENT;
    const readable = vma.proc.read;
    const not = PAGE_IS.PFNZERO | (kind === 'private' && !anon ? PAGE_IS.FILE : 0);
    for (let at = vma.proc.start; at < vma.proc.end;) {
      const { regions, walkEnd } = pagemapScan(fd, { start: at, end: vma.proc.end, inverted: not, all: not, anyOf: PAGE_IS.PRESENT | PAGE_IS.SWAPPED }, SCAN_REGIONS);
      for (const r of regions) runs.push({ start: r.start, pages: Number((r.end - r.start) / PAGE), flags, readable });
      if (walkEnd <= at) throw new Error(`PAGEMAP_SCAN made no progress at 0x${at.toString(16)}`);
      at = walkEnd;
    }
  }
  return mergeAdjacentRuns(runs);
}

/** scanPages without PAGEMAP_SCAN: every page's pagemap entry, read in chunks. */
function scanPagesByEntries(fd: number, pid: number, vmas: readonly DumpVma[], kind: 'private' | 'shared'): PageRun[] {
  const zero = zeroPfn();
  const zeroLo = zero < 0n ? -1 : Number(zero & 0xffffffffn);
  const zeroHi = zero < 0n ? -1 : Number(zero >> 32n);
  const runs: PageRun[] = [];
  const words = new Uint32Array(SCAN_CHUNK_PAGES * 2);
  const buffer = Buffer.from(words.buffer);
  for (const vma of vmas) {
    if (vma.pages !== kind) continue;
    const anon = (Number(vma.entry.status) & VMA.ANON_PRIVATE) !== 0;
    const flags = anon ? PE_LAZY | PE_PRESENT : PE_PRESENT;
    const readable = vma.proc.read;
    const skipFilePages = kind === 'private' && !anon;
    const total = Number((vma.proc.end - vma.proc.start) / PAGE);
    const firstPage = Number(vma.proc.start / PAGE);
    // The run being built, in page numbers; pushed when a page breaks it.
    let runStart = -1;
    let runPages = 0;
    const closeRun = () => {
      if (runPages > 0) runs.push({ start: BigInt(runStart) * PAGE, pages: runPages, flags, readable });
      runPages = 0;
    };
    for (let done = 0; done < total; ) {
      const count = Math.min(SCAN_CHUNK_PAGES, total - done);
      // A read of pagemap may come back short: read on, so no page is taken for absent.
      let got = 0;
      for (let n = -1; got < count * 8 && n !== 0; got += n) n = readSync(fd, buffer, got, count * 8 - got, (firstPage + done) * 8 + got);
      if (got < count * 8) throw new Error(`/proc/${pid}/pagemap ended at page 0x${(firstPage + done + got / 8).toString(16)}, inside a mapping`);
      for (let i = 0; i < count; i++) {
        const lo = words[2 * i]!;
        const hi = words[2 * i + 1]!;
        const present = (hi & HI_PRESENT) !== 0;
        let keep = present || (hi & HI_SWAPPED) !== 0;
        if (keep && present && (hi & HI_FILE) === 0 && lo === zeroLo && (hi & HI_PFN_MASK) === zeroHi) keep = false;
        // A private file mapping's page that is still the file's: it comes back from the file.
        if (keep && skipFilePages && (hi & HI_FILE) !== 0) keep = false;
        const page = firstPage + done + i;
        if (!keep) {
          closeRun();
        } else if (runPages > 0 && runStart + runPages === page) {
          runPages++;
        } else {
          closeRun();
          runStart = page;
          runPages = 1;
        }
      }
      done += count;
    }
    closeRun();
  }
  return mergeAdjacentRuns(runs);
}

/** Runs that meet across a VMA boundary with the same flags become one (as before: one pagemap entry). */
function mergeAdjacentRuns(runs: PageRun[]): PageRun[] {
  const out: PageRun[] = [];
  for (const r of runs) {
    const last = out.at(-1);
    if (last && last.flags === r.flags && last.readable === r.readable && last.start + BigInt(last.pages) * PAGE === r.start) last.pages += r.pages;
    else out.push(r);
  }
  return out;
}

/** Bytes handed to the parasite per call: large enough to keep it busy, small enough to report progress. */
const PROGRESS_STEP = 64 << 20;

/** How writePages moves the pages. */
export interface PageCopyMode {
  /** The parasite copies into the file itself (see pagesCopyInTaskAllowed). */
  readonly inTask: boolean;
  /**
   * In-task only (0: never): while waiting for the parasite's reply, we start the disk writeback
   * of every this many bytes it has written. From our thread, not the parasite's: started in
   * the task (sync_file_range there, which allocates the blocks and builds the I/O), it made the
   * frozen copy of 64 MiB 15.8 -> 18.2 ms slower (bench in C, medians of 6); from another CPU the
   * copy stays at 16.2-16.8 ms and the fsync after it still finds most of the file on its way.
   */
  readonly writebackStep: number;
}

/**
 * A `whileWaiting` for the parasite that starts the writeback of each `step` bytes of `out` it
 * has written: how far it is comes from the file position, which our descriptor shares with its
 * copy. Best effort: a failure stops it, and the fsync that follows reports real I/O errors.
 */
export function writebackBehind(out: Fd, step: number): () => void {
  let synced = lseek(out, 0, SEEK.CUR);
  let failed = false;
  return () => {
    if (failed) return;
    try {
      const at = lseek(out, 0, SEEK.CUR);
      if (at - synced < step) return;
      syncFileRange(out, synced, at - synced, SYNC_FILE_RANGE.WRITE);
      synced = at;
    } catch {
      failed = true;
    }
  };
}

/**
 * Whether the parasite may write the pages file itself. Its writes are the task's: a file larger
 * than the task's RLIMIT_FSIZE would raise SIGXFSZ in it, and the page cache they fill is charged
 * to the task's memory cgroup, where a limit could make the frozen task's group reclaim or
 * throttle. So only for a task with no file size limit whose memory cgroup is ours (the charge
 * lands where our own writes would) or has no limit up to the root, in cgroup v2 (memory.max)
 * and v1 (memory.limit_in_bytes) alike.
 */
export function pagesCopyInTaskAllowed(pid: number): boolean {
  try {
    if (!/^Max file size\s+unlimited\s/m.test(readFileSync(`/proc/${pid}/limits`, 'utf8'))) return false;
    const theirs = memoryCgroups(pid);
    const ours = memoryCgroups('self');
    if (theirs.v1 === ours.v1 && theirs.v2 === ours.v2) return true;
    return memoryHeadroom(pid) === Infinity;
  } catch {
    return false;
  }
}


/**
 * Writes the pages of `runs` to `out` in order; returns the bytes written. `onWritten` hears of
 * progress. `whileCopying`, if given, runs exactly once: while the parasite copies the largest
 * batch of pages on the task's thread (in-task mode; otherwise after the copies), so that work
 * which does not need the parasite overlaps the copy instead of following it.
 */
export function writePages(
  pid: number, runs: readonly PageRun[], parasite: Parasite, out: Fd, onWritten?: (bytes: number) => void,
  mode: PageCopyMode = { inTask: false, writebackStep: 0 }, whileCopying?: () => void,
): number {
  // The plan: batches of readable runs for the parasite (at most PROGRESS_STEP bytes each, for
  // progress reports), and the runs it cannot read, copied through /proc/PID/mem in between.
  type Batch = { ranges: Array<{ addr: ReturnType<typeof asRemoteAddress>; len: number }>; bytes: number };
  // A tail of less than PROGRESS_STEP / 8 joins the batch before it: one request fewer (a round
  // trip to the parasite) while the task is frozen.
  const steps: Array<Batch | PageRun> = [];
  let open: Batch | undefined;
  let readableLeft = runs.reduce((n, r) => n + (r.readable ? r.pages * PAGE_SIZE : 0), 0);
  for (const run of runs) {
    const len = run.pages * PAGE_SIZE;
    if (!run.readable) {
      steps.push(run);
      open = undefined;
      continue;
    }
    if (!open) steps.push((open = { ranges: [], bytes: 0 }));
    open.ranges.push({ addr: asRemoteAddress(run.start), len });
    open.bytes += len;
    readableLeft -= len;
    if (open.bytes >= PROGRESS_STEP && readableLeft >= PROGRESS_STEP / 8) open = undefined;
  }
  const batches = steps.filter((s): s is Batch => 'ranges' in s);
  const overlapped = batches.reduce<Batch | undefined>((a, b) => (a && a.bytes >= b.bytes ? a : b), undefined);

  const writeback = mode.inTask && mode.writebackStep > 0 ? writebackBehind(out, mode.writebackStep) : undefined;
  let written = 0;
  let overlapDone = false;
  const overlap = () => {
    overlapDone = true;
    whileCopying?.();
  };
  let mem: number | undefined;
  try {
    for (const step of steps) {
      if ('ranges' in step) {
        const finish = parasite.dumpPagesStart(step.ranges, out, { inTask: mode.inTask, ...(writeback ? { whileWaiting: writeback } : {}) });
        if (step === overlapped && whileCopying) {
          try {
            overlap();
          } catch (error) {
            try {
              finish();
            } catch {
              /* the first failure is the one to report */
            }
            throw error;
          }
        }
        written += finish();
        onWritten?.(written);
        continue;
      }
      const len = step.pages * PAGE_SIZE;
      mem ??= openSync(`/proc/${pid}/mem`, 'r');
      const chunk = Buffer.alloc(Math.min(len, 1 << 20));
      for (let off = 0; off < len; ) {
        const n = Math.min(chunk.length, len - off);
        const got = readSync(mem, chunk, 0, n, step.start + BigInt(off));
        if (got !== n) throw new Error(`short read of ${n} bytes at 0x${(step.start + BigInt(off)).toString(16)} through /proc/${pid}/mem`);
        for (let w = 0; w < n; ) w += writeSync(out, chunk, w, n - w);
        off += n;
        written += n;
      }
    }
  } finally {
    if (mem !== undefined) closeSync(mem);
  }
  if (!overlapDone) overlap();
  return written;
}

/**
 * Shared anonymous memory, one object per shmid: the VMAs mapping it and the runs of its pages,
 * for pagemap-shmem-<shmid>.img, whose entries give offsets in the object rather than addresses.
 */
export interface SharedObject {
  readonly shmid: bigint;
  readonly vmas: DumpVma[];
}

export function sharedObjects(vmas: readonly DumpVma[]): SharedObject[] {
  const objects = new Map<bigint, SharedObject>();
  for (const v of vmas) {
    if (v.pages !== 'shared') continue;
    const shmid = BigInt(v.entry.shmid as bigint);
    let o = objects.get(shmid);
    if (!o) objects.set(shmid, (o = { shmid, vmas: [] }));
    o.vmas.push(v);
  }
  return [...objects.values()];
}

/** pagemap-shmem entries: the runs' addresses turned into offsets in the object. */
export function shmemPagemapEntries(object: SharedObject, runs: readonly PageRun[]): DecodedMessage[] {
  return runs.map((r) => {
    const vma = object.vmas.find((v) => v.proc.start <= r.start && r.start < v.proc.end)!;
    const offset = r.start - vma.proc.start + vma.proc.offset;
    return { vaddr: offset, compat_nr_pages: 0, flags: PE_PRESENT, nr_pages: BigInt(r.pages) };
  });
}

/** pagemap entries for `runs` (after the head). */
export function pagemapEntries(runs: readonly PageRun[]): DecodedMessage[] {
  return runs.map((r) => ({ vaddr: r.start, compat_nr_pages: 0, flags: r.flags, nr_pages: BigInt(r.pages) }));
}

// The address space of the restored task: from the stub's (or, for a process cloned from a
// restored parent, the parent's) to the dumped one.
//
//   0. (a process forked from a restored one) planInheritance: which of its dumped VMAs it keeps
//      from the address space it inherited. The parent's memory is restored before its children
//      are cloned (restore.ts), so a child starts as a copy-on-write copy of it, as after the
//      dumped fork: a private VMA of the child that the inherited layout holds at the same
//      address, with compatible flags (anonymous, or the same file at the same offset), is kept
//      in place, and its pages stay physically shared with the parent wherever their contents
//      are equal. This is how CRIU restores copy-on-write sharing too: its images do not record
//      it (every process's pagemap lists all its pages), restore finds it again by comparing
//      contents. Beyond CRIU, which needs a parent VMA with the same start and end: a kept VMA
//      may be part of a larger inherited one (the kernel merged two of the parent's at restore,
//      or the child unmapped part of it), and an anonymous one that the child grew past its
//      inherited end (a heap grown by brk) is grown in place with mremap.
//   1. unmap everything but the control area (the stub's code, data, stack, vDSO) and what is kept
//   2. vDSO block back at its dumped address: arch_prctl(ARCH_MAP_VDSO_64, start of [vvar])
//      on a task without a vDSO maps [vvar], [vvar_vclock] and [vdso] back to back from there
//      (checked on this kernel). It goes first, into an empty address space, because the kernel
//      takes the address only as a hint (get_unmapped_area) and would move it if it were busy.
//      A forked process keeps its inherited block when it is the dumped one (it always is after
//      a fork); when it is not, the process keeps nothing and goes the root's way.
//   3. mmap every other VMA at its address; private ones writable for now, so the pages can
//      be filled, file mappings from the path in files.img at their file offset, memfd
//      mappings from the restore's one memfd per inode (memfd.ts)
//   4. pages-N.img into the task: criu-ts reads it a chunk at a time into a buffer of its own and
//      writes each chunk into place with process_vm_writev, up to 1024 runs per call (readRuns
//      says why this and not a preadv run by the task).
//      In a kept VMA, each page of the images that the task holds already is compared with it
//      (read through /proc/PID/mem, which leaves copy on write alone) and, only if it differs,
//      written over from the buffer it was compared in (process_vm_writev); a page the task
//      holds and the images do not have is dropped (MADV_DONTNEED): absent from a private
//      anonymous VMA's pagemap means zero, from a private file VMA's means the file's page.
//   5. the dumped protections and madvise flags
//   6. prctl(PR_SET_MM, PR_SET_MM_MAP): code/data/brk/stack/arg/env bounds, auxv, exe file.
//      This form needs no CAP_SYS_RESOURCE (only checkpoint_restore_ns_capable for the exe);
//      the kernel refuses to change the exe file while the old one is still mapped. The old one
//      is the stub's, inherited down the tree, and no longer mapped after step 1; restore.ts
//      runs this step only once every process is cloned, so no child inherits a restored exe
//      file that its own kept file mappings would still map.
import { closeSync, openSync, readSync, statSync } from 'node:fs';
import { AT_FDCWD, asRemoteAddress, IOV_MAX, MAP, O, processVmWritev, PROT, type RemoteRange } from '@criu-ts/sys';
import { PAGE_SIZE } from '@criu-ts/images';
import { RestoreError } from './errors.js';
import { TASK_SIZE, VMA, type ImageSet, type PagesRun, type RegFile, type VmaImage } from './image-set.js';
import { CONTROL_SIZE, type RestoreTask } from './remote-task.js';
import type { MemfdInodes } from './memfd.js';
import { readSmaps, type ProcVma } from '../proc/smaps.js';

const ARCH_MAP_VDSO_64 = 0x2003;
const PR_SET_MM = 35;
const PR_SET_MM_MAP = 14;

const hex = (v: bigint): string => `0x${v.toString(16)}`;

function fail(stage: ConstructorParameters<typeof RestoreError>[0], message: string, evidence: Record<string, unknown> = {}): never {
  throw new RestoreError(stage, message, evidence);
}

/** Runs a remote syscall; a -errno result becomes a RestoreError of `stage` naming `what`. */
export function remote(task: RestoreTask, stage: ConstructorParameters<typeof RestoreError>[0], what: string, name: Parameters<RestoreTask['syscallRawSync']>[0], ...args: Array<number | bigint>): bigint {
  try {
    return task.syscallSync(name, ...args);
  } catch (err) {
    throw new RestoreError(stage, what, {}, err);
  }
}

/** shmat(2) flags. */
const SHM_RDONLY = 0o10000;
const SHM_REMAP = 0o40000;
const SHM_EXEC = 0o100000;

/** Opens `path` inside the task and returns the fd there. */
export function remoteOpen(task: RestoreTask, stage: ConstructorParameters<typeof RestoreError>[0], path: string, flags: number, mode = 0): number {
  const [p] = task.scratchPut(task.cString(path));
  return Number(remote(task, stage, `open ${path}`, 'openat', AT_FDCWD, p!, flags, mode));
}

/** A dumped VMA that a forked process keeps from the address space it inherited (step 0). */
export interface KeptVma {
  /** End of the inherited part: below the VMA's end when it is grown in place to its dumped end. */
  readonly inheritedEnd: bigint;
  /** The protection it was inherited with. */
  readonly prot: number;
  /** A private file mapping: the pages that are still the file's (pagemap bit 61) are not the task's own. */
  readonly file: boolean;
}

/** What a process keeps of the address space it inherited (planInheritance). */
export interface Inheritance {
  readonly kept: ReadonlyMap<VmaImage, KeptVma>;
  /** The inherited [vvar]..[vdso] mappings, kept because they are the dumped block (empty: none kept). */
  readonly vdso: ReadonlyArray<{ readonly start: bigint; readonly end: bigint }>;
}

/** The root (a copy of the stub) keeps nothing. */
export const NOTHING_INHERITED: Inheritance = { kept: new Map(), vdso: [] };

/**
 * VmFlags mnemonics of the madvise states restore replays (protectVmas) and fork passes on, with
 * their advice numbers (bit N of vma_entry.madv, as the dump records them). An inherited VMA with
 * one the dumped VMA lacks cannot be kept: replaying adds states, it does not take them away.
 */
const INHERITED_MADVICE: ReadonlyArray<readonly [string, number]> = [['mg', 12], ['hg', 14], ['nh', 15], ['dd', 16], ['wf', 18]];

const protOf = (m: ProcVma): number => (m.read ? PROT.READ : 0) | (m.write ? PROT.WRITE : 0) | (m.exec ? PROT.EXEC : 0);

/** Whether two paths name one inode (false when either cannot be looked at). */
function sameInode(a: string, b: string): boolean {
  try {
    const x = statSync(a, { bigint: true });
    const y = statSync(b, { bigint: true });
    return x.dev === y.dev && x.ino === y.ino;
  } catch {
    return false;
  }
}

/**
 * Step 0, for a process cloned from a restored one: the dumped VMAs it keeps from the address
 * space it inherited (/proc/PID/smaps: the inherited VMAs with their VmFlags). A private VMA is
 * kept where an inherited private VMA covers it from its start with the same growsdown flag and
 * no madvise state it lacks, and either both are anonymous (an inherited one ending early is
 * grown to the dumped end, unless it grows down) or both map the same inode at the same offset.
 * Which of its pages stay shared is decided page by page when they are filled (fillPages).
 * Precondition: the task is stopped, its layout the one it was cloned with.
 */
export function planInheritance(task: RestoreTask, set: ImageSet, pathOf: (f: RegFile) => string): Inheritance {
  const now = readSmaps(task.pid);
  const block = vdsoBlockOf(set.vmas);
  const nowBlock = vdsoBlockNow(now);
  if (!sameVdsoBlock(block, nowBlock)) return NOTHING_INHERITED;
  const kept = new Map<VmaImage, KeptVma>();
  for (const vma of set.vmas) {
    if ((vma.status & (VMA.VDSO | VMA.VVAR)) || vma.sysv || vma.memfd || (vma.flags & MAP.SHARED)) continue;
    const m = now.find((r) => r.start <= vma.start && vma.start < r.end);
    if (!m || m.shared || m.start === task.controlArea) continue;
    if (m.vmFlags.has('gd') !== ((vma.flags & MAP.GROWSDOWN) !== 0)) continue;
    if (INHERITED_MADVICE.some(([flag, advice]) => m.vmFlags.has(flag) && !(vma.madv & (1n << BigInt(advice))))) continue;
    if (vma.file) {
      if (m.inode === 0 || m.end < vma.end || m.offset + (vma.start - m.start) !== vma.pgoff) continue;
      if (!sameInode(`/proc/${task.pid}/map_files/${m.start.toString(16)}-${m.end.toString(16)}`, pathOf(vma.file))) continue;
      kept.set(vma, { inheritedEnd: vma.end, prot: protOf(m), file: true });
    } else {
      // Anonymous ([heap], [stack] and [anon:NAME] included); [vvar], [vdso] and [vsyscall] are not.
      if (m.inode !== 0 || m.name.startsWith('[v')) continue;
      if (m.end < vma.end && (vma.flags & MAP.GROWSDOWN)) continue;
      kept.set(vma, { inheritedEnd: m.end < vma.end ? m.end : vma.end, prot: protOf(m), file: false });
    }
  }
  return { kept, vdso: nowBlock };
}

/**
 * Step 1: everything goes but the control area and, in a forked process, what `inheritance`
 * keeps (the inherited parts of kept VMAs, the vDSO block). Precondition: the control area is
 * set up.
 */
export function unmapAllButKept(task: RestoreTask, inheritance: Inheritance = NOTHING_INHERITED): void {
  const ctrl = task.controlArea;
  const keep = [
    { start: ctrl, end: ctrl + BigInt(CONTROL_SIZE) },
    ...[...inheritance.kept].map(([v, k]) => ({ start: v.start, end: k.inheritedEnd })),
    ...inheritance.vdso,
  ].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  // Touching ranges as one: an inherited VMA holding two kept ones stays one VMA.
  const ranges: Array<{ start: bigint; end: bigint }> = [];
  for (const r of keep) {
    const last = ranges.at(-1);
    if (last && last.end >= r.start) last.end = last.end > r.end ? last.end : r.end;
    else ranges.push({ start: r.start, end: r.end });
  }
  let at = 0n;
  for (const r of ranges) {
    if (r.start > at) remote(task, 'unmap-stub', `munmap ${hex(at)}-${hex(r.start)}`, 'munmap', at, r.start - at);
    at = r.end;
  }
  remote(task, 'unmap-stub', `munmap ${hex(at)}-${hex(TASK_SIZE)}`, 'munmap', at, TASK_SIZE - at);
  const left = task.currentMaps().filter((m) => m.name !== '[vsyscall]' && !ranges.some((r) => r.start <= m.start && m.end <= r.end));
  if (left.length > 0) fail('unmap-stub', 'mappings survived munmap', { left: left.map((m) => `${hex(m.start)}-${hex(m.end)} ${m.name}`) });
}

const span = (list: ReadonlyArray<{ start: bigint; end: bigint }>) => list.map((r) => `${hex(r.start)}-${hex(r.end)}`).join(' ');

/** The dumped [vvar]..[vdso] VMAs of `vmas`. */
const vdsoBlockOf = (vmas: readonly VmaImage[]) => vmas.filter((v) => v.status & (VMA.VDSO | VMA.VVAR));

/** The [vvar]..[vdso] mappings of a /proc maps list. */
const vdsoBlockNow = <T extends { name: string }>(maps: readonly T[]) => maps.filter((m) => m.name === '[vdso]' || m.name.startsWith('[vvar'));

/**
 * Whether the task's vDSO block (`now`, as /proc shows it) is the dumped one: [vdso] at the same
 * place, the block starting at the same address and as large. The dump records [vvar] and
 * [vvar_vclock] as one VMA, as CRIU does, so the [vvar] parts are compared as a whole.
 */
function sameVdsoBlock(block: readonly VmaImage[], now: ReadonlyArray<{ start: bigint; end: bigint; name: string }>): boolean {
  const total = (list: ReadonlyArray<{ start: bigint; end: bigint }>) => list.reduce((a, r) => a + (r.end - r.start), 0n);
  const min = (list: ReadonlyArray<{ start: bigint }>) => list.reduce((a, r) => (r.start < a ? r.start : a), TASK_SIZE);
  return block.length > 0 && span(block.filter((v) => v.status & VMA.VDSO)) === span(now.filter((m) => m.name === '[vdso]'))
    && total(block) === total(now) && min(now) === min(block);
}

/** Step 2. */
export function mapVdso(task: RestoreTask, vmas: readonly VmaImage[]): void {
  const block = vdsoBlockOf(vmas);
  const start = block.reduce((a, v) => (v.start < a ? v.start : a), block[0]!.start);
  remote(task, 'vdso', `arch_prctl(ARCH_MAP_VDSO_64, ${hex(start)})`, 'arch_prctl', ARCH_MAP_VDSO_64, start);
  // The block must now be exactly where and as large as it was: glibc keeps pointers into it.
  const now = vdsoBlockNow(task.currentMaps());
  if (!sameVdsoBlock(block, now)) {
    fail('vdso', `the vDSO block of this kernel (${span(now)}) does not match the dumped one (${span(block)}): images from another kernel are not supported yet`, { dumped: span(block), now: span(now) });
  }
}

/**
 * Where a shared anonymous object already restored in another process of the tree is found:
 * `path` (that process's /proc/PID/map_files entry of a mapping of it) opens the very object;
 * `dumpedStart`..`dumpedEnd` are the dumped object offsets it holds from its offset 0.
 */
export interface SharedMemorySource {
  readonly path: string;
  readonly dumpedStart: bigint;
  readonly dumpedEnd: bigint;
}

/**
 * Step 3. Returns the protection each VMA was mapped with (to fix up after the pages are in).
 * `sources`: shared anonymous objects (by shmid) that an earlier process of the tree created and
 * filled; they are mapped from there (one object behind both, as after fork) and not filled again.
 * Kept VMAs (`inheritance`) are not mapped: grown to their dumped end where they must be, and
 * writable while their pages are filled, as the others.
 */
export function mapVmas(
  task: RestoreTask, set: ImageSet, pathOf: (f: RegFile) => string = (f) => f.name,
  sources: ReadonlyMap<bigint, SharedMemorySource> = new Map(), memfds?: MemfdInodes, inheritance: Inheritance = NOTHING_INHERITED,
): Map<VmaImage, number> {
  const mapped = new Map<VmaImage, number>();
  const fds = new Map<string, number>();
  const hasPages = (v: VmaImage) => set.runs.some((r) => r.vaddr < v.end && r.vaddr + BigInt(r.nrPages * PAGE_SIZE) > v.start);
  try {
    for (const vma of set.vmas) {
      if (vma.status & (VMA.VDSO | VMA.VVAR)) continue;
      const keep = inheritance.kept.get(vma);
      if (keep) {
        if (keep.inheritedEnd < vma.end) {
          // In place (flags 0: no move): the range after it is free, nothing else of the child is there.
          const got = remote(task, 'map-vmas', `mremap ${hex(vma.start)}-${hex(keep.inheritedEnd)} to end at ${hex(vma.end)}`, 'mremap', vma.start, keep.inheritedEnd - vma.start, vma.end - vma.start, 0);
          if (got !== vma.start) fail('map-vmas', `mremap of ${hex(vma.start)} moved it to ${hex(got)}`);
        }
        const prot = hasPages(vma) ? vma.prot | PROT.WRITE : vma.prot;
        if (prot !== keep.prot) remote(task, 'map-vmas', `mprotect kept ${hex(vma.start)}-${hex(vma.end)} to ${prot}`, 'mprotect', vma.start, vma.end - vma.start, prot);
        mapped.set(vma, prot);
        continue;
      }
      if (vma.packetRing) {
        // A packet socket's rings: the socket exists only after the files stage, which maps it
        // here (mapPacketRings). Until then the range is held by an inaccessible placeholder, so
        // that nothing else is mapped there.
        const len = vma.end - vma.start;
        const got = remote(task, 'map-vmas', `placeholder for the packet ring at ${hex(vma.start)}-${hex(vma.end)}`, 'mmap', vma.start, len, PROT.NONE, MAP.PRIVATE | MAP.ANONYMOUS | MAP.NORESERVE | MAP.FIXED_NOREPLACE, -1, 0n);
        if (got !== vma.start) fail('map-vmas', `mmap ${hex(vma.start)} landed at ${hex(got)}`);
        mapped.set(vma, vma.prot); // its protection is the ring mapping's, not protect()'s business
        continue;
      }
      if (vma.sysv) {
        // A SysV attachment (the segment is made already: sysv-shm.ts): shmat at its address.
        // SHM_RDONLY only if it could not be made writable (VM_MAYWRITE, kept as fdflags O_RDWR).
        const readOnly = !(vma.prot & PROT.WRITE) && !((vma.fdflags ?? 0) & O.RDWR);
        const shmFlags = SHM_REMAP | (readOnly ? SHM_RDONLY : 0) | (vma.prot & PROT.EXEC ? SHM_EXEC : 0);
        const got = remote(task, 'map-vmas', `shmat of SysV segment ${vma.sysv.id} at ${hex(vma.start)}`, 'shmat', vma.sysv.id, vma.start, shmFlags);
        if (got !== vma.start) fail('map-vmas', `shmat ${hex(vma.start)} landed at ${hex(got)}`);
        mapped.set(vma, PROT.READ | (readOnly ? 0 : PROT.WRITE) | (shmFlags & SHM_EXEC ? PROT.EXEC : 0));
        continue;
      }
      const object = set.shmem.find((o) => o.vmas.includes(vma));
      const source = object ? sources.get(object.shmid) : undefined;
      if (object && source) {
        if (object.vmas[0] !== vma) {
          mapped.set(vma, object.vmas[0]!.prot);
          continue;
        }
        const end = object.vmas.at(-1)!.end;
        const objectEnd = vma.pgoff + (end - vma.start);
        if (vma.pgoff < source.dumpedStart || objectEnd > source.dumpedEnd) {
          fail('map-vmas', `shared memory object ${object.shmid} is mapped at offsets ${hex(vma.pgoff)}-${hex(objectEnd)} here but only ${hex(source.dumpedStart)}-${hex(source.dumpedEnd)} by the process that recreated it: one object covering both is not supported yet`, { shmid: String(object.shmid) });
        }
        const fd = remoteOpen(task, 'map-vmas', source.path, O.RDWR | O.CLOEXEC);
        try {
          const got = remote(task, 'map-vmas', `mmap shared ${hex(vma.start)}-${hex(end)} from ${source.path}`, 'mmap', vma.start, end - vma.start, vma.prot, MAP.SHARED | MAP.FIXED_NOREPLACE, fd, vma.pgoff - source.dumpedStart);
          if (got !== vma.start) fail('map-vmas', `mmap ${hex(vma.start)} landed at ${hex(got)}`);
        } finally {
          task.syscallRawSync('close', fd);
        }
        mapped.set(vma, vma.prot);
        continue;
      }
      if (object) {
        // Shared anonymous memory: one mapping over all the object's VMAs (one object behind
        // them, as before), writable while its pages are filled; protect() splits it again.
        if (object.vmas[0] !== vma) {
          mapped.set(vma, object.runs.length > 0 ? vma.prot | PROT.WRITE | PROT.READ : vma.prot);
          continue;
        }
        const prot = object.runs.length > 0 ? vma.prot | PROT.WRITE | PROT.READ : vma.prot;
        const end = object.vmas.at(-1)!.end;
        const got = remote(task, 'map-vmas', `mmap shared ${hex(vma.start)}-${hex(end)}`, 'mmap', vma.start, end - vma.start, prot, MAP.SHARED | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0n);
        if (got !== vma.start) fail('map-vmas', `mmap ${hex(vma.start)} landed at ${hex(got)}`);
        mapped.set(vma, prot);
        continue;
      }
      const shared = (vma.flags & MAP.SHARED) !== 0;
      // Private mappings with pages to fill stay writable until they are filled; the others get
      // their dumped protection right away. Not making them writable matters beyond W^X: a
      // private mapping that is or was writable is charged to the commit limit (VM_ACCOUNT), and
      // VMAs with different flags never merge. A read-only .rodata next to its RELRO part (once
      // writable, now read-only, holding copied pages) stays two VMAs, as in the dumped task,
      // instead of merging into one. Shared file mappings are never written by restore.
      const prot = shared || !hasPages(vma) ? vma.prot : vma.prot | PROT.WRITE;
      let flags = (vma.flags & (MAP.SHARED | MAP.PRIVATE | MAP.ANONYMOUS | MAP.GROWSDOWN)) | MAP.FIXED_NOREPLACE;
      let fd = -1;
      if (vma.file || vma.memfd) {
        flags &= ~MAP.ANONYMOUS;
        const writable = shared && (vma.prot & PROT.WRITE) !== 0;
        const key = `${writable ? 'rw' : 'ro'}:${vma.file ? vma.file.id : `memfd ${vma.memfd!.inodeId}`}`;
        fd = fds.get(key) ?? -1;
        if (fd < 0) {
          if (vma.memfd && !memfds) fail('map-vmas', `${hex(vma.start)} maps memfd ${vma.memfd.name}, and no memfd inodes were given`);
          const path = vma.file ? pathOf(vma.file) : memfds!.pathOf(vma.memfd!, `the mapping at ${hex(vma.start)}`);
          fd = remoteOpen(task, 'map-vmas', path, (writable ? O.RDWR : O.RDONLY) | O.CLOEXEC);
          fds.set(key, fd);
        }
      } else {
        flags |= MAP.ANONYMOUS;
      }
      const len = vma.end - vma.start;
      const what = vma.file ? ` ${vma.file.name}@${vma.pgoff}` : vma.memfd ? ` memfd:${vma.memfd.name}@${vma.pgoff}` : '';
      const got = remote(task, 'map-vmas', `mmap ${hex(vma.start)}-${hex(vma.end)}${what}`, 'mmap', vma.start, len, prot, flags, fd, fd >= 0 ? vma.pgoff : 0n);
      if (got !== vma.start) fail('map-vmas', `mmap ${hex(vma.start)} landed at ${hex(got)}`);
      mapped.set(vma, prot);
    }
  } finally {
    for (const fd of fds.values()) task.syscallRawSync('close', fd);
  }
  return mapped;
}

/** Step 4. Returns the number of bytes read into the task. Objects in `attached` were filled by another process. */
/** Pages bytes a process's restore reads into it (for progress: the same runs fillPages reads). */
export function pagesBytesOf(set: ImageSet, attached: ReadonlySet<bigint> = new Set()): number {
  const sharedVma = (addr: bigint) => set.vmas.some((v) => (v.flags & MAP.SHARED) && v.start <= addr && addr < v.end);
  const sum = (runs: readonly PagesRun[]) => runs.reduce((n, r) => n + r.nrPages * PAGE_SIZE, 0);
  return sum(set.runs.filter((r) => !sharedVma(r.vaddr))) + set.shmem.filter((o) => o.pagesFile && !attached.has(o.shmid)).reduce((n, o) => n + sum(o.runs), 0);
}

/** What fillPages did: bytes put into the task, and bytes of kept VMAs left as inherited (shared). */
export interface Filled {
  readonly read: number;
  readonly shared: number;
}

/** `onRead` is told the bytes of each read (and of each run of pages left shared) as it completes (progress displays). */
export function fillPages(
  task: RestoreTask, set: ImageSet, attached: ReadonlySet<bigint> = new Set(), onRead?: (bytes: number) => void, inheritance: Inheritance = NOTHING_INHERITED,
): Filled {
  // Runs inside shared file mappings are not written: their contents belong to the file.
  const sharedVma = (addr: bigint) => set.vmas.some((v) => (v.flags & MAP.SHARED) && v.start <= addr && addr < v.end);
  let runs = set.runs.filter((r) => !sharedVma(r.vaddr));
  let shared = 0;
  let written = 0;
  if (inheritance.kept.size > 0) ({ runs, shared, written } = keepInheritedPages(task, set.pagesFile, runs, inheritance, onRead));
  let read = written + readRuns(task, set.pagesFile, runs, onRead);
  for (const object of set.shmem) if (object.pagesFile && !attached.has(object.shmid)) read += readRuns(task, object.pagesFile, object.runs, onRead);
  return { read, shared };
}

/** Bits of a /proc/PID/pagemap entry's high word: present (63), swapped (62), file page or shared (61). */
const PM_PRESENT_HI = 1 << 31;
const PM_SWAPPED_HI = 1 << 30;
const PM_FILE_HI = 1 << 29;
const MADV_DONTNEED = 4;
/** Bytes compared per read of the pages file and of the task (one pread each). */
const COMPARE_CHUNK = 4 << 20;

/** pread of all of `buf` at `offset` of `fd`; throws when the file ends first. */
function preadFully(fd: number, buf: Uint8Array | Uint32Array, offset: number, file: string): void {
  const bytes = new Uint8Array(buf.buffer, buf.byteOffset, buf.byteLength);
  for (let done = 0; done < bytes.length;) {
    const n = readSync(fd, bytes, done, bytes.length - done, offset + done);
    if (n === 0) fail('fill-pages', `${file} ended at offset ${offset + done}`, { file });
    done += n;
  }
}

/**
 * Step 4 in kept VMAs (see step 0). The task's pagemap says which pages it holds as inherited
 * (present or swapped; in a private file mapping only its own copies, not the file's pages). Of
 * the image's pages, those it holds are compared with the image and left in place when equal:
 * the page stays shared with the parent; those that differ are written over from the buffer
 * they were compared in. Those it does not hold are returned, to be read as usual. A page it
 * holds that the images do not have is dropped with MADV_DONTNEED (zero-fill again in an
 * anonymous VMA, the file's page again in a file one), as after the dumped process dropped or
 * never had it. `runs` are those of the task outside shared VMAs. Addresses are handled as page
 * numbers (below 2^35: exact as numbers).
 *
 * The task's memory is read through /proc/PID/mem, not process_vm_readv: the latter pins the
 * pages (FOLL_PIN), and since Linux 5.19 a read-only pin of an anonymous page that may be shared
 * unshares it first (gup_must_unshare: a copy on write, checked on this kernel: every compared
 * page ended up a copy). /proc/PID/mem takes plain references (FOLL_GET, and FOLL_FORCE: no
 * PROT_READ needed), which leaves the sharing alone. Only pages the task holds are read: a read
 * of one it does not hold would fault one in.
 */
function keepInheritedPages(
  task: RestoreTask, pagesFile: string, runs: readonly PagesRun[], inheritance: Inheritance, onRead?: (bytes: number) => void,
): { runs: PagesRun[]; shared: number; written: number } {
  const P = PAGE_SIZE;
  const pageOf = (addr: bigint) => Number(addr / BigInt(P));
  const kept = [...inheritance.kept]
    .map(([v, k]) => ({ first: pageOf(v.start), end: pageOf(k.inheritedEnd), file: k.file }))
    .sort((a, b) => a.first - b.first);
  // Runs to read as [first page, pages, offset], merged when both pages and offsets follow on.
  const toRead: Array<[number, number, number]> = [];
  const read = (first: number, n: number, offset: number) => {
    const last = toRead.at(-1);
    if (last && last[0] + last[1] === first && last[2] + last[1] * P === offset) last[1] += n;
    else toRead.push([first, n, offset]);
  };
  let shared = 0;
  let written = 0;
  const pagemapPath = `/proc/${task.pid}/pagemap`;
  const memPath = `/proc/${task.pid}/mem`;
  const pagemap = openSync(pagemapPath, 'r');
  const mem = openSync(memPath, 'r');
  const pages = openSync(pagesFile, 'r');
  const mine = Buffer.alloc(COMPARE_CHUNK);
  const theirs = Buffer.alloc(COMPARE_CHUNK);
  try {
    // The high word of every inherited page's pagemap entry, and which pages the images have.
    const high = kept.map((k) => {
      const entries = new Uint32Array((k.end - k.first) * 2);
      preadFully(pagemap, entries, k.first * 8, pagemapPath);
      return entries;
    });
    const inImage = kept.map((k) => new Uint8Array(k.end - k.first));
    const holds = (ki: number, i: number) => {
      const hi = high[ki]![2 * i + 1]!;
      return (hi & (PM_PRESENT_HI | PM_SWAPPED_HI)) !== 0 && !(kept[ki]!.file && (hi & PM_FILE_HI));
    };

    // Held pages that follow on in memory and in the pages file, compared a chunk at a time.
    let seg = { first: 0, n: 0, offset: 0 };
    const compare = () => {
      const len = seg.n * P;
      if (len === 0) return;
      preadFully(pages, mine.subarray(0, len), seg.offset, pagesFile);
      preadFully(mem, theirs.subarray(0, len), seg.first * P, memPath);
      // Mostly equal: one memcmp of the chunk, then page by page only where it differs.
      if (mine.compare(theirs, 0, len, 0, len) === 0) {
        shared += len;
        onRead?.(len);
        seg = { first: 0, n: 0, offset: 0 };
        return;
      }
      // The pages that differ are in `mine` already: written from here (process_vm_writev, one
      // call for the chunk; a write breaks copy on write as the task's own would), not read
      // from the pages file again.
      const ranges: RemoteRange[] = [];
      let out = 0;
      for (let i = 0; i < seg.n; i++) {
        const at = i * P;
        if (mine.compare(theirs, at, at + P, at, at + P) === 0) continue;
        // Packed to the front of `theirs`, whose pages up to this one are compared already.
        mine.copy(theirs, out, at, at + P);
        const addr = BigInt(seg.first + i) * BigInt(P);
        const last = ranges.at(-1);
        if (last && last.addr + BigInt(last.len) === addr) last.len += P;
        else ranges.push({ addr: asRemoteAddress(addr), len: P });
        out += P;
      }
      const wrote = processVmWritev(task.pid, theirs.subarray(0, out), ranges);
      if (wrote !== out) fail('fill-pages', `process_vm_writev of ${out} bytes from ${hex(ranges[0]!.addr)} wrote ${wrote}`, { pid: task.pid });
      written += out;
      shared += len - out;
      onRead?.(len);
      seg = { first: 0, n: 0, offset: 0 };
    };
    const hold = (page: number, offset: number) => {
      if (seg.n > 0 && (seg.first + seg.n !== page || seg.offset + seg.n * P !== offset || seg.n * P >= COMPARE_CHUNK)) compare();
      if (seg.n === 0) seg = { first: page, n: 0, offset };
      seg.n++;
    };

    for (const r of runs) {
      let page = pageOf(r.vaddr);
      let offset = r.offset;
      const end = page + r.nrPages;
      while (page < end) {
        const ki = kept.findIndex((k) => k.end > page);
        const k = kept[ki];
        if (!k || k.first >= end) {
          read(page, end - page, offset);
          break;
        }
        if (k.first > page) {
          read(page, k.first - page, offset);
          offset += (k.first - page) * P;
          page = k.first;
        }
        for (const stop = Math.min(end, k.end); page < stop; page++, offset += P) {
          inImage[ki]![page - k.first] = 1;
          if (holds(ki, page - k.first)) hold(page, offset);
          else read(page, 1, offset);
        }
      }
    }
    compare();

    // Drop what the task holds and its images do not have.
    kept.forEach((k, ki) => {
      const marks = inImage[ki]!;
      let from = -1;
      for (let i = 0; i <= marks.length; i++) {
        const drop = i < marks.length && !marks[i] && holds(ki, i);
        if (drop && from < 0) from = i;
        if (!drop && from >= 0) {
          const start = BigInt(k.first + from) * BigInt(P);
          remote(task, 'fill-pages', `madvise(${hex(start)}, ${(i - from) * P}, MADV_DONTNEED)`, 'madvise', start, (i - from) * P, MADV_DONTNEED);
          from = -1;
        }
      }
    });
  } finally {
    closeSync(pages);
    closeSync(mem);
    closeSync(pagemap);
  }
  // In pages file order, so that readRuns reads runs that follow on in one chunk.
  toRead.sort((a, b) => a[2] - b[2]);
  return { runs: toRead.map(([first, n, offset]) => ({ vaddr: BigInt(first) * BigInt(P), nrPages: n, offset })), shared, written };
}

/** Bytes of the pages file read per step of readRuns (and the size of the buffer it reuses). */
const WRITE_CHUNK = 4 << 20;
/** The buffer readRuns reads into, kept across restores: see readRuns for why it must stay warm. */
let chunkBuffer: Buffer | undefined;

/**
 * Step 4 outside kept VMAs: `runs` (address, pages, offset in pagesFile) from pagesFile into the
 * task. criu-ts reads the file a chunk at a time into one buffer of its own and writes each chunk
 * into the task with process_vm_writev (up to IOV_MAX runs per call).
 *
 * Why not the one copy of a preadv run by the task into its own memory (as restore did before)?
 * The kernel copies a read() through the task's user addresses, and the first write through a
 * user address of a new page can cost far more than the copy: on this machine's VM (shadow
 * paging, `pvm_*` options in /proc/cmdline) about 8 us a page even when the page is allocated
 * already, 2-4 s for 1 GiB. process_vm_writev pins the task's pages (get_user_pages, which
 * allocates them as a fault would) and copies through the kernel's own mapping of them, which
 * costs no such fault; the one address range touched from user space is this buffer, reused, so
 * its pages are warm after the first chunk. On bare metal, this is one memory copy more than a
 * preadv into populated memory (~0.1 s per GiB); on a shadow-paged VM, 4-8x less time.
 * The task's own first touch of each page still costs the VM's fault afterwards, spread over its
 * run, as for any memory it had never touched.
 */
function readRuns(task: RestoreTask, pagesFile: string, runs: readonly PagesRun[], onRead?: (bytes: number) => void): number {
  if (runs.length === 0) return 0;
  chunkBuffer ??= Buffer.allocUnsafeSlow(WRITE_CHUNK);
  const buffer = chunkBuffer;
  const fd = openSync(pagesFile, 'r');
  let total = 0;
  try {
    let i = 0;
    // Where in runs[i] the next chunk starts (bytes).
    let within = 0;
    while (i < runs.length) {
      // A chunk: pieces of runs that follow each other in the pages file, at most WRITE_CHUNK
      // bytes and IOV_MAX ranges.
      const ranges: RemoteRange[] = [];
      const offset = runs[i]!.offset + within;
      let bytes = 0;
      while (i < runs.length && ranges.length < IOV_MAX && bytes < WRITE_CHUNK && runs[i]!.offset + within === offset + bytes) {
        const run = runs[i]!;
        const len = Math.min(run.nrPages * PAGE_SIZE - within, WRITE_CHUNK - bytes);
        ranges.push({ addr: asRemoteAddress(run.vaddr + BigInt(within)), len });
        bytes += len;
        within += len;
        if (within === run.nrPages * PAGE_SIZE) {
          i++;
          within = 0;
        }
      }
      preadFully(fd, buffer.subarray(0, bytes), offset, pagesFile);
      let wrote: number;
      try {
        wrote = processVmWritev(task.pid, buffer.subarray(0, bytes), ranges);
      } catch (e) {
        fail('fill-pages', `process_vm_writev of ${bytes} bytes at ${hex(ranges[0]!.addr)} (offset ${offset} of ${pagesFile}): ${(e as Error).message}`, { pid: task.pid });
      }
      // A short write stops at a range the task cannot take (not mapped or not writable).
      if (wrote !== bytes) fail('fill-pages', `process_vm_writev of ${bytes} bytes at ${hex(ranges[0]!.addr)} (offset ${offset} of ${pagesFile}) wrote ${wrote}`, { pid: task.pid });
      total += bytes;
      onRead?.(bytes);
    }
  } finally {
    closeSync(fd);
  }
  return total;
}

/** madvise advice numbers CRIU records in vma_entry.madv (bit N = advice N) and that we replay. */
const REPLAYED_MADVICE = [10 /* DONTFORK */, 12 /* MERGEABLE */, 14 /* HUGEPAGE */, 15 /* NOHUGEPAGE */, 16 /* DONTDUMP */, 18 /* WIPEONFORK */];

/**
 * After the files stage: each packet ring VMA becomes the mapping of the task's own descriptor
 * of its socket (MAP_FIXED over the placeholder mapVmas left), as the task had mapped it.
 */
export function mapPacketRings(task: RestoreTask, set: ImageSet): void {
  for (const vma of set.vmas) {
    if (!vma.packetRing) continue;
    const slot = set.fds.find((f) => f.fileId === vma.packetRing!.fileId);
    if (!slot) fail('files', `no fd of process ${task.pid} is packet socket ${vma.packetRing.fileId}, mapped at ${hex(vma.start)}`);
    const got = remote(task, 'files', `mmap of packet socket fd ${slot.fd}'s rings at ${hex(vma.start)}-${hex(vma.end)}`, 'mmap', vma.start, vma.end - vma.start, vma.prot, MAP.SHARED | MAP.FIXED, slot.fd, 0n);
    if (got !== vma.start) fail('files', `mmap of the packet ring at ${hex(vma.start)} landed at ${hex(got)}`);
  }
}

/** Step 5. */
export function protectVmas(task: RestoreTask, mapped: Map<VmaImage, number>): void {
  for (const [vma, prot] of mapped) {
    if (vma.packetRing) continue;
    const len = vma.end - vma.start;
    if (prot !== vma.prot) remote(task, 'protect', `mprotect ${hex(vma.start)}-${hex(vma.end)} to ${vma.prot}`, 'mprotect', vma.start, len, vma.prot);
    for (const advice of REPLAYED_MADVICE) {
      if (vma.madv & (1n << BigInt(advice))) remote(task, 'protect', `madvise(${hex(vma.start)}, ${advice})`, 'madvise', vma.start, len, advice);
    }
  }
}

/** Step 6. */
export function setMmFields(task: RestoreTask, set: ImageSet, pathOf: (f: RegFile) => string = (f) => f.linkRemap ?? f.name): void {
  const mm = set.mm;
  const auxvWords = (mm.mm_saved_auxv as Array<bigint | number>).map((x) => BigInt(x));
  const auxv = Buffer.alloc(auxvWords.length * 8);
  auxvWords.forEach((w, i) => auxv.writeBigUInt64LE(BigInt.asUintN(64, w), i * 8));
  const exeFd = remoteOpen(task, 'mm-fields', pathOf(set.exe), O.RDONLY | O.CLOEXEC);
  try {
    // struct prctl_mm_map (uapi/linux/prctl.h): 11 u64 bounds, u64 auxv pointer, u32 auxv_size, u32 exe_fd.
    const map = Buffer.alloc(104);
    const fields = ['mm_start_code', 'mm_end_code', 'mm_start_data', 'mm_end_data', 'mm_start_brk', 'mm_brk', 'mm_start_stack', 'mm_arg_start', 'mm_arg_end', 'mm_env_start', 'mm_env_end'];
    fields.forEach((f, i) => map.writeBigUInt64LE(BigInt(mm[f]), i * 8));
    map.writeUInt32LE(auxv.length, 96);
    map.writeUInt32LE(exeFd, 100);
    const [mapAddr, auxvAddr] = task.scratchPut(map, auxv);
    map.writeBigUInt64LE(auxvAddr!, 88);
    task.write(mapAddr!, map);
    remote(task, 'mm-fields', 'prctl(PR_SET_MM, PR_SET_MM_MAP)', 'prctl', PR_SET_MM, PR_SET_MM_MAP, mapAddr!, 104, 0);
  } finally {
    task.syscallRawSync('close', exeFd);
  }
}

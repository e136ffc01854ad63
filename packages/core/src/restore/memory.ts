// The address space of the restored task: from the stub's to the dumped one.
//
//   1. unmap everything but the control area (the stub's code, data, stack, vDSO)
//   2. vDSO block back at its dumped address: arch_prctl(ARCH_MAP_VDSO_64, start of [vvar])
//      on a task without a vDSO maps [vvar], [vvar_vclock] and [vdso] back to back from there
//      (checked on this kernel). It goes first, into an empty address space, because the kernel
//      takes the address only as a hint (get_unmapped_area) and would move it if it were busy.
//   3. mmap every other VMA at its address; private ones writable for now, so the pages can
//      be filled, file mappings from the path in files.img at their file offset, memfd
//      mappings from the restore's one memfd per inode (memfd.ts)
//   4. preadv from pages-N.img straight into the task: the task opens the pages file itself and
//      reads runs of pages into place, up to 1024 runs per call (one copy, no buffer in Node)
//   5. the dumped protections and madvise flags
//   6. prctl(PR_SET_MM, PR_SET_MM_MAP): code/data/brk/stack/arg/env bounds, auxv, exe file.
//      This form needs no CAP_SYS_RESOURCE (only checkpoint_restore_ns_capable for the exe);
//      the kernel refuses to change the exe file while the old one is still mapped, which it
//      no longer is after step 1.
import { AT_FDCWD, MAP, O, PROT } from '@criu-ts/sys';
import { PAGE_SIZE } from '@criu-ts/images';
import { RestoreError } from './errors.js';
import { TASK_SIZE, VMA, type ImageSet, type PagesRun, type RegFile, type VmaImage } from './image-set.js';
import { CONTROL_SIZE, type RestoreTask } from './remote-task.js';
import type { MemfdInodes } from './memfd.js';

const ARCH_MAP_VDSO_64 = 0x2003;
const PR_SET_MM = 35;
const PR_SET_MM_MAP = 14;
/** The kernel refuses larger reads in one call (MAX_RW_COUNT = INT_MAX rounded down to a page). */
const MAX_READ = 1 << 30;

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

/** Step 1. Precondition: the control area is set up. */
export function unmapAllButControl(task: RestoreTask): void {
  const ctrl = task.controlArea;
  const end = ctrl + BigInt(CONTROL_SIZE);
  remote(task, 'unmap-stub', 'munmap below the control area', 'munmap', 0, ctrl);
  remote(task, 'unmap-stub', 'munmap above the control area', 'munmap', end, TASK_SIZE - end);
  const left = task.currentMaps().filter((m) => m.start !== ctrl && m.name !== '[vsyscall]');
  if (left.length > 0) fail('unmap-stub', 'mappings of the stub survived munmap', { left: left.map((m) => `${hex(m.start)}-${hex(m.end)} ${m.name}`) });
}

/** Step 2. */
export function mapVdso(task: RestoreTask, vmas: readonly VmaImage[]): void {
  const block = vmas.filter((v) => v.status & (VMA.VDSO | VMA.VVAR));
  const start = block.reduce((a, v) => (v.start < a ? v.start : a), block[0]!.start);
  remote(task, 'vdso', `arch_prctl(ARCH_MAP_VDSO_64, ${hex(start)})`, 'arch_prctl', ARCH_MAP_VDSO_64, start);
  // The block must now be exactly where and as large as it was: glibc keeps pointers into it.
  const now = task.currentMaps().filter((m) => m.name === '[vdso]' || m.name.startsWith('[vvar'));
  const span = (list: ReadonlyArray<{ start: bigint; end: bigint }>) => list.map((r) => `${hex(r.start)}-${hex(r.end)}`).join(' ');
  const dumpedVdso = block.filter((v) => v.status & VMA.VDSO);
  const nowVdso = now.filter((m) => m.name === '[vdso]');
  const total = (list: ReadonlyArray<{ start: bigint; end: bigint }>) => list.reduce((a, r) => a + (r.end - r.start), 0n);
  const min = (list: ReadonlyArray<{ start: bigint }>) => list.reduce((a, r) => (r.start < a ? r.start : a), TASK_SIZE);
  if (span(dumpedVdso) !== span(nowVdso) || total(block) !== total(now) || min(now) !== start) {
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
 */
export function mapVmas(
  task: RestoreTask, set: ImageSet, pathOf: (f: RegFile) => string = (f) => f.name,
  sources: ReadonlyMap<bigint, SharedMemorySource> = new Map(), memfds?: MemfdInodes,
): Map<VmaImage, number> {
  const mapped = new Map<VmaImage, number>();
  const fds = new Map<string, number>();
  const hasPages = (v: VmaImage) => set.runs.some((r) => r.vaddr < v.end && r.vaddr + BigInt(r.nrPages * PAGE_SIZE) > v.start);
  try {
    for (const vma of set.vmas) {
      if (vma.status & (VMA.VDSO | VMA.VVAR)) continue;
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

/** `onRead` is told the bytes of each read as it completes (progress displays). */
export function fillPages(task: RestoreTask, set: ImageSet, attached: ReadonlySet<bigint> = new Set(), onRead?: (bytes: number) => void): number {
  // Runs inside shared file mappings are not written: their contents belong to the file.
  const sharedVma = (addr: bigint) => set.vmas.some((v) => (v.flags & MAP.SHARED) && v.start <= addr && addr < v.end);
  let total = readRuns(task, set.pagesFile, set.runs.filter((r) => !sharedVma(r.vaddr)), onRead);
  for (const object of set.shmem) if (object.pagesFile && !attached.has(object.shmid)) total += readRuns(task, object.pagesFile, object.runs, onRead);
  return total;
}

/** preadv of `runs` (address, pages, offset in pagesFile) from pagesFile into the task. */
function readRuns(task: RestoreTask, pagesFile: string, runs: readonly PagesRun[], onRead?: (bytes: number) => void): number {
  if (runs.length === 0) return 0;
  prefault(task, runs);
  const fd = remoteOpen(task, 'fill-pages', pagesFile, O.RDONLY | O.CLOEXEC);
  const maxIov = Math.min(1024, Math.floor(task.scratchSize / 16));
  let total = 0;
  try {
    let i = 0;
    while (i < runs.length) {
      // A batch: runs that follow each other in the pages file, at most maxIov of them.
      const segs: Array<{ addr: bigint; len: number }> = [];
      const offset = runs[i]!.offset;
      let bytes = 0;
      while (i < runs.length && segs.length < maxIov && runs[i]!.offset === offset + bytes && bytes < MAX_READ) {
        const len = runs[i]!.nrPages * PAGE_SIZE;
        segs.push({ addr: runs[i]!.vaddr, len });
        bytes += len;
        i++;
      }
      let done = 0;
      for (let guard = 0; done < bytes; guard++) {
        if (guard > 10_000) fail('fill-pages', 'preadv made no progress');
        // Skip what was read already (preadv may stop short, e.g. at MAX_RW_COUNT).
        const iov: Buffer[] = [];
        let skip = done;
        let want = 0;
        for (const s of segs) {
          if (skip >= s.len) { skip -= s.len; continue; }
          const b = Buffer.alloc(16);
          b.writeBigUInt64LE(s.addr + BigInt(skip), 0);
          b.writeBigUInt64LE(BigInt(s.len - skip), 8);
          want += s.len - skip;
          skip = 0;
          iov.push(b);
          if (want >= MAX_READ) break;
        }
        const [iovAddr] = task.scratchPut(Buffer.concat(iov));
        const n = Number(remote(task, 'fill-pages', `preadv of ${want} bytes at offset ${offset + done} of ${pagesFile}`, 'preadv', fd, iovAddr!, iov.length, BigInt(offset + done), 0));
        if (n === 0) fail('fill-pages', `${pagesFile} ended at offset ${offset + done}, expected ${bytes - done} more bytes`);
        done += n;
        onRead?.(n);
      }
      total += bytes;
    }
  } finally {
    task.syscallRawSync('close', fd);
  }
  return total;
}

const MADV_POPULATE_WRITE = 23;
/** Below this, populating ahead costs a remote call more than the faults it saves. */
const PREFAULT_MIN = 256 * 1024;

/**
 * Allocates the pages preadv is about to fill, in large ranges, with MADV_POPULATE_WRITE
 * (Linux 5.14): otherwise every page faults one by one inside preadv's copy, which costs about as
 * much again as the copy (1 GiB: ~0.85 s with faults, ~0.45 s populated first, measured here).
 * Best effort: a kernel without it answers EINVAL and the faults happen as before.
 */
function prefault(task: RestoreTask, runs: ReadonlyArray<{ vaddr: bigint; nrPages: number }>): void {
  const ranges: Array<{ start: bigint; end: bigint }> = [];
  for (const r of [...runs].sort((a, b) => (a.vaddr < b.vaddr ? -1 : a.vaddr > b.vaddr ? 1 : 0))) {
    const end = r.vaddr + BigInt(r.nrPages * PAGE_SIZE);
    const last = ranges.at(-1);
    if (last && last.end === r.vaddr) last.end = end;
    else ranges.push({ start: r.vaddr, end });
  }
  for (const range of ranges) {
    if (range.end - range.start < BigInt(PREFAULT_MIN)) continue;
    const ret = task.syscallRawSync('madvise', range.start, range.end - range.start, MADV_POPULATE_WRITE);
    if (ret === -22n) return; // EINVAL: not supported here, nothing more to try
  }
}

/** madvise advice numbers CRIU records in vma_entry.madv (bit N = advice N) and that we replay. */
const REPLAYED_MADVICE = [10 /* DONTFORK */, 12 /* MERGEABLE */, 14 /* HUGEPAGE */, 15 /* NOHUGEPAGE */, 16 /* DONTDUMP */, 18 /* WIPEONFORK */];

/** Step 5. */
export function protectVmas(task: RestoreTask, mapped: Map<VmaImage, number>): void {
  for (const [vma, prot] of mapped) {
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

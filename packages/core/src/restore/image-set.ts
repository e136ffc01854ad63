// Reading and validating the image sets of a process tree before anything is created.
//
// Restore reads every image it needs into memory first (except page contents, which stay in
// pages-N.img and are read straight into the restored task later), and checks what it relies
// on: a missing, truncated or malformed image, an unsupported kind of state, or a PID that is
// already taken is reported here, while no process exists yet.
//
//   inventory.img           image version, fdinfo naming
//   pstree.img              one entry per process, parents first: pid, ppid, pgid, sid, threads
//                           (leader first); per live process, the images below
//   core-PID.img            of a zombie: tc.task_state TASK_DEAD and exit_code (waitpid status) only
//   core-PID.img            registers, xsave, sigactions, blocked mask, timers, rlimits, sas, rseq
//   core-TID.img            every other thread: registers, xsave, mask, sas, rseq, signals...
//   ids-PID.img             files_id: which fdinfo-N.img holds the fd table
//   mm-PID.img              VMAs, mm fields, auxv, exe_file_id
//   pagemap-PID.img         runs of pages; PE_PRESENT ones are in pages-N.img, back to back
//   fs-PID.img              cwd_id, root_id (files.img ids), umask
//   files.img               one file_entry per open-file description (REG: path, flags, pos)
//   fdinfo-N.img            fd number -> file id, FD_CLOEXEC
//   seccomp.img             every thread's seccomp filters (thread_core.seccomp_filter points in)
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { ImageFormatError, ImageReader, PAGE_SIZE, PagesReader, PE_LAZY, PE_PARENT, PE_PRESENT } from '@criu-ts/images';
import { RestoreError } from './errors.js';
import { packetRingMappingBytes } from './packet-sockets.js';
import { checkTreeUnixSockets, FD_TYPE, memfdInodesOf, readFdTable, readFileLocks, type FdSlot, type FileLockImage, type MemfdInode } from './fd-images.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** CRIU's VMA status bits (vma_entry.status), as CRIU 4.x writes them. */
export const VMA = {
  REGULAR: 1 << 0, STACK: 1 << 1, VSYSCALL: 1 << 2, VDSO: 1 << 3, HEAP: 1 << 5, FILE_PRIVATE: 1 << 6,
  FILE_SHARED: 1 << 7, ANON_SHARED: 1 << 8, ANON_PRIVATE: 1 << 9, SYSVIPC: 1 << 10, SOCKET: 1 << 11,
  VVAR: 1 << 12, AIORING: 1 << 13, MEMFD: 1 << 14, SHSTK: 1 << 15, UPROBES: 1 << 17, UNSUPP: 2 ** 31,
} as const;

export { FD_TYPE } from './fd-images.js';

export interface VmaImage {
  readonly start: bigint;
  readonly end: bigint;
  readonly pgoff: bigint;
  readonly shmid: bigint;
  readonly prot: number;
  readonly flags: number;
  readonly status: number;
  readonly madv: bigint;
  /** For file mappings: the reg file entry the VMA maps. */
  readonly file?: RegFile;
  /** For mappings of a memfd (VMA_AREA_MEMFD): its inode, shared with the fds of the same memfd. */
  readonly memfd?: MemfdInode;
  /** For a SysV shared memory attachment (VMA_AREA_SYSVIPC): its segment. */
  readonly sysv?: SysvSegmentImage;
  /** vma_entry.fdflags: O_RDWR when the mapping may be made writable (a SysV attachment not SHM_RDONLY). */
  readonly fdflags?: number;
  /** For a packet socket's rings (VMA_AREA_SOCKET): the socket's file id; the task's fd of it is mapped here after the files stage. */
  readonly packetRing?: { readonly fileId: number };
}

/** A SysV shared memory segment (ipcns-shm-<ipc ns id>.img), to be made again with its id. */
export interface SysvSegmentImage {
  readonly id: number;
  readonly key: number;
  readonly uid: number;
  readonly gid: number;
  readonly cuid: number;
  readonly cgid: number;
  /** Permission bits and the kernel's SHM_DEST (01000: IPC_RMID was called) and SHM_LOCKED (02000). */
  readonly mode: number;
  readonly size: bigint;
  readonly contents: Uint8Array;
}

export interface RegFile {
  readonly id: number;
  readonly name: string;
  readonly flags: number;
  readonly pos: bigint;
  readonly size?: bigint;
  readonly mode?: number;
  /** Deleted while open: the contents saved in ghost-file-N.img, recreated at restore. */
  readonly ghost?: GhostFile;
  /**
   * Deleted while open, and given a hard link by the dump (--link-remap, remap type LINKED):
   * the link's path (a files.img entry of its own). Restore opens the file there, then removes
   * the link once every fd and mapping holds the file.
   */
  readonly linkRemap?: string;
}

export interface GhostFile {
  readonly id: number;
  readonly mode: number;
  readonly uid: number;
  readonly gid: number;
  /** [offset, bytes] pieces of the contents (one piece unless the image is chunked). */
  readonly chunks: ReadonlyArray<readonly [number, Uint8Array]>;
  readonly size: number;
}

/** One slot of the fd table: its number, FD_CLOEXEC, and the open file it points at. */
export type FdImage = FdSlot<RegFile>;

/** A present run of pages: `nrPages` pages for `vaddr` at `offset` in the pages file. */
export interface PagesRun {
  readonly vaddr: bigint;
  readonly nrPages: number;
  readonly offset: number;
}

/** A thread other than the leader: its TID and its core_entry (thread_info, thread_core). */
export interface ThreadImage {
  readonly tid: number;
  readonly core: Msg;
}

export interface ImageSet {
  readonly dir: string;
  readonly pid: number;
  readonly ppid: number;
  readonly pgid: number;
  readonly sid: number;
  /** The decoded core_entry of the leader (thread_info, tc, thread_core). */
  readonly core: Msg;
  /** The other threads, in pstree order. */
  readonly threads: readonly ThreadImage[];
  readonly mm: Msg;
  readonly vmas: readonly VmaImage[];
  readonly exe: RegFile;
  readonly pagesFile: string;
  readonly pagesSize: number;
  readonly runs: readonly PagesRun[];
  /** Shared anonymous memory: one object per shmid, mapped once over its VMAs, with its pages. */
  readonly shmem: readonly SharedMemoryImage[];
  readonly fds: readonly FdImage[];
  /** Files in flight in the queues of its unix sockets (SCM_RIGHTS): made, sent again, closed (fd -1). */
  readonly inFlight: readonly FdImage[];
  /** File locks this process held (--file-locks), taken again once its fds are in place. */
  readonly locks: readonly FileLockImage[];
  readonly cwd: RegFile;
  readonly root: RegFile;
  readonly umask: number | undefined;
  /** timer_create() timers of the process, by ascending id (checked: see checkPosixTimers). */
  readonly posixTimers: readonly Msg[];
  /** Threads (by TID) that run under seccomp, each with its filters, oldest first. */
  readonly seccomp: ReadonlyMap<number, SeccompChain>;
}

export interface SeccompChain {
  /** 1 strict, 2 filter. */
  readonly mode: number;
  /** Filter mode: the filters in the order they were installed (oldest first). */
  readonly filters: ReadonlyArray<{ readonly program: Buffer; readonly flags: number }>;
}

export const SECCOMP_MODE_STRICT = 1;
export const SECCOMP_MODE_FILTER = 2;
/** SECCOMP_FILTER_FLAG_TSYNC | LOG | SPEC_ALLOW: the flags a restored filter may carry (NEW_LISTENER would need its fd). */
const SECCOMP_FILTER_FLAGS_KNOWN = 1 | 2 | 4;
const SOCK_FILTER_SIZE = 8;
const BPF_MAXINSNS = 4096;

/**
 * The chain of one thread, in the order to install it: from thread_core.seccomp_filter (its
 * oldest filter) through `prev` (which CRIU points at the next newer filter, see
 * dump/seccomp.ts) to the newest, as indexes into seccomp.img. Refuses an unknown mode, an index outside
 * the image, a `prev` that does not point back (a loop), a program that is not whole sock_filter
 * instructions, and flags restore cannot honour.
 */
export function resolveSeccomp(file: string, modeField: unknown, filterField: unknown, filters: readonly Msg[]): SeccompChain | undefined {
  const mode = Number(modeField ?? 0);
  if (mode === 0) return undefined;
  if (mode === SECCOMP_MODE_STRICT) return { mode, filters: [] };
  if (mode !== SECCOMP_MODE_FILTER) invalid(`${file}: unknown seccomp mode ${mode}`, { file, mode });
  if (filterField === undefined) invalid(`${file}: seccomp filter mode without seccomp_filter`, { file });
  const chain: Array<{ program: Buffer; flags: number }> = [];
  for (let index = Number(filterField), from = Infinity; ; ) {
    if (!Number.isInteger(index) || index < 0 || index >= filters.length || index >= from) {
      invalid(`${file}: seccomp filter index ${index} is not in seccomp.img (${filters.length} filters) or does not point back`, { file, index, filters: filters.length });
    }
    const f = filters[index]!;
    const program = Buffer.from(f.filter as Uint8Array);
    const flags = Number(f.flags ?? 0);
    if (program.length === 0 || program.length % SOCK_FILTER_SIZE !== 0 || program.length > BPF_MAXINSNS * SOCK_FILTER_SIZE) {
      invalid(`seccomp.img filter ${index}: ${program.length} bytes is not a classic BPF program (1..${BPF_MAXINSNS} instructions of ${SOCK_FILTER_SIZE} bytes)`, { index, bytes: program.length });
    }
    if (flags & ~SECCOMP_FILTER_FLAGS_KNOWN) invalid(`seccomp.img filter ${index}: flags 0x${flags.toString(16)} cannot be restored (known: TSYNC, LOG, SPEC_ALLOW)`, { index, flags });
    chain.push({ program, flags });
    if (f.prev === undefined) break;
    from = index;
    index = Number(f.prev);
  }
  return { mode, filters: chain };
}

/** SIGEV_* values posix_timer_entry.it_sigev_notify may hold (SIGEV_THREAD_ID combined with SIGEV_SIGNAL). */
const SIGEV_SIGNAL = 0;
const SIGEV_NONE = 1;
const SIGEV_THREAD = 2;
const SIGEV_THREAD_ID = 4;
const SIGRTMAX = 64;
const NSEC_PER_SEC = 1_000_000_000n;

/**
 * posix_timer_entry of a process: distinct ids, a signal number the kernel accepts, a notify
 * kind it knows, a SIGEV_THREAD_ID target among the process's threads, nanoseconds below one
 * second. Returned by ascending id (restore creates them in that order).
 */
function checkPosixTimers(pid: number, threads: readonly number[], timers: readonly Msg[]): Msg[] {
  const ids = new Set<number>();
  for (const t of timers) {
    const id = Number(t.it_id);
    const where = `core-${pid}.img POSIX timer ${id}`;
    if (ids.has(id)) invalid(`${where}: timer id listed twice`, { id });
    ids.add(id);
    const notify = Number(t.it_sigev_notify);
    if (![SIGEV_SIGNAL, SIGEV_NONE, SIGEV_THREAD, SIGEV_SIGNAL | SIGEV_THREAD_ID].includes(notify)) invalid(`${where}: unknown sigev_notify ${notify}`, { id, notify });
    const signo = Number(t.si_signo);
    if (notify !== SIGEV_NONE && (signo <= 0 || signo > SIGRTMAX)) invalid(`${where}: signal ${signo} is not a signal number`, { id, signo });
    if (notify & SIGEV_THREAD_ID && !threads.includes(Number(t.notify_thread_id))) {
      invalid(`${where}: its signal goes to thread ${t.notify_thread_id}, which is not a thread of the process (${threads.join(', ')})`, { id, thread: t.notify_thread_id });
    }
    if (BigInt(t.insec) >= NSEC_PER_SEC || BigInt(t.vnsec) >= NSEC_PER_SEC) invalid(`${where}: nanoseconds ${t.insec}/${t.vnsec} out of range`, { id });
  }
  return [...timers].sort((a, b) => Number(a.it_id) - Number(b.it_id));
}

export interface SharedMemoryImage {
  readonly shmid: bigint;
  /** The object's VMAs, address-ordered, contiguous in address and in object offset. */
  readonly vmas: readonly VmaImage[];
  /** pages-N.img of the object (absent when no page of it was ever written). */
  readonly pagesFile?: string;
  /** Runs by address in the restored mapping, with their offsets in pagesFile. */
  readonly runs: readonly PagesRun[];
}

/**
 * Groups the shared anonymous VMAs by object and reads pagemap-shmem-<shmid>.img. One process
 * can map an object once and split it (mprotect), which restore reproduces by mapping the whole
 * range once; an object mapped at two unrelated places needs one object behind two mappings,
 * which is not supported yet.
 */
function readSharedMemory(dir: string, pid: number, vmas: readonly VmaImage[], invalid: (message: string, evidence?: Record<string, unknown>) => never, inTree = false): SharedMemoryImage[] {
  const groups = new Map<bigint, VmaImage[]>();
  for (const v of vmas) {
    if (!(v.status & VMA.ANON_SHARED) || (v.status & (VMA.FILE_SHARED | VMA.FILE_PRIVATE))) continue;
    const list = groups.get(v.shmid) ?? [];
    list.push(v);
    groups.set(v.shmid, list);
  }
  const out: SharedMemoryImage[] = [];
  for (const [shmid, list] of groups) {
    for (let i = 1; i < list.length; i++) {
      const a = list[i - 1]!;
      const b = list[i]!;
      if (b.start !== a.end || b.pgoff !== a.pgoff + (a.end - a.start)) {
        invalid(`mm-${pid}.img: shared memory object ${shmid} is mapped at ${hex(a.start)} and ${hex(b.start)} apart: not supported yet`, { shmid: String(shmid) });
      }
    }
    const first = list[0]!;
    const last = list.at(-1)!;
    const objectStart = first.pgoff;
    const objectEnd = first.pgoff + (last.end - first.start);
    const path = join(dir, `pagemap-shmem-${shmid}.img`);
    if (!existsSync(path)) {
      out.push({ shmid, vmas: list, runs: [] });
      continue;
    }
    let reader: PagesReader | undefined;
    const runs: PagesRun[] = [];
    try {
      reader = PagesReader.open(path);
      for (const run of reader.runs()) {
        const end = run.vaddr + BigInt(run.nrPages * PAGE_SIZE);
        if (run.vaddr < objectStart || end > objectEnd) {
          // In a tree the image is the object's, not this process's: another process may map
          // more of it (restore then refuses unless the first mapper covers it all, see tree.ts).
          if (inTree) continue;
          invalid(`${path}: pages at offset ${hex(run.vaddr)}-${hex(end)} lie outside the mapped part of object ${shmid}`);
        }
        if ((run.flags & PE_PRESENT) && run.pages) runs.push({ vaddr: first.start + (run.vaddr - objectStart), nrPages: run.nrPages, offset: run.pages.offset });
      }
      out.push({ shmid, vmas: list, pagesFile: reader.pagesFile, runs });
    } catch (err) {
      if (err instanceof RestoreError) throw err;
      throw new RestoreError('read-images', `${path} or its pages file cannot be read`, err instanceof ImageFormatError ? { file: err.file, reason: err.reason, offset: err.offset } : { file: path }, err);
    } finally {
      reader?.close();
    }
  }
  return out;
}

function readAll(dir: string, name: string): Msg[] {
  return readEntries(dir, name).map((e) => e.message);
}

function readEntries(dir: string, name: string): Array<{ message: Msg; bytes?: Uint8Array }> {
  const path = join(dir, name);
  if (!existsSync(path)) throw new RestoreError('read-images', `${path} is missing`, { file: path });
  let reader: ImageReader | undefined;
  try {
    reader = ImageReader.open(path);
    // Payload bytes are copied: the reader's buffers do not outlive close().
    return [...reader.entries()].map((e) => ({ message: e.message as Msg, ...(e.payload?.type === 'bytes' ? { bytes: Buffer.from(e.payload.bytes) } : {}) }));
  } catch (err) {
    throw new RestoreError('read-images', `${path} cannot be read`, err instanceof ImageFormatError ? { file: err.file, reason: err.reason, entryIndex: err.entryIndex, offset: err.offset } : { file: path }, err);
  } finally {
    reader?.close();
  }
}

/** SysV segments of ipcns-shm-<nsId>.img, checked, by id. */
function readSysvSegments(dir: string, nsId: number): Map<number, SysvSegmentImage> {
  const name = `ipcns-shm-${nsId}.img`;
  const file = join(dir, name);
  const segments = new Map<number, SysvSegmentImage>();
  if (!existsSync(file)) return segments;
  for (const [i, { message: e, bytes }] of readEntries(dir, name).entries()) {
    const where = `${name} entry ${i}`;
    const desc = e.desc as Msg;
    const size = BigInt(e.size);
    const id = Number(desc.id);
    if (segments.has(id)) invalid(`${where}: segment id ${id} appears twice`, { file, id });
    if (!Number.isInteger(id) || id < 0 || id > 0x7fffffff) invalid(`${where}: segment id ${desc.id} is not an IPC id`, { file });
    if (e.in_pagemaps === true) invalid(`${where}: segment ${id} keeps its contents in a shmem pagemap (in_pagemaps), which restore does not read yet`, { file, id });
    if (e.hugetlb_flag) invalid(`${where}: segment ${id} is on huge pages, which restore does not support`, { file, id });
    const contents = bytes ?? new Uint8Array(0);
    if (BigInt(contents.byteLength) !== size) invalid(`${where}: segment ${id} of ${size} bytes has ${contents.byteLength} bytes of contents`, { file, id });
    segments.set(id, {
      id, key: Number(desc.key) | 0, uid: Number(desc.uid), gid: Number(desc.gid), cuid: Number(desc.cuid), cgid: Number(desc.cgid),
      mode: Number(desc.mode), size, contents,
    });
  }
  return segments;
}

function one(dir: string, name: string): Msg {
  const entries = readAll(dir, name);
  if (entries.length !== 1) throw new RestoreError('read-images', `${join(dir, name)} holds ${entries.length} entries, expected 1`, { file: join(dir, name) });
  return entries[0]!;
}

function invalid(message: string, evidence: Record<string, unknown> = {}): never {
  throw new RestoreError('validate', message, evidence);
}

function regFile(m: Msg): RegFile {
  const r = m.reg as Msg;
  return {
    id: Number(r.id), name: String(r.name), flags: Number(r.flags), pos: BigInt(r.pos ?? 0n),
    ...(r.size !== undefined ? { size: BigInt(r.size) } : {}), ...(r.mode !== undefined ? { mode: Number(r.mode) } : {}),
  };
}

const hex = (v: bigint): string => `0x${v.toString(16)}`;
const MAP_SHARED_FLAG = 0x1;
const MAP_PRIVATE_FLAG = 0x2;

/** User address space limit on x86_64 with 4-level paging (TASK_SIZE_MAX = 2^47 - one page). */
export const TASK_SIZE = (1n << 47n) - BigInt(PAGE_SIZE);

/** One process of pstree.img: a live one with its images, or a zombie with its exit status. */
export interface TreeTaskImages {
  readonly pid: number;
  readonly ppid: number;
  readonly pgid: number;
  readonly sid: number;
  /** The images of a live process. */
  readonly set?: ImageSet;
  /** A zombie (core tc.task_state TASK_DEAD): its status as waitpid(2) reports it. */
  readonly zombie?: { readonly exitCode: number };
}

/** Every process of a dump, in pstree order (parents before children, the root first). */
export interface TreeImageSet {
  readonly dir: string;
  readonly tasks: readonly TreeTaskImages[];
}

const TASK_ALIVE = 1;
const TASK_DEAD = 2;

/**
 * Reads every image of the process tree in `dir` and checks it can be restored here: the tree
 * shape (a parent before its children, zombies without children), sessions and groups that the
 * restore can rebuild (tree.ts), and every live process's images.
 * Throws RestoreError('read-images' | 'validate') naming the file and what is wrong.
 */
export function readTreeImageSet(dir: string, options: { shellJob?: boolean; tcpEstablished?: boolean; tcpClose?: boolean } = {}): TreeImageSet {
  if (!existsSync(dir) || !statSync(dir).isDirectory()) throw new RestoreError('read-images', `images directory ${dir} does not exist`, { dir });
  const inventory = one(dir, 'inventory.img');
  if (Number(inventory.img_version) !== 2) invalid(`inventory.img has image version ${inventory.img_version}; CRIU 4.x images have version 2`, { file: join(dir, 'inventory.img') });

  const pstree = readAll(dir, 'pstree.img');
  if (pstree.length === 0) invalid('pstree.img lists no process');
  const filesList = readAll(dir, 'files.img');
  const files = new Map<number, Msg>(filesList.map((f) => [Number(f.id), f]));
  const { ghosts, links } = readRemaps(dir, files);
  // CRIU writes seccomp.img with every dump (an empty entry without filters); older dumps may lack it.
  const seccompFilters = existsSync(join(dir, 'seccomp.img')) ? ((readAll(dir, 'seccomp.img')[0]?.seccomp_filters ?? []) as Msg[]) : [];
  const inTree = pstree.length > 1;
  const seen = new Map<number, Msg>();
  const tasks: TreeTaskImages[] = [];
  const envChecks: Array<() => void> = [];
  for (const [origId, path] of links) {
    envChecks.push(() => {
      if (!existsSync(path)) invalid(`remap-fpath.img: the link remap of file id ${origId}, ${path}, no longer exists (a restore removes it once done: these images were restored already, or the link was deleted)`, { file: join(dir, 'remap-fpath.img'), origId, path });
    });
  }
  for (const [i, entry] of pstree.entries()) {
    const pid = Number(entry.pid);
    const ppid = Number(entry.ppid);
    if (seen.has(pid)) invalid(`pstree.img lists process ${pid} twice`, { pid });
    if (i > 0 && !seen.has(ppid)) invalid(`pstree.img: the parent ${ppid} of process ${pid} is not listed before it`, { pid, ppid });
    seen.set(pid, entry);
    const head = { pid, ppid, pgid: Number(entry.pgid), sid: Number(entry.sid) };
    const core = one(dir, `core-${pid}.img`);
    const state = Number(core.tc?.task_state ?? 0);
    if (state === TASK_DEAD) {
      if (i === 0) invalid(`the root process ${pid} of the dump is a zombie`, { pid });
      tasks.push({ ...head, zombie: { exitCode: Number(core.tc.exit_code ?? 0) } });
      continue;
    }
    // A dump made with --tcp-close says so in the inventory: its connections have no state to restore.
    const inet = { tcpEstablished: options.tcpEstablished === true, tcpClose: options.tcpClose === true || inventory.tcp_close === true };
    tasks.push({ ...head, set: readProcess(dir, inventory, files, { ghosts, links }, entry, { shellJob: options.shellJob === true, root: i === 0, inTree, inet }, seccompFilters, envChecks) });
  }
  for (const t of tasks) {
    if (t.zombie && tasks.some((c) => c.ppid === t.pid)) invalid(`pstree.img: zombie ${t.pid} has children`, { pid: t.pid });
  }
  checkTreeUnixSockets(dir, tasks.flatMap((t) => (t.set ? [t.set.fds, t.set.inFlight] : [])));
  for (const check of envChecks) check();
  return { dir, tasks };
}

/**
 * Reads every image of the process in `dir` (the root of the dump) and checks it can be
 * restored here. Throws RestoreError('read-images' | 'validate') naming the file and what is wrong.
 */
export function readImageSet(dir: string, options: { shellJob?: boolean } = {}): ImageSet {
  return readTreeImageSet(dir, options).tasks[0]!.set!;
}

function readProcess(
  dir: string, inventory: Msg, files: ReadonlyMap<number, Msg>, remaps: Remaps, task: Msg,
  options: { shellJob: boolean; root: boolean; inTree: boolean; inet?: { tcpEstablished: boolean; tcpClose: boolean } }, seccompFilters: readonly Msg[],
  envChecks: Array<() => void>,
): ImageSet {
  const pid = Number(task.pid);
  const threads = (task.threads as number[]).map(Number);
  if (threads.length === 0 || threads[0] !== pid) invalid(`pstree.img: the threads of process ${pid} must start with the leader ${pid}`, { threads });
  if (new Set(threads).size !== threads.length) invalid(`pstree.img: process ${pid} lists a thread twice`, { threads });
  const sid = Number(task.sid);
  const pgid = Number(task.pgid);
  if (options.root && sid !== pid && !options.shellJob) {
    invalid(`process ${pid} is not a session leader (sid ${sid}): it belonged to a session outside the dump; restore it with shellJob (--shell-job) to join criu-ts's session`, { pid, sid });
  }

  const core = threadCore(dir, pid, true);
  const threadImages = threads.slice(1).map((tid) => ({ tid, core: threadCore(dir, tid, false) }));
  const tc = core.tc as Msg;
  if (Number(tc.task_state) !== TASK_ALIVE) invalid(`process ${pid} was dumped in state ${tc.task_state} (only alive tasks, state 1, and zombies are restored)`);
  const posixTimers = checkPosixTimers(pid, threads, (tc.timers?.posix ?? []) as Msg[]);
  const seccomp = new Map<number, SeccompChain>();
  for (const [i, c] of [core, ...threadImages.map((t) => t.core)].entries()) {
    // Images from before per-thread seccomp (tc.old_seccomp_*) describe the leader alone.
    const chain = resolveSeccomp(`core-${threads[i]}.img`, c.thread_core?.seccomp_mode ?? (i === 0 ? tc.old_seccomp_mode : undefined),
      c.thread_core?.seccomp_filter ?? (i === 0 ? tc.old_seccomp_filter : undefined), seccompFilters);
    if (chain) seccomp.set(threads[i]!, chain);
  }

  const ids = one(dir, `ids-${pid}.img`);
  const reg = (id: number, what: string): RegFile => {
    const f = files.get(id);
    if (!f) invalid(`${what} refers to file id ${id}, which files.img does not have`, { id });
    if (Number(f.type) !== FD_TYPE.REG || !f.reg) invalid(`${what} refers to file id ${id} of type ${f.type}, expected a regular file`, { id, type: f.type });
    const ghost = remaps.ghosts.get(id);
    const linkRemap = remaps.links.get(id);
    return { ...regFile(f), ...(ghost ? { ghost } : {}), ...(linkRemap !== undefined ? { linkRemap } : {}) };
  };

  const mm = one(dir, `mm-${pid}.img`);
  const exe = reg(Number(mm.exe_file_id), `mm-${pid}.img exe_file_id`);
  // Whether files still exist is this machine's business, not the images': checked once every
  // image is known to be consistent, so that a damaged set is reported as such first.
  if (!exe.ghost && exe.linkRemap === undefined) envChecks.push(() => {
    if (!existsSync(exe.name)) invalid(`mm-${pid}.img exe_file_id ${mm.exe_file_id}: the executable ${exe.name} no longer exists`, { file: join(dir, `mm-${pid}.img`), field: 'exe_file_id', path: exe.name });
  });
  const vmas: VmaImage[] = [];
  let memfds: Map<number, MemfdInode> | undefined;
  let sysvSegments: Map<number, SysvSegmentImage> | undefined;
  let prevEnd = 0n;
  for (const [i, v] of (mm.vmas as Msg[]).entries()) {
    const start = BigInt(v.start);
    const end = BigInt(v.end);
    const status = Number(v.status) >>> 0;
    const where = `mm-${pid}.img vmas[${i}] ${hex(start)}-${hex(end)}`;
    if (status & VMA.VSYSCALL) continue; // [vsyscall] is the kernel's, at a fixed address
    if (start % BigInt(PAGE_SIZE) !== 0n || end % BigInt(PAGE_SIZE) !== 0n || end <= start || end > TASK_SIZE) invalid(`${where}: not a page-aligned user range`);
    if (start < prevEnd) invalid(`${where}: overlaps the previous VMA (ends ${hex(prevEnd)})`);
    prevEnd = end;
    if (status & VMA.UNSUPP) invalid(`${where}: CRIU marked this mapping unsupported`);
    if (status & VMA.SYSVIPC) {
      // An attachment of a segment of ipcns-shm-<ipc ns id>.img, whole, from its start (shmat's).
      const segments = (sysvSegments ??= readSysvSegments(dir, Number(ids.ipc_ns_id ?? 0)));
      const segment = segments.get(Number(v.shmid));
      if (!segment) invalid(`${where}: SysV shared memory segment id ${v.shmid} is not in ipcns-shm-${ids.ipc_ns_id}.img`, { file: join(dir, `mm-${pid}.img`), shmid: String(v.shmid) });
      const span = (segment.size + BigInt(PAGE_SIZE) - 1n) & ~BigInt(PAGE_SIZE - 1);
      if (!(Number(v.flags) & MAP_SHARED_FLAG) || BigInt(v.pgoff) !== 0n || end - start !== span) {
        invalid(`${where}: an attachment of SysV segment ${v.shmid} (${segment.size} bytes) must be shared and cover it whole from offset 0 (flags 0x${Number(v.flags).toString(16)}, pgoff ${v.pgoff})`, { file: join(dir, `mm-${pid}.img`), shmid: String(v.shmid) });
      }
      if (status & (VMA.FILE_PRIVATE | VMA.FILE_SHARED | VMA.ANON_PRIVATE | VMA.ANON_SHARED | VMA.MEMFD)) invalid(`${where}: a SysV attachment with status 0x${status.toString(16)} (also file or anonymous memory)`, { status });
      vmas.push({
        start, end, pgoff: 0n, shmid: BigInt(v.shmid), prot: Number(v.prot), flags: Number(v.flags), status, madv: BigInt(v.madv ?? 0n),
        sysv: segment, fdflags: Number(v.fdflags ?? 0),
      });
      continue;
    }
    if (status & VMA.SOCKET) {
      // A packet socket's rings, mapped whole (packet_mmap takes nothing else) from offset 0;
      // the socket's entry and the length are checked with the fds below.
      if (!(Number(v.flags) & MAP_SHARED_FLAG) || BigInt(v.pgoff) !== 0n || (status & (VMA.FILE_PRIVATE | VMA.FILE_SHARED | VMA.ANON_PRIVATE | VMA.ANON_SHARED | VMA.MEMFD | VMA.SYSVIPC))) {
        invalid(`${where}: a socket mapping must be shared, from offset 0, and nothing else (flags 0x${Number(v.flags).toString(16)}, status 0x${status.toString(16)}, pgoff ${v.pgoff})`, { file: join(dir, `mm-${pid}.img`), status });
      }
      vmas.push({
        start, end, pgoff: 0n, shmid: BigInt(v.shmid), prot: Number(v.prot), flags: Number(v.flags), status, madv: BigInt(v.madv ?? 0n),
        packetRing: { fileId: Number(v.shmid) },
      });
      continue;
    }
    if (status & (VMA.AIORING | VMA.SHSTK | VMA.UPROBES)) invalid(`${where}: mapping kind (status 0x${status.toString(16)}) not supported yet`, { status });
    // Status and mmap flags must agree on sharing: a private mapping made MAP_SHARED would send
    // the process's writes (to a library's data, say) into the file on disk.
    const flags = Number(v.flags);
    const sharedFlag = (flags & MAP_SHARED_FLAG) !== 0;
    const sharedStatus = (status & (VMA.FILE_SHARED | VMA.ANON_SHARED)) !== 0;
    const privateStatus = (status & (VMA.FILE_PRIVATE | VMA.ANON_PRIVATE)) !== 0;
    if (sharedStatus === privateStatus || sharedFlag !== sharedStatus || ((flags & MAP_PRIVATE_FLAG) !== 0) === sharedFlag) {
      invalid(`${where}: flags 0x${flags.toString(16)} and status 0x${status.toString(16)} disagree on whether the mapping is shared or private`, { file: join(dir, `mm-${pid}.img`), field: `vmas[${i}].flags`, flags, status });
    }

    let file: RegFile | undefined;
    let memfd: MemfdInode | undefined;
    if (status & VMA.MEMFD) {
      // shmid names the MEMFD file (files.img) whose inode (memfd.img) the VMA maps.
      if (!(status & (VMA.FILE_PRIVATE | VMA.FILE_SHARED))) invalid(`${where}: a memfd mapping (status 0x${status.toString(16)}) that is not a file mapping`, { status });
      const f = files.get(Number(v.shmid));
      if (!f || Number(f.type) !== FD_TYPE.MEMFD || !f.memfd) invalid(`${where} refers to file id ${v.shmid}, which files.img does not have as a memfd`, { id: String(v.shmid), type: f?.type });
      memfds ??= memfdInodesOf({ dir, readEntries });
      memfd = memfds.get(Number(f.memfd.inode_id));
      if (!memfd) invalid(`${where}: memfd inode ${f.memfd.inode_id} (file id ${v.shmid}) is missing from memfd.img`, { inodeId: String(f.memfd.inode_id) });
    } else if (status & (VMA.FILE_PRIVATE | VMA.FILE_SHARED)) {
      file = reg(Number(v.shmid), where);
      const mappedFile = file;
      if (!file.ghost && file.linkRemap === undefined) envChecks.push(() => {
        if (!existsSync(mappedFile.name)) invalid(`${where} maps ${mappedFile.name}, which no longer exists`, { file: join(dir, `mm-${pid}.img`), path: mappedFile.name });
      });
    }
    vmas.push({
      start, end, pgoff: BigInt(v.pgoff), shmid: BigInt(v.shmid), prot: Number(v.prot), flags: Number(v.flags), status,
      madv: BigInt(v.madv ?? 0n), ...(file ? { file } : {}), ...(memfd ? { memfd } : {}),
    });
  }
  if (!vmas.some((v) => v.status & VMA.VDSO)) invalid(`mm-${pid}.img has no [vdso] VMA`);

  // Pages: every run must lie inside one dumped VMA; the pages file must hold every present run.
  const pagemapPath = join(dir, `pagemap-${pid}.img`);
  if (!existsSync(pagemapPath)) throw new RestoreError('read-images', `${pagemapPath} is missing`, { file: pagemapPath });
  let pages: PagesReader | undefined;
  const runs: PagesRun[] = [];
  let pagesFile: string;
  let pagesSize: number;
  try {
    pages = PagesReader.open(pagemapPath);
    pagesFile = pages.pagesFile;
    pagesSize = pages.pagesSize;
    for (const run of pages.runs()) {
      // PE_LAZY alone says the pages may be served later (lazy-pages); with PE_PRESENT they are
      // in the pages file too (CRIU 4.x marks anonymous private pages so), which is all we need.
      if ((run.flags & PE_PARENT) || ((run.flags & PE_LAZY) && !(run.flags & PE_PRESENT))) {
        invalid(`${pagemapPath}: run at ${hex(run.vaddr)} is in a parent image or served lazily (flags ${run.flags}): incremental and lazy restore are not supported yet`);
      }
      const runEnd = run.vaddr + BigInt(run.nrPages * PAGE_SIZE);
      // A run may span adjacent VMAs (dumpers merge contiguous pages); every page must be covered.
      let covered = run.vaddr;
      for (const v of vmas) if (v.start <= covered && covered < v.end) covered = v.end < runEnd ? v.end : runEnd;
      if (covered < runEnd) invalid(`${pagemapPath}: pages ${hex(run.vaddr)}-${hex(runEnd)} lie outside every dumped VMA`, { vaddr: hex(run.vaddr) });
      // Pages of a shared file mapping belong to the file and are never written by restore; a
      // run only partly in one would be written there (fillPages looks at where a run starts).
      const inShared = vmas.filter((v) => (v.flags & MAP_SHARED_FLAG) && v.start < runEnd && run.vaddr < v.end);
      if (inShared.length > 0 && !inShared.some((v) => v.start <= run.vaddr && runEnd <= v.end)) {
        invalid(`${pagemapPath}: pages ${hex(run.vaddr)}-${hex(runEnd)} lie partly in the shared mapping at ${hex(inShared[0]!.start)}`, { file: pagemapPath, vaddr: hex(run.vaddr) });
      }
      if ((run.flags & PE_PRESENT) && run.pages) runs.push({ vaddr: run.vaddr, nrPages: run.nrPages, offset: run.pages.offset });
    }
  } catch (err) {
    if (err instanceof RestoreError) throw err;
    throw new RestoreError('read-images', `${pagemapPath} or its pages file cannot be read`, err instanceof ImageFormatError ? { file: err.file, reason: err.reason, offset: err.offset } : { file: pagemapPath }, err);
  } finally {
    pages?.close();
  }

  const fsEntry = one(dir, `fs-${pid}.img`);
  const cwd = reg(Number(fsEntry.cwd_id), `fs-${pid}.img cwd_id`);
  const root = reg(Number(fsEntry.root_id), `fs-${pid}.img root_id`);

  // CRIU 4.x names the fd table by the files id (fdinfo_per_id); older images by the pid.
  const fdinfoName = inventory.fdinfo_per_id ? `fdinfo-${ids.files_id}.img` : `fdinfo-${pid}.img`;
  const fds = readFdTable<RegFile>({
    dir, pid, fdinfoName, fdinfo: readAll(dir, fdinfoName), files, reg, readEntries, shellJob: options.shellJob === true,
    ...(options.inet ? { inet: options.inet } : {}), ...(memfds ? { memfds } : {}),
  });

  for (const v of vmas) {
    if (!v.packetRing) continue;
    const slot = fds.find((f) => f.fileId === v.packetRing!.fileId);
    const where = `mm-${pid}.img: the socket mapping at ${hex(v.start)}`;
    if (!slot || slot.file.kind !== 'packetsk') invalid(`${where} names file id ${v.packetRing.fileId}, which is not a packet socket open in process ${pid}`, { file: join(dir, `mm-${pid}.img`), id: v.packetRing.fileId });
    const expected = packetRingMappingBytes(slot.file.sk);
    if (v.end - v.start !== BigInt(expected)) invalid(`${where} is ${v.end - v.start} bytes long; the rings of packet socket ${v.packetRing.fileId} are ${expected}`, { file: join(dir, `mm-${pid}.img`) });
  }

  return {
    dir, pid, ppid: Number(task.ppid), pgid, sid, core, threads: threadImages, mm, vmas, exe, pagesFile: pagesFile!, pagesSize: pagesSize!, runs,
    shmem: readSharedMemory(dir, pid, vmas, invalid, options.inTree), fds: [...fds], inFlight: fds.inFlight, locks: readFileLocks(dir, pid, fds, readEntries), cwd, root,
    umask: fsEntry.umask === undefined ? undefined : Number(fsEntry.umask), posixTimers, seccomp,
  };
}

/**
 * core-TID.img of one thread, checked: an x86_64 core with registers and FPU state of the sizes
 * CRIU writes; the leader's also has the task-wide part (tc).
 */
function threadCore(dir: string, tid: number, leader: boolean): Msg {
  const name = `core-${tid}.img`;
  const core = one(dir, name);
  if (Number(core.mtype) !== 1 || !core.thread_info || (leader && !core.tc)) invalid(`${name} is not an x86_64 ${leader ? 'task' : 'thread'} core (mtype ${core.mtype})`, { file: join(dir, name) });
  const fp = core.thread_info.fpregs as Msg | undefined;
  if (!fp || !core.thread_info.gpregs) invalid(`${name} has no registers`, { file: join(dir, name) });
  if ((fp.st_space as unknown[]).length !== 32 || (fp.xmm_space as unknown[]).length !== 64) invalid(`${name}: fpregs st_space/xmm_space have ${fp.st_space.length}/${fp.xmm_space.length} words, expected 32/64`);
  if (Number(core.thread_info.gpregs.mode ?? 1) !== 1) invalid(`${name}: 32-bit (compat) tasks are not supported`);
  return core;
}

interface Remaps {
  readonly ghosts: ReadonlyMap<number, GhostFile>;
  /** Link remaps (LINKED): the files.img id of the deleted file -> the path of its link. */
  readonly links: ReadonlyMap<number, string>;
}

/**
 * Files deleted while open: remap-fpath.img maps a files.img id either to ghost-file-N.img
 * (GHOST, 1), which holds the file's mode, owner and contents, or to another files.img entry
 * (LINKED, 0: CRIU's default when remap_type is absent, as in images from before the field),
 * whose name is a hard link the dump made to the file (link_remap.N beside it). /proc paths of
 * dead processes (PROCFS, 2) are not supported.
 */
function readRemaps(dir: string, files: ReadonlyMap<number, Msg>): Remaps {
  const ghosts = new Map<number, GhostFile>();
  const links = new Map<number, string>();
  if (!existsSync(join(dir, 'remap-fpath.img'))) return { ghosts, links };
  for (const [i, r] of readAll(dir, 'remap-fpath.img').entries()) {
    const type = Number(r.remap_type ?? 0);
    const where = `remap-fpath.img entry ${i} (file id ${r.orig_id})`;
    if (type === 0) {
      const link = files.get(Number(r.remap_id));
      if (!link || Number(link.type) !== FD_TYPE.REG || !link.reg) {
        invalid(`${where}: its link remap names file id ${r.remap_id}, which files.img does not have as a regular file`, { file: join(dir, 'remap-fpath.img'), field: `[${i}].remap_id`, remapId: r.remap_id });
      }
      const path = String(link.reg.name);
      if (!path.startsWith('/')) invalid(`${where}: link remap path ${JSON.stringify(path)} is not absolute`, { path });
      links.set(Number(r.orig_id), path);
      continue;
    }
    if (type !== 1) invalid(`${where} has remap type ${type}; only ghost files (1) and link remaps (0) are supported`, { origId: r.orig_id, type });
    const name = `ghost-file-${r.remap_id}.img`;
    const entries = readEntries(dir, name);
    const head = entries[0]?.message;
    if (!head) throw new RestoreError('read-images', `${join(dir, name)} has no ghost_file_entry`, { file: join(dir, name) });
    const chunks: Array<readonly [number, Uint8Array]> = [];
    if (head.chunks) {
      for (const e of entries.slice(1)) chunks.push([Number(e.message.off), e.bytes ?? new Uint8Array(0)]);
    } else if (entries[0]!.bytes) {
      chunks.push([0, entries[0]!.bytes]);
    }
    const size = head.size !== undefined ? Number(head.size) : chunks.reduce((a, [o, b]) => Math.max(a, o + b.byteLength), 0);
    if ((Number(head.mode) & 0o170000) !== 0o100000) invalid(`${name}: only regular ghost files are supported (mode 0${Number(head.mode).toString(8)})`);
    ghosts.set(Number(r.orig_id), { id: Number(r.remap_id), mode: Number(head.mode), uid: Number(head.uid), gid: Number(head.gid), chunks, size });
  }
  return { ghosts, links };
}

/** The PID must be free: clone3 would fail with EEXIST, after the stub already exists. */
export function checkPidFree(pid: number): void {
  if (existsSync(`/proc/${pid}`)) invalid(`PID ${pid} is already in use by another process`, { pid });
  const max = Number.parseInt(readFileText('/proc/sys/kernel/pid_max') ?? '4194304', 10);
  if (pid >= max) invalid(`PID ${pid} is above this system's pid_max (${max})`, { pid, pidMax: max });
}

function readFileText(path: string): string | undefined {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return undefined;
  }
}

// dump(): checkpoint a process tree into a CRIU 4.2 image directory.
//
// The stages, in order (each failure names its stage; `rollback` is the one place that undoes):
//
//   check-options  the pid exists, is not us, leads its session and group (or --shell-job)
//   prepare-dir    the images directory exists (created 0700) and is writable
//   freeze         the tree, parents before children (tree.ts): compel seizes every thread of
//                  every process (PTRACE_SEIZE + INTERRUPT); zombies are recorded, not seized;
//                  then, per process, while every thread is still in its ptrace-stop, each
//                  thread's registers, xsave, mask, TLS, rseq and private signals (ptrace) and
//                  what only it can tell (sigaltstack, clear_child_tid...: remote syscalls)
//   network-lock   established TCP connections to save (--tcp-established) are locked: the
//                  peers' packets are dropped (soccr's nft/iptables lock, held for these images)
//                  before their queues are read, and until a restore lifts the lock
//   infect         the parasite is loaded into every live process (it runs in the leader);
//                  while each starts it, the VMAs, the exe and the pages to save (found with
//                  PAGEMAP_SCAN, or /proc/PID/pagemap) are read here; the daemon collects its
//                  answers (misc, sigactions, itimers) before it connects
//   collect        signals, timers, creds, VMAs, mapped files... into image entries
//   memory         the pages moved by vmsplice + splice to pages-N.img (one per process, one
//                  per shared anonymous object)
//   files          fd tables, cwd/root; one files.img for the tree (an open file description
//                  shared across fork is one entry). Needs no parasite: runs inside memory,
//                  while the parasite of the process with the most pages copies them
//   write-images   every image but inventory, 0600: per process core/mm/pagemap/fs/ids and
//                  fdinfo-<files_id>; zombies get a core image only (task_state TASK_DEAD and
//                  the exit status); pstree.img in tree order. All but the shared memory
//                  pagemaps and stats-dump are written during that copy too, after files
//   finish         inventory.img last (only now does the directory look like a complete dump),
//                  directory fsync'ed, then every task is killed (its connections die silently
//                  in repair mode and stay locked for the restore), or left running or stopped
//                  (connections out of repair mode and unlocked first)
//
// Rollback (any failure before finish completes): connections out of repair mode and unlocked,
// every parasite removed and every frozen task cured (children first), so the tree runs on (or
// stays stopped) exactly as before; every file this dump wrote is removed.
import { closeSync, existsSync, openSync, readdirSync, readFileSync, readSync, writeSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import type { Parasite, TaskMisc, Victim } from '@criu-ts/compel';
import type { DecodedMessage } from '@criu-ts/images';
import {
  __WALL, asFd, ftruncate, sleepSync, asPid, kill, close as closeFd, ptraceGetRegs, wait4, WNOHANG, ptraceGetRegset, ptraceGetSigmask, NT, type Fd, type Pid,
} from '@criu-ts/sys';
import { DumpError, type DumpStage } from '../errors.js';
import { faultRequested } from '../fault-points.js';
import { inNetworkNamespace } from '../net-namespace.js';
import { readAuxv, readLink, readStat, readStatus } from '../proc/task-files.js';
import { readMaps, readSmaps, type ProcVma } from '../proc/smaps.js';
import { writeMemfdPages } from './files/memfd.js';
import { xsaveOffsetsFromCpuid } from '../arch/x86-fpu.js';
import { cpuXstateLayout, loadParasiteBlob } from '@criu-ts/compel';
import { FileTable, findOutsideTerminal, findUnsupportedDescriptor, readGhostContents, socketInodesOf, UnsupportedFileError } from './files.js';
import { InetSocketDumper } from './files/inet-sockets.js';
import { armNetworkGuard } from './network-guard.js';
import { lockHeldSync, unlockHeldSync, type ConnectionKey, type LockBackend } from '@criu-ts/soccr';
import { ImageDir } from './image-dir.js';
import { PagesPrefill } from './pages-prefill.js';
import { emptyYoungGeneration } from './heap-quiet.js';
import {
  addVmFlags, describeVmas, pagemapEntries, pagesCopyInTaskAllowed, scanPages, sharedObjects, shmemPagemapEntries, vmFlagsCanWait, writePages, type DumpVma, type PageRun, type SharedObject,
} from './memory.js';
import {
  askParasite, buildCoreEntry, buildThreadCoreEntry, collectPtraceState, threadOwnStateFromMisc, TASK_STOPPED, type ParasiteAnswers, type TaskSnapshot,
} from './task-core.js';
import { seccompImage } from './seccomp.js';
import { SysvShmDumper } from './sysv-shm.js';
import { freezeTree, type TreeTask } from './tree.js';

export interface DumpOptions {
  /** The task to dump (criu's -t/--tree). */
  readonly pid: number;
  /** Where the images go (criu's -D/--images-dir); created 0700 if missing. */
  readonly imagesDir: string;
  /** After a successful dump: 'kill' (default), 'running' (-R), 'stopped' (-s). */
  readonly leave?: 'kill' | 'running' | 'stopped';
  /** Allow a task whose session or group leader is outside the dump (criu's --shell-job). */
  readonly shellJob?: boolean;
  /** Save datagram unix sockets connected to a named socket outside the dump (criu's --ext-unix-sk). */
  readonly extUnixSk?: boolean;
  /** Save file locks (flock, POSIX, OFD) instead of refusing a task that holds one (criu's --file-locks). */
  readonly fileLocks?: boolean;
  /**
   * Files unlinked while open get a hard link beside their old name (link_remap.N) that restore
   * opens them through and then removes, instead of a copy of their contents (criu's
   * --link-remap). Where the kernel allows no link (no link left and not an O_TMPFILE), the
   * contents are saved as a ghost file as without it. Without it, a file unlinked while open
   * that still has other links is refused.
   */
  readonly linkRemap?: boolean;
  /** Largest deleted-while-open file whose contents are saved (criu's --ghost-limit, default 1 MiB). */
  readonly ghostLimit?: number;
  /** Called with progress of the page writing. */
  readonly onProgress?: (progress: { pagesWritten: number; pagesTotal: number }) => void;
  /** Called as each stage starts (for logs, progress displays and tests that act at a stage). */
  readonly onStage?: (stage: DumpStage) => void;
  /** Test hook: throw at the named point (fault injection). */
  readonly faultAt?: string;
  /**
   * Pages files prefilled ahead of the call (PagesPrefill.start with this imagesDir and pid, its
   * `ready` awaited): the dump takes those it uses and closes the rest, whether it succeeds or
   * not. Without it, the dump prefills them itself just before the freeze.
   */
  readonly prefill?: PagesPrefill;
  /** Limit for freezing the whole tree and for each remote call, in milliseconds (criu's --timeout; default 10 s). */
  readonly timeoutMs?: number;
  /** Save established TCP connections (criu's --tcp-established); without it (or tcpClose) they are refused. */
  readonly tcpEstablished?: boolean;
  /** Record established TCP connections without their state and lock; restore gives closed sockets (criu's --tcp-close). */
  readonly tcpClose?: boolean;
  /** Dump listeners whose accept queue holds connections; those are lost (criu's --skip-in-flight). */
  readonly skipInFlight?: boolean;
}

export interface DumpResult {
  readonly pid: number;
  readonly imagesDir: string;
  readonly images: string[];
  readonly pagesWritten: number;
  /**
   * Microseconds, as stats-dump records them and with CRIU's meaning: freezingTime is the
   * freezing of the tree (seizing every thread of every process), frozenTime what follows until
   * every image is written (the tree then waits only for the fsyncs, then is killed or runs on).
   * The two do not overlap: the tasks stood still for their sum.
   */
  readonly freezingTime: number;
  readonly frozenTime: number;
  readonly memdumpTime: number;
  /**
   * Bytes of page cache made ready for the pages files before the freeze (pages-prefill.ts): 0
   * where the file system has no O_TMPFILE or the processes hold little anonymous memory.
   */
  readonly pagesPrefilled: number;
  /** Every process of the tree, in pstree order (the root first), zombies included. */
  readonly pids: number[];
  /**
   * TCP connections saved through repair mode, as the network lock keys them. After a dump that
   * killed the tasks they stay locked (held for these images) until a restore lifts the lock.
   */
  readonly connections: ConnectionKey[];
  /** The dump's id (inventory dump_criu_run_id; the holder of its network locks). */
  readonly runId: string;
}

/** scm_entry.type of descriptors in flight: SCM_RIGHTS, as the cmsg type (socket(7)). */
const SCM_RIGHTS = 1;
const DEFAULT_GHOST_LIMIT = 1 << 20;
const DEFAULT_TIMEOUT_MS = 10_000;
/** Disk writeback is started for every this many bytes of pages written (kill mode; see PageCopyMode). */
const WRITEBACK_STEP = 8 << 20;
/** core.proto task_state of a zombie (CRIU's TASK_DEAD). */
const TASK_DEAD = 2;

/** Namespace ids in the order CRIU numbers them. */
const NAMESPACES = [
  ['pid', 'pid_ns_id'], ['net', 'net_ns_id'], ['ipc', 'ipc_ns_id'], ['uts', 'uts_ns_id'], ['time', 'time_ns_id'],
  ['mnt', 'mnt_ns_id'], ['user', 'user_ns_id'], ['cgroup', 'cgroup_ns_id'],
] as const;

function namespaceIds(pid: number): DecodedMessage {
  const ids: DecodedMessage = {};
  NAMESPACES.forEach(([ns, field], i) => {
    if (existsSync(`/proc/${pid}/ns/${ns}`)) ids[field] = i + 1;
  });
  return ids;
}

/**
 * The dump, with its pages prefill written off the event loop (PagesPrefill.start, ~15 ms per
 * 64 MiB of the tree's memory); the rest runs synchronously, as dumpSync (ptrace requests must come
 * from the thread that seized the tasks).
 */
export async function dump(options: DumpOptions): Promise<DumpResult> {
  if (options.prefill) {
    await options.prefill.ready;
    return dumpSync(options);
  }
  // A directory that does not exist yet is made by the dump, which then prefills by itself.
  const prefill = Number.isInteger(options.pid) && options.pid > 0 && existsSync(options.imagesDir) ? PagesPrefill.start(options.imagesDir, options.pid) : undefined;
  if (prefill === undefined) return dumpSync(options);
  await prefill.ready;
  return dumpSync({ ...options, prefill });
}

/** What each live task of the tree gives, gathered stage by stage. */
interface TaskDump {
  readonly task: TreeTask;
  readonly victim: Victim;
  /** ids-PID.img numbering: the root is 1, as inventory.img's root_ids say. */
  readonly objectId: number;
  readonly pagesId: number;
  procVmas: ProcVma[];
  /** procVmas came from /proc/PID/maps: the VmFlags are added during the page copy. */
  readonly vmFlagsLater: boolean;
  threads: TaskSnapshot[];
  taskFds: number[];
  parasite?: Parasite;
  vmas?: DumpVma[];
  core?: DecodedMessage;
  threadCores?: Array<{ tid: number; core: DecodedMessage }>;
  mm?: DecodedMessage;
  fdEntries?: DecodedMessage[];
  fs?: DecodedMessage;
  misc?: TaskMisc;
  answers?: ParasiteAnswers;
  exeId?: number;
  runs?: PageRun[];
  /** What describing the task (exe, VMAs, pages) threw while its daemon started: thrown at collect. */
  describeError?: unknown;
}

/** One shared anonymous object of the tree: its pages file is filled from every task that maps it. */
interface SharedDump {
  readonly pagesId: number;
  readonly fd: Fd;
  /** Object offsets already written (a page seen by two tasks, or two VMAs, is written once). */
  readonly seen: Set<bigint>;
  readonly entries: DecodedMessage[];
}

/**
 * dump(), synchronously: ptrace requests must come from the thread that seized the task. Runs in
 * the network namespace of the task (see net-namespace.ts): its sockets are queried and its
 * connections locked there, wherever the task lives.
 */
export function dumpSync(options: DumpOptions): DumpResult {
  const nsPath = `/proc/${options.pid}/ns/net`;
  try {
    // Not a pid, or no such process: the checks of the dump itself say so.
    if (!Number.isInteger(options.pid) || options.pid <= 0 || options.pid === process.pid || !existsSync(nsPath)) return dumpTree(options);
    try {
      return inNetworkNamespace(nsPath, () => dumpTree(options));
    } catch (error) {
      if (error instanceof DumpError) throw error;
      throw new DumpError('check-options', options.pid, (error as Error).message, { cause: error });
    }
  } finally {
    options.prefill?.closeAll(); // what the dump did not take, however it ended
  }
}

function dumpTree(options: DumpOptions): DumpResult {
  const pidNumber = options.pid;
  let stage: DumpStage = 'check-options';
  const fail = (message: string, cause?: unknown): never => {
    throw new DumpError(stage, pidNumber, message, cause === undefined ? {} : { cause });
  };
  const fault = (point: string) => {
    if (faultRequested('dump', point, options.faultAt)) fail(`fault injected at ${point}`);
  };

  // ---- check-options
  if (!Number.isInteger(pidNumber) || pidNumber <= 0) fail(`not a pid: ${pidNumber}`);
  if (pidNumber === process.pid) fail('criu-ts cannot dump itself');
  if (!existsSync(`/proc/${pidNumber}`)) fail(`no process ${pidNumber}`);
  const pid = asPid(pidNumber);
  const stat = readStat(pid);
  if (stat[3] === 'Z') {
    // A leader that called pthread_exit() stays a zombie while its other threads run on.
    const live = readdirSync(`/proc/${pid}/task`).filter((t) => Number(t) !== pidNumber);
    if (live.length > 0) fail(`the thread group leader ${pid} has exited while ${live.length} other thread(s) run on; a dead leader with live threads is not supported yet`);
    fail(`process ${pid} is a zombie`);
  }
  const rootPgid = Number(stat[5]);
  const rootSid = Number(stat[6]);
  if (!options.shellJob && (rootPgid !== pidNumber || rootSid !== pidNumber)) {
    fail(`process ${pid} is not the leader of its session (${rootSid}) and group (${rootPgid}); dump it with --shell-job`);
  }

  // A traced task cannot be seized (ptrace(2): EPERM): another dump of it is running, or a
  // debugger holds it. Said plainly here, before anything is touched; a dump that starts at the
  // same moment and wins the race makes our seize fail the same way, and freeze reports it.
  const tracer = tracerOf(pidNumber);
  if (tracer !== 0) {
    fail(`process ${pid} is already traced by process ${tracer} (${commOf(tracer)}): another dump of it is in progress, or a debugger is attached`);
  }

  const inetOptions = { tcpEstablished: options.tcpEstablished === true, tcpClose: options.tcpClose === true, skipInFlight: options.skipInFlight === true };
  const unsupported = findUnsupportedDescriptor(pidNumber, inetOptions, { linkRemap: options.linkRemap === true });
  if (unsupported) fail(`process ${pid} holds ${unsupported.message}`, unsupported);
  const unpaired = options.shellJob ? undefined : findOutsideTerminal(pidNumber);
  if (unpaired) fail(`the tree of process ${pid} holds ${unpaired.message}`, unpaired);

  if (options.prefill?.stillFilling) fail('the pages prefill passed in is still being written: await its ready before the dump');

  // ---- prepare-dir
  stage = 'prepare-dir';
  options.onStage?.(stage);
  let dir: ImageDir;
  try {
    dir = new ImageDir(options.imagesDir);
  } catch (error) {
    return fail(`cannot use images directory ${options.imagesDir}: ${(error as Error).message}`, error);
  }

  const tree: TreeTask[] = [];
  const runId = randomUuid();
  // Started before anything is frozen (starting a process takes milliseconds): it puts the
  // network back if criu-ts is killed outright while connections are locked (network-guard.ts).
  const guard = inetOptions.tcpEstablished ? armNetworkGuard(options.imagesDir, runId) : null;
  // Read once per process before the clock starts (compel would read it before seizing anyway):
  // running cpu-xstate takes milliseconds in which nothing is frozen yet; so does reading the
  // parasite blob, which infection would otherwise do with the task frozen.
  cpuXstateLayout();
  loadParasiteBlob();
  // Page-cache pages for the pages files, found now rather than while the tasks are frozen.
  const prefill = options.prefill ?? PagesPrefill.forTree(options.imagesDir, pidNumber);
  const pagesPrefilled = prefill.totalBytes;
  emptyYoungGeneration();
  /** When the whole tree stood frozen: frozen_time starts there, as CRIU's does (after freezing_time). */
  let frozenAt = Number.NaN;
  let cleanedUp = false;
  const sharedDumps = new Map<bigint, SharedDump>();
  let sharedClosed = false;
  const closeShared = () => {
    if (sharedClosed) return;
    sharedClosed = true;
    for (const s of sharedDumps.values()) {
      try { closeFd(s.fd); } catch { /* nothing to do */ }
    }
  };
  const inet = new InetSocketDumper(inetOptions, guard ? (listener, connection) => guard.holdsQueued(listener, connection) : undefined);
  let locked: ConnectionKey[] = [];
  let lockBackend: LockBackend | undefined;
  /** Connections out of repair mode, then the peers' packets let through again: the tasks may run. */
  const releaseConnections = (): string[] => {
    const errors = inet.resumeAll();
    try {
      if (locked.length > 0) unlockHeldSync(locked, lockBackend ? { backend: lockBackend } : {});
      locked = [];
    } catch (e) {
      errors.push(`unlocking: ${(e as Error).message}`);
    }
    inet.close();
    return errors;
  };
  /** The tree's open files; holds criu-ts's copies of the descriptors in flight in unix sockets until closed. */
  let fileTable: FileTable | undefined;
  const rollback = (error: unknown): never => {
    closeShared();
    prefill.closeAll();
    fileTable?.close();
    if (!cleanedUp) {
      cleanedUp = true;
      fileTable?.removeLinkRemaps();
      // Children first: every task frozen so far runs on (or stays stopped) exactly as before.
      const cureErrors: string[] = releaseConnections();
      for (const t of [...tree].reverse()) {
        try {
          t.victim?.cureSync();
        } catch (e) {
          cureErrors.push(`${t.pid}: ${(e as Error).message}`);
        }
      }
      dir.removeWritten();
      guard?.disarm();
      if (cureErrors.length > 0) {
        throw new DumpError(stage, pidNumber, `${(error as Error).message}; and putting tasks back failed: ${cureErrors.join('; ')}`, { cause: error });
      }
    }
    if (error instanceof DumpError) throw error;
    return fail(error instanceof Error ? error.message : String(error), error);
  };

  try {
    // ---- freeze
    stage = 'freeze';
    options.onStage?.(stage);
    const freezeStart = performance.now();
    freezeTree(pid, tree, options.timeoutMs ?? DEFAULT_TIMEOUT_MS);
    frozenAt = performance.now();
    const freezingTime = Math.round((frozenAt - freezeStart) * 1000);
    fault('after-freeze');
    let nextPagesId = 1;
    const live: TaskDump[] = [];
    for (const task of tree) {
      if (!task.victim) continue;
      const victim = task.victim;
      // The memory map is read before the parasite (or our scratch page) adds mappings to it:
      // from /proc/PID/maps when the VmFlags can wait until the page copy (see addVmFlags).
      let procVmas = readMaps(task.pid);
      const vmFlagsLater = vmFlagsCanWait(procVmas);
      if (!vmFlagsLater) procVmas = readSmaps(task.pid);
      const threads = threadSnapshots(victim, task.pid, victim.wasStopped);
      // So are the descriptors: the parasite adds its socket and pipe to the table.
      const taskFds = readdirSync(`/proc/${task.pid}/fd`).map(Number).sort((a, b) => a - b);
      live.push({ task, victim, objectId: live.length + 1, pagesId: nextPagesId++, procVmas, vmFlagsLater, threads, taskFds });
    }

    // ---- network-lock
    stage = 'network-lock';
    options.onStage?.(stage);
    const toLock = inet.connectionsToLock(live.map((t) => ({ pid: t.task.pid, fds: t.taskFds })));
    if (toLock.length > 0) {
      guard?.covers(live.map((t) => t.task.pid));
      lockBackend = lockHeldSync(toLock, { holder: runId });
      locked = toLock;
    }

    const files = (fileTable = new FileTable({
      ghostLimit: options.ghostLimit ?? DEFAULT_GHOST_LIMIT, shellJob: options.shellJob === true, fileLocks: options.fileLocks === true,
      linkRemap: options.linkRemap === true, extUnixSk: options.extUnixSk === true, inet, treePids: live.map((t) => t.task.pid),
      // The fd tables were read while frozen (before the parasite added its own socket).
      treeSockets: new Set(live.flatMap((t) => socketInodesOf(t.task.pid, t.taskFds))),
    }));
    const sysv = new SysvShmDumper();
    /**
     * The part of collect and memory that needs no parasite (exe, VMAs, pages to save: /proc
     * only). It runs while the task starts its parasite, which it does on its own CPU: the
     * frozen time does not wait for both in turn. Its VMAs were read before the parasite came.
     */
    const describeTask = (t: TaskDump) => {
      try {
        const p = t.task.pid;
        t.exeId = files.mappedFile(readLink(p, 'exe').replace(/ \(deleted\)$/, ''), 0, `/proc/${p}/exe`);
        t.vmas = describeVmas(p, t.procVmas, files, sysv);
        t.runs = scanPages(p, t.vmas, 'private');
      } catch (error) {
        t.describeError = error;
      }
    };

    // ---- infect
    stage = 'infect';
    options.onStage?.(stage);
    for (const t of live) t.parasite = t.victim.infectSync(undefined, { taskAtStart: true, meanwhile: () => describeTask(t) });
    fault('after-parasite');

    // ---- collect
    stage = 'collect';
    options.onStage?.(stage);
    for (const t of live) {
      if (t.describeError !== undefined) throw t.describeError;
      // What the core needs from the parasite, now: the copy of the pages keeps it busy, and the
      // images are built during that copy (buildTaskEntries). Every thread's own state: the
      // worker's in that answer (its misc), each other thread's by running the same code in that
      // thread (one ptrace round trip each).
      t.answers = askParasite(t.threads[0]!, t.parasite!);
      const misc = t.answers.misc;
      for (const th of t.threads) th.own = threadOwnStateFromMisc(th.tid === t.victim.worker ? misc : t.parasite!.threadMisc(th.tid));
      t.misc = misc;
      t.fs = { umask: Number(misc.umask) };
    }

    // SysV segments: checked once every attachment in the tree is known, contents copied (frozen).
    const sysvSegments = sysv.collect();

    /** core, thread cores and mm of every process: /proc and what was read at the freeze, no parasite. */
    const buildTaskEntries = () => {
      // The XSAVE layout is the CPU's (CPUID, read before the freeze).
      const xsaveOffsets = xsaveOffsetsFromCpuid(cpuXstateLayout().components);
      for (const t of live) {
        // smaps walks every page table entry: read now, while the parasite copies, not before.
        if (t.vmFlagsLater) t.vmas = addVmFlags(t.vmas!, readSmaps(t.task.pid));
        t.core = buildCoreEntry(t.threads[0]!, t.answers!, t.misc!, xsaveOffsets).core;
        t.threadCores = t.threads.slice(1).map((th) => ({ tid: th.tid, core: buildThreadCoreEntry(th, xsaveOffsets) }));
        t.mm = mmEntry(t.task.pid, t.exeId!, t.vmas!, Number(t.misc!.dumpable));
      }
      // seccomp.img numbers the filters of every thread of the tree: the thread cores refer to them.
      const seccomp = seccompImage(live.map((t) => t.threads.map((th) => ({ tid: th.tid, seccomp: th.ptrace.seccomp }))));
      for (const t of live) {
        Object.assign(t.core!.thread_core as DecodedMessage, seccomp.threadFields.get(t.task.pid));
        for (const th of t.threadCores!) Object.assign(th.core.thread_core as DecodedMessage, seccomp.threadFields.get(th.tid));
      }
      return seccomp;
    };

    // ---- memory
    stage = 'memory';
    options.onStage?.(stage);
    const memStart = performance.now();
    let pagesWritten = 0;
    let pagesTotal = 0;
    for (const t of live) pagesTotal += t.runs!.reduce((n, r) => n + r.pages, 0);
    // ---- write-images, most of it: what does not depend on the copy of the pages. It runs
    // while the parasite of the process with the most pages copies them on that task's own
    // thread (another CPU), instead of after: the tasks stay frozen that much less.
    const namespaces = namespaceIds(pid);
    let rootIds: DecodedMessage = {};
    let overlapMs = 0;
    const writeImagesNotNeedingPages = () => {
      const started = performance.now();
      stage = 'collect'; // its second half (no new onStage: the stage was announced before)
      const seccomp = buildTaskEntries();
      // ---- files: needs no parasite (descriptors are read through /proc, sock_diag and
      // pidfd_getfd), so it runs during the copy too.
      stage = 'files';
      options.onStage?.(stage);
      // Descriptors inherited across fork share one open file description: one files.img entry.
      files.peekUnixQueues(live.map((t) => ({ pid: t.task.pid, fds: t.taskFds })));
      for (const t of live) {
        const p = t.task.pid;
        t.fdEntries = dumpDescriptors(p, t.taskFds, files);
        const cwdId = files.directory(readLink(p, 'cwd'), `/proc/${p}/cwd`);
        const rootId = files.directory(readLink(p, 'root'), `/proc/${p}/root`);
        t.fs = { cwd_id: cwdId, root_id: rootId, ...t.fs };
      }
      files.finishTerminals();
      files.checkMappedSockets();

      stage = 'write-images';
      options.onStage?.(stage);
      fault('while-copying');
      for (const t of live) {
        const p = t.task.pid;
        const id = t.objectId;
        // One fd table, fs and signal handler table per process (none is shared with CLONE_FILES
        // and friends here): each gets its own id, the root's being 1.
        const ids: DecodedMessage = { vm_id: id, files_id: id, fs_id: id, sighand_id: id, ...namespaces };
        if (t.task.pid === pid) rootIds = ids;
        dir.writeImage(`pagemap-${p}.img`, [{ pages_id: t.pagesId }, ...pagemapEntries(t.runs!)]);
        dir.writeImage(`core-${p}.img`, [t.core!]);
        for (const th of t.threadCores!) dir.writeImage(`core-${th.tid}.img`, [th.core]);
        dir.writeImage(`mm-${p}.img`, [t.mm!]);
        dir.writeImage(`fs-${p}.img`, [t.fs!]);
        dir.writeImage(`ids-${p}.img`, [ids]);
        dir.writeImage(`fdinfo-${id}.img`, t.fdEntries!);
      }
      for (const task of tree) {
        // A zombie has nothing but its exit status (and its name), as CRIU records it.
        if (task.zombie) {
          dir.writeImage(`core-${task.pid}.img`, [{
            mtype: 1 /* X86_64 */,
            tc: { task_state: TASK_DEAD, exit_code: task.zombie.exitCode, personality: 0, flags: 0, blk_sigset: 0n, comm: task.comm },
          }]);
        }
      }
      if (files.memfdInodes.size > 0) dir.writeImage('memfd.img', [...files.memfdInodes.values()]);
      if (sysvSegments.length > 0) {
        dir.writeImage(`ipcns-shm-${namespaces.ipc_ns_id}.img`, sysvSegments.map((s) => ({ message: s.entry, payload: { type: 'bytes' as const, bytes: s.contents } })));
      }
      if (files.remaps.length > 0) dir.writeImage('remap-fpath.img', files.remaps);
      for (const ghost of files.ghosts) {
        dir.writeImage(`ghost-file-${ghost.id.toString(16)}.img`, [{ message: ghost.entry, payload: { type: 'bytes', bytes: readGhostContents(ghost) } }]);
      }
      dir.writeImage('files.img', files.files);
      const pipeDataEntries = (data: typeof files.pipeData) =>
        [...data].map(([pipeId, c]) => ({ message: { pipe_id: pipeId, bytes: c.bytes.length, size: c.size }, payload: { type: 'bytes' as const, bytes: c.bytes } }));
      if (files.pipeData.size > 0) dir.writeImage('pipes-data.img', pipeDataEntries(files.pipeData));
      if (files.fifoData.size > 0) dir.writeImage('fifo-data.img', pipeDataEntries(files.fifoData));
      if (files.ttyInfos.length > 0) dir.writeImage('tty-info.img', files.ttyInfos);
      if (files.ttyData.length > 0) dir.writeImage('tty-data.img', files.ttyData);
      if (files.locks.length > 0) dir.writeImage('filelocks.img', files.locks);
      if (files.socketQueues.length > 0) {
        dir.writeImage('sk-queues.img', files.socketQueues.map((q) => ({
          message: { id_for: q.idFor, length: q.bytes.length, ...(q.addr ? { addr: q.addr } : {}), ...(q.rights ? { scm: [{ type: SCM_RIGHTS, rights: q.rights }] } : {}) },
          payload: { type: 'bytes' as const, bytes: q.bytes },
        })));
      }
      for (const ring of files.packetRings) {
        const fd = dir.openRaw(`packet-ring-${ring.id}.img`);
        try {
          for (let done = 0; done < ring.bytes.length; ) done += writeSync(fd, ring.bytes, done);
        } finally {
          closeSync(fd);
        }
      }
      for (const stream of inet.tcpStreams) dir.writeImage(`tcp-stream-${stream.ino.toString(16)}.img`, [{ message: stream.entry, payload: stream.queues }]);
      const liveByPid = new Map(live.map((t) => [t.task.pid as number, t]));
      dir.writeImage('pstree.img', tree.map((task) => ({
        pid: task.pid, ppid: task.ppid, pgid: task.pgid, sid: task.sid,
        threads: liveByPid.get(task.pid)?.threads.map((th) => th.tid) ?? [task.pid],
      })));
      dir.writeImage('seccomp.img', [seccomp.entry]);
      overlapMs = performance.now() - started;
      stage = 'memory'; // the copy goes on: a failure from here on is the memory stage's
    };
    const pagesOf = (t: TaskDump) => t.runs!.reduce((n, r) => n + r.pages, 0);
    const overlapIn = live.reduce<TaskDump | undefined>((a, b) => (a && pagesOf(a) >= pagesOf(b) ? a : b), undefined);
    let imagesWritten = false;
    const writeImagesOnce = () => {
      if (imagesWritten) return;
      imagesWritten = true;
      writeImagesNotNeedingPages();
    };
    // When the tasks are killed after the dump, their images must be on disk first: start the
    // writeback while copying, so the fsync before the kill has little left to wait for. With
    // -R/-s the fsync comes after they run again, and the disk would only compete with the copy.
    const writebackStep = (options.leave ?? 'kill') === 'kill' ? WRITEBACK_STEP : 0;
    for (const t of live) {
      const p = t.task.pid;
      const copyMode = { inTask: pagesCopyInTaskAllowed(p), writebackStep };
      const pagesName = `pages-${t.pagesId}.img`;
      const prefilled = prefill.take(p);
      const pagesFd = prefilled ?? asFd(dir.openRaw(pagesName));
      try {
        if (prefilled !== undefined) dir.linkUnnamed(prefilled, pagesName);
        fault('in-pages');
        const before = pagesWritten;
        const onWritten = (done: number) => options.onProgress?.({ pagesWritten: before + done / 4096, pagesTotal });
        const bytes = writePages(p, t.runs!, t.parasite!, pagesFd, onWritten, copyMode, t === overlapIn ? writeImagesOnce : undefined);
        // The prefilled zeros after what the copy wrote are dropped (never written back).
        if (prefilled !== undefined) ftruncate(pagesFd, bytes);
        pagesWritten += bytes / 4096;
      } finally {
        closeFd(pagesFd);
      }
      // Shared anonymous memory: each object's pages once (from the first task and VMA that has
      // them), in pages files of their own, as CRIU lays them out. A page only one task touched
      // is present in that task's page tables alone, so every task that maps the object adds
      // the pages the earlier ones did not have.
      for (const object of sharedObjects(t.vmas!)) {
        let shared = sharedDumps.get(object.shmid);
        if (!shared) {
          const pagesId = nextPagesId++;
          shared = { pagesId, fd: asFd(dir.openRaw(`pages-${pagesId}.img`)), seen: new Set(), entries: [] };
          sharedDumps.set(object.shmid, shared);
        }
        const seen = shared.seen;
        const objectRuns = scanPages(p, object.vmas, 'shared').flatMap((r) => splitUnseen(object, r, seen));
        pagesWritten += writePages(p, objectRuns, t.parasite!, shared.fd, undefined, copyMode) / 4096;
        shared.entries.push(...shmemPagemapEntries(object, objectRuns));
      }
    }
    closeShared();
    prefill.closeAll(); // those of processes that were gone by the freeze
    // memfd contents, one pages file per inode (the task is still frozen: they cannot change).
    const memfdPagemaps: Array<{ shmid: number; pagesId: number; entries: DecodedMessage[] }> = [];
    for (const [ino, source] of files.memfdSources) {
      const pagesId = nextPagesId++;
      const fd = dir.openRaw(`pages-${pagesId}.img`);
      try {
        const written = writeMemfdPages(source.procFd, source.size, fd);
        pagesWritten += written.pages;
        memfdPagemaps.push({ shmid: ino, pagesId, entries: written.entries });
      } finally {
        closeFd(asFd(fd));
      }
    }
    const memdumpTime = Math.round((performance.now() - memStart - overlapMs) * 1000);

    // ---- write-images, the rest: what the copy of the pages found.
    writeImagesOnce(); // when no task was there to overlap it
    stage = 'write-images';
    for (const [shmid, shared] of sharedDumps) dir.writeImage(`pagemap-shmem-${shmid}.img`, [{ pages_id: shared.pagesId }, ...shared.entries]);
    for (const m of memfdPagemaps) dir.writeImage(`pagemap-shmem-${m.shmid}.img`, [{ pages_id: m.pagesId }, ...m.entries]);
    files.close(); // deleted files in flight were read through criu-ts's copies (ghost files), memfds through ours
    const frozenTime = Math.round((performance.now() - frozenAt) * 1000);
    const pagesScanned = live.reduce((n, t) => n + t.vmas!.reduce((m, v) => m + Number((v.proc.end - v.proc.start) / 4096n), 0), 0);
    dir.writeImage('stats-dump', [
      {
        dump: {
          freezing_time: freezingTime, frozen_time: frozenTime, memdump_time: memdumpTime, memwrite_time: memdumpTime,
          pages_scanned: BigInt(pagesScanned), pages_skipped_parent: 0n, pages_written: BigInt(pagesWritten), pages_lazy: 0n,
        },
      },
    ]);
    fault('before-inventory');

    // ---- finish
    stage = 'finish';
    options.onStage?.(stage);
    const leave = options.leave ?? 'kill';
    const connections = locked;
    if (leave !== 'kill') {
      // The tasks run on with their connections: out of repair mode and unlocked before they do.
      const errors = releaseConnections();
      if (errors.length > 0) fail(`putting the TCP connections back in service failed: ${errors.join('; ')}`);
      // Everything the tasks had to give is in the files: they run on (or stop) while the files
      // reach the disk, so the fsyncs are not part of their frozen time. Children first, so no
      // parent runs while a child it might signal or wait for is still frozen by us.
      // A task that was stopped when seized goes back to its stop anyway.
      for (const t of [...live].reverse()) {
        t.victim.cureSync({ stop: leave === 'stopped' && (t.core!.tc as DecodedMessage).task_state !== TASK_STOPPED });
      }
    }
    // Every image durable first, then inventory.img, then the directory: a crash at any point
    // leaves a directory without inventory, which never looks like a complete dump.
    dir.syncWritten();
    dir.writeImage('inventory.img', [
      {
        img_version: 2, fdinfo_per_id: true, root_ids: rootIds, ns_per_id: true, lsmtype: 0 /* NO_LSM */,
        ...(options.tcpClose ? { tcp_close: true } : {}),
        // CRIU's numbering: 0 iptables, 1 nftables.
        network_lock_method: lockBackend === 'nft' ? 1 : 0, plugins_entry: {}, dump_criu_run_id: runId,
      },
    ]);
    dir.syncWritten();
    dir.syncDirectory();
    fault('after-images');
    if (leave === 'kill') {
      // Killed while still seized: no task runs again after its state was saved. All of them
      // first, so none sees another die and reacts.
      for (const t of live) kill(t.task.pid, 9);
      for (const t of live) {
        reapKilledThreads(t.victim);
        try {
          t.victim.cureSync();
        } catch {
          /* the task is gone: what cure could not undo does not matter */
        }
      }
      // Our duplicates are the last references: the sockets, still in repair mode, vanish
      // without a packet; the lock stays for the restore.
      inet.close();
    }
    cleanedUp = true;
    guard?.disarm();
    return {
      pid, imagesDir: options.imagesDir, images: readdirSync(options.imagesDir).sort(), pagesWritten,
      freezingTime, frozenTime, memdumpTime, pagesPrefilled, pids: tree.map((t) => t.pid as number), connections, runId,
    };
  } catch (error) {
    return rollback(error);
  }
}

/** TracerPid of /proc/PID/status (0: not traced). */
function tracerOf(pid: number): number {
  try {
    return Number(/^TracerPid:\s*(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))?.[1] ?? 0);
  } catch {
    return 0;
  }
}

function commOf(pid: number): string {
  try {
    return readFileSync(`/proc/${pid}/comm`, 'utf8').trim();
  } catch {
    return 'gone';
  }
}

/**
 * The parts of run `r` (pages of `object` found in one task) whose object offsets are not in
 * `seen` yet; marks them seen.
 */
function splitUnseen(object: SharedObject, r: PageRun, seen: Set<bigint>): PageRun[] {
  const out: PageRun[] = [];
  for (let i = 0; i < r.pages; i++) {
    const address = r.start + BigInt(i) * 4096n;
    // A run may cross from one VMA of the object into the next: look the VMA up per page.
    const vma = object.vmas.find((v) => v.proc.start <= address && address < v.proc.end)!;
    const offset = address - vma.proc.start + vma.proc.offset;
    if (seen.has(offset)) continue;
    seen.add(offset);
    const last = out.at(-1);
    if (last && last.start + BigInt(last.pages) * 4096n === address) last.pages++;
    else out.push({ ...r, start: address, pages: 1 });
  }
  return out;
}

/**
 * Every thread's state that must be read while all threads are in their ptrace-stop, before the
 * parasite runs: registers, XSAVE area and blocked mask (PTRACE_GETREGS/GETREGSET/GETSIGMASK; the
 * worker's as compel saved them before its first remote call), TLS, rseq and pending signals
 * (ptrace requests that answer ESRCH while the parasite runs in that thread), and what only the
 * thread can tell (remote syscalls run in it, with a scratch page mapped for their answers and
 * unmapped again). The leader comes first, then the other threads by TID, as pstree lists them.
 */
function threadSnapshots(victim: Victim, pid: Pid, stopped: boolean): TaskSnapshot[] {
  const tids = [...victim.threads.keys()].sort((a, b) => (a === pid ? -1 : b === pid ? 1 : a - b));
  if (tids[0] !== pid) {
    throw new Error(`the thread group leader ${pid} is gone (a zombie leader with live threads is not supported yet)`);
  }
  // What only the thread itself can tell (sigaltstack, tid address, pdeath signal, securebits,
  // no_new_privs) is asked once the parasite is in (collect stage: Parasite.threadMisc).
  return tids.map((tid) => {
    const worker = tid === victim.worker;
    return {
      pid, tid, stopped, own: null, ptrace: collectPtraceState(pid, tid),
      regs: worker ? victim.saved.regs : ptraceGetRegs(tid),
      xsave: worker ? victim.saved.xsave : ptraceGetRegset(tid, NT.X86_XSTATE),
      sigmask: worker ? victim.saved.sigmask : ptraceGetSigmask(tid),
    };
  });
}

/**
 * After SIGKILL: waits for every thread but the leader to exit and reaps it. They are our
 * tracees, and a traced thread that exits stays a zombie until its tracer waits for it (ptrace(2));
 * the leader's exit is not reported before every other thread of its group is reaped (the
 * kernel delays a group leader's death notification), so without this cure would wait for the
 * leader in vain. Bounded: SIGKILL wakes every sleep except uninterruptible ones.
 */
function reapKilledThreads(victim: Victim): void {
  const deadline = Date.now() + 5000;
  for (const tid of victim.threads.keys()) {
    if (tid === victim.worker) continue;
    for (;;) {
      let st;
      try {
        st = wait4(tid, __WALL | WNOHANG);
      } catch {
        break; // ECHILD: already reaped
      }
      if (st.kind === 'exited' || st.kind === 'signaled' || Date.now() > deadline) break;
      if (st.kind === 'none') sleepMs(0.2);
    }
  }
}

const sleepMs = sleepSync;

function mmEntry(pid: Pid, exeId: number, vmas: readonly DumpVma[], dumpable: number): DecodedMessage {
  // /proc/PID/stat fields 26-28 and 45-51 (proc(5)): code, data, stack, brk, args and environment.
  const stat = readStat(pid);
  const n = (i: number) => BigInt(stat[i] ?? '0');
  return {
    mm_start_code: n(26), mm_end_code: n(27), mm_start_data: n(45), mm_end_data: n(46), mm_start_stack: n(28),
    mm_start_brk: n(47), mm_brk: findBrk(vmas, n(47)), mm_arg_start: n(48), mm_arg_end: n(49), mm_env_start: n(50),
    mm_env_end: n(51), exe_file_id: exeId, mm_saved_auxv: readAuxv(pid), vmas: vmas.map((v) => v.entry),
    dumpable, thp_disabled: thpDisabled(pid),
  };
}

/**
 * prctl(PR_SET_THP_DISABLE) of the process (a flag of its mm): /proc/PID/status shows it as
 * "THP_enabled: 0" (proc(5)); kernels without the line have no such flag to keep.
 */
function thpDisabled(pid: Pid): boolean {
  return readStatus(pid).get('THP_enabled') === '0';
}

/** The current program break: the end of [heap], or its start when the heap is empty. */
function findBrk(vmas: readonly DumpVma[], startBrk: bigint): bigint {
  const heap = vmas.find((v) => v.proc.name === '[heap]');
  return heap ? heap.proc.end : startBrk;
}

/**
 * The fd table of `pid`. A descriptor sharing an open file description with one dumped before
 * (dup, or inherited across fork: kcmp(2) KCMP_FILE says so; FileTable keeps them) gets its
 * files.img id, as CRIU records it.
 */
function dumpDescriptors(pid: Pid, fds: readonly number[], files: FileTable): DecodedMessage[] {
  const entries: DecodedMessage[] = [];
  for (const fd of fds) {
    try {
      entries.push(files.descriptor(pid, fd, fds));
    } catch (error) {
      if (error instanceof UnsupportedFileError) throw error;
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue; // closed meanwhile: cannot happen while frozen, but harmless
      throw error;
    }
  }
  return entries;
}

/**
 * A random (version 4) UUID as crypto.randomUUID() makes, from /dev/urandom: node:crypto is
 * ~4 ms of the criu-ts command's start-up on the reference VM, for this one call.
 */
function randomUuid(): string {
  const b = Buffer.alloc(16);
  const fd = openSync('/dev/urandom', 'r');
  try {
    // Reads of up to 256 bytes from urandom always return in full (random(4)).
    readSync(fd, b, 0, 16, null);
  } finally {
    closeSync(fd);
  }
  b[6] = (b[6]! & 0x0f) | 0x40; // version 4
  b[8] = (b[8]! & 0x3f) | 0x80; // RFC 4122 variant
  const h = b.toString('hex');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

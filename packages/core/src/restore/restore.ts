// restore(): a process tree from a CRIU 4.x image directory back to life.
//
// Stages, in order (RestoreError.stage names the one that failed):
//
//   read-images, validate        every image of every process read and checked, the tree's
//                                sessions and groups too (tree.ts); no process exists yet
//   network-lock                 the TCP connections of the images locked (the dump normally
//                                left them locked; inet-sockets.ts)
//   spawn-stub                   native/build/restore-stub started, stopped itself, seized
//   clone, control-area          clone3(set_tid = root PID) in the stub; the stub is killed;
//                                gadget + scratch page in a hole of every layout
//   files (ptys)                 the ptys of the tree, made by criu-ts with their indexes (ptys.ts)
//   then per process, in pstree order (a parent before its children):
//   clone                        cloned by its restored parent (set_tid = its PID; tree.ts)
//   session                      setsid in a session leader; its controlling pty (TIOCSCTTY)
//   unmap-stub, vdso, map-vmas,  a live process's address space (memory.ts), before any of its
//   fill-pages, protect          children is cloned: they inherit it, copy on write, keep the
//                                private VMAs they had in common with it and only write the
//                                pages whose contents differ, so the pages a parent and child
//                                shared before the dump are shared again (CRIU does the same);
//                                a shared anonymous object already made by an earlier process is
//                                mapped from it (/proc/PID/map_files), not made and filled again
//   session, zombies             process groups (setpgid), TIOCSPGRP once groups exist; helpers
//                                gone again; zombies exit with their status
//   then per live process, in pstree order:
//   mm-fields                    PR_SET_MM_MAP, only now: the exe file a child inherits must
//                                still be the stub's (memory.ts, step 6)
//   files, fs                    fds, cwd/root/umask (files.ts)
//   rlimits, timers, task-misc,  core-PID.img state (task-state.ts)
//   signals
//   threads                      every other thread cloned by the leader with its TID, then
//                                its own state from core-TID.img (threads.ts)
//   timers, creds, seccomp       POSIX timers (posix-timers.ts); scheduling, seccomp and
//                                credentials of every thread, last (task-security.ts)
//   registers, release           TCP connections out of repair mode; per process, children
//                                first: control area unmapped, registers/xsave/mask of every
//                                thread set, every thread detached; then the network lock lifted
//
// Until the second loop a process has its PID, session, controlling terminal and memory, and
// nothing else of its own (no fds, signal state, credentials, threads): its children inherit
// no more than that.
//
// This function owns the rollback: whatever fails, the stub and every process already created
// are killed (and reaped when they are ours), so a failed restore leaves no process behind; the
// locks it added are lifted (those the dump left stay, for another attempt).
import { readFileSync, writeFileSync } from 'node:fs';
import { __WALL, close as closeFd, kill, pidfdGetfd, pidfdOpen, ptraceDetach, SIGNALS, wait4, WNOHANG, asPid, type Fd, type Pid } from '@criu-ts/sys';
import { atStage, RestoreError, type RestoreStage } from './errors.js';
import { checkPidFree, readTreeImageSet, TASK_SIZE, type ImageSet, type RegFile, type ThreadImage, type TreeTaskImages } from './image-set.js';
import {
  fillPages, mapPacketRings, mapVdso, mapVmas, NOTHING_INHERITED, pagesBytesOf, planInheritance, protectVmas, remote, setMmFields, unmapAllButKept, type SharedMemorySource,
} from './memory.js';
import { restoreFiles, restoreFs, SharedFiles } from './files.js';
import { MemfdInodes } from './memfd.js';
import { SysvSegments } from './sysv-shm.js';
import { Ptys } from './ptys.js';
import { drainFanotifyGroup } from './fanotify.js';
import { connectionKeysOf, InetSockets } from './inet-sockets.js';
import { GhostFiles, removeStaleGhostFiles } from './ghost-files.js';
import { CONTROL_SIZE, findControlAreaHole, RestoreTask } from './remote-task.js';
import { sleepMs, Stub } from './stub.js';
import { restoreRlimits, restoreSignals, restoreTaskMisc, restoreTimers, setThreadRegisters } from './task-state.js';
import { restoreThreads } from './threads.js';
import { restorePosixTimers } from './posix-timers.js';
import { restoreTaskSecurity } from './task-security.js';
import { cloneProcess, exitAsZombie, planTree, restoreGroups, restoreSessionLeader, type Helper, type ProcessIds } from './tree.js';
import { armDeathGuard, restoreDumpedPdeathSignal } from './death-guard.js';
import { imagePermissionWarnings } from './image-permissions.js';
import { faultRequested } from '../fault-points.js';
import { inNetworkNamespace } from '../net-namespace.js';

export interface RestoreOptions {
  /** The directory with the images (criu -D). */
  imagesDir: string;
  /**
   * true (criu -d, --restore-detached): resolve as soon as the process runs; it is re-parented
   * to init (or the nearest subreaper) and outlives the caller. false (default): the process
   * is a child of the caller and the promise resolves when it exits, with its status.
   */
  detached?: boolean;
  /** Write the restored PID to this file once the process runs (criu --pidfile). */
  pidfile?: string;
  /** The process was part of a shell job: it joins the caller's session and terminal (criu -j). */
  shellJob?: boolean;
  /** Called as page contents are read into the processes (for progress displays). */
  onProgress?: (progress: { bytesRead: number; bytesTotal: number }) => void;
  /** Called once the process runs (before waiting for it when not detached). */
  onRunning?: (pid: number) => void;
  /** Limit for each remote call and wait, in milliseconds (default 10000). */
  timeoutMs?: number;
  /** Restore established TCP connections (criu's --tcp-established); images with some are refused without it or tcpClose. */
  tcpEstablished?: boolean;
  /** Give the task closed sockets in place of its established TCP connections (criu's --tcp-close). */
  tcpClose?: boolean;
  /**
   * The network namespace the tree is restored in: a namespace file such as /run/netns/NAME or
   * /proc/PID/ns/net (criu's --join-ns net:PATH). The restore runs there (net-namespace.ts): the
   * tasks live there, their sockets are made and their connections locked there. Default: the
   * caller's. This is how a service moves to another "host" with the same addresses.
   */
  netns?: string;
  /** Test hook: fail at the named point (fault injection, see RESTORE_FAULT_POINTS). */
  faultAt?: string;
}

export interface RestoreResult {
  /** The root of the restored tree. */
  readonly pid: number;
  /** Every process restored, in pstree order (zombies included). */
  readonly pids: readonly number[];
  readonly detached: boolean;
  /** Not detached: how the restored process ended (`code` for exit, `signal` for a kill). */
  readonly exit?: { readonly code: number | null; readonly signal: number | null };
  /** Things restored less exactly than dumped (e.g. a hard rlimit that could not be raised). */
  readonly warnings: readonly string[];
  /** Bytes of page contents read into the processes. */
  readonly pagesBytes: number;
  /**
   * Bytes of page contents not read because a process already held them, equal, from its parent
   * (copy on write: still one physical page for both, as before the dump).
   */
  readonly pagesSharedBytes: number;
  /** Milliseconds per stage group: read (images), create (stub + clone), memory, state. */
  readonly timings: Readonly<Record<'read' | 'create' | 'memory' | 'state', number>>;
}

function mmapMinAddr(): bigint {
  try {
    return BigInt(Math.max(4096, Number.parseInt(readFileSync('/proc/sys/vm/mmap_min_addr', 'utf8'), 10)));
  } catch {
    return 65536n;
  }
}

/**
 * Kills a task we created and reaps it when we can (our child, or our tracee: the exit is
 * reported to the tracer first). Its other threads are our tracees too and stay zombies until we
 * reap them, and the leader's exit is not reported before they are gone: reap them first.
 * Bounded: a few hundred milliseconds at most.
 */
function killCreated(pid: Pid, threads: readonly Pid[] = []): void {
  try { kill(pid, SIGNALS.SIGKILL); } catch { return; }
  const deadline = Date.now() + 2000;
  for (const tid of [...threads.filter((t) => t !== pid), pid]) {
    for (let i = 0; Date.now() < deadline; i++) {
      let st;
      try {
        st = wait4(tid, __WALL | WNOHANG);
      } catch {
        break; // not ours to wait for (ECHILD): init reaps it
      }
      if (st.kind === 'exited' || st.kind === 'signaled') break;
      sleepMs(i < 20 ? 0.5 : 5);
    }
  }
}

/** A process of the tree once it exists: its images and the task we drive. */
interface MadeProcess {
  readonly images: ProcessIds & Partial<Pick<TreeTaskImages, 'set' | 'zombie'>>;
  readonly task: RestoreTask;
  /** A stand-in for a dead session or group leader (tree.ts), gone again before the release. */
  readonly helper?: Helper;
}

/**
 * Everything up to the running tree; synchronous, because every ptrace call must come from this
 * thread. Returns the root's PID.
 */
export function restoreSync(options: RestoreOptions): RestoredTree {
  if (options.netns === undefined) return restoreTree(options);
  const nsPath = options.netns;
  try {
    return inNetworkNamespace(nsPath, () => restoreTree(options));
  } catch (error) {
    if (error instanceof RestoreError) throw error;
    throw new RestoreError('validate', (error as Error).message, { netns: nsPath }, error);
  }
}

type RestoredTree = Omit<RestoreResult, 'detached' | 'exit' | 'pids' | 'warnings'> & { pids: number[]; warnings: string[] };

function restoreTree(options: RestoreOptions): RestoredTree {
  const t0 = performance.now();
  const detached = options.detached === true;
  const shellJob = options.shellJob === true;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const fault = (point: string, stage: RestoreStage) => {
    if (faultRequested('restore', point, options.faultAt)) throw new RestoreError(stage, `fault injected at ${point}`, { fault: point });
  };
  const permissionWarnings = imagePermissionWarnings(options.imagesDir);
  const tree = readTreeImageSet(options.imagesDir, { shellJob, tcpEstablished: options.tcpEstablished === true, tcpClose: options.tcpClose === true });
  const plan = planTree(tree, shellJob);
  for (const t of tree.tasks) {
    checkPidFree(t.pid);
    for (const th of t.set?.threads ?? []) checkPidFree(th.tid);
  }
  for (const h of plan.helpers) checkPidFree(h.pid);
  // SysV segments: their ids free (or left behind by the dumped tree) before anything is made.
  const sysv = SysvSegments.plan(tree.tasks.flatMap((t) => (t.set ? [t.set] : [])));
  sysv.check();
  const ptys = Ptys.plan(tree.tasks.map((t) => ({ pid: t.pid, sid: t.sid, live: t.set !== undefined, files: t.set?.fds ?? [] })));
  const ctty = ptys.controllingTerminals();
  const root = tree.tasks[0]!;
  const t1 = performance.now();
  // Ghost files a killed restore left behind (possibly at the very names these images need).
  const staleGhosts = removeStaleGhostFiles();
  const warnings: string[] = [...permissionWarnings, ...staleGhosts.map((p) => `removed ${p}, left behind by a restore that was killed`)];
  let stub: Stub | undefined;
  let rootPid: Pid | undefined;
  let made: MadeProcess[] = [];
  let t2 = t1;
  // Memory restore happens while processes are created (and PR_SET_MM_MAP after): timed apart.
  let memoryMs = 0;
  let memoryMsBeforeT2 = 0;
  let pagesBytes = 0;
  let pagesSharedBytes = 0;
  let ghosts: GhostFiles | undefined;
  let sharedFiles: SharedFiles | undefined;
  // memfds of the whole tree, made by criu-ts: mappings and fds in any process open the same inode.
  const memfds = new MemfdInodes();
  const inetImages = tree.tasks.flatMap((t) => t.set?.fds ?? []).flatMap((slot) => (slot.file.kind === 'inetsk' ? [slot.file.sk] : []));
  const inet = new InetSockets(connectionKeysOf(inetImages), `criu-ts-restore-${process.pid}`);
  try {
    atStage('network-lock', 'locking the TCP connections of the images', () => inet.lock());
    // Before any task exists: a session leader takes its pty as controlling terminal right after its setsid.
    if (ptys.size > 0) atStage('files', 'making the ptys of the tree', () => ptys.create());
    // ---- every process, with its PID, parent and session (tree.ts)
    stub = Stub.startSync({ shellJob, timeoutMs });
    fault('after-stub', 'spawn-stub');
    const cloned = stub.cloneWithPidSync(root.pid, { parentIsCaller: !detached, timeoutMs });
    rootPid = cloned.pid;
    // The new task is traced by us, not by the stub: the stub has done its job.
    stub.killSync();
    stub = undefined;
    const rootTask = atStage('clone', 'adopting the new task', () => RestoreTask.adopt(cloned.pid, cloned.gadget, timeoutMs));
    made.push({ images: root, task: rootTask });
    // Detached, the root's parent is the stub, killed above: only EXITKILL guards it (death-guard.ts).
    if (!detached) armDeathGuard(rootTask);
    // One control area for the whole tree: every process is born with its parent's copy of it
    // and keeps it until the release, so the area must be free in each dumped layout as well.
    const busy = [...rootTask.currentMaps(), ...tree.tasks.flatMap((t) => t.set?.vmas ?? [])];
    const ctrl = atStage('control-area', 'placing the control area', () => findControlAreaHole(busy, mmapMinAddr(), TASK_SIZE));
    atStage('control-area', `mapping the control area at 0x${ctrl.toString(16)}`, () => rootTask.setUpControlArea(ctrl));
    // ---- the memory of a live process, restored right after it exists and before any of its
    // children is cloned: they inherit it copy on write and keep what they still share (memory.ts)
    const sources = new Map<bigint, SharedMemorySource>();
    const liveSets = tree.tasks.flatMap((t) => (t.set ? [t.set] : []));
    // For progress displays: shared objects are counted where they are read (their first mapper).
    const bytesTotal = liveSets.reduce((n, set) => n + pagesBytesOf(set), 0);
    let bytesRead = 0;
    sharedFiles = SharedFiles.plan(liveSets);
    atStage('map-vmas', 'making the SysV shared memory segments', () => sysv.create());
    const pathOf = (f: RegFile) => ghosts!.pathOf(f);
    const restoreMemory = (t: RestoreTask, set: ImageSet, forked: boolean): void => {
      const m0 = performance.now();
      // One set of ghost files for the tree (see GhostFiles.add), deleted again once all hold theirs.
      if (ghosts) ghosts.add(set);
      else {
        ghosts = GhostFiles.create(set);
        for (const other of liveSets) ghosts.addInFlight(other);
      }
      const inheritance = forked ? atStage('unmap-stub', 'reading the inherited address space', () => planInheritance(t, set, pathOf)) : NOTHING_INHERITED;
      atStage('unmap-stub', forked ? 'unmapping what is not kept of the inherited address space' : 'unmapping the stub', () => unmapAllButKept(t, inheritance));
      if (inheritance.vdso.length === 0) atStage('vdso', 'mapping the vDSO', () => mapVdso(t, set.vmas));
      const attached = new Set(set.shmem.filter((o) => sources.has(o.shmid)).map((o) => o.shmid));
      const mapped = atStage('map-vmas', 'mapping VMAs', () => mapVmas(t, set, pathOf, sources, memfds, inheritance));
      const filled = atStage('fill-pages', 'reading pages', () => fillPages(t, set, attached, (n) => {
        bytesRead += n;
        options.onProgress?.({ bytesRead, bytesTotal });
      }, inheritance));
      pagesBytes += filled.read;
      pagesSharedBytes += filled.shared;
      atStage('protect', 'setting protections', () => protectVmas(t, mapped));
      memoryMs += performance.now() - m0;
      fault('after-memory', 'fill-pages');
      // Later processes that map these objects map them from here.
      for (const object of set.shmem) {
        if (sources.has(object.shmid)) continue;
        const first = object.vmas[0]!;
        const now = t.currentMaps().find((v) => v.start <= first.start && first.start < v.end);
        if (!now) throw new RestoreError('map-vmas', `shared memory object ${object.shmid} is not mapped in ${t.pid} after mapping it`);
        sources.set(object.shmid, {
          path: `/proc/${t.pid}/map_files/${now.start.toString(16)}-${now.end.toString(16)}`,
          // The object was made afresh at first.start: its offset 0 holds dumped offset first.pgoff.
          dumpedStart: first.pgoff,
          dumpedEnd: first.pgoff + (object.vmas.at(-1)!.end - first.start),
        });
      }
    };

    // ---- every process, with its PID, parent and session (tree.ts), and its memory
    const byPid = new Map<number, MadeProcess>([[root.pid, made[0]!]]);
    const helpers = new Map(plan.helpers.map((h) => [h.pid, h]));
    const makeHelper = (helper: Helper): MadeProcess => {
      const known = byPid.get(helper.pid);
      if (known) return known;
      const task = cloneProcess(byPid.get(helper.parent)!.task, helper.pid);
      armDeathGuard(task);
      const m: MadeProcess = { images: { pid: helper.pid, pgid: helper.pid, sid: helper.kind === 'session' ? helper.pid : helper.sid }, task, helper };
      made.push(m);
      byPid.set(helper.pid, m);
      atStage('session', `setsid in helper ${helper.pid}`, () => restoreSessionLeader(task, m.images));
      return m;
    };
    for (const images of tree.tasks) {
      let current = byPid.get(images.pid);
      if (!current) {
        // planTree made sure the parent (or the session helper) comes first: it exists, memory and all.
        const via = plan.bornFrom.get(images.pid);
        const task = via === undefined
          ? cloneProcess(byPid.get(images.ppid)!.task, images.pid)
          : cloneProcess(makeHelper(helpers.get(via)!).task, images.pid, { asSibling: true });
        armDeathGuard(task);
        current = { images, task };
        made.push(current);
        byPid.set(images.pid, current);
      }
      const m = current;
      atStage('session', `setsid in ${images.pid}`, () => restoreSessionLeader(m.task, images));
      // Its children, cloned next, inherit the controlling terminal.
      for (const c of ctty) if (c.sid === images.pid) ptys.takeAsControllingTerminal(m.task, c.index);
      // ... and its memory.
      if (images.set) restoreMemory(m.task, images.set, images !== root);
      for (const h of plan.helpers) if (h.kind === 'group' && h.parent === images.pid) makeHelper(h);
    }
    atStage('session', 'restoring process groups', () => restoreGroups(made));
    for (const c of ctty) ptys.setForegroundGroup(byPid.get(c.sid)!.task, c.index, c.pgrp);
    for (const m of made) if (m.images.zombie) atStage('zombies', `making ${m.images.pid} a zombie`, () => exitAsZombie(m.task, m.images.zombie!.exitCode));
    for (const m of made) {
      if (!m.helper) continue;
      const h = m.helper;
      atStage('session', `ending helper ${h.pid}`, () => exitAsZombie(m.task, 0));
      // Its parent reaps it, as if it had waited for a child of its own.
      remote(byPid.get(h.parent)!.task, 'session', `wait4(${h.pid}) in ${h.parent}`, 'wait4', h.pid, 0, __WALL, 0);
    }
    made = made.filter((m) => !m.helper);
    t2 = performance.now();
    memoryMsBeforeT2 = memoryMs;
    fault('after-create', 'clone');

    // ---- every live process's own state, as a single process is restored
    const live = made.filter((m) => m.images.set);
    const threadsOf = new Map<MadeProcess, Array<{ tid: Pid; image: ThreadImage }>>();
    for (const m of live) {
      const t = m.task;
      const set = m.images.set!;
      // Only now that every process is cloned (see memory.ts, step 6).
      const m0 = performance.now();
      atStage('mm-fields', 'PR_SET_MM_MAP', () => setMmFields(t, set, pathOf));
      memoryMs += performance.now() - m0;

      atStage('files', 'restoring fds', () => restoreFiles(t, set, pathOf, sharedFiles, inet, memfds, ptys));
      if (set.vmas.some((v) => v.packetRing)) atStage('files', 'mapping packet rings', () => mapPacketRings(t, set));
      atStage('fs', 'restoring cwd/root/umask', () => restoreFs(t, set));
      fault('after-files', 'files');
      atStage('rlimits', 'restoring rlimits', () => restoreRlimits(t, set, warnings));
      atStage('timers', 'restoring itimers', () => restoreTimers(t, set));
      atStage('task-misc', 'restoring task attributes', () => restoreTaskMisc(t, set, warnings));
      atStage('signals', 'restoring signals', () => restoreSignals(t, set));
      const threads = atStage('threads', 'restoring threads', () => restoreThreads(t, set, warnings));
      threadsOf.set(m, threads);
      atStage('timers', 'restoring POSIX timers', () => restorePosixTimers(t, set));
      atStage('creds', 'restoring scheduling, credentials and seccomp', () => restoreTaskSecurity(t, set, threads, warnings));
      // Task state may have put the dumped pdeath signal in place, and new credentials clear it.
      if (m !== made[0] || !detached) armDeathGuard(t);
    }
    // Every fd and mapping of the tree holds its ghost file or linked file now: back to deleted, as dumped.
    ghosts?.done();
    ghosts = undefined;
    atStage('files', 'sealing memfds', () => memfds.sealAll());
    atStage('map-vmas', 'marking SysV segments for removal as dumped', () => sysv.release());
    fault('after-threads', 'threads');

    // Events criu-ts's own file accesses queued in restored fanotify groups since their marks.
    atStage('files', 'emptying the event queues of fanotify groups', () => {
      for (const m of live) {
        const seen = new Set<number>();
        for (const slot of m.images.set!.fds) {
          if (slot.file.kind !== 'fanotify' || seen.has(slot.fileId)) continue;
          seen.add(slot.fileId);
          const group = grabFd(m.task.pid, slot.fd);
          try {
            drainFanotifyGroup(group);
          } finally {
            closeFd(group);
          }
        }
      }
    });
    fault('before-release', 'release');
    // ---- release: every process made ready while all are still stopped and ours (a failure
    // here still kills them all), then all detached in one loop, children before parents, so no
    // parent runs while a child is still ours. Connections leave repair mode first (a task must
    // not write to a socket in repair mode); the peers' packets stay locked out until every task
    // runs.
    atStage('release', 'taking the TCP connections out of repair mode', () => inet.resumeAll());
    const releaseOrder = [...live].reverse();
    for (const m of releaseOrder) {
      const t = m.task;
      const threads = threadsOf.get(m) ?? [];
      restoreDumpedPdeathSignal(t, m.images.set!.core);
      // Last remote call, run from the control area itself (see remote-task.ts).
      remote(t, 'release', 'unmapping the control area', 'munmap', ctrl, CONTROL_SIZE);
      for (const th of threads) setThreadRegisters(th.tid, th.image.core);
      setThreadRegisters(t.pid, m.images.set!.core, (m.images.set!.core.tc as Record<string, unknown>).blk_sigset);
    }
    atStage('release', 'PTRACE_DETACH', () => {
      for (const m of releaseOrder) {
        for (const th of threadsOf.get(m) ?? []) ptraceDetach(th.tid, 0);
        ptraceDetach(m.task.pid, 0);
      }
    });
    atStage('release', 'lifting the network lock', () => inet.unlock());
  } catch (err) {
    sharedFiles?.close();
    memfds.closeAll();
    ptys.closeAll();
    inet.abandon();
    sysv.abandon();
    // Whatever failed, no process of the tree is left: children first, each with its threads.
    for (const m of [...made].reverse()) killCreated(m.task.pid, [...m.task.threads.keys()]);
    if (rootPid !== undefined && made.length === 0) killCreated(rootPid);
    stub?.killSync();
    ghosts?.removeAll();
    if (err instanceof RestoreError) throw err;
    throw new RestoreError('release', 'unexpected failure', {}, err);
  }
  // Every process has its copy of the shared files: criu-ts's own duplicates go.
  sharedFiles?.close();
  memfds.closeAll();
  ptys.closeAll();
  if (options.pidfile) {
    try {
      writeFileSync(options.pidfile, `${root.pid}`);
    } catch (err) {
      warnings.push(`cannot write pidfile ${options.pidfile}: ${(err as Error).message}`);
    }
  }
  const t4 = performance.now();
  return {
    pid: root.pid, pids: tree.tasks.map((t) => t.pid), warnings, pagesBytes, pagesSharedBytes,
    timings: { read: t1 - t0, create: t2 - t1 - memoryMsBeforeT2, memory: memoryMs, state: t4 - t2 - (memoryMs - memoryMsBeforeT2) },
  };
}

/** A duplicate of fd `fd` of `pid` (pidfd_getfd: the same open file). */
function grabFd(pid: number, fd: number): Fd {
  const pidfd = pidfdOpen(asPid(pid));
  try {
    return pidfdGetfd(pidfd, fd);
  } finally {
    closeFd(pidfd);
  }
}

/** Waits (without blocking the event loop) for our child `pid` to end. */
export async function waitForExit(pid: number, pollMs = 10): Promise<{ code: number | null; signal: number | null }> {
  for (;;) {
    let st;
    try {
      st = wait4(asPid(pid), WNOHANG);
    } catch (err) {
      const reapedElsewhere = (err as { code?: string }).code === 'ECHILD';
      throw new RestoreError('wait', reapedElsewhere
        ? `process ${pid} was reaped by someone else in this process (a child_process handle still holding the dumped task's PID reaps the restored one)`
        : `waiting for ${pid}`, { pid }, err);
    }
    if (st.kind === 'exited') return { code: st.code, signal: null };
    if (st.kind === 'signaled') return { code: null, signal: st.signal };
    await new Promise((r) => setTimeout(r, pollMs));
  }
}

/**
 * Restores the process in `imagesDir`. Detached: resolves once it runs. Otherwise: resolves
 * when it exits, with its status in `exit` (call `onRunning` to learn the pid earlier).
 */
export async function restore(options: RestoreOptions): Promise<RestoreResult> {
  const r = restoreSync(options);
  const detached = options.detached === true;
  options.onRunning?.(r.pid);
  if (detached) return { ...r, detached };
  const exit = await waitForExit(r.pid);
  return { ...r, detached, exit };
}

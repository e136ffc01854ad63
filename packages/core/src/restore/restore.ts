// restore(): one process from a CRIU 4.x image directory back to life.
//
// Stages, in order (RestoreError.stage names the one that failed):
//
//   read-images, validate        every image read and checked; no process exists yet
//   spawn-stub                   native/build/restore-stub started, stopped itself, seized
//   clone                        clone3(set_tid = dumped PID) in the stub; the stub is killed
//   control-area                 gadget + scratch page in a hole of both layouts
//   unmap-stub, vdso, map-vmas,  the dumped address space (memory.ts)
//   fill-pages, protect, mm-fields
//   files, fs, session           fds, cwd/root/umask, setsid (files.ts)
//   rlimits, timers, task-misc,  core-PID.img state (task-state.ts)
//   signals
//   threads                      every other thread cloned by the leader with its TID, then
//                                its own state from core-TID.img (threads.ts)
//   registers, release           control area unmapped, registers/xsave/mask of every thread
//                                set, every thread detached (the leader last)
//
// This function owns the rollback: whatever fails, the stub and the new task are killed (and
// reaped when they are ours), so a failed restore leaves no process behind.
import { readFileSync, writeFileSync } from 'node:fs';
import { __WALL, kill, ptraceDetach, SIGNALS, wait4, WNOHANG, asPid, type Pid } from '@criu-ts/sys';
import { atStage, RestoreError } from './errors.js';
import { checkPidFree, readImageSet, TASK_SIZE, type ImageSet } from './image-set.js';
import { fillPages, mapVdso, mapVmas, protectVmas, remote, setMmFields, unmapAllButControl } from './memory.js';
import { restoreFiles, restoreFs, restoreSession } from './files.js';
import { GhostFiles } from './ghost-files.js';
import { CONTROL_SIZE, findControlAreaHole, RestoreTask } from './remote-task.js';
import { sleepMs, Stub } from './stub.js';
import { restoreRegisters, restoreRlimits, restoreSignals, restoreTaskMisc, restoreTimers, setThreadRegisters } from './task-state.js';
import { restoreThreads } from './threads.js';

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
  /** Called once the process runs (before waiting for it when not detached). */
  onRunning?: (pid: number) => void;
  /** Limit for each remote call and wait, in milliseconds (default 10000). */
  timeoutMs?: number;
}

export interface RestoreResult {
  readonly pid: number;
  readonly detached: boolean;
  /** Not detached: how the restored process ended (`code` for exit, `signal` for a kill). */
  readonly exit?: { readonly code: number | null; readonly signal: number | null };
  /** Things restored less exactly than dumped (e.g. a hard rlimit that could not be raised). */
  readonly warnings: readonly string[];
  /** Bytes of page contents read into the process. */
  readonly pagesBytes: number;
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

/** Everything up to the running process; synchronous, because every ptrace call must come from this thread. */
export function restoreSync(options: RestoreOptions): { pid: number; warnings: string[]; pagesBytes: number; timings: RestoreResult['timings'] } {
  const t0 = performance.now();
  const detached = options.detached === true;
  const timeoutMs = options.timeoutMs ?? 10_000;
  const set: ImageSet = readImageSet(options.imagesDir, { shellJob: options.shellJob === true });
  checkPidFree(set.pid);
  for (const t of set.threads) checkPidFree(t.tid);
  const t1 = performance.now();
  const warnings: string[] = [];
  let stub: Stub | undefined;
  let created: Pid | undefined;
  let task: RestoreTask | undefined;
  let t2 = t1;
  let t3 = t1;
  let pagesBytes = 0;
  let ghosts: GhostFiles | undefined;
  try {
    stub = Stub.startSync({ shellJob: options.shellJob === true, timeoutMs });
    const cloned = stub.cloneWithPidSync(set.pid, { parentIsCaller: !detached, timeoutMs });
    created = cloned.pid;
    // The new task is traced by us, not by the stub: the stub has done its job.
    stub.killSync();
    stub = undefined;
    task = atStage('clone', 'adopting the new task', () => RestoreTask.adopt(cloned.pid, cloned.gadget, timeoutMs));
    t2 = performance.now();

    const t = task;
    const busy = [...t.currentMaps(), ...set.vmas];
    const ctrl = atStage('control-area', 'placing the control area', () => findControlAreaHole(busy, mmapMinAddr(), TASK_SIZE));
    atStage('control-area', `mapping the control area at 0x${ctrl.toString(16)}`, () => t.setUpControlArea(ctrl));
    atStage('unmap-stub', 'unmapping the stub', () => unmapAllButControl(t));
    ghosts = GhostFiles.create(set);
    const g = ghosts;
    const pathOf = (f: Parameters<GhostFiles['pathOf']>[0]) => g.pathOf(f);
    atStage('vdso', 'mapping the vDSO', () => mapVdso(t, set.vmas));
    const mapped = atStage('map-vmas', 'mapping VMAs', () => mapVmas(t, set, pathOf));
    pagesBytes = atStage('fill-pages', 'reading pages', () => fillPages(t, set));
    atStage('protect', 'setting protections', () => protectVmas(t, mapped));
    atStage('mm-fields', 'PR_SET_MM_MAP', () => setMmFields(t, set, pathOf));
    t3 = performance.now();

    atStage('files', 'restoring fds', () => restoreFiles(t, set, pathOf));
    // Every fd and mapping holds its ghost file now: back to deleted, as dumped.
    ghosts.removeAll();
    atStage('fs', 'restoring cwd/root/umask', () => restoreFs(t, set));
    atStage('session', 'restoring the session', () => restoreSession(t, set));
    atStage('rlimits', 'restoring rlimits', () => restoreRlimits(t, set, warnings));
    atStage('timers', 'restoring itimers', () => restoreTimers(t, set));
    atStage('task-misc', 'restoring task attributes', () => restoreTaskMisc(t, set, warnings));
    atStage('signals', 'restoring signals', () => restoreSignals(t, set));
    const threads = atStage('threads', 'restoring threads', () => restoreThreads(t, set, warnings));

    // Last remote call, run from the control area itself (see remote-task.ts).
    remote(t, 'release', 'unmapping the control area', 'munmap', ctrl, CONTROL_SIZE);
    for (const th of threads) setThreadRegisters(th.tid, th.image.core);
    restoreRegisters(t, set);
    atStage('release', 'PTRACE_DETACH', () => {
      for (const th of threads) ptraceDetach(th.tid, 0);
      ptraceDetach(t.pid, 0);
    });
  } catch (err) {
    if (created !== undefined) killCreated(created, task ? [...task.threads.keys()] : []);
    stub?.killSync();
    ghosts?.removeAll();
    if (err instanceof RestoreError) throw err;
    throw new RestoreError('release', 'unexpected failure', {}, err);
  }
  if (options.pidfile) {
    try {
      writeFileSync(options.pidfile, `${set.pid}`);
    } catch (err) {
      warnings.push(`cannot write pidfile ${options.pidfile}: ${(err as Error).message}`);
    }
  }
  const t4 = performance.now();
  return { pid: set.pid, warnings, pagesBytes, timings: { read: t1 - t0, create: t2 - t1, memory: t3 - t2, state: t4 - t3 } };
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

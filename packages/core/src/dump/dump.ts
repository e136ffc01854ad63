// dump(): checkpoint a process into a CRIU 4.2 image directory.
//
// The stages, in order (each failure names its stage; `rollback` is the one place that undoes):
//
//   check-options  the pid exists, is not us, is a process without children (threads are fine)
//   prepare-dir    the images directory exists (created 0700) and is writable
//   freeze         compel seizes every thread (PTRACE_SEIZE + INTERRUPT); then, while every
//                  thread is still in its ptrace-stop, each thread's registers, xsave, mask,
//                  TLS, rseq and private signals (ptrace) and what only it can tell
//                  (sigaltstack, clear_child_tid...: remote syscalls run in that thread)
//   infect         the parasite is loaded into the task (it runs in the leader)
//   collect        signals, timers, creds, VMAs, files, cwd/root... into image entries
//   memory         pages found through /proc/PID/pagemap, moved by vmsplice + splice to pages-N.img
//   write-images   every image but inventory, 0600, fsync'ed
//   finish         inventory.img last (only now does the directory look like a complete dump),
//                  directory fsync'ed, then the task is killed, left running or left stopped
//
// Rollback (any failure before finish completes): the parasite is removed and the task cured, so
// it runs on (or stays stopped) exactly as before; every file this dump wrote is removed.
import { randomUUID } from 'node:crypto';
import { existsSync, readFileSync, readdirSync } from 'node:fs';
import { performance } from 'node:perf_hooks';
import { injectSync, type Victim } from '@criu-ts/compel';
import type { DecodedMessage } from '@criu-ts/images';
import {
  __WALL, asFd, asPid, kcmp, kill, close as closeFd, ptraceGetRegs, wait4, WNOHANG, ptraceGetRegset, ptraceGetSigmask, NT, type Pid,
} from '@criu-ts/sys';
import { DumpError, type DumpStage } from '../errors.js';
import { readAuxv, readLink, readStat } from '../proc/task-files.js';
import { readSmaps } from '../proc/smaps.js';
import { FileTable, findUnsupportedDescriptor, readGhostContents, UnsupportedFileError } from './files.js';
import { ImageDir } from './image-dir.js';
import { describeVmas, pagemapEntries, scanPages, sharedObjects, shmemPagemapEntries, writePages, type DumpVma } from './memory.js';
import {
  buildCoreEntry, buildThreadCoreEntry, collectPtraceState, collectThreadOwnState, TASK_STOPPED, type TaskSnapshot,
} from './task-core.js';

export interface DumpOptions {
  /** The task to dump (criu's -t/--tree). */
  readonly pid: number;
  /** Where the images go (criu's -D/--images-dir); created 0700 if missing. */
  readonly imagesDir: string;
  /** After a successful dump: 'kill' (default), 'running' (-R), 'stopped' (-s). */
  readonly leave?: 'kill' | 'running' | 'stopped';
  /** Allow a task whose session or group leader is outside the dump (criu's --shell-job). */
  readonly shellJob?: boolean;
  /** Largest deleted-while-open file whose contents are saved (criu's --ghost-limit, default 1 MiB). */
  readonly ghostLimit?: number;
  /** Called with progress of the page writing. */
  readonly onProgress?: (progress: { pagesWritten: number; pagesTotal: number }) => void;
  /** Called as each stage starts (for logs, progress displays and tests that act at a stage). */
  readonly onStage?: (stage: DumpStage) => void;
  /** Test hook: throw at the named point (fault injection). */
  readonly faultAt?: string;
}

export interface DumpResult {
  readonly pid: number;
  readonly imagesDir: string;
  readonly images: string[];
  readonly pagesWritten: number;
  /** Microseconds, as stats-dump records them. */
  readonly freezingTime: number;
  readonly frozenTime: number;
  readonly memdumpTime: number;
}

const KCMP_FILE = 0;
const DEFAULT_GHOST_LIMIT = 1 << 20;

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

export async function dump(options: DumpOptions): Promise<DumpResult> {
  return dumpSync(options);
}

/** dump(), synchronously: ptrace requests must come from the thread that seized the task. */
export function dumpSync(options: DumpOptions): DumpResult {
  const pidNumber = options.pid;
  let stage: DumpStage = 'check-options';
  const fail = (message: string, cause?: unknown): never => {
    throw new DumpError(stage, pidNumber, message, cause === undefined ? {} : { cause });
  };
  const fault = (point: string) => {
    if (options.faultAt === point || process.env.CRIU_TS_FAULT === `dump:${point}`) fail(`fault injected at ${point}`);
  };

  // ---- check-options
  if (!Number.isInteger(pidNumber) || pidNumber <= 0) fail(`not a pid: ${pidNumber}`);
  if (pidNumber === process.pid) fail('criu-ts cannot dump itself');
  if (!existsSync(`/proc/${pidNumber}`)) fail(`no process ${pidNumber}`);
  const pid = asPid(pidNumber);
  const children = readdirSync(`/proc/${pid}/task`).flatMap((t) => readTextSafe(`/proc/${pid}/task/${t}/children`).split(/\s+/).filter(Boolean));
  if (children.length > 0) fail(`process ${pid} has children (${children.join(', ')}); process trees are not supported yet`);
  const stat = readStat(pid);
  if (stat[3] === 'Z') {
    // A leader that called pthread_exit() stays a zombie while its other threads run on.
    const live = readdirSync(`/proc/${pid}/task`).filter((t) => Number(t) !== pidNumber);
    if (live.length > 0) fail(`the thread group leader ${pid} has exited while ${live.length} other thread(s) run on; a dead leader with live threads is not supported yet`);
    fail(`process ${pid} is a zombie`);
  }
  const pgid = Number(stat[5]);
  const sid = Number(stat[6]);
  if (!options.shellJob && (pgid !== pidNumber || sid !== pidNumber)) {
    fail(`process ${pid} is not the leader of its session (${sid}) and group (${pgid}); dump it with --shell-job`);
  }

  const unsupported = findUnsupportedDescriptor(pidNumber);
  if (unsupported) fail(`process ${pid} holds ${unsupported.message}`, unsupported);

  // ---- prepare-dir
  stage = 'prepare-dir';
  options.onStage?.(stage);
  let dir: ImageDir;
  try {
    dir = new ImageDir(options.imagesDir);
  } catch (error) {
    return fail(`cannot use images directory ${options.imagesDir}: ${(error as Error).message}`, error);
  }

  let victim: Victim | undefined;
  const frozenAt = performance.now();
  let cleanedUp = false;
  const rollback = (error: unknown): never => {
    if (!cleanedUp) {
      cleanedUp = true;
      let cureError: unknown;
      try {
        victim?.cureSync();
      } catch (e) {
        cureError = e;
      }
      dir.removeWritten();
      if (cureError) {
        throw new DumpError(stage, pidNumber, `${(error as Error).message}; and putting the task back failed: ${(cureError as Error).message}`, { cause: error });
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
    victim = injectSync(pid);
    const freezingTime = Math.round((performance.now() - freezeStart) * 1000);
    fault('after-freeze');
    const stopped = victim.wasStopped;
    // The memory map is read before the parasite (or our scratch page) adds mappings to it.
    const procVmas = readSmaps(pid);
    const threads = threadSnapshots(victim, pid, stopped);
    // So are the descriptors: the parasite adds its socket and pipe to the table.
    const taskFds = readdirSync(`/proc/${pid}/fd`).map(Number).sort((a, b) => a - b);

    // ---- infect
    stage = 'infect';
    options.onStage?.(stage);
    const parasite = victim.infectSync();
    fault('after-parasite');

    // ---- collect
    stage = 'collect';
    options.onStage?.(stage);
    const files = new FileTable(options.ghostLimit ?? DEFAULT_GHOST_LIMIT);
    const exePath = readLink(pid, 'exe').replace(/ \(deleted\)$/, '');
    const exeId = files.mappedFile(exePath, 0, `/proc/${pid}/exe`);
    const vmas = describeVmas(pid, procVmas, files);
    const { core, misc } = buildCoreEntry(threads[0]!, parasite);
    const threadCores = threads.slice(1).map((t) => ({ tid: t.tid, core: buildThreadCoreEntry(t) }));
    const mm = mmEntry(pid, exeId, vmas, Number(misc.dumpable));

    // ---- files
    stage = 'files';
    options.onStage?.(stage);
    const fdEntries = dumpDescriptors(pid, taskFds, files);
    const cwdId = files.directory(readLink(pid, 'cwd'), `/proc/${pid}/cwd`);
    const rootId = files.directory(readLink(pid, 'root'), `/proc/${pid}/root`);
    const fs: DecodedMessage = { cwd_id: cwdId, root_id: rootId, umask: Number(misc.umask) };

    // ---- memory
    stage = 'memory';
    options.onStage?.(stage);
    const memStart = performance.now();
    const runs = scanPages(pid, vmas, 'private');
    const pagesTotal = runs.reduce((n, r) => n + r.pages, 0);
    const pagesFd = asFd(dir.openRaw('pages-1.img'));
    let pagesWritten = 0;
    try {
      fault('in-pages');
      const bytes = writePages(pid, runs, parasite, pagesFd, (done) => options.onProgress?.({ pagesWritten: done / 4096, pagesTotal }));
      pagesWritten = bytes / 4096;
    } finally {
      closeFd(pagesFd);
    }
    // Shared anonymous memory: each object's pages once (from its first VMA that has them), in
    // pages files of their own, as CRIU lays them out.
    const shmemImages: Array<{ shmid: bigint; pagesId: number; entries: DecodedMessage[] }> = [];
    for (const object of sharedObjects(vmas)) {
      const pagesId = 2 + shmemImages.length;
      const seen = new Set<bigint>();
      const objectRuns = scanPages(pid, object.vmas, 'shared').filter((r) => {
        // Two VMAs of one object may show the same page: keep the first sighting of an offset.
        const vma = object.vmas.find((v) => v.proc.start <= r.start && r.start < v.proc.end)!;
        const offset = r.start - vma.proc.start + vma.proc.offset;
        if (seen.has(offset)) return false;
        seen.add(offset);
        return true;
      });
      const fd = asFd(dir.openRaw(`pages-${pagesId}.img`));
      try {
        pagesWritten += writePages(pid, objectRuns, parasite, fd) / 4096;
      } finally {
        closeFd(fd);
      }
      shmemImages.push({ shmid: object.shmid, pagesId, entries: shmemPagemapEntries(object, objectRuns) });
    }
    const memdumpTime = Math.round((performance.now() - memStart) * 1000);

    // ---- write-images
    stage = 'write-images';
    options.onStage?.(stage);
    const ids: DecodedMessage = { vm_id: 1, files_id: 1, fs_id: 1, sighand_id: 1, ...namespaceIds(pid) };
    dir.writeImage(`pagemap-${pid}.img`, [{ pages_id: 1 }, ...pagemapEntries(runs)]);
    for (const shmem of shmemImages) dir.writeImage(`pagemap-shmem-${shmem.shmid}.img`, [{ pages_id: shmem.pagesId }, ...shmem.entries]);
    dir.writeImage(`core-${pid}.img`, [core]);
    for (const t of threadCores) dir.writeImage(`core-${t.tid}.img`, [t.core]);
    dir.writeImage(`mm-${pid}.img`, [mm]);
    dir.writeImage(`fs-${pid}.img`, [fs]);
    dir.writeImage(`ids-${pid}.img`, [ids]);
    dir.writeImage('fdinfo-1.img', fdEntries);
    if (files.remaps.length > 0) dir.writeImage('remap-fpath.img', files.remaps);
    for (const ghost of files.ghosts) {
      dir.writeImage(`ghost-file-${ghost.id.toString(16)}.img`, [{ message: ghost.entry, payload: { type: 'bytes', bytes: readGhostContents(ghost) } }]);
    }
    dir.writeImage('files.img', files.files);
    const pipeDataEntries = (data: typeof files.pipeData) =>
      [...data].map(([pipeId, c]) => ({ message: { pipe_id: pipeId, bytes: c.bytes.length, size: c.size }, payload: { type: 'bytes' as const, bytes: c.bytes } }));
    if (files.pipeData.size > 0) dir.writeImage('pipes-data.img', pipeDataEntries(files.pipeData));
    if (files.fifoData.size > 0) dir.writeImage('fifo-data.img', pipeDataEntries(files.fifoData));
    if (files.socketQueues.length > 0) {
      dir.writeImage('sk-queues.img', files.socketQueues.map((q) => ({ message: { id_for: q.idFor, length: q.bytes.length }, payload: { type: 'bytes' as const, bytes: q.bytes } })));
    }
    dir.writeImage('pstree.img', [{ pid, ppid: 0, pgid, sid, threads: threads.map((t) => t.tid) }]);
    dir.writeImage('seccomp.img', [{}]);
    const frozenTime = Math.round((performance.now() - frozenAt) * 1000);
    dir.writeImage('stats-dump', [
      {
        dump: {
          freezing_time: freezingTime, frozen_time: frozenTime, memdump_time: memdumpTime, memwrite_time: memdumpTime,
          pages_scanned: BigInt(vmas.reduce((n, v) => n + Number((v.proc.end - v.proc.start) / 4096n), 0)),
          pages_skipped_parent: 0n, pages_written: BigInt(pagesWritten), pages_lazy: 0n,
        },
      },
    ]);
    fault('before-inventory');

    // ---- finish
    stage = 'finish';
    options.onStage?.(stage);
    const leave = options.leave ?? 'kill';
    if (leave !== 'kill') {
      // Everything the task had to give is in the files: it runs on (or stops) while they reach
      // the disk, so the fsyncs are not part of its frozen time.
      // A task that was stopped when seized goes back to its stop anyway.
      victim.cureSync({ stop: leave === 'stopped' && (core.tc as DecodedMessage).task_state !== TASK_STOPPED });
    }
    // Every image durable first, then inventory.img, then the directory: a crash at any point
    // leaves a directory without inventory, which never looks like a complete dump.
    dir.syncWritten();
    dir.writeImage('inventory.img', [
      {
        img_version: 2, fdinfo_per_id: true, root_ids: ids, ns_per_id: true, lsmtype: 0 /* NO_LSM */,
        network_lock_method: 0, plugins_entry: {}, dump_criu_run_id: randomUUID(),
      },
    ]);
    dir.syncWritten();
    dir.syncDirectory();
    fault('after-images');
    if (leave === 'kill') {
      // Killed while still seized: it never runs again after its state was saved.
      kill(pid, 9);
      reapKilledThreads(victim);
      try {
        victim.cureSync();
      } catch {
        /* the task is gone: what cure could not undo does not matter */
      }
    }
    cleanedUp = true;
    return {
      pid, imagesDir: options.imagesDir, images: readdirSync(options.imagesDir).sort(), pagesWritten,
      freezingTime, frozenTime, memdumpTime,
    };
  } catch (error) {
    return rollback(error);
  }
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
  const scratch = victim.mapSync(4096);
  try {
    return tids.map((tid) => {
      const own = collectThreadOwnState(victim, tid, scratch);
      const worker = tid === victim.worker;
      return {
        pid, tid, stopped, own, ptrace: collectPtraceState(tid),
        regs: worker ? victim.saved.regs : ptraceGetRegs(tid),
        xsave: worker ? victim.saved.xsave : ptraceGetRegset(tid, NT.X86_XSTATE),
        sigmask: worker ? victim.saved.sigmask : ptraceGetSigmask(tid),
      };
    });
  } finally {
    victim.unmapSync(scratch);
  }
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

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

function readTextSafe(path: string): string {
  try {
    return readFileSync(path, 'utf8');
  } catch {
    return '';
  }
}

function mmEntry(pid: Pid, exeId: number, vmas: readonly DumpVma[], dumpable: number): DecodedMessage {
  // /proc/PID/stat fields 26-28 and 45-51 (proc(5)): code, data, stack, brk, args and environment.
  const stat = readStat(pid);
  const n = (i: number) => BigInt(stat[i] ?? '0');
  return {
    mm_start_code: n(26), mm_end_code: n(27), mm_start_data: n(45), mm_end_data: n(46), mm_start_stack: n(28),
    mm_start_brk: n(47), mm_brk: findBrk(vmas, n(47)), mm_arg_start: n(48), mm_arg_end: n(49), mm_env_start: n(50),
    mm_env_end: n(51), exe_file_id: exeId, mm_saved_auxv: readAuxv(pid), vmas: vmas.map((v) => v.entry),
    dumpable, thp_disabled: false,
  };
}

/** The current program break: the end of [heap], or its start when the heap is empty. */
function findBrk(vmas: readonly DumpVma[], startBrk: bigint): bigint {
  const heap = vmas.find((v) => v.proc.name === '[heap]');
  return heap ? heap.proc.end : startBrk;
}

function dumpDescriptors(pid: Pid, fds: readonly number[], files: FileTable): DecodedMessage[] {
  const seen: Array<{ fd: number; id: number }> = [];
  const entries: DecodedMessage[] = [];
  for (const fd of fds) {
    try {
      const entry = files.descriptor(pid, fd, (candidate) => {
        for (const earlier of seen) if (kcmp(pid, pid, KCMP_FILE, earlier.fd, candidate) === 0) return earlier.id;
        return undefined;
      }, fds);
      seen.push({ fd, id: Number(entry.id) });
      entries.push(entry);
    } catch (error) {
      if (error instanceof UnsupportedFileError) throw error;
      if ((error as NodeJS.ErrnoException).code === 'ENOENT') continue; // closed meanwhile: cannot happen while frozen, but harmless
      throw error;
    }
  }
  return entries;
}

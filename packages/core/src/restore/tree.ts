// The process tree of a restore: every process with its PID, under its own parent, in its
// session and process group; zombies exit with their status and wait for their parent.
//
// Creation, in pstree order (a parent before its children):
//   - the root is cloned by the stub (stub.ts) and gets the control area (remote-task.ts) at an
//     address free in the stub's layout and in every dumped process's layout;
//   - every other process is cloned by its restored parent with a remote clone3 (no CLONE_VM:
//     a fork, exit_signal SIGCHLD, set_tid = [its PID]); the parent is traced with
//     PTRACE_O_TRACEFORK, so the child arrives traced and stopped before it runs an instruction,
//     as an exact copy of the parent: the control area and its gadget are already at the same
//     address, and remote calls run in the child at once. The parent's memory is restored by
//     then (restore.ts), the rest of its state not yet: the child starts with the parent's
//     address space, copy on write, and keeps what it had in common with it (memory.ts);
//   - a session leader calls setsid() right after it exists, before any of its children is
//     cloned: they inherit its session (a session can only be entered by birth).
// Groups, once every process exists: group leaders call setpgid(0, 0), then the members
// setpgid(0, leader) (setpgid(2): the group must exist in the caller's session).
// Zombies then exit with their status (exit_group, or their own signal); we reap them as their
// tracer, which hands them over to their real parent as zombies (wait_task_zombie in the
// kernel: a traced child that is not the tracer's own is released to its parent, who gets
// SIGCHLD and can wait for it).
//
// A session or group whose leader is gone (exited, its members living on) is made again by a
// helper, as CRIU does: a temporary process with the dead leader's PID. A session helper is
// cloned by the parent of the session's first orphaned member, calls setsid(), and clones the
// members whose parent is outside the session with CLONE_PARENT (so they get its parent, their
// dumped one); a group helper is cloned by the group's first member and calls setpgid(0, 0).
// Helpers exit once every group is in place; their parent, still driven by us, reaps them with
// a remote wait4. Layouts this cannot rebuild are refused before anything is created (the
// members of a dead session with different parents, a process outside the session of its
// parent while that session's leader lives).
import {
  __WALL, kill, PTRACE_EVENT, PTRACE_O, ptraceCont, ptraceGetEventMsg, ptraceGetRegs, ptraceSetOptions, ptraceSetRegs,
  ptraceSetSigmask, ptraceSingleStep, SIGNALS, SysError, syscallNumber, wait4, WNOHANG, asPid, type Pid,
} from '@criu-ts/sys';
import { RestoreError } from './errors.js';
import type { TreeImageSet } from './image-set.js';
import { remote } from './memory.js';
import { RestoreTask } from './remote-task.js';
import { sleepMs } from './stub.js';

const CLONE_ARGS_SIZE_VER2 = 88;
const ORIG_RAX_NONE = 0xffff_ffff_ffff_ffffn;
const RLIMIT_CORE = 4;
const CLONE_PARENT = 0x8000n;

/**
 * A temporary process standing in for a session or group leader that is gone, as CRIU does:
 * it gets the dead leader's PID so that the session or group can be made again, and exits
 * (reaped by its parent, remotely) once every member is in place.
 */
export interface Helper {
  readonly pid: number;
  /** 'session': setsid() in it, and the session's members whose parent is elsewhere are born
   * from it with CLONE_PARENT (so their parent is its parent). 'group': setpgid(0, 0). */
  readonly kind: 'session' | 'group';
  /** The process of the tree that clones it (and reaps it at the end). */
  readonly parent: number;
  readonly sid: number;
}

export interface TreePlan {
  readonly helpers: readonly Helper[];
  /** Processes born from a session helper (CLONE_PARENT) rather than from their parent. */
  readonly bornFrom: ReadonlyMap<number, number>;
}

/**
 * Checks that every session and group of the tree can be rebuilt by birth, setsid and setpgid
 * (see the module doc), with helpers for leaders that are gone; refuses what it cannot rebuild.
 * `shellJob`: the root's session and group may be outside the dump (criu-ts's own), as may those
 * of the processes that share them.
 */
export function planTree(tree: TreeImageSet, shellJob: boolean): TreePlan {
  const byPid = new Map(tree.tasks.map((t) => [t.pid, t]));
  const root = tree.tasks[0]!;
  const helpers = new Map<number, Helper>();
  const bornFrom = new Map<number, number>();
  const invalid = (message: string, evidence: Record<string, unknown>): never => {
    throw new RestoreError('validate', message, evidence);
  };
  const outsideShellJob = (id: number, rootId: number) => shellJob && id === rootId && rootId !== root.pid;
  /** The session a process is in once born (its parent's, or its session helper's). */
  for (const t of tree.tasks) {
    const parent = t === root ? undefined : byPid.get(t.ppid);
    if (t.sid === t.pid) {
      if (t.pgid !== t.pid) invalid(`process ${t.pid} leads session ${t.sid} but is in group ${t.pgid}: not a state Linux allows`, { pid: t.pid, pgid: t.pgid });
    } else if (!parent) {
      if (!byPid.has(t.sid) && !shellJob) invalid(`process ${t.pid} is in session ${t.sid}, which is outside the dump; restore it with shellJob (--shell-job)`, { pid: t.pid, sid: t.sid });
    } else if (parent.sid !== t.sid) {
      if (byPid.has(t.sid) || outsideShellJob(t.sid, root.sid)) {
        invalid(`process ${t.pid} is in session ${t.sid} but its parent ${parent.pid} is in session ${parent.sid}, and the session's leader is alive: not supported yet`, { pid: t.pid, sid: t.sid, ppid: parent.pid });
      }
      // The session leader is gone: a helper with its PID makes the session again.
      const helper = helpers.get(t.sid) ?? { pid: t.sid, kind: 'session' as const, parent: parent.pid, sid: t.sid };
      if (helper.kind !== 'session' || helper.parent !== parent.pid) {
        invalid(`processes of session ${t.sid}, whose leader is gone, have different parents (${helper.parent}, ${parent.pid}): not supported yet`, { pid: t.pid, sid: t.sid });
      }
      helpers.set(t.sid, helper);
      bornFrom.set(t.pid, t.sid);
    }
  }
  for (const t of tree.tasks) {
    if (t.pgid === t.pid) continue;
    const leader = byPid.get(t.pgid);
    const helper = helpers.get(t.pgid);
    if (leader) {
      if (leader.pgid !== leader.pid || leader.sid !== t.sid) {
        invalid(`process ${t.pid} is in group ${t.pgid}, whose leader is in group ${leader.pgid} of session ${leader.sid} (the member is in session ${t.sid})`, { pid: t.pid, pgid: t.pgid });
      }
    } else if (helper) {
      if (helper.sid !== t.sid) invalid(`process ${t.pid} (session ${t.sid}) is in group ${t.pgid}, made again in session ${helper.sid}`, { pid: t.pid, pgid: t.pgid });
    } else if (!outsideShellJob(t.pgid, root.pgid)) {
      // The group leader is gone: a helper with its PID, born from the first member (so in its
      // session), makes the group again.
      helpers.set(t.pgid, { pid: t.pgid, kind: 'group', parent: t.pid, sid: t.sid });
    }
  }
  return { helpers: [...helpers.values()], bornFrom };
}

/** Waits for the next stop of `pid` (bounded); death or a timeout is a RestoreError of 'clone'. */
function waitStop(pid: Pid, what: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; ; i++) {
    const st = wait4(pid, __WALL | WNOHANG);
    if (st.kind === 'stopped') return st;
    if (st.kind === 'exited' || st.kind === 'signaled') throw new RestoreError('clone', `${what}: task ${pid} died`, { status: st });
    if (Date.now() > deadline) throw new RestoreError('clone', `${what}: task ${pid} did not stop within ${timeoutMs} ms`);
    if (i > 1000) sleepMs(0.1);
  }
}

/**
 * Precondition: `parent` is stopped and its control area is set up. Runs clone3(set_tid = [pid])
 * in it as a fork and returns the new process, stopped and ready for remote calls.
 */
export function cloneProcess(parent: RestoreTask, pid: number, options: { asSibling?: boolean } = {}): RestoreTask {
  // Set explicitly: without TRACEFORK the child would run free from the control area.
  ptraceSetOptions(parent.pid, PTRACE_O.TRACEFORK | PTRACE_O.TRACECLONE | PTRACE_O.EXITKILL);
  const args = Buffer.alloc(CLONE_ARGS_SIZE_VER2 + 8);
  const [addr] = parent.scratchPut(args);
  // A new process with copies of everything, exit_signal (offset 32) SIGCHLD, as fork. As a
  // sibling (CLONE_PARENT: the caller's parent becomes its parent) exit_signal must be 0 (clone3
  // refuses anything else); the child then inherits the caller's, and the kernel reports the
  // clone as PTRACE_EVENT_CLONE.
  if (options.asSibling) args.writeBigUInt64LE(CLONE_PARENT, 0);
  else args.writeBigUInt64LE(BigInt(SIGNALS.SIGCHLD), 32);
  args.writeBigUInt64LE(addr! + BigInt(CLONE_ARGS_SIZE_VER2), 64);
  args.writeBigUInt64LE(1n, 72);
  args.writeInt32LE(pid, CLONE_ARGS_SIZE_VER2);
  parent.write(addr!, args);

  const gadget = parent.findGadgets().syscall;
  const base = parent.saved.regs;
  ptraceSetRegs(parent.pid, {
    ...base, rax: BigInt(syscallNumber('clone3')), rdi: addr!, rsi: BigInt(CLONE_ARGS_SIZE_VER2), rdx: 0n, r10: 0n, r8: 0n, r9: 0n,
    orig_rax: ORIG_RAX_NONE, rip: gadget, eflags: base.eflags & ~0x500n,
  });
  ptraceSingleStep(parent.pid);
  const first = waitStop(parent.pid, `clone3 of process ${pid}`, parent.timeoutMs);
  if (first.event !== (options.asSibling ? PTRACE_EVENT.CLONE : PTRACE_EVENT.FORK)) {
    const rax = BigInt.asIntN(64, ptraceGetRegs(parent.pid).rax);
    if (rax < 0n && first.event === 0) {
      const e = new SysError('clone3', Number(-rax), `set_tid ${pid}, remote in ${parent.pid}`);
      const why = e.code === 'EEXIST' ? `PID ${pid} is already in use` : `clone3 of process ${pid} in its parent ${parent.pid} failed (${e.code})`;
      throw new RestoreError('clone', why, { pid, parent: parent.pid, errno: e.code }, e);
    }
    throw new RestoreError('clone', `clone3 of process ${pid}: unexpected stop of its parent ${parent.pid} (signal ${first.signal}, event ${first.event})`, { status: first });
  }
  const got = asPid(Number(ptraceGetEventMsg(parent.pid)));
  // The new process reports its own first stop, independently of its parent.
  waitStop(got, `first stop of process ${pid}`, parent.timeoutMs);
  // Let the parent finish its clone3 (the next stop is the single-step trap after it).
  ptraceSingleStep(parent.pid);
  waitStop(parent.pid, `end of clone3 of process ${pid}`, parent.timeoutMs);
  if (got !== pid) {
    try { kill(got, SIGNALS.SIGKILL); } catch { /* gone */ }
    throw new RestoreError('clone', `clone3 with set_tid ${pid} gave process ${got}`, { asked: pid, got });
  }
  return RestoreTask.adoptForked(got, parent.controlArea, parent.timeoutMs);
}

/** What the session code needs of a process or helper. */
export interface ProcessIds {
  readonly pid: number;
  readonly pgid: number;
  readonly sid: number;
}

/** setsid() in a session leader: called right after it exists, before its children are cloned. */
export function restoreSessionLeader(task: RestoreTask, images: ProcessIds): void {
  if (images.sid === images.pid) remote(task, 'session', `setsid in ${images.pid}`, 'setsid');
}

/**
 * Process groups, once every process exists: leaders first (setpgid(0, 0)), then members join
 * theirs. A group outside the dump (a shell job's) is the one the process was born in.
 */
export function restoreGroups(made: ReadonlyArray<{ images: ProcessIds; task: RestoreTask }>): void {
  const inTree = new Set(made.map((m) => m.images.pid));
  for (const { images, task } of made) {
    if (images.pgid === images.pid && images.sid !== images.pid) remote(task, 'session', `setpgid(0, 0) in ${images.pid}`, 'setpgid', 0, 0);
  }
  for (const { images, task } of made) {
    if (images.pgid === images.pid || !inTree.has(images.pgid)) continue;
    remote(task, 'session', `setpgid(0, ${images.pgid}) in ${images.pid}`, 'setpgid', 0, images.pgid);
  }
}

/**
 * Makes `task` a zombie with `status` (as waitpid(2) reports it: exit code << 8, or the killing
 * signal in the low 7 bits) and hands it to its parent. Precondition: stopped, done with every
 * other remote call.
 */
export function exitAsZombie(task: RestoreTask, status: number): void {
  const signal = status & 0x7f;
  const pid = task.pid;
  if (signal === 0) {
    const base = task.saved.regs;
    ptraceSetRegs(pid, {
      ...base, rax: BigInt(syscallNumber('exit_group')), rdi: BigInt((status >> 8) & 0xff), orig_rax: ORIG_RAX_NONE,
      rip: task.findGadgets().syscall, eflags: base.eflags & ~0x500n,
    });
    ptraceCont(pid, 0);
  } else {
    // Dies of its own signal, with the default action the stub left in place; no core file.
    const limit = Buffer.alloc(16);
    const [addr] = task.scratchPut(limit);
    remote(task, 'zombies', `prlimit64(RLIMIT_CORE, 0) in ${pid}`, 'prlimit64', 0, RLIMIT_CORE, addr!, 0);
    ptraceSetSigmask(pid, 0n);
    kill(pid, signal);
    ptraceCont(pid, 0);
  }
  const deadline = Date.now() + task.timeoutMs;
  for (let i = 0; ; i++) {
    const st = wait4(pid, __WALL | WNOHANG);
    if (st.kind === 'exited' || st.kind === 'signaled') return;
    if (st.kind === 'stopped') {
      // The signal on its way: let it be delivered (a signal-delivery-stop passes it on with PTRACE_CONT).
      ptraceCont(pid, st.event === 0 ? st.signal : 0);
      continue;
    }
    if (Date.now() > deadline) throw new RestoreError('zombies', `process ${pid} did not exit within ${task.timeoutMs} ms`, { pid, status });
    if (i > 1000) sleepMs(0.1);
  }
}

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
//     address, and remote calls run in the child at once;
//   - a session leader calls setsid() right after it exists, before any of its children is
//     cloned: they inherit its session (a session can only be entered by birth).
// Groups, once every process exists: group leaders call setpgid(0, 0), then the members
// setpgid(0, leader) (setpgid(2): the group must exist in the caller's session).
// Zombies then exit with their status (exit_group, or their own signal); we reap them as their
// tracer, which hands them over to their real parent as zombies (wait_task_zombie in the
// kernel: a traced child that is not the tracer's own is released to its parent, who gets
// SIGCHLD and can wait for it).
//
// Layouts this cannot rebuild are refused before anything is created: a process whose session
// is not its parent's (and that does not lead it), or whose group leader is not in the tree;
// CRIU restores those with helper tasks (a temporary leader that exits afterwards), which
// criu-ts does not have yet.
import {
  __WALL, kill, PTRACE_EVENT, PTRACE_O, ptraceCont, ptraceGetEventMsg, ptraceGetRegs, ptraceSetOptions, ptraceSetRegs,
  ptraceSetSigmask, ptraceSingleStep, SIGNALS, SysError, syscallNumber, wait4, WNOHANG, asPid, type Pid,
} from '@criu-ts/sys';
import { RestoreError } from './errors.js';
import type { TreeImageSet, TreeTaskImages } from './image-set.js';
import { remote } from './memory.js';
import { RestoreTask } from './remote-task.js';
import { sleepMs } from './stub.js';

const CLONE_ARGS_SIZE_VER2 = 88;
const ORIG_RAX_NONE = 0xffff_ffff_ffff_ffffn;
const RLIMIT_CORE = 4;

/**
 * Checks that every session and group of the tree can be rebuilt by birth, setsid and setpgid
 * (see the module doc). `shellJob`: the root's session and group may be outside the dump
 * (criu-ts's own), as may those of the processes that share them.
 */
export function validateTreeLayout(tree: TreeImageSet, shellJob: boolean): void {
  const byPid = new Map(tree.tasks.map((t) => [t.pid, t]));
  const root = tree.tasks[0]!;
  const invalid = (message: string, evidence: Record<string, unknown>): never => {
    throw new RestoreError('validate', message, evidence);
  };
  for (const t of tree.tasks) {
    const parent = t === root ? undefined : byPid.get(t.ppid);
    if (t.sid === t.pid) {
      if (t.pgid !== t.pid) invalid(`process ${t.pid} leads session ${t.sid} but is in group ${t.pgid}: not a state Linux allows`, { pid: t.pid, pgid: t.pgid });
    } else if (parent && parent.sid !== t.sid) {
      const leader = byPid.get(t.sid);
      invalid(
        `process ${t.pid} is in session ${t.sid} but its parent ${parent.pid} is in session ${parent.sid}` +
          (leader ? '' : ` and the session leader ${t.sid} is not in the dump (it has exited)`) +
          `: recreating that needs a helper task, which criu-ts does not support yet`,
        { pid: t.pid, sid: t.sid, ppid: parent.pid, parentSid: parent.sid },
      );
    } else if (!parent && !byPid.has(t.sid) && !shellJob) {
      invalid(`process ${t.pid} is in session ${t.sid}, which is outside the dump; restore it with shellJob (--shell-job)`, { pid: t.pid, sid: t.sid });
    }
    if (t.pgid !== t.pid) {
      const leader = byPid.get(t.pgid);
      if (!leader) {
        // Only the shell job's own group (the root's, outside the dump) can be joined by birth.
        if (!(shellJob && t.pgid === root.pgid && root.pgid !== root.pid)) {
          invalid(`the leader ${t.pgid} of the process group of ${t.pid} is not in the dump (it has exited): recreating the group needs a helper task, which criu-ts does not support yet`, { pid: t.pid, pgid: t.pgid });
        }
      } else if (leader.pgid !== leader.pid || leader.sid !== t.sid) {
        invalid(`process ${t.pid} is in group ${t.pgid}, whose leader is in group ${leader.pgid} of session ${leader.sid} (the member is in session ${t.sid})`, { pid: t.pid, pgid: t.pgid });
      }
    }
  }
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
export function cloneProcess(parent: RestoreTask, pid: number): RestoreTask {
  // Set explicitly: without TRACEFORK the child would run free from the control area.
  ptraceSetOptions(parent.pid, PTRACE_O.TRACEFORK | PTRACE_O.TRACECLONE | PTRACE_O.EXITKILL);
  const args = Buffer.alloc(CLONE_ARGS_SIZE_VER2 + 8);
  const [addr] = parent.scratchPut(args);
  // flags 0 (a new process with copies of everything); exit_signal (offset 32) SIGCHLD, as fork.
  args.writeBigUInt64LE(BigInt(SIGNALS.SIGCHLD), 32);
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
  if (first.event !== PTRACE_EVENT.FORK) {
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

/** setsid() in a session leader: called right after it exists, before its children are cloned. */
export function restoreSessionLeader(task: RestoreTask, images: TreeTaskImages): void {
  if (images.sid === images.pid) remote(task, 'session', `setsid in ${images.pid}`, 'setsid');
}

/**
 * Process groups, once every process exists: leaders first (setpgid(0, 0)), then members join
 * theirs. A group outside the dump (a shell job's) is the one the process was born in.
 */
export function restoreGroups(made: ReadonlyArray<{ images: TreeTaskImages; task: RestoreTask }>): void {
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

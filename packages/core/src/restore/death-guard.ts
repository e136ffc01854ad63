// No restored task outlives a criu-ts that dies mid-restore.
//
// Two mechanisms, because neither covers every task alone:
// - PTRACE_O_EXITKILL (set on the stub, inherited by every task that arrives through
//   TRACEFORK/TRACECLONE, and set again by tree.ts and threads.ts): the kernel SIGKILLs every
//   tracee of a tracer that exits (ptrace(2)). Every task we create is our tracee until its
//   release, so this alone covers the detached root, whose parent (the stub) is gone.
// - PR_SET_PDEATHSIG(SIGKILL) on every process whose parent is criu-ts or a restored process
//   (prctl(2): sent when the parent thread exits), so that a process dies with its parent
//   whatever kills the parent. A fresh clone has no pdeath signal (the kernel clears it in
//   copy_process), and a change of credentials clears it again, so it is armed once the process
//   exists and re-armed after its task state; the dumped value (thread_core's pdeath_sig, or 0)
//   is put back by the last remote calls before the release.
//
// The release itself: every process is made ready (pdeath signal, control area gone, registers)
// while all are still stopped and traced, then all are detached in one loop of PTRACE_DETACH
// calls, children first. Only a death of criu-ts inside that loop (microseconds) can leave the
// children released so far running without their parent.
//
// Not armed on the detached root: its parent is the stub, killed right after the clone, whose
// death would fire it at once.
import { RestoreError } from './errors.js';
import type { RestoreTask } from './remote-task.js';

const PR_SET_PDEATHSIG = 1;
const SIGKILL = 9;

/** prctl(PR_SET_PDEATHSIG, SIGKILL) in `task`. Precondition: stopped, remote calls possible. */
export function armDeathGuard(task: RestoreTask): void {
  setPdeathSignal(task, SIGKILL, 'arming the parent-death signal');
}

/** The dumped parent-death signal back (thread_core.pdeath_sig; absent means 0). */
export function restoreDumpedPdeathSignal(task: RestoreTask, core: Record<string, unknown>): void {
  const thc = (core.thread_core ?? {}) as Record<string, unknown>;
  setPdeathSignal(task, Number(thc.pdeath_sig ?? 0), 'putting the dumped parent-death signal back');
}

function setPdeathSignal(task: RestoreTask, signal: number, what: string): void {
  try {
    task.syscallSync('prctl', PR_SET_PDEATHSIG, signal, 0, 0, 0);
  } catch (err) {
    throw new RestoreError('task-misc', `${what} (${signal}) in ${task.pid}`, { pid: task.pid, signal }, err);
  }
}

// The process tree under -t PID, frozen: who is in it, in CRIU's pstree order.
//
// Freezing goes parents before children: a task is seized (compel: every thread PTRACE_SEIZE +
// PTRACE_INTERRUPT, the thread list re-read until stable) and only then are its children read
// from /proc/PID/task/TID/children of each of its threads. A frozen task cannot fork, so the
// list read after the freeze is final; a child that is still running when it is listed may
// fork again before it is seized itself, and those grandchildren are found the same way once
// it is frozen. A child that exits before we reach it is a zombie (its parent, frozen, cannot
// reap it): it is recorded as one. The whole walk is bounded by one deadline (--timeout).
//
// Order: depth first, a parent before its children, children in the order the kernel lists
// them thread by thread (the order CRIU's pstree.img has, since CRIU walks its tree so).
import { CompelError, injectSync, type Victim } from '@criu-ts/compel';
import { asPid, type Pid } from '@criu-ts/sys';
import { readChildren, readStat } from '../proc/task-files.js';

export interface TreeTask {
  readonly pid: Pid;
  /** 0 for the root (CRIU records the root's parent as 0: it is outside the dump). */
  readonly ppid: number;
  readonly pgid: number;
  readonly sid: number;
  readonly comm: string;
  /** Seized task (every thread stopped); absent for a zombie. */
  readonly victim?: Victim;
  /** A zombie: its exit status as waitpid(2) reports it (/proc/PID/stat field 52). */
  readonly zombie?: { readonly exitCode: number };
}

function zombieOf(pid: Pid, ppid: number, stat: string[]): TreeTask {
  return { pid, ppid, pgid: Number(stat[5]), sid: Number(stat[6]), comm: stat[2] ?? '', zombie: { exitCode: Number(stat[52] ?? 0) } };
}

/**
 * Seizes `root` and every descendant, appending each to `tasks` as soon as it is frozen (so that
 * a failure part way leaves `tasks` holding exactly what must be cured). Precondition: `root`
 * exists and is not a zombie.
 */
export function freezeTree(root: Pid, tasks: TreeTask[], timeoutMs: number): void {
  const deadline = Date.now() + timeoutMs;
  const visit = (pid: Pid, ppid: number): void => {
    const left = deadline - Date.now();
    if (left <= 0) throw new Error(`freezing the tree under ${root} took longer than ${timeoutMs} ms (at task ${pid}, ${tasks.length} frozen)`);
    let stat: string[];
    try {
      stat = readStat(pid);
    } catch {
      if (pid === root) throw new Error(`process ${pid} exited before it could be frozen`);
      return; // a child of a frozen parent cannot vanish unreaped; the root's parent may reap it
    }
    if (stat[3] === 'Z') {
      if (pid === root) throw new Error(`process ${pid} is a zombie`);
      tasks.push(zombieOf(pid, ppid, stat));
      return;
    }
    let victim: Victim;
    try {
      victim = injectSync(pid, { timeoutMs: left });
    } catch (error) {
      // Exited between the listing and the seize: its frozen parent keeps it as a zombie.
      if (pid !== root && error instanceof CompelError && (error.kind === 'zombie' || error.kind === 'exited')) {
        try {
          const again = readStat(pid);
          if (again[3] === 'Z') {
            tasks.push(zombieOf(pid, ppid, again));
            return;
          }
        } catch {
          return;
        }
      }
      const tracer = error instanceof CompelError && error.kind === 'permission' ? Number(error.evidence?.tracerPid ?? 0) : 0;
      if (tracer !== 0) {
        throw new Error(`process ${pid} is traced by process ${tracer}: another dump of it is in progress, or a debugger is attached (${error instanceof Error ? error.message : String(error)})`, { cause: error });
      }
      throw error;
    }
    // Frozen: its group, session and name cannot change any more.
    const frozen = readStat(pid);
    tasks.push({ pid, ppid, pgid: Number(frozen[5]), sid: Number(frozen[6]), comm: frozen[2] ?? '', victim });
    const tids = [...victim.threads.keys()].sort((a, b) => (a === pid ? -1 : b === pid ? 1 : a - b));
    for (const child of readChildren(pid, tids)) visit(child, pid);
  };
  visit(root, 0);
}

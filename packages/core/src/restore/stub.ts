// The restore stub (native/restore-stub.c) and the one call made in it: clone3 with set_tid.
//
// Node must not fork itself (DESIGN.md), so every restored process starts life as a clone of a
// tiny static program that stopped itself with SIGSTOP. We seize it with compel, set
// PTRACE_O_TRACEFORK so that the clone arrives already traced (stopped in PTRACE_EVENT_STOP
// before it runs a single instruction: ptrace(2), "automatically attached" children of a
// PTRACE_SEIZE tracer), and make it call clone3 with set_tid = the dumped PID. The kernel gives
// exactly that PID or fails (EEXIST when taken); this was checked on the target kernel.
//
// Who is the parent of the restored process:
// - not detached: CLONE_PARENT makes it a child of criu-ts itself (the stub's parent), so
//   criu-ts can wait4() for it and exit with its status, as criu does;
// - detached: a plain child of the stub; the stub is killed right after the clone, so the
//   restored process is re-parented to init (or the nearest subreaper) and outlives criu-ts.
// Either way the stub is gone once the clone exists; the new task is traced by us, not by it.
import type { ChildProcess } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  __WALL, asPid, sleepSync, asRemoteAddress, kill, ptraceGetEventMsg, ptraceGetRegs, ptraceSetOptions, ptraceSetRegs,
  ptraceSingleStep, PTRACE_EVENT, PTRACE_O, SIGNALS, SysError, syscallNumber, wait4, WNOHANG, type Pid, type RemoteAddress,
} from '@criu-ts/sys';
import { nativeDir, prepareSync, type Injection } from '@criu-ts/compel';
import { RestoreError } from './errors.js';

// child_process on first use, not at import: loading it (with the net and dgram modules it pulls
// in) costs the criu-ts command ~4 ms of start-up, and a plain dump never spawns anything.
const childProcess = () => process.getBuiltinModule('node:child_process');

function stubState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

export const sleepMs = sleepSync;

/** Path of the stub binary built by `npm run build` (native/restore-stub.mk). */
export function stubPath(): string {
  return join(nativeDir(), 'build', 'restore-stub');
}

function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

export interface StubOptions {
  /** Stay in criu-ts's session and process group and inherit its stdio (--shell-job). */
  shellJob?: boolean;
  timeoutMs?: number;
}

/** A started, stopped and seized restore stub. */
export class Stub {
  private killed = false;

  private constructor(
    readonly child: ChildProcess,
    readonly pid: Pid,
    readonly injection: Injection,
  ) {}

  /**
   * Starts the stub and seizes it. Without shellJob the stub gets its own session (setsid) and
   * /dev/null as stdio; with it, criu-ts's session, process group and stdio (the terminal).
   */
  static startSync(options: StubOptions = {}): Stub {
    const path = stubPath();
    if (!existsSync(path)) throw new RestoreError('spawn-stub', `${path} is not built (run npm run build; it needs a C compiler)`, { path });
    const timeoutMs = options.timeoutMs ?? 10_000;
    const child = childProcess().spawn(path, [String(process.pid)], {
      detached: !options.shellJob,
      stdio: options.shellJob ? 'inherit' : 'ignore',
    });
    // The restore runs synchronously; the stub must never keep Node's event loop alive.
    child.unref();
    child.on('error', () => { /* reported below through the missing pid or state */ });
    if (child.pid === undefined) throw new RestoreError('spawn-stub', `cannot start ${path}`, { path });
    const pid = asPid(child.pid);
    try {
      const deadline = Date.now() + timeoutMs;
      for (let i = 0; procState(pid) !== 'T'; i++) {
        const st = procState(pid);
        if (st === undefined || st === 'Z' || st === 'X') throw new RestoreError('spawn-stub', `the stub (pid ${pid}) exited before stopping itself`, { pid, state: st });
        if (Date.now() > deadline) throw new RestoreError('spawn-stub', `the stub (pid ${pid}) did not stop itself within ${timeoutMs} ms`, { pid, state: st });
        sleepMs(i < 50 ? 0.2 : 2);
      }
      const injection = prepareSync(pid, { timeoutMs });
      // EXITKILL: if criu-ts dies mid-restore, the kernel kills the stub and the half-made task.
      ptraceSetOptions(pid, PTRACE_O.TRACEFORK | PTRACE_O.TRACECLONE | PTRACE_O.EXITKILL);
      return new Stub(child, pid, injection);
    } catch (err) {
      try { kill(pid, SIGNALS.SIGKILL); } catch { /* gone */ }
      if (err instanceof RestoreError) throw err;
      throw new RestoreError('spawn-stub', `cannot seize the stub (pid ${pid})`, { pid }, err);
    }
  }

  /**
   * Precondition: the stub is seized and stopped. Runs clone3 in it with set_tid = [pid] and
   * returns once the new task is in its first ptrace-stop (traced by us, not yet run).
   * Returns the new task and the syscall gadget address it stopped after (its RIP - 2).
   */
  cloneWithPidSync(pid: number, options: { parentIsCaller: boolean; timeoutMs?: number }): { pid: Pid; gadget: RemoteAddress } {
    const inj = this.injection;
    const timeoutMs = options.timeoutMs ?? 10_000;
    const gadget = inj.findGadgets().syscall;
    // struct clone_args (CLONE_ARGS_SIZE_VER2 = 88 bytes): flags, pidfd, child_tid, parent_tid,
    // exit_signal, stack, stack_size, tls, set_tid, set_tid_size, cgroup. set_tid holds one pid_t
    // per PID namespace level, innermost first; we restore into our own namespace: one entry.
    const CLONE_PARENT = 0x8000n;
    const args = Buffer.alloc(88 + 8);
    args.writeBigUInt64LE(options.parentIsCaller ? CLONE_PARENT : 0n, 0);
    // clone3 refuses an exit_signal with CLONE_PARENT (EINVAL): the child then inherits the
    // stub's own exit signal (SIGCHLD, as Node forked it), reported to the stub's parent: us.
    args.writeBigUInt64LE(options.parentIsCaller ? 0n : BigInt(SIGNALS.SIGCHLD), 32);
    args.writeBigUInt64LE(0n, 64); // set_tid, filled below
    args.writeBigUInt64LE(1n, 72); // set_tid_size
    args.writeInt32LE(pid, 88);
    const area = inj.mapSync(4096);
    args.writeBigUInt64LE(area + 88n, 64);
    inj.writeMemorySync(area, args);

    const base = inj.saved.regs;
    ptraceSetRegs(this.pid, {
      ...base, rax: BigInt(syscallNumber('clone3')), rdi: area, rsi: 88n, rdx: 0n, r10: 0n, r8: 0n, r9: 0n,
      orig_rax: 0xffff_ffff_ffff_ffffn, rip: gadget, eflags: base.eflags & ~0x500n,
    });
    ptraceSingleStep(this.pid);
    const deadline = Date.now() + timeoutMs;
    const waitStop = (who: Pid, what: string) => {
      for (let i = 0; ; i++) {
        const st = wait4(who, __WALL | 1 /* WNOHANG */);
        if (st.kind === 'stopped') return st;
        if (st.kind === 'exited' || st.kind === 'signaled') throw new RestoreError('clone', `${what}: pid ${who} died`, { status: st });
        if (Date.now() > deadline) throw new RestoreError('clone', `${what}: pid ${who} did not stop within ${timeoutMs} ms`);
        if (i > 1000) sleepMs(0.1);
      }
    };
    const first = waitStop(this.pid, 'clone3');
    if (first.event !== PTRACE_EVENT.FORK && first.event !== PTRACE_EVENT.CLONE) {
      // No clone happened: the syscall returned (SIGTRAP of the single step) with -errno.
      const rax = BigInt.asIntN(64, ptraceGetRegs(this.pid).rax);
      if (first.signal === SIGNALS.SIGTRAP && rax < 0n) {
        const errno = Number(-rax);
        const e = new SysError('clone3', errno, `set_tid ${pid}, remote in the stub`);
        const why = e.code === 'EEXIST' ? `PID ${pid} is already in use` : e.code === 'EPERM' ? 'not allowed to choose PIDs (needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE in the PID namespace)' : `clone3 failed (${e.code})`;
        throw new RestoreError('clone', why, { pid, errno: e.code }, e);
      }
      throw new RestoreError('clone', `clone3: unexpected stop of the stub (signal ${first.signal}, event ${first.event})`, { status: first });
    }
    const newPid = asPid(Number(ptraceGetEventMsg(this.pid)));
    // The new task reports its own first stop (PTRACE_EVENT_STOP) independently of the parent.
    waitStop(newPid, 'first stop of the new task');
    // Let the stub finish its clone3 (the next stop is the single-step trap after it).
    ptraceSingleStep(this.pid);
    waitStop(this.pid, 'end of clone3');
    if (newPid !== pid) {
      try { kill(newPid, SIGNALS.SIGKILL); } catch { /* gone */ }
      throw new RestoreError('clone', `clone3 with set_tid ${pid} gave pid ${newPid}`, { asked: pid, got: newPid });
    }
    return { pid: newPid, gadget: asRemoteAddress(gadget) };
  }

  /** Puts the stub back as it was (closes our handles on it), then kills it; Node reaps it. */
  killSync(): void {
    if (this.killed) return;
    this.killed = true;
    try { this.injection.cureSync(); } catch { /* being killed anyway */ }
    try { kill(this.pid, SIGNALS.SIGKILL); } catch { return; /* gone */ }
    // SIGKILL is delivered asynchronously: wait (bounded) until the stub is really dead, and
    // reap it when it is ours, so that whoever looks right after sees no stub.
    const deadline = Date.now() + 2000;
    while (Date.now() < deadline) {
      try {
        const st = wait4(this.pid, __WALL | WNOHANG);
        if (st.kind === 'exited' || st.kind === 'signaled') return;
      } catch {
        // Not ours to reap (ECHILD): dead once /proc shows it a zombie or not at all.
        const state = stubState(this.pid);
        if (state === undefined || state === 'Z' || state === 'X') return;
      }
      sleepMs(1);
    }
  }
}

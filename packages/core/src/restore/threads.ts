// The other threads of a restored process, each with its exact TID.
//
// Threads are cloned by the restored leader itself, after everything task-wide is in place
// (memory, files, fs, sigactions, shared pending signals): a remote clone3 run in the leader with
// CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM shares all of
// it, and set_tid = [TID] gives the dumped TID or fails (EEXIST when taken). exit_signal must be
// 0 with CLONE_THREAD (clone3 refuses anything else, EINVAL).
//
// The new thread never runs a user instruction before its dumped registers are set: the leader
// is traced with PTRACE_O_TRACECLONE, so the clone is reported to us as PTRACE_EVENT_CLONE and the
// new thread starts traced, stopped in PTRACE_EVENT_STOP (ptrace(2), "automatically attached").
// It inherits the leader's blocked mask, which during the restore is every signal (compel blocks
// them all for remote calls), so nothing is delivered to it early either. Its stack pointer is
// the leader's (clone3 with stack 0): harmless, it only ever runs our remote syscalls on it.
//
// Then, with remote syscalls run in the new thread itself (compel's syscallInThreadSync), what
// only a thread can set for itself: set_tid_address (clear_child_tid, which pthread_join waits
// on), set_robust_list, rseq (never inherited with CLONE_VM: the kernel clears it in the child),
// sigaltstack, its name (PR_SET_NAME), its parent-death signal, and its private pending signals
// with rt_tgsigqueueinfo(tgid, tid): the kernel refuses the si_codes of kill()/tgkill() and
// of the kernel itself (si_code >= 0 or SI_TKILL) unless the caller is the target thread, so each
// thread queues its own. Registers, XSAVE state and mask are set last, just before release.
import { __WALL, PTRACE_EVENT, PTRACE_O, ptraceGetEventMsg, ptraceGetRegs, ptraceSetOptions, ptraceSetRegs, ptraceSingleStep, SysError, syscallNumber, wait4, WNOHANG, asPid, type Pid } from '@criu-ts/sys';
import { RestoreError } from './errors.js';
import type { ImageSet, ThreadImage } from './image-set.js';
import type { RestoreTask } from './remote-task.js';
import { sleepMs } from './stub.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const CLONE_VM = 0x100n;
const CLONE_FS = 0x200n;
const CLONE_FILES = 0x400n;
const CLONE_SIGHAND = 0x800n;
const CLONE_THREAD = 0x10000n;
const CLONE_SYSVSEM = 0x40000n;
const THREAD_FLAGS = CLONE_VM | CLONE_FS | CLONE_FILES | CLONE_SIGHAND | CLONE_THREAD | CLONE_SYSVSEM;
const CLONE_ARGS_SIZE_VER2 = 88;
const ORIG_RAX_NONE = 0xffff_ffff_ffff_ffffn;
const PR_SET_NAME = 15;
const PR_SET_PDEATHSIG = 1;
const SS_DISABLE = 2;

/** Waits for the next stop of `tid` (bounded); death or a timeout is a RestoreError of 'threads'. */
function waitStop(tid: Pid, what: string, timeoutMs: number) {
  const deadline = Date.now() + timeoutMs;
  for (let i = 0; ; i++) {
    const st = wait4(tid, __WALL | WNOHANG);
    if (st.kind === 'stopped') return st;
    if (st.kind === 'exited' || st.kind === 'signaled') throw new RestoreError('threads', `${what}: task ${tid} died`, { status: st });
    if (Date.now() > deadline) throw new RestoreError('threads', `${what}: task ${tid} did not stop within ${timeoutMs} ms`);
    if (i > 1000) sleepMs(0.1);
  }
}

/**
 * Precondition: the leader is stopped, its control area set up. Runs clone3(set_tid = [tid]) in
 * it and returns once the new thread is in its first ptrace-stop, adopted by `task` for remote calls.
 */
export function cloneThread(task: RestoreTask, tid: number): Pid {
  const args = Buffer.alloc(CLONE_ARGS_SIZE_VER2 + 8);
  const [addr] = task.scratchPut(args);
  args.writeBigUInt64LE(THREAD_FLAGS, 0);
  // exit_signal (offset 32), stack, stack_size and tls stay 0; set_tid -> the pid_t after the struct.
  args.writeBigUInt64LE(addr! + BigInt(CLONE_ARGS_SIZE_VER2), 64);
  args.writeBigUInt64LE(1n, 72);
  args.writeInt32LE(tid, CLONE_ARGS_SIZE_VER2);
  task.write(addr!, args);

  const leader = task.pid;
  const gadget = task.findGadgets().syscall;
  const base = task.saved.regs;
  ptraceSetRegs(leader, {
    ...base, rax: BigInt(syscallNumber('clone3')), rdi: addr!, rsi: BigInt(CLONE_ARGS_SIZE_VER2), rdx: 0n, r10: 0n, r8: 0n, r9: 0n,
    orig_rax: ORIG_RAX_NONE, rip: gadget, eflags: base.eflags & ~0x500n,
  });
  ptraceSingleStep(leader);
  const first = waitStop(leader, `clone3 of thread ${tid}`, task.timeoutMs);
  if (first.event !== PTRACE_EVENT.CLONE) {
    const rax = BigInt.asIntN(64, ptraceGetRegs(leader).rax);
    if (rax < 0n && first.event === 0) {
      const e = new SysError('clone3', Number(-rax), `set_tid ${tid}, CLONE_THREAD, remote in ${leader}`);
      const why = e.code === 'EEXIST' ? `TID ${tid} is already in use` : `clone3 of thread ${tid} failed (${e.code})`;
      throw new RestoreError('threads', why, { tid, errno: e.code }, e);
    }
    throw new RestoreError('threads', `clone3 of thread ${tid}: unexpected stop of the leader (signal ${first.signal}, event ${first.event})`, { status: first });
  }
  const got = asPid(Number(ptraceGetEventMsg(leader)));
  // The new thread reports its own first stop, independently of the leader.
  waitStop(got, `first stop of thread ${tid}`, task.timeoutMs);
  task.adoptThread(got);
  // Let the leader finish its clone3 (the next stop is the single-step trap after it).
  ptraceSingleStep(leader);
  waitStop(leader, `end of clone3 of thread ${tid}`, task.timeoutMs);
  if (got !== tid) throw new RestoreError('threads', `clone3 with set_tid ${tid} gave thread ${got}`, { asked: tid, got });
  return got;
}

/** Runs a syscall in thread `tid`; a -errno result becomes a RestoreError('threads') naming it. */
function inThread(task: RestoreTask, tid: Pid, what: string, name: Parameters<RestoreTask['syscallSync']>[0], ...args: Array<number | bigint>): bigint {
  try {
    return task.syscallInThreadSync(tid, name, ...args);
  } catch (err) {
    throw new RestoreError('threads', `${what} in thread ${tid}`, { tid }, err);
  }
}

/** What a thread sets for itself, its private pending signals included. */
export function restoreThreadState(task: RestoreTask, tid: Pid, core: Msg, warnings: string[]): void {
  const ti = core.thread_info as Msg;
  const thc = (core.thread_core ?? {}) as Msg;
  if (ti.clear_tid_addr !== undefined) inThread(task, tid, 'set_tid_address', 'set_tid_address', BigInt(ti.clear_tid_addr));
  if (thc.futex_rla !== undefined && BigInt(thc.futex_rla) !== 0n) {
    inThread(task, tid, 'set_robust_list', 'set_robust_list', BigInt(thc.futex_rla), Number(thc.futex_rla_len));
  }
  const rseq = thc.rseq_entry as Msg | undefined;
  if (rseq && BigInt(rseq.rseq_abi_pointer) !== 0n) {
    const rc = task.syscallInThreadRawSync(tid, 'rseq', BigInt(rseq.rseq_abi_pointer), Number(rseq.rseq_abi_size), 0, Number(rseq.signature));
    if (rc < 0n) warnings.push(`thread ${tid}: rseq registration failed (errno ${-rc}); the thread runs without rseq`);
  }
  const sas = thc.sas as Msg | undefined;
  if (sas && (Number(sas.ss_flags) & SS_DISABLE) === 0 && BigInt(sas.ss_size) !== 0n) {
    // stack_t: ss_sp, int ss_flags (+4 padding), ss_size. SS_ONSTACK is a state, not a setting.
    const st = Buffer.alloc(24);
    st.writeBigUInt64LE(BigInt(sas.ss_sp), 0);
    st.writeInt32LE(Number(sas.ss_flags) & ~1, 8);
    st.writeBigUInt64LE(BigInt(sas.ss_size), 16);
    const [addr] = task.scratchPut(st);
    inThread(task, tid, 'sigaltstack', 'sigaltstack', addr!, 0);
  }
  const comm = String(thc.comm ?? '');
  if (comm) {
    const [addr] = task.scratchPut(Buffer.from(`${comm.slice(0, 15)}\0`));
    inThread(task, tid, 'prctl(PR_SET_NAME)', 'prctl', PR_SET_NAME, addr!, 0, 0, 0);
  }
  if (thc.pdeath_sig) inThread(task, tid, 'prctl(PR_SET_PDEATHSIG)', 'prctl', PR_SET_PDEATHSIG, Number(thc.pdeath_sig), 0, 0, 0);
  for (const s of ((thc.signals_p?.signals ?? []) as Msg[])) {
    const info = Buffer.from(s.siginfo as Uint8Array);
    if (info.length < 128) throw new RestoreError('threads', `a pending siginfo of thread ${tid} has ${info.length} bytes, expected 128`);
    const signo = info.readInt32LE(0);
    const [addr] = task.scratchPut(info);
    inThread(task, tid, `rt_tgsigqueueinfo(${signo})`, 'rt_tgsigqueueinfo', task.pid, tid, signo, addr!);
  }
}

/**
 * Every thread of `set` but the leader: cloned with its TID and given its own state. Returns
 * them in pstree order; their registers are set by {@link setThreadRegisters} at release.
 */
export function restoreThreads(task: RestoreTask, set: ImageSet, warnings: string[]): Array<{ tid: Pid; image: ThreadImage }> {
  if (set.threads.length === 0) return [];
  // Set explicitly rather than relying on the options the leader inherited from the stub's
  // tracing: without TRACECLONE the new thread would run free from the control area.
  ptraceSetOptions(task.pid, PTRACE_O.TRACECLONE | PTRACE_O.TRACEFORK | PTRACE_O.EXITKILL);
  const made: Array<{ tid: Pid; image: ThreadImage }> = [];
  for (const image of set.threads) {
    const tid = cloneThread(task, image.tid);
    made.push({ tid, image });
    restoreThreadState(task, tid, image.core, warnings);
  }
  return made;
}

// Per-task state from core-PID.img: signals, timers, limits, small prctl-level things, and
// finally the registers the task resumes with.
//
// All of it is set by the task itself through remote syscalls, except the registers, the XSAVE
// area and the blocked mask, which ptrace sets on the stopped task just before it is let go
// (the mask last: our remote calls run with every signal blocked, so nothing is delivered in
// the middle of the restore, and pending signals queued here wait for the dumped mask).
import { ptraceGetRegset, ptraceSetRegs, ptraceSetRegset, ptraceSetSigmask, NT, type Pid, type UserRegs } from '@criu-ts/sys';
import { RestoreError } from './errors.js';
import type { ImageSet } from './image-set.js';
import { remote } from './memory.js';
import type { RestoreTask } from './remote-task.js';
import { xsaveFromFpregs, xsaveOffsetsFromCpuid } from '../arch/x86-fpu.js';
import { cpuXstateLayout } from '@criu-ts/compel';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const SIGKILL = 9;
const SIGSTOP = 19;

/** Sigactions (sa_entry i is signal i+1) and pending signals (queued by the task to itself). */
export function restoreSignals(task: RestoreTask, set: ImageSet): void {
  const tc = set.core.tc as Msg;
  const actions = (tc.sigactions ?? []) as Msg[];
  // CRIU writes one sa_entry per signal that has a disposition to keep: 1..64 without SIGKILL
  // and SIGSTOP (62 entries). A 64-entry list (one per signal) is read one to one.
  const signals = Array.from({ length: 64 }, (_, i) => i + 1).filter((s) => actions.length >= 64 || (s !== SIGKILL && s !== SIGSTOP));
  for (const [i, sa] of actions.entries()) {
    const sig = signals[i];
    if (sig === undefined || sig === SIGKILL || sig === SIGSTOP) continue;
    const handler = BigInt(sa.sigaction);
    const flags = BigInt(sa.flags);
    const restorer = BigInt(sa.restorer);
    const mask = BigInt(sa.mask);
    if (handler === 0n && flags === 0n && restorer === 0n && mask === 0n) continue; // SIG_DFL, as in the stub
    // struct kernel_sigaction (x86_64): handler, flags, restorer, mask (sigset_t of 8 bytes).
    const act = Buffer.alloc(32);
    act.writeBigUInt64LE(handler, 0);
    act.writeBigUInt64LE(flags, 8);
    act.writeBigUInt64LE(restorer, 16);
    act.writeBigUInt64LE(mask, 24);
    const [addr] = task.scratchPut(act);
    remote(task, 'signals', `rt_sigaction(${sig})`, 'rt_sigaction', sig, addr!, 0, 8);
  }
  // Pending signals: rt_sigqueueinfo to itself is allowed with any si_code (the kernel only
  // refuses forged codes for other processes), and keeps the dumped siginfo intact.
  const queue = (list: Msg | undefined, shared: boolean) => {
    for (const s of ((list?.signals ?? []) as Msg[])) {
      const info = Buffer.from(s.siginfo as Uint8Array);
      if (info.length < 128) throw new RestoreError('signals', `a pending siginfo has ${info.length} bytes, expected 128`);
      const signo = info.readInt32LE(0);
      const [addr] = task.scratchPut(info);
      if (shared) remote(task, 'signals', `rt_sigqueueinfo(${signo})`, 'rt_sigqueueinfo', task.pid, signo, addr!);
      else remote(task, 'signals', `rt_tgsigqueueinfo(${signo})`, 'rt_tgsigqueueinfo', task.pid, task.pid, signo, addr!);
    }
  };
  queue(tc.signals_s, true);
  queue(set.core.thread_core?.signals_p, false);

  const sas = set.core.thread_core?.sas as Msg | undefined;
  const SS_DISABLE = 2;
  if (sas && (Number(sas.ss_flags) & SS_DISABLE) === 0 && BigInt(sas.ss_size) !== 0n) {
    // stack_t: ss_sp, int ss_flags (+4 padding), ss_size. SS_ONSTACK is a state, not a setting.
    const st = Buffer.alloc(24);
    st.writeBigUInt64LE(BigInt(sas.ss_sp), 0);
    st.writeInt32LE(Number(sas.ss_flags) & ~1, 8);
    st.writeBigUInt64LE(BigInt(sas.ss_size), 16);
    const [addr] = task.scratchPut(st);
    remote(task, 'signals', 'sigaltstack', 'sigaltstack', addr!, 0);
  }
}

/** ITIMER_REAL, ITIMER_VIRTUAL, ITIMER_PROF from task_timers_entry (interval and value). */
export function restoreTimers(task: RestoreTask, set: ImageSet): void {
  const timers = (set.core.tc as Msg).timers as Msg | undefined;
  if (!timers) return;
  for (const [which, t] of [[0, timers.real], [1, timers.virt], [2, timers.prof]] as Array<[number, Msg]>) {
    const v = [t.isec, t.iusec, t.vsec, t.vusec].map((x) => BigInt(x));
    if (v.every((x) => x === 0n)) continue;
    // struct itimerval: it_interval {sec, usec}, it_value {sec, usec}.
    const buf = Buffer.alloc(32);
    v.forEach((x, i) => buf.writeBigInt64LE(x, i * 8));
    // A timer that was about to fire has value 0 in the dump but must still fire: 1 us.
    if (v[2] === 0n && v[3] === 0n) buf.writeBigInt64LE(1n, 24);
    const [addr] = task.scratchPut(buf);
    remote(task, 'timers', `setitimer(${which})`, 'setitimer', which, addr!, 0);
  }
}

/**
 * Limits, by prlimit64 in the task. Raising a hard limit above the current one needs
 * CAP_SYS_RESOURCE, which criu-ts does not have on these machines (DESIGN.md): such a limit
 * keeps the current hard limit (soft clamped to it) and is reported as a warning.
 */
export function restoreRlimits(task: RestoreTask, set: ImageSet, warnings: string[]): void {
  const list = (((set.core.tc as Msg).rlimits?.rlimits ?? []) as Msg[]);
  const RLIM_NLIMITS = 16;
  for (const [res, r] of list.entries()) {
    if (res >= RLIM_NLIMITS) break;
    const cur = BigInt(r.cur);
    const max = BigInt(r.max);
    const buf = Buffer.alloc(32);
    buf.writeBigUInt64LE(cur, 0);
    buf.writeBigUInt64LE(max, 8);
    const [addr, oldAddr] = task.scratchPut(buf.subarray(0, 16), Buffer.alloc(16));
    const rc = task.syscallRawSync('prlimit64', 0, res, addr!, oldAddr!);
    if (rc === 0n) continue;
    if (rc !== -1n /* EPERM */) throw new RestoreError('rlimits', `prlimit64(${res}) failed with errno ${-rc}`, { resource: res });
    const old = task.read(oldAddr!, 16);
    const got = task.syscallRawSync('prlimit64', 0, res, 0, oldAddr!);
    const oldBuf = got === 0n ? task.read(oldAddr!, 16) : old;
    const hard = oldBuf.readBigUInt64LE(8);
    const clamped = Buffer.alloc(16);
    clamped.writeBigUInt64LE(cur < hard ? cur : hard, 0);
    clamped.writeBigUInt64LE(hard, 8);
    const [cAddr] = task.scratchPut(clamped);
    remote(task, 'rlimits', `prlimit64(${res}) clamped`, 'prlimit64', 0, res, cAddr!, 0);
    warnings.push(`rlimit ${res}: hard limit ${max} is above the current ${hard} and cannot be raised without CAP_SYS_RESOURCE; kept ${hard}`);
  }
}

/** comm, personality, clear_child_tid, robust futex list, rseq, pdeath signal, subreaper, dumpable, THP. */
export function restoreTaskMisc(task: RestoreTask, set: ImageSet, warnings: string[]): void {
  const tc = set.core.tc as Msg;
  const thc = (set.core.thread_core ?? {}) as Msg;
  const ti = set.core.thread_info as Msg;
  const comm = String(thc.comm ?? tc.comm ?? '');
  if (comm) {
    const [addr] = task.scratchPut(Buffer.from(`${comm.slice(0, 15)}\0`));
    remote(task, 'task-misc', 'prctl(PR_SET_NAME)', 'prctl', 15 /* PR_SET_NAME */, addr!, 0, 0, 0);
  }
  remote(task, 'task-misc', 'personality', 'personality', Number(tc.personality ?? 0));
  if (ti.clear_tid_addr !== undefined) remote(task, 'task-misc', 'set_tid_address', 'set_tid_address', BigInt(ti.clear_tid_addr));
  if (thc.futex_rla !== undefined && BigInt(thc.futex_rla) !== 0n) {
    remote(task, 'task-misc', 'set_robust_list', 'set_robust_list', BigInt(thc.futex_rla), Number(thc.futex_rla_len));
  }
  const rseq = thc.rseq_entry as Msg | undefined;
  if (rseq && BigInt(rseq.rseq_abi_pointer) !== 0n) {
    const rc = task.syscallRawSync('rseq', BigInt(rseq.rseq_abi_pointer), Number(rseq.rseq_abi_size), 0, Number(rseq.signature));
    if (rc < 0n) warnings.push(`rseq registration failed (errno ${-rc}); the task runs without rseq`);
  }
  if (thc.pdeath_sig) remote(task, 'task-misc', 'prctl(PR_SET_PDEATHSIG)', 'prctl', 1, Number(thc.pdeath_sig), 0, 0, 0);
  if (tc.child_subreaper) remote(task, 'task-misc', 'prctl(PR_SET_CHILD_SUBREAPER)', 'prctl', 36, 1, 0, 0, 0);
  if (set.mm.thp_disabled) remote(task, 'task-misc', 'prctl(PR_SET_THP_DISABLE)', 'prctl', 41, 1, 0, 0, 0);
  if (set.mm.dumpable !== undefined && Number(set.mm.dumpable) !== 1) {
    remote(task, 'task-misc', 'prctl(PR_SET_DUMPABLE)', 'prctl', 4, Number(set.mm.dumpable), 0, 0, 0);
  }
}

const ERESTARTSYS = -512n;
const ERESTARTNOINTR = -513n;
const ERESTARTNOHAND = -514n;
const ERESTART_RESTARTBLOCK = -516n;
const EINTR = -4n;

/**
 * The dumped user_x86_regs_entry as ptrace's user_regs_struct. A task dumped inside an
 * interrupted syscall has orig_ax >= 0 and a restart code in ax: the kernel would restart the
 * call on the way back to user mode, so do what it would have done (rewind RIP over the
 * 2-byte syscall instruction, number back in RAX). ERESTART_RESTARTBLOCK needs the kernel's
 * restart_block of the dead task, which is gone: the call returns EINTR instead (what a
 * signal handler would make it return). orig_rax = -1 then, so nothing is done twice.
 */
export function dumpedRegs(gp: Msg): UserRegs {
  const g = (k: string) => BigInt.asUintN(64, BigInt(gp[k]));
  const regs: UserRegs = {
    r15: g('r15'), r14: g('r14'), r13: g('r13'), r12: g('r12'), rbp: g('bp'), rbx: g('bx'), r11: g('r11'), r10: g('r10'),
    r9: g('r9'), r8: g('r8'), rax: g('ax'), rcx: g('cx'), rdx: g('dx'), rsi: g('si'), rdi: g('di'), orig_rax: g('orig_ax'),
    rip: g('ip'), cs: g('cs'), eflags: g('flags'), rsp: g('sp'), ss: g('ss'), fs_base: g('fs_base'), gs_base: g('gs_base'),
    ds: g('ds'), es: g('es'), fs: g('fs'), gs: g('gs'),
  };
  const nr = BigInt.asIntN(64, regs.orig_rax);
  const ax = BigInt.asIntN(64, regs.rax);
  if (nr >= 0n) {
    if (ax === ERESTARTSYS || ax === ERESTARTNOINTR || ax === ERESTARTNOHAND) {
      regs.rax = regs.orig_rax;
      regs.rip -= 2n;
    } else if (ax === ERESTART_RESTARTBLOCK) {
      regs.rax = BigInt.asUintN(64, EINTR);
    }
  }
  regs.orig_rax = 0xffff_ffff_ffff_ffffn;
  return regs;
}

/**
 * Precondition: the task is stopped and done with remote calls. Sets the dumped registers,
 * XSAVE state and blocked mask; the next resume runs the dumped code.
 */
export function restoreRegisters(task: RestoreTask, set: ImageSet): void {
  setThreadRegisters(task.pid, set.core, (set.core.tc as Msg).blk_sigset);
}

/**
 * Registers, XSAVE state and blocked mask of thread `tid` from its core_entry (the mask from
 * thread_core, else `fallbackMask`: CRIU keeps the leader's in tc). Precondition: `tid` is in a
 * ptrace-stop and done with remote calls.
 */
export function setThreadRegisters(tid: Pid, core: Msg, fallbackMask?: unknown): void {
  const ti = core.thread_info as Msg;
  try {
    const current = ptraceGetRegset(tid, NT.X86_XSTATE);
    // The same conversion dump uses (arch/x86-fpu.ts), laid over the thread's own area.
    ptraceSetRegset(tid, NT.X86_XSTATE, xsaveFromFpregs(ti.fpregs as Msg, current, xsaveOffsetsFromCpuid(cpuXstateLayout().components)));
  } catch (err) {
    throw new RestoreError('registers', `PTRACE_SETREGSET(NT_X86_XSTATE) of thread ${tid}`, { tid }, err);
  }
  try {
    ptraceSetRegs(tid, dumpedRegs(ti.gpregs as Msg));
  } catch (err) {
    throw new RestoreError('registers', `PTRACE_SETREGS of thread ${tid}`, { tid }, err);
  }
  const thc = core.thread_core as Msg | undefined;
  const mask = BigInt((thc?.blk_sigset ?? fallbackMask ?? 0n) as bigint);
  try {
    ptraceSetSigmask(tid, mask);
  } catch (err) {
    throw new RestoreError('registers', `PTRACE_SETSIGMASK of thread ${tid}`, { tid }, err);
  }
}

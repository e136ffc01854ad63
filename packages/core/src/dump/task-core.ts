// core-TID.img for every thread: registers and FPU state, TLS, and the per-thread state
// (credentials, sigaltstack, blocked mask, robust futex list, rseq, scheduling, pending signals,
// clear_child_tid); the leader's core-PID.img also holds the task-wide state (signal handlers,
// itimers, rlimits, personality, shared pending signals...).
//
// Sources: registers and the signal mask as ptrace read them right after the freeze (so they are
// the thread's own, not what our remote calls left); what only the task can tell (sigactions,
// itimers, dumpable...) from the parasite; what only each thread can tell (sigaltstack,
// clear_child_tid, pdeath signal, securebits) from the parasite's code run in that thread; the rest
// from /proc and from ptrace requests that read another thread's state.
import type { DecodedMessage } from '@criu-ts/images';
import { readPosixTimers, undoInterruptEintr, type Parasite, type Sigaction, type TaskMisc, type Itimer } from '@criu-ts/compel';
import {
  ptracePeekSiginfo, ptraceRaw, syscall, SIGINFO_SIZE, type Pid, type UserRegs,
} from '@criu-ts/sys';
import { fpregsFromXsave, type XsaveOffsets } from '../arch/x86-fpu.js';
import { capabilityWords, readLimits, readStat, readStatus, readText } from '../proc/task-files.js';
import { collectSeccomp, type ThreadSeccomp } from './seccomp.js';

const PTRACE_GET_THREAD_AREA = 25;
const PTRACE_GET_RSEQ_CONFIGURATION = 0x420f;
/** The three GDT TLS slots x86_64 gives a thread (GDT_ENTRY_TLS_MIN..MAX). */
const TLS_ENTRIES = [12, 13, 14];
const SIGKILL = 9;
const SIGSTOP = 19;

export const TASK_ALIVE = 1;
export const TASK_STOPPED = 3;

export function gpregsEntry(regs: UserRegs): DecodedMessage {
  return {
    r15: regs.r15, r14: regs.r14, r13: regs.r13, r12: regs.r12, bp: regs.rbp, bx: regs.rbx, r11: regs.r11,
    r10: regs.r10, r9: regs.r9, r8: regs.r8, ax: regs.rax, cx: regs.rcx, dx: regs.rdx, si: regs.rsi, di: regs.rdi,
    orig_ax: regs.orig_rax, ip: regs.rip, cs: regs.cs, flags: regs.eflags, sp: regs.rsp, ss: regs.ss,
    fs_base: regs.fs_base, gs_base: regs.gs_base, ds: regs.ds, es: regs.es, fs: regs.fs, gs: regs.gs,
    mode: 1 /* NATIVE */,
  };
}

/** The GDT TLS entries of a thread (struct user_desc through PTRACE_GET_THREAD_AREA). */
function tlsEntries(tid: Pid): DecodedMessage[] {
  return TLS_ENTRIES.map((index) => {
    const desc = Buffer.alloc(16);
    ptraceRaw(PTRACE_GET_THREAD_AREA, tid, index, desc);
    const bits = desc.readUInt32LE(12);
    return {
      entry_number: desc.readUInt32LE(0),
      base_addr: desc.readUInt32LE(4),
      limit: desc.readUInt32LE(8),
      seg_32bit: (bits & 1) !== 0,
      contents_h: (bits & 4) !== 0,
      contents_l: (bits & 2) !== 0,
      read_exec_only: (bits & 8) !== 0,
      limit_in_pages: (bits & 16) !== 0,
      seg_not_present: (bits & 32) !== 0,
      usable: (bits & 64) !== 0,
    };
  });
}

function rseqEntry(tid: Pid): DecodedMessage | undefined {
  const conf = Buffer.alloc(24);
  try {
    ptraceRaw(PTRACE_GET_RSEQ_CONFIGURATION, tid, conf.length, conf);
  } catch {
    return undefined; // kernel without rseq
  }
  const pointer = conf.readBigUInt64LE(0);
  if (pointer === 0n) return undefined;
  return { rseq_abi_pointer: pointer, rseq_abi_size: conf.readUInt32LE(8), signature: conf.readUInt32LE(12) };
}

/** get_robust_list(tid): the head glibc registered for the thread's robust futexes. */
function robustList(tid: Pid): { head: bigint; len: number } {
  const head = Buffer.alloc(8);
  const len = Buffer.alloc(8);
  syscall('get_robust_list', tid, head, len);
  return { head: head.readBigUInt64LE(0), len: Number(len.readBigUInt64LE(0)) };
}

/** Pending signals (siginfo each) of a thread's private queue or of the process's shared queue. */
function pendingSignals(tid: Pid, shared: boolean): DecodedMessage {
  const signals: DecodedMessage[] = [];
  for (let offset = 0; offset < 4096; ) {
    const batch = ptracePeekSiginfo(tid, offset, 32, shared);
    for (const info of batch) signals.push({ siginfo: new Uint8Array(info.subarray(0, SIGINFO_SIZE)) });
    if (batch.length < 32) break;
    offset += batch.length;
  }
  return signals.length > 0 ? { signals } : {};
}

function itimer(t: Itimer): DecodedMessage {
  return { isec: t.intervalSec, iusec: t.intervalUsec, vsec: t.valueSec, vusec: t.valueUsec };
}

const SIGEV_NOTIFY: Record<string, number> = { signal: 0 /* SIGEV_SIGNAL */, none: 1 /* SIGEV_NONE */, thread: 2 /* SIGEV_THREAD */ };
const SIGEV_THREAD_ID = 4;
/** Well below what one parasite reply carries (PARASITE_REPLY_MAX / sizeof(struct parasite_posix_timer) = 204). */
const POSIX_TIMERS_PER_REQUEST = 128;

/**
 * posix_timer_entry of every timer_create() timer, by ascending id: clock, signal, sigev value and
 * notify (with SIGEV_THREAD_ID, the target thread) from /proc/PID/timers, the remaining time,
 * interval and overrun from timer_gettime/timer_getoverrun run by the parasite.
 */
function posixTimerEntries(pid: Pid, parasite: Parasite): DecodedMessage[] {
  const listed = readPosixTimers(pid).sort((a, b) => a.id - b.id);
  if (listed.length === 0) return [];
  // One parasite reply holds a bounded number of timers: ask in batches.
  const times = new Map<number, ReturnType<Parasite['dumpPosixTimers']>[number]>();
  for (let i = 0; i < listed.length; i += POSIX_TIMERS_PER_REQUEST) {
    for (const t of parasite.dumpPosixTimers(listed.slice(i, i + POSIX_TIMERS_PER_REQUEST).map((x) => x.id))) times.set(t.id, t);
  }
  return listed.map((t) => {
    const time = times.get(t.id);
    const notify = SIGEV_NOTIFY[t.notify];
    if (!time || notify === undefined) throw new Error(`POSIX timer ${t.id} of ${pid}: ${!time ? 'timer_gettime gave nothing' : `unknown notify kind ${t.notify}`}`);
    const entry: DecodedMessage = {
      it_id: t.id, clock_id: t.clockId >>> 0, si_signo: t.signal, it_sigev_notify: notify | (t.threadId !== undefined ? SIGEV_THREAD_ID : 0),
      sival_ptr: t.sivalPtr, overrun: time.overrun >>> 0,
      isec: time.intervalSec, insec: time.intervalNsec, vsec: time.valueSec, vnsec: time.valueNsec,
    };
    if (t.threadId !== undefined) entry.notify_thread_id = t.threadId;
    return entry;
  });
}

function sigactionEntries(actions: readonly Sigaction[]): DecodedMessage[] {
  return actions
    .filter((a) => a.signal !== SIGKILL && a.signal !== SIGSTOP)
    .map((a) => ({ sigaction: a.handler, flags: a.flags, restorer: a.restorer, mask: a.mask, compat_sigaction: false }));
}

function credsEntry(pid: number, tid: number, noNewPrivs: boolean, securebits: number): DecodedMessage {
  const status = readStatus(pid, tid);
  const ids = (key: string) => (status.get(key) ?? '0 0 0 0').split(/\s+/).map(Number);
  const [uid, euid, suid, fsuid] = ids('Uid');
  const [gid, egid, sgid, fsgid] = ids('Gid');
  const groups = (status.get('Groups') ?? '').split(/\s+/).filter(Boolean).map(Number);
  const creds: DecodedMessage = {
    uid, gid, euid, egid, suid, sgid, fsuid, fsgid,
    cap_inh: capabilityWords(status.get('CapInh') ?? '0'),
    cap_prm: capabilityWords(status.get('CapPrm') ?? '0'),
    cap_eff: capabilityWords(status.get('CapEff') ?? '0'),
    cap_bnd: capabilityWords(status.get('CapBnd') ?? '0'),
    secbits: securebits,
    cap_amb: capabilityWords(status.get('CapAmb') ?? '0'),
  };
  if (groups.length > 0) creds.groups = groups;
  if (noNewPrivs) creds.no_new_privs = 1; // uint32 in creds.proto
  return creds;
}

/**
 * What only ptrace can read about a thread. Precondition: the thread is in a ptrace-stop, so this
 * runs before the parasite starts (a thread running the parasite answers ESRCH).
 */
export interface PtraceState {
  readonly tls: DecodedMessage[];
  readonly rseq: DecodedMessage | undefined;
  readonly privateSignals: DecodedMessage;
  readonly sharedSignals: DecodedMessage;
  readonly seccomp: ThreadSeccomp;
}

export function collectPtraceState(pid: Pid, tid: Pid): PtraceState {
  return {
    tls: tlsEntries(tid), rseq: rseqEntry(tid), privateSignals: pendingSignals(tid, false), sharedSignals: pendingSignals(tid, true),
    seccomp: collectSeccomp(pid, tid),
  };
}

/**
 * What only the thread itself can tell (no ptrace request and no /proc file exposes it): its
 * sigaltstack, its clear_child_tid (set_tid_address / CLONE_CHILD_CLEARTID, which pthread_join
 * relies on), its parent-death signal, its securebits and no_new_privs (both per thread: they
 * live in the thread's cred and task flags).
 */
export interface ThreadOwnState {
  readonly altstackSp: bigint;
  readonly altstackFlags: number;
  readonly altstackSize: bigint;
  readonly clearChildTid: bigint;
  readonly pdeathSig: number;
  readonly securebits: number;
  readonly noNewPrivs: boolean;
}

/**
 * A thread's own state from the parasite's DUMP_MISC answer (the worker's) or parasite_dump_misc
 * run in that thread (Parasite.threadMisc): the calls run in the thread itself, one ptrace round
 * trip per thread rather than one per question.
 */
export function threadOwnStateFromMisc(misc: TaskMisc): ThreadOwnState {
  return {
    altstackSp: BigInt.asUintN(64, misc.altstack_sp), altstackFlags: Number(misc.altstack_flags), altstackSize: BigInt.asUintN(64, misc.altstack_size),
    clearChildTid: BigInt.asUintN(64, misc.clear_child_tid), pdeathSig: Number(misc.pdeathsig), securebits: Number(misc.securebits),
    noNewPrivs: misc.no_new_privs !== 0n,
  };
}

export interface TaskSnapshot {
  readonly pid: Pid;
  readonly tid: Pid;
  readonly regs: UserRegs;
  readonly xsave: Buffer;
  readonly sigmask: bigint;
  readonly stopped: boolean;
  readonly ptrace: PtraceState;
  /** null for the parasite's thread until the parasite reports it (threadOwnStateFromMisc). */
  own: ThreadOwnState | null;
}

/** thread_info and thread_core of one thread (CRIU writes these for every thread, leader included). */
function threadParts(task: TaskSnapshot, xsaveOffsets: XsaveOffsets): { threadInfo: DecodedMessage; threadCore: DecodedMessage } {
  const { pid, tid } = task;
  const own = task.own;
  if (own === null) throw new Error(`thread ${tid}: its own state (sigaltstack, tid address...) was not collected`);
  const robust = robustList(tid);
  const schedPolicy = Number(syscall('sched_getscheduler', tid));
  const param = Buffer.alloc(4);
  syscall('sched_getparam', tid, param);
  // getpriority(2) returns 20 - nice (the raw syscall avoids negative return values).
  const nice = 20 - Number(syscall('getpriority', 0 /* PRIO_PROCESS */, tid));
  const comm = readText(pid, `task/${tid}/comm`).replace(/\n$/, '');
  const threadCore: DecodedMessage = {
    futex_rla: robust.head,
    futex_rla_len: robust.len,
    sched_nice: nice,
    sched_policy: schedPolicy,
    sas: { ss_sp: own.altstackSp, ss_size: own.altstackSize, ss_flags: own.altstackFlags },
    signals_p: task.ptrace.privateSignals,
    creds: credsEntry(pid, tid, own.noNewPrivs, own.securebits),
    comm,
  };
  if (schedPolicy !== 0) threadCore.sched_prio = param.readUInt32LE(0);
  if (task.ptrace.rseq) threadCore.rseq_entry = task.ptrace.rseq;
  if (own.pdeathSig !== 0) threadCore.pdeath_sig = own.pdeathSig;
  // compel's registers of a thread stopped in a call that PTRACE_INTERRUPT turned into EINTR
  // (epoll_wait and friends) are those of a call to run again: the restored thread re-runs it.
  const threadInfo: DecodedMessage = {
    clear_tid_addr: own.clearChildTid,
    gpregs: gpregsEntry(undoInterruptEintr(task.regs)),
    fpregs: fpregsFromXsave(task.xsave, xsaveOffsets),
    tls: task.ptrace.tls,
  };
  return { threadInfo, threadCore };
}

/**
 * core-TID.img of a thread that is not the leader: thread_info and thread_core only, the blocked
 * mask in thread_core (CRIU 4.2's layout: the task-wide tc is in the leader's core alone).
 */
export function buildThreadCoreEntry(task: TaskSnapshot, xsaveOffsets: XsaveOffsets): DecodedMessage {
  const { threadInfo, threadCore } = threadParts(task, xsaveOffsets);
  threadCore.blk_sigset = task.sigmask;
  return { mtype: 1 /* X86_64 */, thread_info: threadInfo, thread_core: threadCore };
}

/** The whole core_entry of the thread group leader: its thread parts and the task-wide tc. */
/**
 * What the core image needs from the parasite, and the task's flags: asked before the parasite
 * starts copying pages (it serves one request at a time), while the rest of the core is built
 * during the copy (buildCoreEntry). The flags too: /proc/PID/stat shows the leader's PF_* flags
 * as they are now, and while it copies they may carry the kernel's transient ones.
 */
export interface ParasiteAnswers {
  /** The worker thread's DUMP_MISC answer. */
  readonly misc: TaskMisc;
  readonly sigactions: readonly Sigaction[];
  readonly itimers: ReturnType<Parasite['dumpItimers']>;
  readonly posixTimers: DecodedMessage[];
  readonly flags: number;
}

/** What the core entry needs from the parasite: misc, sigactions and itimers in one request (DUMP_TASK), then the POSIX timers if any. */
export function askParasite(task: TaskSnapshot, parasite: Parasite): ParasiteAnswers {
  // Collected by the daemon as it started (the task has been frozen since): no round trip.
  const { misc, sigactions, itimers } = parasite.taskAtStart ?? parasite.dumpTask();
  return {
    misc,
    sigactions,
    itimers,
    posixTimers: posixTimerEntries(task.pid, parasite),
    flags: Number(readStat(task.pid, task.tid)[9]),
  };
}

/** core-PID.img of a process (its leader thread). Reads /proc and thread state only, no parasite. */
export function buildCoreEntry(task: TaskSnapshot, answers: ParasiteAnswers, misc: TaskMisc, xsaveOffsets: XsaveOffsets): { core: DecodedMessage; misc: TaskMisc } {
  const { pid } = task;
  const timers = answers.itimers;
  const { threadInfo, threadCore } = threadParts(task, xsaveOffsets);
  const comm = threadCore.comm;

  const core: DecodedMessage = {
    mtype: 1 /* X86_64 */,
    thread_info: threadInfo,
    tc: {
      task_state: task.stopped ? TASK_STOPPED : TASK_ALIVE,
      exit_code: 0,
      personality: Number(misc.personality),
      flags: answers.flags,
      blk_sigset: task.sigmask,
      comm,
      timers: { real: itimer(timers.real), virt: itimer(timers.virtual), prof: itimer(timers.prof), posix: answers.posixTimers },
      rlimits: { rlimits: readLimits(pid) },
      signals_s: task.ptrace.sharedSignals,
      loginuid: Number(readText(pid, 'loginuid').trim()),
      oom_score_adj: Number(readText(pid, 'oom_score_adj').trim()),
      sigactions: sigactionEntries(answers.sigactions),
    },
    thread_core: threadCore,
  };
  if (misc.child_subreaper !== 0n) (core.tc as DecodedMessage).child_subreaper = true;
  return { core, misc };
}

// What a restored process gets last, once everything that needs our privileges is done: per
// thread its scheduling, seccomp state and credentials; per process its loginuid, oom_score_adj,
// and what a change of credentials resets (dumpable, parent-death signal).
//
// Order, and why:
//
//   1. scheduling (policy, RT priority, nice) of every thread: raising them needs CAP_SYS_NICE,
//      which the restored thread still has (it inherited criu-ts's credentials from the stub).
//   2. loginuid (written by the task itself to /proc/self/loginuid: the kernel accepts no other
//      writer; needs CAP_AUDIT_CONTROL), oom_score_adj (written by us: lowering it below the
//      process's floor needs CAP_SYS_RESOURCE, which criu-ts lacks here, see DESIGN.md).
//   3. seccomp, per thread, while the thread may still install filters (CAP_SYS_ADMIN; a thread
//      that dropped it had no_new_privs when it installed its own). From here on the thread's
//      seccomp state would apply to our remote syscalls (the filters may forbid setresuid, munmap
//      of the control area, anything; strict mode forbids all but read/write/exit/sigreturn), so
//      every thread is first given PTRACE_O_SUSPEND_SECCOMP: the kernel skips seccomp checks of a
//      tracee with that option, and PTRACE_DETACH at release clears it, so the filters start to
//      apply when the program runs again, not earlier. Filters go in oldest first, as they were
//      installed (the most recently installed filter's result wins between equal actions); a
//      chain dumped with SECCOMP_FILTER_FLAG_TSYNC is installed once by its thread and the kernel
//      gives it to every thread of the process (dump/seccomp.ts says when CRIU writes it so).
//   4. credentials, per thread with raw syscalls (glibc's setresuid would change every thread;
//      threads may differ): see restoreThreadCreds.
//   5. no_new_privs (one way), then the parent-death signal and the dumpable flag again: the
//      kernel clears the first and resets the second to fs.suid_dumpable whenever a task's euid,
//      egid, fsuid or fsgid change (commit_creds).
import { readFileSync, writeFileSync } from 'node:fs';
import { PTRACE_O, ptraceSetOptions, type Pid } from '@criu-ts/sys';
import { RestoreError, type RestoreStage } from './errors.js';
import { SECCOMP_MODE_FILTER, SECCOMP_MODE_STRICT, type ImageSet, type SeccompChain } from './image-set.js';
import type { RestoreTask } from './remote-task.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const PR_SET_PDEATHSIG = 1;
const PR_SET_DUMPABLE = 4;
const PR_CAPBSET_DROP = 24;
const PR_SET_SECUREBITS = 28;
const PR_SET_NO_NEW_PRIVS = 38;
const PR_CAP_AMBIENT = 47;
const PR_CAP_AMBIENT_RAISE = 2;
const PR_CAP_AMBIENT_CLEAR_ALL = 4;
const SECBIT_NO_SETUID_FIXUP = 1 << 2;
const LINUX_CAPABILITY_VERSION_3 = 0x20080522;
const SECCOMP_SET_MODE_STRICT = 0;
const SECCOMP_SET_MODE_FILTER = 1;
const SECCOMP_FILTER_FLAG_TSYNC = 1;
const PRIO_PROCESS = 0;
const SCHED_DEADLINE = 6;
const SCHED_RESET_ON_FORK = 0x4000_0000;
const O_WRONLY = 1;
const AT_FDCWD = -100;

/** A thread of the process as restore made it, with its core_entry (the leader's is set.core). */
interface ThreadCore {
  readonly tid: Pid;
  readonly core: Msg;
}

/** Runs a syscall in thread `tid`; -errno becomes a RestoreError of `stage` naming the call and thread. */
function inThread(task: RestoreTask, stage: RestoreStage, tid: Pid, what: string, name: Parameters<RestoreTask['syscallRawSync']>[0], ...args: Array<number | bigint>): bigint {
  const rc = task.syscallInThreadRawSync(tid, name, ...args);
  if (rc < 0n && rc >= -4095n) throw new RestoreError(stage, `${what} in thread ${tid} failed with errno ${-rc}`, { tid, errno: Number(-rc) });
  return rc;
}

/** The two 32-bit words CRIU writes for a capability set, as one 64-bit mask. */
function capMask(words: unknown): bigint {
  const w = (words ?? []) as number[];
  return BigInt(w[0] ?? 0) | (BigInt(w[1] ?? 0) << 32n);
}

/** Capability sets of a thread as /proc/PID/task/TID/status shows them now. */
function currentCaps(pid: number, tid: number): { prm: bigint; bnd: bigint } {
  const status = readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8');
  const get = (key: string) => BigInt(`0x${new RegExp(`^${key}:\\s*([0-9a-f]+)$`, 'm').exec(status)?.[1] ?? '0'}`);
  return { prm: get('CapPrm'), bnd: get('CapBnd') };
}

function capLast(): number {
  try {
    return Number(readFileSync('/proc/sys/kernel/cap_last_cap', 'utf8').trim());
  } catch {
    return 40;
  }
}

const capNames = (mask: bigint): string => [...Array(64).keys()].filter((c) => (mask >> BigInt(c)) & 1n).join(',');

/** Steps 1-5 of the module doc for process `set`. Precondition: every thread made (`threads`), the leader's control area mapped. */
export function restoreTaskSecurity(task: RestoreTask, set: ImageSet, threads: ReadonlyArray<{ tid: Pid; image: { core: Msg } }>, warnings: string[]): void {
  const all: ThreadCore[] = [{ tid: task.pid, core: set.core }, ...threads.map((t) => ({ tid: t.tid, core: t.image.core }))];
  for (const t of all) restoreSched(task, t, warnings);
  restoreLoginuid(task, set, warnings);
  restoreOomScoreAdj(task, set, warnings);

  if (set.seccomp.size > 0) {
    for (const t of all) {
      try {
        ptraceSetOptions(t.tid, PTRACE_O.TRACECLONE | PTRACE_O.TRACEFORK | PTRACE_O.EXITKILL | PTRACE_O.SUSPEND_SECCOMP);
      } catch (err) {
        throw new RestoreError('seccomp', `PTRACE_O_SUSPEND_SECCOMP on thread ${t.tid} (needs CAP_SYS_ADMIN and a restorer not under seccomp itself)`, { tid: t.tid }, err);
      }
    }
    // The leader first: a TSYNC chain of its own goes to every thread before any other installs.
    for (const t of all) {
      const chain = set.seccomp.get(t.tid);
      if (chain) restoreThreadSeccomp(task, t.tid, chain);
    }
  }

  for (const t of all) {
    const thc = (t.core.thread_core ?? {}) as Msg;
    if (thc.creds) restoreThreadCreds(task, t.tid, thc.creds as Msg, warnings);
    if (thc.creds?.no_new_privs) inThread(task, 'creds', t.tid, 'prctl(PR_SET_NO_NEW_PRIVS)', 'prctl', PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    if (thc.pdeath_sig) inThread(task, 'creds', t.tid, 'prctl(PR_SET_PDEATHSIG)', 'prctl', PR_SET_PDEATHSIG, Number(thc.pdeath_sig), 0, 0, 0);
  }
  const dumpable = set.mm.dumpable === undefined ? 1 : Number(set.mm.dumpable);
  if (dumpable === 0 || dumpable === 1) inThread(task, 'creds', task.pid, 'prctl(PR_SET_DUMPABLE)', 'prctl', PR_SET_DUMPABLE, dumpable, 0, 0, 0);
  else warnings.push(`process ${set.pid} was dumpable=${dumpable} (suid_dumpable); prctl can only set 0 or 1, it is left at the kernel's choice`);
}

/** sched_setscheduler and setpriority of one thread (both per thread on Linux). */
function restoreSched(task: RestoreTask, t: ThreadCore, warnings: string[]): void {
  const thc = (t.core.thread_core ?? {}) as Msg;
  if (thc.sched_policy !== undefined && (Number(thc.sched_policy) & ~SCHED_RESET_ON_FORK) === SCHED_DEADLINE) {
    // Its runtime, deadline and period are not in CRIU's image (and sched_setscheduler refuses it).
    warnings.push(`thread ${t.tid} ran under SCHED_DEADLINE, whose parameters the image does not hold; it runs under SCHED_OTHER`);
  } else if (thc.sched_policy !== undefined) {
    const param = Buffer.alloc(4);
    param.writeInt32LE(Number(thc.sched_prio ?? 0), 0);
    const [addr] = task.scratchPut(param);
    // The policy as sched_getscheduler reported it, SCHED_RESET_ON_FORK included.
    inThread(task, 'creds', t.tid, `sched_setscheduler(policy ${thc.sched_policy})`, 'sched_setscheduler', 0, Number(thc.sched_policy), addr!);
  }
  if (thc.sched_nice !== undefined) inThread(task, 'creds', t.tid, `setpriority(nice ${thc.sched_nice})`, 'setpriority', PRIO_PROCESS, t.tid, Number(thc.sched_nice));
}

/** The audit login uid, when it differs from the one the task inherited; a refusal is a warning (it may be immutable). */
function restoreLoginuid(task: RestoreTask, set: ImageSet, warnings: string[]): void {
  const tc = set.core.tc as Msg;
  if (tc.loginuid === undefined) return;
  const wanted = Number(tc.loginuid) >>> 0;
  let now: number;
  try {
    now = Number(readFileSync(`/proc/${task.pid}/loginuid`, 'utf8').trim()) >>> 0;
  } catch {
    return; // kernel without audit: nothing to restore
  }
  if (now === wanted) return;
  const [path] = task.scratchPut(Buffer.from('/proc/self/loginuid\0'));
  const fd = task.syscallRawSync('openat', AT_FDCWD, path!, O_WRONLY, 0);
  if (fd < 0n) {
    warnings.push(`loginuid ${wanted} not restored (open /proc/self/loginuid: errno ${-fd}); it stays ${now}`);
    return;
  }
  const text = Buffer.from(String(wanted));
  const [buf] = task.scratchPut(text);
  const rc = task.syscallRawSync('write', fd, buf!, text.length);
  task.syscallRawSync('close', fd);
  if (rc < 0n) warnings.push(`loginuid ${wanted} not restored (errno ${-rc}: it may be immutable or need CAP_AUDIT_CONTROL); it stays ${now}`);
}

function restoreOomScoreAdj(task: RestoreTask, set: ImageSet, warnings: string[]): void {
  const tc = set.core.tc as Msg;
  if (tc.oom_score_adj === undefined) return;
  const path = `/proc/${task.pid}/oom_score_adj`;
  const wanted = Number(tc.oom_score_adj);
  if (Number(readFileSync(path, 'utf8').trim()) === wanted) return;
  try {
    writeFileSync(path, String(wanted));
  } catch (err) {
    warnings.push(`oom_score_adj ${wanted} not restored (${(err as NodeJS.ErrnoException).code}: lowering it needs CAP_SYS_RESOURCE)`);
  }
}

/**
 * Strict mode, or the filters oldest first, installed by thread `tid` itself. Precondition: the
 * thread has PTRACE_O_SUSPEND_SECCOMP (or nothing after this may run in it).
 */
export function restoreThreadSeccomp(task: RestoreTask, tid: Pid, chain: SeccompChain): void {
  if (chain.mode === SECCOMP_MODE_STRICT) {
    inThread(task, 'seccomp', tid, 'seccomp(SECCOMP_SET_MODE_STRICT)', 'seccomp', SECCOMP_SET_MODE_STRICT, 0, 0);
    return;
  }
  if (chain.mode !== SECCOMP_MODE_FILTER) throw new RestoreError('seccomp', `thread ${tid}: unknown seccomp mode ${chain.mode}`);
  for (const [i, f] of chain.filters.entries()) {
    // struct sock_fprog: unsigned short len (+6 padding), struct sock_filter *filter.
    const fprog = Buffer.alloc(16);
    const [programAddr, fprogAddr] = task.scratchPut(f.program, fprog);
    fprog.writeUInt16LE(f.program.length / 8, 0);
    fprog.writeBigUInt64LE(programAddr!, 8);
    task.write(fprogAddr!, fprog);
    const rc = inThread(task, 'seccomp', tid, `seccomp(SECCOMP_SET_MODE_FILTER) of filter ${i + 1}/${chain.filters.length} (flags 0x${f.flags.toString(16)})`,
      'seccomp', SECCOMP_SET_MODE_FILTER, f.flags, fprogAddr!);
    // With TSYNC, a positive result is the TID of a thread whose filters could not be synchronised.
    if (rc > 0n && f.flags & SECCOMP_FILTER_FLAG_TSYNC) {
      throw new RestoreError('seccomp', `thread ${tid}: SECCOMP_FILTER_FLAG_TSYNC failed because of thread ${rc}, whose filters are not an ancestor of ${tid}'s`, { tid, conflicting: Number(rc) });
    }
  }
}

/**
 * uids, gids, groups, capability sets, securebits of thread `tid`, from a thread that still has
 * every capability criu-ts has. Each step needs what the previous ones keep:
 *
 *   securebits = NO_SETUID_FIXUP   so that changing uids does not clear the capability sets
 *   setgroups, setresgid, setresuid, setfsgid, setfsuid   (setresuid also sets fsuid: fs last)
 *   capset(inheritable)            ambient caps must be in both permitted and inheritable
 *   ambient raise                  before securebits could forbid it (NO_CAP_AMBIENT_RAISE)
 *   bounding drops, securebits     both need CAP_SETPCAP in the effective set
 *   capset(all three)              last: it may drop CAP_SETPCAP and CAP_SETUID
 *
 * Capabilities criu-ts itself lacks (CAP_SYS_RESOURCE here) cannot be given back: they are left
 * out, with a warning.
 */
export function restoreThreadCreds(task: RestoreTask, tid: Pid, creds: Msg, warnings: string[]): void {
  const call = (what: string, name: Parameters<RestoreTask['syscallRawSync']>[0], ...args: Array<number | bigint>) =>
    inThread(task, 'creds', tid, what, name, ...args);
  call('prctl(PR_SET_SECUREBITS, NO_SETUID_FIXUP)', 'prctl', PR_SET_SECUREBITS, SECBIT_NO_SETUID_FIXUP, 0, 0, 0);

  const groups = ((creds.groups ?? []) as number[]).map(Number);
  const list = Buffer.alloc(Math.max(4, groups.length * 4));
  groups.forEach((g, i) => list.writeUInt32LE(g >>> 0, i * 4));
  const [groupsAddr] = task.scratchPut(list);
  call(`setgroups(${groups.join(',')})`, 'setgroups', groups.length, groupsAddr!);
  call(`setresgid(${creds.gid}, ${creds.egid}, ${creds.sgid})`, 'setresgid', Number(creds.gid), Number(creds.egid), Number(creds.sgid));
  call(`setresuid(${creds.uid}, ${creds.euid}, ${creds.suid})`, 'setresuid', Number(creds.uid), Number(creds.euid), Number(creds.suid));
  // setfsuid/setfsgid return the previous id, never an error: read back with an invalid id (-1).
  for (const [name, value] of [['setfsgid', Number(creds.fsgid)], ['setfsuid', Number(creds.fsuid)]] as const) {
    task.syscallInThreadRawSync(tid, name, value);
    const now = Number(task.syscallInThreadRawSync(tid, name, -1)) >>> 0;
    if (now !== value >>> 0) throw new RestoreError('creds', `${name}(${value}) in thread ${tid} left it at ${now}`, { tid, wanted: value, now });
  }

  const have = currentCaps(task.pid, tid);
  const wanted = { inh: capMask(creds.cap_inh), prm: capMask(creds.cap_prm), eff: capMask(creds.cap_eff), amb: capMask(creds.cap_amb), bnd: capMask(creds.cap_bnd) };
  const missing = (wanted.prm & ~have.prm) | ((wanted.bnd | wanted.inh) & ~have.bnd);
  if (missing !== 0n) warnings.push(`thread ${tid}: capabilities ${capNames(missing)} were held at dump time but criu-ts does not have them to give back`);
  const prm = wanted.prm & have.prm;
  const eff = wanted.eff & prm;
  // capset takes inheritable capabilities only from the bounding set (with CAP_SETPCAP).
  const inh = wanted.inh & have.bnd;
  const capset = (e: bigint, p: bigint, i: bigint, what: string) => {
    // struct __user_cap_header_struct {u32 version; int pid}, then two __user_cap_data_struct {effective, permitted, inheritable}.
    const header = Buffer.alloc(8);
    header.writeUInt32LE(LINUX_CAPABILITY_VERSION_3, 0);
    const data = Buffer.alloc(24);
    [e, p, i].forEach((m, k) => {
      data.writeUInt32LE(Number(m & 0xffff_ffffn), k * 4);
      data.writeUInt32LE(Number(m >> 32n), 12 + k * 4);
    });
    const [h, d] = task.scratchPut(header, data);
    call(what, 'capset', h!, d!);
  };
  capset(have.prm, have.prm, inh, 'capset(inheritable)');
  call('prctl(PR_CAP_AMBIENT_CLEAR_ALL)', 'prctl', PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0);
  for (let cap = 0; cap < 64; cap++) {
    if ((wanted.amb >> BigInt(cap)) & 1n && (prm >> BigInt(cap)) & (inh >> BigInt(cap)) & 1n) {
      call(`prctl(PR_CAP_AMBIENT_RAISE, ${cap})`, 'prctl', PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, cap, 0, 0);
    }
  }
  for (let cap = 0; cap <= capLast(); cap++) {
    if (!((wanted.bnd >> BigInt(cap)) & 1n) && (have.bnd >> BigInt(cap)) & 1n) call(`prctl(PR_CAPBSET_DROP, ${cap})`, 'prctl', PR_CAPBSET_DROP, cap, 0, 0, 0);
  }
  call(`prctl(PR_SET_SECUREBITS, 0x${Number(creds.secbits ?? 0).toString(16)})`, 'prctl', PR_SET_SECUREBITS, Number(creds.secbits ?? 0), 0, 0, 0);
  capset(eff, prm, inh, 'capset');
}

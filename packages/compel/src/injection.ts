/**
 * Seizing a process and running system calls inside it.
 *
 * ## How a remote system call works
 *
 * A system call runs in the context of the task that executes a `syscall` instruction (0f 05),
 * with the number in RAX and the arguments in RDI, RSI, RDX, R10, R8, R9 (x86_64 ABI). To make a
 * stopped tracee call one:
 *
 * 1. At seize time, save its registers (PTRACE_GETREGS), XSAVE area and signal mask, and block
 *    every signal (PTRACE_SETSIGMASK): a signal arriving during our call would otherwise be
 *    dequeued into a signal-delivery-stop, and resuming from that stop with signal 0 would drop
 *    it. Blocked signals stay pending and are delivered after cure, in order. SIGTRAP alone stays
 *    unblocked (see SIGSET_REMOTE): the traps that end our calls must not be forced through a mask.
 * 2. Find a `syscall` instruction in the task's own executable memory (the vDSO has them, libc
 *    too) instead of writing one: the task's code never changes. Executing from any address
 *    that holds the bytes 0f 05 runs a syscall, whatever instruction they belong to.
 * 3. Set RIP to it, the registers to the call, and orig_rax to -1. orig_rax is the kernel's
 *    "syscall in progress" marker: if the task was stopped inside an interrupted syscall, RAX
 *    holds -ERESTARTSYS (or -ERESTARTNOINTR, -ERESTARTNOHAND, -ERESTART_RESTARTBLOCK) and the
 *    kernel would rewind RIP and re-run that syscall on resume; orig_rax = -1 disables that.
 * 4. PTRACE_SINGLESTEP: the task runs the one instruction (the whole syscall, however long it
 *    blocks) and reports SIGTRAP. RAX holds the result, -errno on failure.
 *    That is the plain way, kept for tasks we make ourselves (restore). For a task we must never
 *    harm it is not used: if criu-ts died during the call, the thread would be left with our
 *    registers and a SIGTRAP on its way, and die of it. Instead the call runs at the task's own
 *    "syscall; ret" with RSP on a return chain (see ReturnChain), under PTRACE_SYSCALL; we read
 *    RAX at the syscall-exit stop. A dead tracer leaves no signal behind and the `ret` walks the
 *    chain into rt_sigreturn, which puts back the thread's registers, mask and XSAVE state.
 * 5. On cure, put the saved registers back as they were, orig_rax included: the interrupted
 *    syscall of step 3 is then restarted by the kernel exactly as if nothing had happened (a task
 *    blocked in read() goes back to read(); nanosleep continues through restart_syscall).
 *
 * A task in group-stop (SIGSTOP) can be driven the same way: under PTRACE_SEIZE the tracer may
 * resume it, and PTRACE_DETACH puts it back into the group-stop (the kernel re-arms
 * JOBCTL_STOP_PENDING when the group is still stopped), so it is still stopped after cure.
 *
 * Every ptrace call must come from the thread that seized the task (ptrace is per thread): all
 * of this runs synchronously on the calling thread; the async methods only wrap the sync ones.
 */
import { readdirSync, readFileSync } from 'node:fs';
import {
  __WALL, asRemoteAddress, sleepSync, close, isSysError, O, open, pread, processVmReadv, ptraceCont, ptraceDetach, ptraceGetRegs,
  ptraceGetRegset, ptraceGetSigmask, ptraceInterrupt, ptraceSeize, ptraceSetRegs, ptraceSetRegset,
  ptraceSetSigmask, ptraceSingleStep, ptraceSyscall, pwrite, SIGNALS, SIGSET_ALL, SysError, syscallName, syscallNumber,
  tgkill, kill, wait4, NT, PTRACE_EVENT, PTRACE_O, MAP, PROT, signalName, type Fd, type Pid, type RemoteAddress,
  type SyscallName, type UserRegs, type WaitStatus, asPid,
} from '@criu-ts/sys';
import { CompelError } from './errors.js';
import { GADGET_BYTES, GADGET_NAMES, hintedAddress, rememberGadgets, type GadgetName } from './gadget-hints.js';
import { listThreads, readMaps, readStatus, taskState, type Vma } from './proc.js';
import { SIGFRAME } from './parasite-abi.js';
import { buildSigframe, cpuXstateLayout, restartedRegs, sigframeXstateLayout } from './sigframe.js';

/**
 * Some blocking calls are not restarted after a ptrace stop: PTRACE_INTERRUPT sets
 * TIF_SIGPENDING, and these return -EINTR instead of a restart code (signal(7), "Interruption
 * of system calls and library functions by stop signals"). The task would see an EINTR it never
 * got without us. When the call had no timeout, re-running it from the start is exactly what it
 * would have done: return registers that execute the `syscall` instruction again.
 * Calls with a finite timeout are left alone (re-running would extend the timeout).
 */
export function undoInterruptEintr(regs: UserRegs): UserRegs {
  const nr = Number(BigInt.asIntN(64, regs.orig_rax));
  if (nr < 0 || BigInt.asIntN(64, regs.rax) !== -4n /* -EINTR */) return regs;
  const arg4 = regs.r10;
  let infinite = false;
  switch (nr) {
    case 232: // epoll_wait(epfd, events, maxevents, int timeout)
    case 281: // epoll_pwait(..., int timeout, sigmask, sigsetsize)
      infinite = BigInt.asIntN(32, arg4 & 0xffff_ffffn) < 0n;
      break;
    case 441: // epoll_pwait2(..., const struct timespec *timeout, ...)
    case 220: // semtimedop(semid, sops, nsops, const struct timespec *timeout)
      infinite = arg4 === 0n;
      break;
    case 128: // rt_sigtimedwait(set, info, const struct timespec *uts, sigsetsize)
      infinite = regs.rdx === 0n;
      break;
    case 65: // semop
      infinite = true;
      break;
  }
  return infinite ? { ...regs, rax: regs.orig_rax, rip: regs.rip - 2n } : regs;
}

/**
 * The mask a task runs our calls under: every signal blocked but SIGTRAP. The single-step and int3
 * traps that end a remote call are forced signals, and forcing a blocked (or ignored) signal makes
 * the kernel unblock it in the thread's mask and reset its disposition to SIG_DFL for the whole
 * process (force_sig_info_to_task in kernel/signal.c): a task with a SIGTRAP handler lost it to
 * every dump. Unblocked, the trap reaches us as a signal-delivery-stop and is never delivered.
 * (A task that ignores SIGTRAP still gets SIG_DFL back: only calls without traps avoid that.)
 */
const SIGSET_REMOTE = SIGSET_ALL & ~(1n << BigInt(SIGNALS.SIGTRAP - 1));

/** The status of a syscall stop under PTRACE_O_TRACESYSGOOD: SIGTRAP | 0x80. */
const SYSCALL_STOP = SIGNALS.SIGTRAP | 0x80;

/**
 * Where a thread gets back to its own state by itself if criu-ts dies while it runs our code:
 * "pop rax; ret", 15, then an rt_sigreturn frame (pretcode: "syscall; ret") holding its registers
 * (with the restart of an interrupted syscall done in advance, since rt_sigreturn never restarts),
 * signal mask and XSAVE state, all on its own stack below the red zone, where the kernel would
 * put a signal frame. Our calls run with RSP there and end in the task's own "syscall; ret":
 * whatever the call, its `ret` walks the chain into rt_sigreturn. `original` is what the task had
 * in those bytes, put back on cure (by ABI they are free, as for any signal delivery).
 * The worker's chain also undoes, before the rt_sigreturn, what we made in the task and have not
 * removed yet (our mappings, the parasite's memfd and socket: see undoOnDeath), each as "pop rdi;
 * ret", a0, "pop rsi; ret", a1, "pop rax; ret", nr, "syscall; ret", "ret": a dump killed while it
 * loads the parasite leaves nothing behind.
 *
 * Layout: UNDO_MAX slots of 64 bytes (an operation, or eight "ret"s when free), "pop rax; ret",
 * 15, the frame. Nothing moves once written: an operation added or removed rewrites its slot
 * alone, in one write that never crosses a page (slots are 64-byte aligned). That matters because
 * a write into the task can stop part way when we are killed during it (the kernel stops pinning
 * the task's pages once a fatal signal is pending for us), and the thread then runs whatever the
 * chain holds. A slot's write is whole or not made at all, so the chain holds the old operation
 * or the new one. The earlier layout moved the frame with the number of operations and rewrote it
 * all on each change: cut at a page boundary (a test does it on purpose), that left a chain half
 * old, half new, and the victim crashed in 2 test runs out of 3 (or, likely, came back with its
 * AVX upper halves lost, as one random-kill run once showed).
 */
interface ReturnChain {
  readonly sp: bigint;
  /** Undo slots at the start of the chain (UNDO_MAX for the worker with the gadgets for them, else 0). */
  readonly slots: number;
  /** The worker's: STACK_SCRATCH bytes at the top of the area, for stackScratchSync. */
  readonly scratch: bigint | null;
  readonly original: Buffer;
  /** The rt_sigreturn frame for a given address (its fpstate pointer depends on it). */
  readonly frameAt: (frameAddr: bigint) => Buffer;
}

/** At most this many undo operations in the worker's return chain (see undoOnDeath). */
const UNDO_MAX = 8;
/** Bytes of one undo slot: pop rdi, a0, pop rsi, a1, pop rax, nr, "syscall; ret", "ret" (see ReturnChain). */
const UNDO_SLOT = 64;
/** Bytes the worker's chain area keeps free above the chain, for stackScratchSync. */
const STACK_SCRATCH = 64;

/**
 * A thread we ran code in: its own registers and mask as seized, its return chain (built on first
 * use; null when none can be), and where it stands:
 *   'own'      an interrupt stop with its own registers and mask (settled): it resumes as seized;
 *   'syscall'  the syscall-exit stop of our last remote syscall: our registers, RSP on its chain;
 *   'call'     an interrupt stop in, or a run of, parasite code that returns through the chain
 *              (or that cures itself, for the daemon) if we die.
 * Only 'own' is safe to detach from; cure settles every thread first.
 */
interface ThreadHold {
  readonly regs: UserRegs;
  readonly sigmask: bigint;
  chain?: ReturnChain | null;
  at: 'own' | 'syscall' | 'call';
}

/** The seized state of one thread. *//** The seized state of one thread. */
export interface SeizedThread {
  readonly tid: Pid;
  /** Signal of the group-stop the thread was in when seized (SIGSTOP...), or 0. */
  readonly groupStop: number;
  /** Signals dequeued while we seized it, re-delivered on cure. */
  readonly pendingSignals: number[];
}

/** What the thread that runs our code looked like before we touched it. */
export interface SavedState {
  readonly regs: UserRegs;
  readonly xsave: Buffer;
  readonly sigmask: bigint;
}

export interface CureOptions {
  /** Leave the task stopped (SIGSTOP delivered as we detach), as criu's --leave-stopped does. */
  stop?: boolean;
}

export interface PrepareOptions {
  /** The thread that runs remote syscalls and the parasite (default: the thread group leader). */
  tid?: number;
  /** Limit for seizing and for each remote call, in milliseconds (default 10000). */
  timeoutMs?: number;
}

const ORIG_RAX_NONE = 0xffff_ffff_ffff_ffffn; // -1: "not in a syscall"
const EFLAGS_TF = 0x100n;
const EFLAGS_DF = 0x400n;
const sleepMs = sleepSync;

/** Executable code found in the task that remote calls jump to (never written by us). */
export interface Gadgets {
  /** Address of bytes 0f 05 (syscall). */
  syscall: RemoteAddress;
  /** Address of 0f 05 c3 (syscall; ret), if any: needed by the parasite to unmap itself. */
  syscallRet: RemoteAddress | null;
  /** Address of 58 c3 (pop rax; ret), if any. */
  popRaxRet: RemoteAddress | null;
  /** Addresses of 5f c3 (pop rdi; ret) and 5e c3 (pop rsi; ret), if any: the worker's return chain undoes what we made with them. */
  popRdiRet: RemoteAddress | null;
  popRsiRet: RemoteAddress | null;
}

/**
 * A seized process: every thread stopped, one of them (the worker) ready to run syscalls.
 * Obtain one with {@link prepare}; release it with {@link Injection.cureSync}.
 */
export class Injection {
  readonly pid: Pid;
  readonly worker: Pid;
  readonly threads: ReadonlyMap<Pid, SeizedThread>;
  readonly saved: SavedState;
  readonly timeoutMs: number;
  private memFd: Fd | null = null;
  private gadgets: Gadgets | null = null;
  private mapsAtSeize: Vma[] | null = null;
  /** Mappings we created in the task, unmapped on cure (addr -> len). */
  private readonly ownMappings = new Map<bigint, bigint>();
  private state: 'seized' | 'running-parasite' | 'cured' = 'seized';
  /** Old path only (no return chain): the worker's mask is SIGSET_REMOTE until settled. */
  private sigmaskBlocked = false;
  /** Threads we ran code in: their own state, return chain and where they stand (see ThreadHold). */
  private readonly holds = new Map<Pid, ThreadHold>();
  /** What the worker's return chain undoes if we die (see undoOnDeath), each in its slot of the chain. */
  private readonly undos = new Map<string, { nr: number; a0: bigint; a1: bigint; slot: number }>();
  /**
   * Calls in a task we must never harm: each thread we run code in gets a return chain (see
   * ReturnChain), or, where none can be made, is settled in an interrupt stop with its own
   * registers and mask after each call (see settleSync). A task we created ourselves (restore)
   * dies with us anyway and skips both.
   */
  protected settleBetweenCalls = true;
  /** Called before cure (the parasite uses it to stop itself). */
  private readonly cureHooks: Array<() => void> = [];

  /** @internal use {@link prepare} */
  constructor(pid: Pid, worker: Pid, threads: Map<Pid, SeizedThread>, saved: SavedState, timeoutMs: number) {
    this.pid = pid;
    this.worker = worker;
    this.threads = threads;
    this.saved = saved;
    this.timeoutMs = timeoutMs;
  }

  get cured(): boolean {
    return this.state === 'cured';
  }

  /** True when the task was in group-stop (e.g. SIGSTOP) when seized; it is left stopped by cure. */
  get wasStopped(): boolean {
    return this.threads.get(this.worker)!.groupStop !== 0;
  }

  private assertSeized(what: string): void {
    if (this.state === 'cured') throw new CompelError('state', this.pid, `${what} after cure`);
    if (this.state === 'running-parasite') throw new CompelError('state', this.pid, `${what} while the parasite runs (use the parasite's commands)`);
  }

  /** @internal the parasite takes the worker thread over while it runs. */
  setParasiteRunning(running: boolean): void {
    this.state = running ? 'running-parasite' : 'seized';
  }

  /** @internal */
  onCure(hook: () => void): void {
    this.cureHooks.push(hook);
  }

  // ---------------------------------------------------------------- memory

  private mem(): Fd {
    if (this.memFd === null) this.memFd = open(`/proc/${this.pid}/mem`, O.RDWR);
    return this.memFd;
  }

  /** Reads `len` bytes at `addr` of the task through /proc/PID/mem (any mapping, even PROT_NONE). */
  readMemorySync(addr: RemoteAddress | bigint, len: number): Buffer {
    if (this.state === 'cured') throw new CompelError('state', this.pid, 'readMemory after cure');
    const buf = Buffer.alloc(len);
    let done = 0;
    for (let i = 0; done < len && i < 1000; i++) {
      const n = pread(this.mem(), buf.subarray(done), BigInt(addr) + BigInt(done));
      if (n === 0) throw new CompelError('state', this.pid, `short read at 0x${(BigInt(addr) + BigInt(done)).toString(16)}`);
      done += n;
    }
    return buf;
  }

  /** Writes `data` at `addr` of the task (FOLL_FORCE: read-only and code pages too, copied on write). */
  writeMemorySync(addr: RemoteAddress | bigint, data: Uint8Array): void {
    if (this.state === 'cured') throw new CompelError('state', this.pid, 'writeMemory after cure');
    let done = 0;
    for (let i = 0; done < data.byteLength && i < 1000; i++) {
      done += pwrite(this.mem(), data.subarray(done), BigInt(addr) + BigInt(done));
    }
  }

  async readMemory(addr: RemoteAddress | bigint, len: number): Promise<Buffer> {
    return this.readMemorySync(addr, len);
  }

  async writeMemory(addr: RemoteAddress | bigint, data: Uint8Array): Promise<void> {
    this.writeMemorySync(addr, data);
  }

  // ---------------------------------------------------------------- remote syscalls

  /**
   * The task's mappings as first read while seized, for what only our own calls could change and
   * never do: its code (gadgets) and its threads' stacks (return chains). One read of
   * /proc/PID/maps per injection instead of one per thread. @internal (the parasite's chain too)
   */
  seizedMaps(): Vma[] {
    this.mapsAtSeize ??= readMaps(this.pid);
    return this.mapsAtSeize;
  }

  /** Finds the code remote calls jump to, in the vDSO first, then in every other executable mapping. */
  findGadgets(): Gadgets {
    if (this.gadgets) return this.gadgets;
    const vmas = this.seizedMaps().filter((v) => v.perms.startsWith('r-x') && v.name !== '[vsyscall]');
    vmas.sort((a, b) => (a.name === '[vdso]' ? -1 : b.name === '[vdso]' ? 1 : 0));
    const found: Record<GadgetName, bigint | null> = { syscall: null, syscallRet: null, popRaxRet: null, popRdiRet: null, popRsiRet: null };
    const missing = () => GADGET_NAMES.filter((n) => found[n] === null);
    // Where earlier dumps found them in the same files (gadget-hints.ts), checked byte for byte:
    // all in one process_vm_readv (the task is frozen meanwhile); one by one through
    // /proc/PID/mem if that cannot read them all (a code mapping without read permission).
    const hinted: Array<{ name: GadgetName; at: bigint }> = [];
    for (const vma of vmas) {
      for (const name of GADGET_NAMES) {
        const at = hintedAddress(vma, name);
        if (at !== undefined) hinted.push({ name, at });
      }
    }
    const hintedBytes = Buffer.alloc(hinted.reduce((n, h) => n + GADGET_BYTES[h.name].length, 0));
    let readAll = false;
    try {
      readAll = hinted.length > 0 && processVmReadv(this.pid, hintedBytes, hinted.map((h) => ({ addr: asRemoteAddress(h.at), len: GADGET_BYTES[h.name].length }))) === hintedBytes.length;
    } catch { /* read one by one below */ }
    let at = 0;
    for (const h of hinted) {
      const want = Buffer.from(GADGET_BYTES[h.name]);
      try {
        const got = readAll ? hintedBytes.subarray(at, at + want.length) : this.readMemorySync(h.at, want.length);
        if (found[h.name] === null && got.equals(want)) found[h.name] = h.at;
      } catch { /* unreadable there: searched below */ }
      at += want.length;
    }
    // Read in chunks and stop as soon as all five are found: the gadgets are usually in the
    // vDSO or near the start of libc's text, and reading whole text mappings through
    // /proc/PID/mem cost milliseconds of the task's frozen time. Chunks overlap by two bytes so
    // no gadget is cut in half.
    const CHUNK = 256 << 10;
    search: for (const vma of vmas) {
      if (missing().length === 0) break;
      const len = Math.min(Number(vma.end - vma.start), 32 << 20);
      for (let off = 0; off < len; off += CHUNK - 2) {
        let code: Buffer;
        try {
          code = this.readMemorySync(vma.start + BigInt(off), Math.min(CHUNK, len - off));
        } catch {
          continue search;
        }
        for (const name of missing()) {
          const i = code.indexOf(Buffer.from(GADGET_BYTES[name]));
          if (i >= 0) found[name] = vma.start + BigInt(off) + BigInt(i);
        }
        if (missing().length === 0) break search;
        if (off + CHUNK >= len) break;
      }
    }
    rememberGadgets(vmas, found);
    const sc = found.syscall;
    if (sc === null) {
      // A task killed while seized tears its memory down before /proc shows it as a zombie (the
      // maps read empty while it is still 'R'): no mapping at all means it is on its way out;
      // otherwise give a dying task a moment to show it.
      let st = taskState(this.pid);
      for (const deadline = Date.now() + 500; vmas.length > 0 && st !== undefined && st !== 'Z' && st !== 'X' && Date.now() < deadline; st = taskState(this.pid)) sleepMs(1);
      if (st === undefined || st === 'Z' || st === 'X' || vmas.length === 0) {
        throw new CompelError('exited', this.pid, 'task died: no memory left to run syscalls in', { state: st ?? 'gone' });
      }
      throw new CompelError('no-gadget', this.pid, 'no syscall instruction (0f 05) in any executable mapping', {
        mappings: vmas.map((v) => `${v.start.toString(16)}-${v.end.toString(16)} ${v.perms} ${v.name}`),
      });
    }
    const address = (a: bigint | null) => (a === null ? null : asRemoteAddress(a));
    this.gadgets = {
      syscall: asRemoteAddress(sc),
      syscallRet: address(found.syscallRet), popRaxRet: address(found.popRaxRet), popRdiRet: address(found.popRdiRet), popRsiRet: address(found.popRsiRet),
    };
    return this.gadgets;
  }

  private blockSignals(): void {
    if (this.sigmaskBlocked) return;
    ptraceSetSigmask(this.worker, SIGSET_REMOTE);
    this.sigmaskBlocked = true;
  }

  /** The hold of seized thread `tid`: its own registers and mask as it stands settled now. */
  private holdOf(tid: Pid): ThreadHold {
    let hold = this.holds.get(tid);
    if (!hold) {
      if (!this.threads.has(tid)) throw new CompelError('state', this.pid, `thread ${tid} is not seized by this injection`);
      hold = tid === this.worker
        ? { regs: this.saved.regs, sigmask: this.saved.sigmask, at: 'own' }
        : { regs: ptraceGetRegs(tid), sigmask: ptraceGetSigmask(tid), at: 'own' };
      this.holds.set(tid, hold);
    }
    return hold;
  }

  /**
   * The return chain of thread `tid` (see ThreadHold), written below its red zone on first use.
   * null when there can be none: a task we made ourselves (restore: it dies with us anyway), no
   * "syscall; ret" and "pop rax; ret" in the task's code, or no writable stack under its RSP.
   */
  private chainOf(tid: Pid, hold: ThreadHold): ReturnChain | null {
    if (hold.chain !== undefined) return hold.chain;
    hold.chain = null;
    if (!this.settleBetweenCalls) return null;
    const gadgets = this.findGadgets();
    if (!gadgets.syscallRet || !gadgets.popRaxRet) return null;
    const xsave = tid === this.worker ? this.saved.xsave : ptraceGetRegset(tid, NT.X86_XSTATE);
    // The frame's extended state is cut to what the task's rt_sigreturn takes (sigframe.ts).
    const xstate = sigframeXstateLayout(xsave, cpuXstateLayout());
    const slots = tid === this.worker && gadgets.popRdiRet && gadgets.popRsiRet ? UNDO_MAX : 0;
    const scratchRoom = tid === this.worker ? STACK_SCRATCH : 0;
    const size = Math.ceil((slots * UNDO_SLOT + 16 + SIGFRAME.size + 64 + xsave.length + 4) / 64) * 64 + scratchRoom;
    const rsp = hold.regs.rsp;
    const start = (rsp - 128n - BigInt(size)) & ~63n; // the red zone belongs to the interrupted code
    const stack = this.seizedMaps().find((v) => v.start <= start && rsp <= v.end && v.perms.startsWith('rw'));
    if (!stack) return null;
    const own = restartedRegs(tid === this.worker ? undoInterruptEintr(hold.regs) : hold.regs);
    const chain: ReturnChain = {
      sp: start,
      slots,
      scratch: scratchRoom > 0 ? start + BigInt(size - scratchRoom) : null,
      original: this.readMemorySync(start, size),
      frameAt: (frameAddr) => buildSigframe(own, hold.sigmask, xsave, frameAddr, gadgets.syscallRet!, xstate),
    };
    this.writeChain(chain);
    hold.chain = chain;
    return chain;
  }

  /**
   * Writes `chain` into the task, once, before the thread first runs on it: the undo slots (the
   * operations registered so far, the others free), the way into rt_sigreturn, the frame.
   */
  private writeChain(chain: ReturnChain): void {
    const g = this.findGadgets();
    const slots = Array.from({ length: chain.slots }, (_, i) => this.undoSlotBytes(i));
    const tail = Buffer.alloc(16);
    tail.writeBigUInt64LE(g.popRaxRet!, 0);
    tail.writeBigUInt64LE(15n /* rt_sigreturn */, 8);
    const frameAddr = chain.sp + BigInt(chain.slots * UNDO_SLOT + tail.length);
    // The frame's pretcode slot ("syscall; ret") is where the tail's `ret` goes.
    this.writeMemorySync(chain.sp, Buffer.concat([...slots, tail, chain.frameAt(frameAddr)]));
  }

  /** Slot `slot` of the worker's chain: the undo operation it holds, or eight "ret"s. */
  private undoSlotBytes(slot: number): Buffer {
    const g = this.findGadgets();
    const ret = g.popRaxRet! + 1n; // the "ret" (c3) of "pop rax; ret"
    const op = [...this.undos.values()].find((u) => u.slot === slot);
    const words = op ? [g.popRdiRet!, op.a0, g.popRsiRet!, op.a1, g.popRaxRet!, BigInt(op.nr), g.syscallRet!, ret] : new Array<bigint>(8).fill(ret);
    const bytes = Buffer.alloc(UNDO_SLOT);
    words.forEach((w, i) => bytes.writeBigUInt64LE(BigInt.asUintN(64, w), i * 8));
    return bytes;
  }

  /**
   * @internal Something we made in the task that must go if we die before removing it: the
   * worker's return chain runs `nr(a0, a1)` (munmap of a mapping, close of a descriptor) before
   * it puts the worker back. `key` names it for forgetUndo. Best effort: a task without
   * "pop rdi; ret" and "pop rsi; ret" gadgets, or beyond UNDO_MAX operations, keeps it.
   */
  undoOnDeath(key: string, nr: 'munmap' | 'close', a0: bigint | number, a1: bigint | number = 0): void {
    const had = this.undos.get(key);
    const op = { nr: syscallNumber(nr), a0: BigInt(a0), a1: BigInt(a1) };
    if (had && had.nr === op.nr && had.a0 === op.a0 && had.a1 === op.a1) return;
    let slot = had?.slot;
    if (slot === undefined) {
      const used = new Set([...this.undos.values()].map((u) => u.slot));
      slot = Array.from({ length: UNDO_MAX }, (_, i) => i).find((i) => !used.has(i));
      if (slot === undefined) return;
    }
    this.undos.set(key, { ...op, slot });
    this.rewriteUndoSlot(slot);
  }

  /** @internal The thing registered under `key` is gone (removed by us, or by the parasite). */
  forgetUndo(key: string): void {
    const had = this.undos.get(key);
    if (!had) return;
    this.undos.delete(key);
    this.rewriteUndoSlot(had.slot);
  }

  /** One slot of the worker's chain, if it has one, rewritten in place (one write within a page: see ReturnChain). */
  private rewriteUndoSlot(slot: number): void {
    const chain = this.holds.get(this.worker)?.chain;
    if (!chain || slot >= chain.slots || this.state === 'cured') return;
    this.writeMemorySync(chain.sp + BigInt(slot * UNDO_SLOT), this.undoSlotBytes(slot));
  }

  /**
   * Precondition: `tid` is in an interrupt stop. Leaves it there ready to return through its chain
   * (a getpid at the task's "syscall; ret", RSP on the chain), not settled: the worker while
   * something we made is still in the task, so that the chain's undo operations run if we die.
   */
  private park(tid: Pid, hold: ThreadHold, chain: ReturnChain): void {
    ptraceSetRegs(tid, {
      ...hold.regs, rax: BigInt(syscallNumber('getpid')), orig_rax: ORIG_RAX_NONE, rip: this.findGadgets().syscallRet!, rsp: chain.sp,
      eflags: hold.regs.eflags & ~(EFLAGS_TF | EFLAGS_DF),
    });
    hold.at = 'call';
  }

  /**
   * Puts thread `tid` back in an interrupt stop with its own registers and mask, from wherever
   * our calls left it. From a syscall-exit stop that takes a round trip (see settleSync); from
   * an interrupt stop, setting them is enough: the kernel applies the restart of its interrupted
   * syscall when it resumes from there.
   */
  private settleHold(tid: Pid, hold: ThreadHold, what: string): void {
    if (hold.at === 'own') return;
    const own = tid === this.worker ? undoInterruptEintr(hold.regs) : hold.regs;
    if (hold.at === 'syscall') {
      this.settleSync(tid, own, hold.sigmask, what);
    } else {
      // Mask first: killed in between, the thread still returns through its chain.
      ptraceSetSigmask(tid, hold.sigmask);
      ptraceSetRegs(tid, own);
    }
    hold.at = 'own';
  }

  /**
   * Precondition: the worker is in a ptrace-stop. Resumes it with `regs` (single-step or
   * continue) and waits for the SIGTRAP stop that ends the call. Returns the registers then.
   * The path of tasks without a return chain.
   */
  private runWorkerSync(regs: UserRegs, how: 'step' | 'cont', what: string): UserRegs {
    try {
      this.blockSignals();
      ptraceSetRegs(this.worker, regs);
      if (how === 'step') ptraceSingleStep(this.worker);
      else ptraceCont(this.worker);
      this.waitStop(what, how);
      return ptraceGetRegs(this.worker);
    } catch (err) {
      throw this.explainEsrch(err, what);
    }
  }

  /**
   * Precondition: `tid` is in the SIGTRAP stop that ended a remote call, or in a syscall-exit
   * stop. Puts `regs` and `mask` back and moves the thread into an interrupt stop
   * (PTRACE_EVENT_STOP): PTRACE_INTERRUPT marks the trap, PTRACE_CONT with no signal leaves the
   * stop, and the thread stops again inside the kernel (get_signal) before running one
   * instruction of its own.
   *
   * Why: a dying tracer's detach (exit_ptrace) neither cancels the signal of a signal-delivery-stop
   * nor clears the single-step flag, unlike PTRACE_DETACH. A thread left in the SIGTRAP stop of
   * its last call would get that SIGTRAP, or trap after one instruction, if criu-ts were killed
   * before cure: the task died. From an interrupt stop it resumes as it was seized, its own
   * registers, mask and interrupted syscall's restart included.
   */
  private settleSync(tid: Pid, regs: UserRegs, mask: bigint, what: string): void {
    // Mask first: killed in between, a thread with a return chain still goes back through it.
    ptraceSetSigmask(tid, mask);
    ptraceSetRegs(tid, regs);
    ptraceInterrupt(tid);
    ptraceCont(tid, 0);
    this.waitInterruptStop(tid, what);
  }

  /** After PTRACE_INTERRUPT: waits (bounded) for the thread's interrupt stop. */
  private waitInterruptStop(tid: Pid, what: string): void {
    const deadline = Date.now() + this.timeoutMs;
    for (let spins = 0; ; spins++) {
      const st = wait4(tid, __WALL | 1 /* WNOHANG */);
      if (st.kind === 'stopped' && st.event === PTRACE_EVENT.STOP) return;
      if (st.kind === 'exited' || st.kind === 'signaled') {
        if (tid === this.worker) this.state = 'cured';
        throw new CompelError('exited', this.pid, `task died after ${what}`, { status: st });
      }
      if (st.kind === 'stopped') {
        // Not expected (the kernel takes the trap before dequeuing any signal): a signal stop is
        // queued again for later, never delivered now, and the thread goes on to the trap.
        if (st.event === 0 && st.signal !== SIGNALS.SIGTRAP && st.signal !== SYSCALL_STOP) tgkill(this.pid, tid, st.signal);
        ptraceCont(tid, 0);
        continue;
      }
      if (Date.now() > deadline) throw new CompelError('timeout', this.pid, `thread ${tid} did not stop again after ${what}`);
      if (spins >= 5000) sleepMs(spins < 6000 ? 0.05 : 1);
    }
  }

  /**
   * ptrace answers ESRCH both for "no such task" and "not stopped for us": when the task is gone
   * (or a zombie), say so with a CompelError('exited') instead.
   */
  private explainEsrch(err: unknown, what: string): unknown {
    if (!isSysError(err, 'ESRCH')) return err;
    const st = this.workerGone(500);
    if (st !== null) {
      this.state = 'cured';
      for (const t of this.threads.values()) {
        try { ptraceDetach(t.tid); } catch { /* gone */ }
      }
      return new CompelError('exited', this.pid, `task died before or during ${what}`, { state: st }, err as SysError);
    }
    return err;
  }

  /**
   * After an ESRCH: is the worker dead or dying? A task killed by SIGKILL leaves its ptrace-stop
   * at once but takes a moment to become a zombie, so look for up to `ms` milliseconds (its exit
   * is reported to us as tracer, and /proc shows Z or nothing). Returns what was seen, or null.
   */
  private workerGone(ms: number): string | null {
    const deadline = Date.now() + ms;
    for (let i = 0; i < 10_000; i++) {
      try {
        const st = wait4(this.worker, __WALL | 1 /* WNOHANG */);
        if (st.kind === 'exited' || st.kind === 'signaled') return st.kind;
      } catch (e) {
        if (isSysError(e, 'ECHILD')) return 'reaped';
      }
      const state = taskState(this.pid, this.worker);
      if (state === undefined || state === 'Z' || state === 'X') return state ?? 'gone';
      if (Date.now() > deadline) return null;
      sleepMs(1);
    }
    return null;
  }

  /**
   * Waits (bounded by timeoutMs) for the stop that ends a call: the SIGTRAP stop of a single step
   * or int3 ('step', 'cont'), or the next syscall stop ('syscall'). Group-stop notifications are
   * resumed the same way; anything else is an error with evidence.
   */
  private waitStop(what: string, how: 'step' | 'cont' | 'syscall', tid: Pid = this.worker): WaitStatus {
    const deadline = Date.now() + this.timeoutMs;
    const expected = how === 'syscall' ? SYSCALL_STOP : SIGNALS.SIGTRAP;
    for (let spins = 0; ; spins++) {
      const st = wait4(tid, __WALL | 1 /* WNOHANG */);
      if (st.kind === 'none') {
        if (Date.now() > deadline) {
          // Take the task back (the call is interrupted: -EINTR or a restart code in RAX).
          try {
            ptraceInterrupt(tid);
            wait4(tid, __WALL);
          } catch { /* gone */ }
          throw new CompelError('timeout', this.pid, `${what} did not return within ${this.timeoutMs} ms`);
        }
        // Spin first: a remote syscall usually completes within microseconds, and a sleep costs more.
        if (spins >= 5000) sleepMs(spins < 6000 ? 0.05 : 1);
        continue;
      }
      if (st.kind === 'exited' || st.kind === 'signaled') {
        this.state = 'cured';
        throw new CompelError('exited', this.pid, `task died during ${what}`, { status: st });
      }
      if (st.kind === 'stopped' && st.signal === expected && st.event === 0) return st;
      if (st.kind === 'stopped' && st.event === PTRACE_EVENT.STOP) {
        // A group-stop notification (someone sent SIGSTOP meanwhile): resume the same way.
        if (spins > 10_000) break;
        this.resume(tid, how);
        continue;
      }
      if (st.kind === 'stopped') {
        const regs = ptraceGetRegs(tid);
        throw new CompelError('unexpected-stop', this.pid, `${what}: stopped by ${signalName(st.signal & 0x7f)} at rip 0x${regs.rip.toString(16)}`, {
          status: st, rip: regs.rip, rsp: regs.rsp, rax: regs.rax,
        });
      }
    }
    throw new CompelError('unexpected-stop', this.pid, `${what}: too many group-stop notifications`);
  }

  private resume(tid: Pid, how: 'step' | 'cont' | 'syscall'): void {
    if (how === 'step') ptraceSingleStep(tid);
    else if (how === 'syscall') ptraceSyscall(tid);
    else ptraceCont(tid);
  }

  /**
   * Runs system call `nr` in the worker thread and returns RAX as a signed value (-errno on
   * failure, never thrown). Precondition: seized, no parasite running.
   */
  syscallRawSync(nameOrNr: SyscallName | number, ...args: Array<number | bigint>): bigint {
    this.assertSeized('syscall');
    return this.syscallInThreadRawSync(this.worker, nameOrNr, ...args);
  }

  /**
   * Runs system call `nr` in seized thread `tid` (any thread of the task, the worker included)
   * and returns RAX as a signed value (-errno on failure, never thrown). For what only the thread
   * itself can tell or set: sigaltstack, prctl(PR_GET_TID_ADDRESS), its robust list, rseq...
   *
   * With a return chain (see ThreadHold): the call runs at the task's own "syscall; ret" with RSP
   * on the chain, under PTRACE_SYSCALL, and the result is read at the syscall-exit stop, where the
   * thread stays until its next call or cure. Without one: single-step over a `syscall`, then
   * settle (see settleSync). Either way every signal is blocked during the call, and the thread's
   * registers and mask are put back by cure, orig_rax included, so a thread stopped inside an
   * interrupted syscall restarts it on resume exactly as if nothing had run (module doc, steps 3
   * and 5). Precondition: the thread is in a ptrace-stop (for the worker: no parasite running).
   */
  syscallInThreadRawSync(tid: Pid, nameOrNr: SyscallName | number, ...args: Array<number | bigint>): bigint {
    if (this.state === 'cured') throw new CompelError('state', this.pid, 'syscall after cure');
    if (args.length > 6) throw new RangeError('a syscall takes at most 6 arguments');
    const nr = typeof nameOrNr === 'number' ? nameOrNr : syscallNumber(nameOrNr);
    const name = typeof nameOrNr === 'string' ? nameOrNr : (syscallName(nr) ?? `syscall ${nr}`);
    const what = tid === this.worker ? `remote ${name}` : `remote ${name} in thread ${tid}`;
    const a = args.map((x) => BigInt.asUintN(64, BigInt(x)));
    const callRegs = (base: UserRegs, rip: bigint): UserRegs => ({
      ...base, rax: BigInt(nr), rdi: a[0] ?? 0n, rsi: a[1] ?? 0n, rdx: a[2] ?? 0n, r10: a[3] ?? 0n, r8: a[4] ?? 0n, r9: a[5] ?? 0n,
      orig_rax: ORIG_RAX_NONE, rip, eflags: base.eflags & ~(EFLAGS_TF | EFLAGS_DF),
    });
    const hold = this.holdOf(tid);
    const chain = this.chainOf(tid, hold);
    if (chain) {
      const gadget = this.findGadgets().syscallRet!;
      try {
        // Registers first, then the mask: from here a dead tracer leaves the thread to its chain
        // (it runs the call, returns into rt_sigreturn and is back as it was, mask included).
        ptraceSetRegs(tid, { ...callRegs(hold.regs, gadget), rsp: chain.sp });
        if (hold.at === 'own') ptraceSetSigmask(tid, SIGSET_REMOTE);
        hold.at = 'syscall';
        ptraceSyscall(tid);
        this.waitStop(what, 'syscall', tid); // entry
        ptraceSyscall(tid);
        this.waitStop(what, 'syscall', tid); // exit
        const after = ptraceGetRegs(tid);
        if (after.rip !== gadget + 2n) {
          throw new CompelError('unexpected-stop', this.pid, `${what}: stopped at 0x${after.rip.toString(16)}, expected 0x${(gadget + 2n).toString(16)}`);
        }
        return BigInt.asIntN(64, after.rax);
      } catch (err) {
        throw this.explainEsrch(err, what);
      }
    }
    const gadget = this.findGadgets().syscall;
    if (tid === this.worker) {
      const after = this.runWorkerSync(callRegs(this.saved.regs, gadget), 'step', what);
      if (this.settleBetweenCalls) {
        this.settleSync(this.worker, undoInterruptEintr(this.saved.regs), this.saved.sigmask, what);
        this.sigmaskBlocked = false;
      }
      if (after.rip !== gadget + 2n) {
        throw new CompelError('unexpected-stop', this.pid, `${what}: stopped at 0x${after.rip.toString(16)}, expected 0x${(gadget + 2n).toString(16)}`);
      }
      return BigInt.asIntN(64, after.rax);
    }
    const after = this.runInThreadSync(tid, what, 'step', (saved) => callRegs(saved, gadget));
    if (after.rip !== gadget + 2n) {
      throw new CompelError('unexpected-stop', this.pid, `${what}: stopped at 0x${after.rip.toString(16)}, expected 0x${(gadget + 2n).toString(16)}`);
    }
    return BigInt.asIntN(64, after.rax);
  }

  /**
   * A remote syscall or call in another thread than the worker, without a return chain: the
   * thread's registers and mask are read before and put back after; every signal is blocked
   * meanwhile; it runs from `regsFor(its registers)` (single-step or continue) to its trap, and
   * it is settled in an interrupt stop. Returns the registers at the trap.
   */
  private runInThreadSync(tid: Pid, what: string, how: 'step' | 'cont', regsFor: (saved: UserRegs) => UserRegs): UserRegs {
    const savedRegs = ptraceGetRegs(tid);
    const savedMask = ptraceGetSigmask(tid);
    ptraceSetSigmask(tid, SIGSET_REMOTE);
    try {
      ptraceSetRegs(tid, { ...regsFor(savedRegs), orig_rax: ORIG_RAX_NONE, eflags: savedRegs.eflags & ~(EFLAGS_TF | EFLAGS_DF) });
      this.resume(tid, how);
      this.waitStop(what, how, tid);
      const after = ptraceGetRegs(tid);
      if (this.settleBetweenCalls) this.settleSync(tid, savedRegs, savedMask, what);
      return after;
    } finally {
      try {
        ptraceSetRegs(tid, savedRegs);
        ptraceSetSigmask(tid, savedMask);
      } catch { /* the thread died: nothing to put back */ }
    }
  }

  /** Like syscallInThreadRawSync, but a -errno result throws SysError. */
  syscallInThreadSync(tid: Pid, nameOrNr: SyscallName | number, ...args: Array<number | bigint>): bigint {
    const r = this.syscallInThreadRawSync(tid, nameOrNr, ...args);
    if (r < 0n && r >= -4095n) {
      const name = typeof nameOrNr === 'string' ? nameOrNr : (syscallName(nameOrNr) ?? `syscall ${nameOrNr}`);
      throw new SysError(name, Number(-r), `remote, in thread ${tid} of pid ${this.pid}`);
    }
    return r;
  }

  /**
   * @internal A thread that arrived traced and stopped (PTRACE_EVENT_CLONE of a traced task):
   * remote calls may run in it, and cure detaches it with the others.
   */
  adoptThread(tid: Pid): void {
    (this.threads as Map<Pid, SeizedThread>).set(tid, { tid, groupStop: 0, pendingSignals: [] });
  }

  /** Like syscallRawSync, but a -errno result throws SysError (`syscall` names the remote call). */
  syscallSync(nameOrNr: SyscallName | number, ...args: Array<number | bigint>): bigint {
    const r = this.syscallRawSync(nameOrNr, ...args);
    if (r < 0n && r >= -4095n) {
      const name = typeof nameOrNr === 'string' ? nameOrNr : (syscallName(nameOrNr) ?? `syscall ${nameOrNr}`);
      throw new SysError(name, Number(-r), `remote, in pid ${this.pid}`);
    }
    return r;
  }

  async syscall(nameOrNr: SyscallName | number, ...args: Array<number | bigint>): Promise<bigint> {
    return this.syscallSync(nameOrNr, ...args);
  }

  /**
   * Runs code in seized thread `tid` (the worker included, while no parasite daemon runs in it)
   * that ends the way the parasite's call entry does (native/parasite-entry.S): it reports its
   * result in memory and then waits, in a read run from the task's own "syscall; ret" with RSP
   * on its return chain, to be taken back. `regsFor(own registers, chain RSP or null, "syscall;
   * ret" address)` gives the registers to start from; with no chain (null) the code must end in
   * int3 instead. `done()` is polled for the result (undefined: not yet). Every signal is blocked
   * meanwhile. The thread is taken back with PTRACE_INTERRUPT and settled with its own registers;
   * if we die first, it gets EOF on the read and returns through its chain by itself.
   */
  callSync(tid: Pid, what: string, regsFor: (own: UserRegs, chainSp: bigint | null, syscallRet: bigint) => UserRegs, done: () => bigint | undefined): bigint {
    if (this.state === 'cured') throw new CompelError('state', this.pid, `${what} after cure`);
    if (tid === this.worker) this.assertSeized(what);
    const hold = this.holdOf(tid);
    const chain = this.chainOf(tid, hold);
    if (!chain) {
      if (tid === this.worker) {
        const after = this.runWorkerSync({ ...regsFor(this.saved.regs, null, 0n), orig_rax: ORIG_RAX_NONE, eflags: this.saved.regs.eflags & ~(EFLAGS_TF | EFLAGS_DF) }, 'cont', what);
        if (this.settleBetweenCalls) {
          this.settleSync(this.worker, undoInterruptEintr(this.saved.regs), this.saved.sigmask, what);
          this.sigmaskBlocked = false;
        }
        return BigInt.asIntN(64, after.rax);
      }
      return BigInt.asIntN(64, this.runInThreadSync(tid, what, 'cont', (own) => regsFor(own, null, 0n)).rax);
    }
    try {
      const regs = regsFor(hold.regs, chain.sp, this.findGadgets().syscallRet!);
      ptraceSetRegs(tid, { ...regs, orig_rax: ORIG_RAX_NONE, eflags: hold.regs.eflags & ~(EFLAGS_TF | EFLAGS_DF) });
      if (hold.at === 'own') ptraceSetSigmask(tid, SIGSET_REMOTE);
      hold.at = 'call';
      ptraceCont(tid);
      const deadline = Date.now() + this.timeoutMs;
      let result: bigint | undefined;
      for (let spins = 0; (result = done()) === undefined; spins++) {
        const st = wait4(tid, __WALL | 1 /* WNOHANG */);
        if (st.kind === 'exited' || st.kind === 'signaled') {
          if (tid === this.worker) this.state = 'cured';
          throw new CompelError('exited', this.pid, `task died during ${what}`, { status: st });
        }
        if (st.kind === 'stopped' && st.event === PTRACE_EVENT.STOP) {
          ptraceCont(tid); // a group-stop notification: resume
        } else if (st.kind === 'stopped') {
          const at = ptraceGetRegs(tid);
          throw new CompelError('unexpected-stop', this.pid, `${what}: stopped by ${signalName(st.signal & 0x7f)} at rip 0x${at.rip.toString(16)}`, { status: st, rip: at.rip });
        }
        if (Date.now() > deadline) throw new CompelError('timeout', this.pid, `${what} did not finish within ${this.timeoutMs} ms`);
        if (spins >= 5000) sleepMs(spins < 6000 ? 0.05 : 1);
      }
      ptraceInterrupt(tid);
      this.waitInterruptStop(tid, what);
      if (tid === this.worker && this.undos.size > 0) this.park(tid, hold, chain);
      else this.settleHold(tid, hold, what);
      return result;
    } catch (err) {
      if (err instanceof CompelError && err.kind !== 'exited' && hold.at === 'call') {
        // Take it back so that cure can put it back (it may be running our code still).
        try {
          ptraceInterrupt(tid);
          this.waitInterruptStop(tid, what);
        } catch { /* gone */ }
      }
      throw this.explainEsrch(err, what);
    }
  }

  /**
   * Precondition: seized. Starts the worker at `regs` and returns at once (the parasite daemon
   * runs until it is taken back with takeBackWorkerSync, or cures itself if we die).
   */
  startWorkerSync(regs: UserRegs): void {
    this.assertSeized('start');
    const hold = this.holdOf(this.worker);
    ptraceSetRegs(this.worker, { ...regs, orig_rax: ORIG_RAX_NONE, eflags: regs.eflags & ~(EFLAGS_TF | EFLAGS_DF) });
    if (hold.at === 'own') ptraceSetSigmask(this.worker, SIGSET_REMOTE);
    hold.at = 'call';
    ptraceCont(this.worker);
    this.state = 'running-parasite';
  }

  /**
   * Takes the worker back from a running parasite daemon (which, after FINI, only waits for the
   * next request) with PTRACE_INTERRUPT. It stays with the daemon's registers until the next
   * call or cure: if we die before, the daemon's wait sees EOF and it cures itself.
   */
  takeBackWorkerSync(what: string): void {
    try {
      ptraceInterrupt(this.worker);
      this.waitInterruptStop(this.worker, what);
    } catch (err) {
      throw this.explainEsrch(err, what);
    }
    this.state = 'seized';
  }

  /**
   * Maps `len` bytes in the task (anonymous memory by default; removed on cure). The address is
   * chosen here, in a hole of the task's layout, and the mapping made there with
   * MAP_FIXED_NOREPLACE, so that its undo (see undoOnDeath) is in the worker's return chain
   * before the mapping exists: no moment in which our death would leave it behind.
   */
  mapSync(len: number, prot: number = PROT.READ | PROT.WRITE, flags: number = MAP.PRIVATE | MAP.ANONYMOUS, fd = -1): RemoteAddress {
    const want = this.holeFor(len);
    if (want !== null) this.undoOnDeath(`map ${want}`, 'munmap', want, len);
    const got = this.syscallRawSync('mmap', want ?? 0n, len, prot, want === null ? flags : flags | MAP.FIXED_NOREPLACE, fd, 0);
    if (got < 0n && got >= -4095n) {
      if (want !== null) this.forgetUndo(`map ${want}`);
      throw new SysError('mmap', Number(-got), `remote, in pid ${this.pid}`);
    }
    if (got !== want) {
      // No hole found, or a kernel that took the address as a hint only.
      if (want !== null) this.forgetUndo(`map ${want}`);
      this.undoOnDeath(`map ${got}`, 'munmap', got, len);
    }
    this.ownMappings.set(got, BigInt(len));
    return asRemoteAddress(got);
  }

  /**
   * Where a new mapping of `len` bytes goes: the highest hole of the task's layout with a free
   * page on both sides, as the kernel's own top-down search would pick, but never right under
   * the stack (its room to grow). null if there is none.
   */
  private holeFor(len: number): bigint | null {
    const page = 4096n;
    const size = (BigInt(len) + page - 1n) & ~(page - 1n);
    const vmas = readMaps(this.pid).filter((v) => v.name !== '[vsyscall]').sort((a, b) => (a.start < b.start ? -1 : 1));
    for (let i = vmas.length - 1; i > 0; i--) {
      const below = vmas[i - 1]!;
      const above = vmas[i]!;
      if (above.name === '[stack]' || below.end < 0x10000n) continue;
      if (above.start - below.end >= size + 2n * page) return above.start - page - size;
    }
    return null;
  }

  /**
   * @internal The lowest descriptor number free in the task: the one its next open, socket or
   * memfd_create gets (all its threads are stopped), so that an undo can be registered first.
   */
  lowestFreeFd(): number {
    const used = new Set(readdirSync(`/proc/${this.pid}/fd`).map(Number));
    let fd = 0;
    while (used.has(fd)) fd++;
    return fd;
  }

  /**
   * Writes `data` (at most 64 bytes) into the worker's stack, in the area its return chain
   * reserves below the red zone, and returns its address: an argument for a remote syscall (a
   * name, say) without a mapping made for it, which would cost two more remote syscalls. The
   * bytes are put back with the rest of the area on cure, and nothing of ours uses them meanwhile
   * but the next remote syscall. null when the worker has no return chain (see chainOf): map
   * a scratch page instead.
   */
  stackScratchSync(data: Uint8Array): RemoteAddress | null {
    this.assertSeized('stack scratch');
    if (data.length > STACK_SCRATCH) throw new RangeError(`stack scratch holds at most ${STACK_SCRATCH} bytes, not ${data.length}`);
    const chain = this.chainOf(this.worker, this.holdOf(this.worker));
    if (!chain || chain.scratch === null) return null;
    this.writeMemorySync(chain.scratch, data);
    return asRemoteAddress(chain.scratch);
  }

  /** Unmaps a mapping made with mapSync. */
  unmapSync(addr: RemoteAddress): void {
    const len = this.ownMappings.get(addr);
    if (len === undefined) throw new RangeError(`0x${addr.toString(16)} is not a mapping made by this injection`);
    this.syscallSync('munmap', addr, len);
    this.ownMappings.delete(addr);
    this.forgetUndo(`map ${addr}`);
  }

  /** @internal the parasite unmaps its own blob on self-cure; forget it then. */
  forgetMapping(addr: bigint): void {
    this.ownMappings.delete(addr);
    this.forgetUndo(`map ${addr}`);
  }

  /** A scratch area of `len` bytes in the task, read/write, removed on cure. */
  async scratch(len = 4096): Promise<RemoteAddress> {
    return this.mapSync(len);
  }

  /** The VMAs of the task as /proc shows them now. */
  maps(): Vma[] {
    return readMaps(this.pid);
  }

  // ---------------------------------------------------------------- cure

  /**
   * Removes every trace and lets the task go: parasite stopped and unmapped, our mappings
   * unmapped, registers, XSAVE state and signal mask of the worker put back, pending signals
   * re-queued, every thread detached (a task seized in group-stop goes back to it).
   */
  cureSync(options: CureOptions = {}): void {
    if (this.state === 'cured') return;
    const errors: unknown[] = [];
    for (const hook of this.cureHooks.splice(0)) {
      try { hook(); } catch (err) { errors.push(err); }
    }
    if (this.state === 'running-parasite') {
      // The parasite could not be stopped politely: take the thread back.
      try {
        ptraceInterrupt(this.worker);
        wait4(this.worker, __WALL);
      } catch (err) { errors.push(err); }
      this.state = 'seized';
    }
    for (const [addr, len] of [...this.ownMappings]) {
      try {
        this.syscallSync('munmap', addr, len);
        this.ownMappings.delete(addr);
        this.forgetUndo(`map ${addr}`);
      } catch (err) {
        if (err instanceof CompelError && err.kind === 'exited') break;
        errors.push(err);
      }
    }
    // Every thread back in an interrupt stop with its own registers and mask; then the bytes
    // under the return chains as they were (a settled thread no longer needs its chain).
    for (const [tid, hold] of this.holds) {
      try {
        this.settleHold(tid, hold, 'cure');
        if (hold.chain) this.writeMemorySync(hold.chain.sp, hold.chain.original);
      } catch (err) {
        if (!(err instanceof CompelError && err.kind === 'exited') && !isSysError(err, 'ESRCH')) errors.push(err);
      }
    }
    const w = this.worker;
    try {
      ptraceSetRegs(w, undoInterruptEintr(this.saved.regs));
      const xsave = ptraceGetRegset(w, NT.X86_XSTATE);
      if (!xsave.equals(this.saved.xsave)) ptraceSetRegset(w, NT.X86_XSTATE, this.saved.xsave);
      if (this.sigmaskBlocked) ptraceSetSigmask(w, this.saved.sigmask);
    } catch (err) {
      if (!(isSysError(err, 'ESRCH') && this.workerGone(500) !== null)) errors.push(err);
    }
    if (this.memFd !== null) {
      try { close(this.memFd); } catch { /* nothing to do */ }
      this.memFd = null;
    }
    if (options.stop) {
      // Queued while every thread is still in a ptrace-stop and our code is gone: the group stop
      // happens as soon as we detach, before the task runs a single instruction of its own.
      try { kill(this.pid, SIGNALS.SIGSTOP); } catch (err) { errors.push(err); }
    }
    for (const t of this.threads.values()) {
      try {
        // Signals we dequeued while seizing go back: the first through PTRACE_DETACH's signal
        // argument, the others re-queued to the thread.
        const [first, ...rest] = t.pendingSignals;
        for (const sig of rest) tgkill(this.pid, t.tid, sig);
        ptraceDetach(t.tid, first ?? 0);
      } catch (err) {
        if (!isSysError(err, 'ESRCH')) errors.push(err);
      }
    }
    this.state = 'cured';
    if (errors.length > 0) {
      throw new CompelError('state', this.pid, `cure finished with ${errors.length} error(s): ${errors.map(String).join('; ')}`, { errors });
    }
  }

  async cure(options: CureOptions = {}): Promise<void> {
    this.cureSync(options);
  }
}

/**
 * PTRACE_O_SUSPEND_SECCOMP for a thread under seccomp (strict mode or filters), else 0. Remote
 * syscalls and the parasite run as the thread itself, so its seccomp state would apply to them:
 * strict mode kills on anything but read/write/exit/sigreturn, and a filter may forbid mmap or
 * munmap. While the option is set (it needs CAP_SYS_ADMIN and a tracer not under seccomp itself),
 * the kernel skips every seccomp check of the tracee; detaching clears it (ptrace(2)).
 */
function seccompSuspension(pid: Pid, tid: Pid): number {
  try {
    const line = /^Seccomp:\s*(\d+)$/m.exec(readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8'));
    return line && line[1] !== '0' ? PTRACE_O.SUSPEND_SECCOMP : 0;
  } catch {
    return 0; // gone: the seize that follows fails with ESRCH and says so
  }
}

/** Waits for the first stop of a freshly seized thread; returns null if it exited meanwhile. */
function waitSeizeStop(pid: Pid, tid: Pid, deadline: number): { groupStop: number; pending: number[] } | null {
  const pending: number[] = [];
  for (let spins = 0; ; spins++) {
    const st = wait4(tid, __WALL | 1 /* WNOHANG */);
    if (st.kind === 'none') {
      if (Date.now() > deadline) {
        throw new CompelError('timeout', pid, `thread ${tid} did not stop after PTRACE_INTERRUPT`, { state: taskState(pid, tid) });
      }
      // Spin first, as waitStop does: the stop usually comes within a few hundred microseconds,
      // and the shortest sleep costs more than that here (timer slack).
      if (spins >= 2000) sleepMs(spins < 2100 ? 0.05 : 1);
      continue;
    }
    if (st.kind === 'exited' || st.kind === 'signaled') return null;
    if (st.kind !== 'stopped') continue;
    if (st.event === PTRACE_EVENT.STOP) {
      // SIGTRAP: our PTRACE_INTERRUPT. SIGSTOP/SIGTSTP/SIGTTIN/SIGTTOU: a group-stop.
      return { groupStop: st.signal === SIGNALS.SIGTRAP ? 0 : st.signal, pending };
    }
    if (st.event === 0) {
      // A signal-delivery-stop: a signal was being delivered when we attached. Keep it for
      // later and let the thread reach the interrupt trap (with signal 0 it is not delivered now).
      pending.push(st.signal);
      ptraceCont(tid, 0);
      continue;
    }
    ptraceCont(tid, 0);
  }
}

/**
 * Seizes every thread of `pid` (PTRACE_SEIZE + PTRACE_INTERRUPT), re-reading /proc/PID/task until
 * no new thread appears (a thread that was running may have created one before it stopped), and
 * saves the worker thread's registers, XSAVE state and signal mask.
 *
 * Typed failures: no-such-process, zombie, permission (with the tracer pid or Yama setting),
 * exited, timeout.
 */
export function prepareSync(pidNumber: number, options: PrepareOptions = {}): Injection {
  return seizeSync(pidNumber, options, Injection);
}

/** @internal prepareSync building a subclass of Injection. */
export function seizeSync<T extends Injection>(
  pidNumber: number,
  options: PrepareOptions,
  ctor: new (pid: Pid, worker: Pid, threads: Map<Pid, SeizedThread>, saved: SavedState, timeoutMs: number) => T,
): T {
  const pid = asPid(pidNumber);
  const timeoutMs = options.timeoutMs ?? 10_000;
  const state = taskState(pid);
  if (state === undefined) throw new CompelError('no-such-process', pid, 'no such process (/proc/PID missing)');
  if (state === 'Z' || state === 'X') throw new CompelError('zombie', pid, `task is ${state === 'Z' ? 'a zombie' : 'dead'}: nothing to seize`, { state });
  // Read once per process, before anything is stopped: the return chains need it (ReturnChain),
  // and running a program costs milliseconds a frozen task would wait.
  cpuXstateLayout();
  const seized = new Map<Pid, SeizedThread>();
  const deadline = Date.now() + timeoutMs;
  try {
    for (let round = 0; ; round++) {
      if (round > 100 || Date.now() > deadline) {
        throw new CompelError('timeout', pid, `thread list did not settle after ${round} rounds`, { seized: [...seized.keys()] });
      }
      let tids: Pid[];
      try {
        tids = listThreads(pid);
      } catch {
        throw new CompelError('exited', pid, 'process exited while being seized');
      }
      const fresh = tids.filter((t) => !seized.has(t));
      if (fresh.length === 0) break;
      for (const tid of fresh) {
        try {
          // TRACESYSGOOD: our remote syscalls stop at syscall entry and exit (see ReturnChain).
          ptraceSeize(tid, PTRACE_O.TRACESYSGOOD | seccompSuspension(pid, tid));
        } catch (err) {
          if (isSysError(err, 'ESRCH')) continue; // the thread exited meanwhile
          if (isSysError(err, 'EPERM') && tid !== pid && taskState(pid, tid) === 'Z') continue;
          if (isSysError(err, 'EPERM') && tid === pid) {
            // ptrace refuses a task that has exited (exit_state set) with EPERM: a process that
            // became a zombie between the caller's look and the seize is that, not a permission
            // problem (a shell's short-lived child, for one).
            const st = taskState(pid);
            if (st === 'Z') throw new CompelError('zombie', pid, 'task exited while being seized: a zombie now', { state: st });
            if (st === undefined || st === 'X') throw new CompelError('exited', pid, 'task exited while being seized', { state: st ?? 'gone' });
          }
          if (isSysError(err, 'EPERM') || isSysError(err, 'EACCES')) {
            let evidence: Record<string, unknown> = { state: taskState(pid, tid) };
            try {
              const status = readStatus(pid);
              evidence = { ...evidence, tracerPid: Number(status.TracerPid), uid: status.Uid };
            } catch { /* gone */ }
            throw new CompelError('permission', pid, `ptrace(PTRACE_SEIZE) refused for thread ${tid} (${(err as SysError).code})`, evidence, err as SysError);
          }
          throw err;
        }
        try {
          ptraceInterrupt(tid);
        } catch (err) {
          if (!isSysError(err, 'ESRCH')) throw err;
        }
        const stop = waitSeizeStop(pid, tid, deadline);
        if (stop === null) {
          try { ptraceDetach(tid); } catch { /* gone */ }
          continue;
        }
        seized.set(tid, { tid, groupStop: stop.groupStop, pendingSignals: stop.pending });
      }
    }
    const worker = options.tid === undefined ? (seized.has(pid) ? pid : [...seized.keys()][0]) : asPid(options.tid);
    if (worker === undefined || !seized.has(worker)) {
      throw new CompelError('exited', pid, `thread ${options.tid ?? pid} is not among the seized threads`, { seized: [...seized.keys()] });
    }
    const saved: SavedState = {
      regs: ptraceGetRegs(worker),
      xsave: ptraceGetRegset(worker, NT.X86_XSTATE),
      sigmask: ptraceGetSigmask(worker),
    };
    return new ctor(pid, worker, seized, saved, timeoutMs);
  } catch (err) {
    for (const tid of seized.keys()) {
      try { ptraceDetach(tid, seized.get(tid)!.pendingSignals[0] ?? 0); } catch { /* gone */ }
    }
    if (err instanceof CompelError) throw err;
    if (isSysError(err, 'ESRCH')) throw new CompelError('exited', pid, 'process exited while being seized', {}, err as SysError);
    throw err;
  }
}

/** Async form of {@link prepareSync}. */
export async function prepare(pid: number, options: PrepareOptions = {}): Promise<Injection> {
  return prepareSync(pid, options);
}

/**
 * The parasite: a blob of position-independent code (native/parasite.c) that runs inside the
 * seized task and serves typed requests over a unix socket, so that bulk work (moving pages into
 * pipes, collecting per-task state) costs one message instead of one ptrace round trip per call.
 *
 * Loading, with one remote syscall (see injection.ts), a ptrace round trip that costs 0.5-1 ms on
 * these machines while the task is frozen:
 *   mmap(MAP_SHARED | MAP_ANONYMOUS, RWX) in the task -> the injector opens the mapping's shmem
 *   file through /proc/PID/map_files (CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE): both hold the
 *   same file -> blob and control area written through the injector's fd
 *   -> the worker thread is started at the daemon entry with all signals blocked; the daemon
 *   opens its socket(AF_UNIX, SOCK_SEQPACKET) and connects to a listening socket of ours itself.
 * Without those capabilities, three remote syscalls: memfd_create in the task (its name on the
 * worker's stack, below its return chain), opened by the injector through /proc/PID/fd/N, then
 * mmap(MAP_SHARED, RWX) and close in the task (mapBlobHome).
 *
 * Memory of the blob mapping (shared with the injector, which writes the control area directly):
 *
 *   base                    base+ctl                          base+stack           base+size
 *   | code .data .bss  | pad | ctl | chain | frame | buffers | stack (64 KiB) ... |
 *
 * Cure: the daemon answers FINI and waits for the next request, where the injector takes the
 * thread back with PTRACE_INTERRUPT; it unmaps the blob, closes the socket and restores registers
 * and mask with ptrace. If the injector dies instead, the socket
 * reaches EOF and the parasite restores the task itself: it copies the prepared chain below the
 * task's red zone and jumps into the task's own "syscall; ret" code with munmap(blob), then
 * "pop rax; ret" and "syscall; ret" again perform rt_sigreturn from a frame holding the original
 * registers, signal mask and XSAVE state (see native/parasite.c).
 */
import { readFileSync, statSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import {
  accept4, AF_UNIX, bind, close, F, fcntl, ftruncate, getsockopt, listen, O, open, pipe2, pollOne, POLL, pwrite, recvmsg, sendmsg,
  setsockopt, SO, SOCK, socket, sockaddrUn, SOL_SOCKET, splice, timeval, toSigframeFpstate, asRemoteAddress,
  MAP, PROT, syscallNumber, SysError, isSysError, ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK,
  type Fd, type Pid, type RemoteAddress, type SyscallName, type UserRegs, type RemoteRange, read as readFd, pread,
  xstateBv, xstateXcr0, XSAVE_HEADER_OFFSET,
} from '@criu-ts/sys';
import { CompelError } from './errors.js';
import { undoInterruptEintr, type Injection } from './injection.js';
import {
  CMD, CTL, MISC_FIELDS, MISC_SIZE, PARASITE_MAGIC, POSIX_TIMER_SIZE, REP_HDR_SIZE, REPLY_MAX, REQ_SIZE,
  SIGACTION_SIZE, SIGCONTEXT_CSGSFSSS, SIGCONTEXT_FPSTATE, SIGCONTEXT_GPRS, SIGFRAME, UC_FP_XSTATE,
  UC_SIGCONTEXT_SS, UC_STRICT_RESTORE_SS, type ParasiteCommand,
} from './parasite-abi.js';
import { listPosixTimers, taskState } from './proc.js';
import { nativeDir } from './native.js';
import { buildSigframe, cpuXstateLayout, restartedRegs, sigframeXstateLayout } from './sigframe.js';

// child_process on first use, not at import: loading it (with the net and dgram modules it pulls
// in) costs the criu-ts command ~4 ms of start-up, and a plain dump never spawns anything.
const childProcess = () => process.getBuiltinModule('node:child_process');

/** A compiled blob: flat code and the offsets of its symbols. */
export interface Blob {
  code: Buffer;
  symbols: Record<string, number>;
  /** Bytes the blob occupies once loaded (code + .bss). */
  size: number;
}

/** Loads native/build/parasite.bin and its symbol offsets (built by `npm run build`). */
export function loadParasiteBlob(dir = nativeDir()): Blob {
  const bin = `${dir}/build/parasite.bin`;
  const json = `${dir}/build/parasite.json`;
  const binStat = statSync(bin, { throwIfNoEntry: false });
  const jsonStat = statSync(json, { throwIfNoEntry: false });
  if (!binStat || !jsonStat) {
    throw new CompelError('parasite', 0, `parasite blob not built: ${bin} missing (run npm run build; it needs a C compiler)`);
  }
  // Read once per build of the files: infection runs with the task frozen, and reading and
  // parsing them costs ~0.4 ms. A rebuild (new mtime or size) is read again.
  const stamp = `${binStat.size}:${binStat.mtimeMs}:${jsonStat.size}:${jsonStat.mtimeMs}`;
  const cached = blobCache.get(dir);
  if (cached?.stamp === stamp) return cached.blob;
  const raw = JSON.parse(readFileSync(json, 'utf8')) as Record<string, string>;
  const symbols = Object.fromEntries(Object.entries(raw).map(([k, v]) => [k, Number(BigInt(v))]));
  const code = readFileSync(bin);
  for (const s of ['parasite_entry_daemon', 'parasite_entry_call', 'parasite_int3', '__blob_end']) {
    if (symbols[s] === undefined) throw new CompelError('parasite', 0, `parasite.json lacks ${s}`, { symbols });
  }
  const blob = { code, symbols, size: symbols.__blob_end! };
  blobCache.set(dir, { stamp, blob });
  return blob;
}

const blobCache = new Map<string, { stamp: string; blob: Blob }>();

/**
 * Compiles a user blob from C source with the parasite's own rules (no libc, position
 * independent, general registers only): entry points are plain C functions taking up to 5
 * integer arguments. Needs the system C compiler.
 */
export function compileBlob(sourcePath: string, outPath: string): Blob {
  // make runs in native/: relative paths would be read from there.
  const source = resolve(sourcePath);
  const outFile = resolve(outPath);
  try {
    childProcess().execFileSync('make', ['-s', '-C', nativeDir(), 'blob', `SRC=${source}`, `OUT=${outFile}`], { stdio: ['ignore', 'pipe', 'pipe'] });
  } catch (err) {
    const e = err as { stderr?: Buffer; message: string };
    throw new CompelError('parasite', 0, `compiling ${source} failed: ${e.stderr?.toString() || e.message}`);
  }
  const symbols: Record<string, number> = {};
  for (const line of readFileSync(`${outFile}.syms`, 'utf8').split('\n')) {
    const m = /^([0-9a-f]+) [TtDdBbRr] (\S+)$/.exec(line);
    if (m) symbols[m[2]!] = Number.parseInt(m[1]!, 16);
  }
  const code = readFileSync(outFile);
  return { code, symbols, size: Math.max(code.length, ...Object.values(symbols)) };
}

export interface Sigaction {
  signal: number;
  handler: bigint;
  flags: bigint;
  restorer: bigint;
  mask: bigint;
}

export interface Itimer {
  intervalSec: bigint;
  intervalUsec: bigint;
  valueSec: bigint;
  valueUsec: bigint;
}

export interface PosixTimer {
  id: number;
  overrun: number;
  intervalSec: bigint;
  intervalNsec: bigint;
  valueSec: bigint;
  valueNsec: bigint;
}

export type TaskMisc = { [K in (typeof MISC_FIELDS)[number]]: bigint } & { comm: string };

/** A user blob loaded next to the parasite; its functions run in the task on the parasite's thread. */
export interface LoadedBlob {
  base: RemoteAddress;
  call(symbol: string, ...args: Array<number | bigint>): bigint;
}

const PAGE = 4096;
const STACK_SIZE = 64 * 1024;
/** A stack for calls in the task's other threads (one at a time), after the daemon's. */
const THREAD_STACK_SIZE = 16 * 1024;
const BUF_SIZE = 16 * 1024;
const align = (v: number, a: number) => Math.ceil(v / a) * a;
const alignB = (v: bigint, a: bigint) => ((v + a - 1n) / a) * a;

/** `count` struct parasite_sigaction (signals 1..count), as DUMP_SIGACTIONS and DUMP_TASK write them. */
function decodeSigactions(raw: Buffer, count: number): Sigaction[] {
  const out: Sigaction[] = [];
  for (let i = 0; i < count; i++) {
    const o = i * SIGACTION_SIZE;
    out.push({
      signal: i + 1,
      handler: raw.readBigUInt64LE(o),
      flags: raw.readBigUInt64LE(o + 8),
      restorer: raw.readBigUInt64LE(o + 16),
      mask: raw.readBigUInt64LE(o + 24),
    });
  }
  return out;
}

/** Three struct itimerval (real, virtual, prof), as DUMP_ITIMERS and DUMP_TASK write them. */
function decodeItimers(raw: Buffer): { real: Itimer; virtual: Itimer; prof: Itimer } {
  const it = (i: number): Itimer => ({
    intervalSec: raw.readBigInt64LE(i * 32), intervalUsec: raw.readBigInt64LE(i * 32 + 8),
    valueSec: raw.readBigInt64LE(i * 32 + 16), valueUsec: raw.readBigInt64LE(i * 32 + 24),
  });
  return { real: it(0), virtual: it(1), prof: it(2) };
}

/** struct parasite_misc, as DUMP_MISC and parasite_dump_misc write it. */
function decodeMisc(raw: Buffer): TaskMisc {
  const misc = {} as TaskMisc;
  MISC_FIELDS.forEach((f, i) => { misc[f] = raw.readBigInt64LE(i * 8); });
  const comm = raw.subarray(MISC_FIELDS.length * 8, MISC_FIELDS.length * 8 + 16);
  misc.comm = comm.subarray(0, comm.indexOf(0) >= 0 ? comm.indexOf(0) : 16).toString('utf8');
  return misc;
}

/** What DUMP_TASK answers: dumpMisc, dumpSigactions and dumpItimers in one. */
export interface TaskAnswers {
  misc: TaskMisc;
  sigactions: Sigaction[];
  itimers: { real: Itimer; virtual: Itimer; prof: Itimer };
}

/** Bytes of DUMP_TASK's reply: struct parasite_misc, 64 struct parasite_sigaction, 3 struct itimerval. */
const TASK_ANSWERS_SIZE = MISC_SIZE + 64 * SIGACTION_SIZE + 3 * 32;

function decodeTaskAnswers(raw: Buffer): TaskAnswers {
  return {
    misc: decodeMisc(raw.subarray(0, MISC_SIZE)),
    sigactions: decodeSigactions(raw.subarray(MISC_SIZE), 64),
    itimers: decodeItimers(raw.subarray(MISC_SIZE + 64 * SIGACTION_SIZE)),
  };
}

/** A running parasite in a seized task. Created by {@link infect}; stopped by the injection's cure. */
export class Parasite {
  private sock: Fd | null;
  private readonly req = Buffer.alloc(REQ_SIZE);
  private readonly rep = Buffer.alloc(REP_HDR_SIZE + REPLY_MAX);
  private pipe: { r: Fd; w: Fd; remoteW: number | null; size: number } | null = null;
  private stopped = false;

  private constructor(
    readonly injection: Injection,
    /** Address of the blob mapping in the task. */
    readonly base: RemoteAddress,
    readonly size: number,
    private readonly memfd: Fd,
    private readonly ctlOff: number,
    private readonly bufOff: number,
    sock: Fd,
    private readonly remoteSock: number,
    readonly blob: Blob,
    /** True when the parasite can unmap itself if we die (gadgets found, room below the stack). */
    readonly selfCureUnmaps: boolean,
    /** The extended state the self-cure frame restores (undefined: the whole NT_X86_XSTATE image). */
    readonly selfCureXstate: { features: bigint; size: number } | undefined,
    /**
     * What DUMP_TASK answered when the daemon started, before it connected (see
     * InfectOptions.taskAtStart); undefined when not asked for or when that collection failed
     * (dumpTask() then says why).
     */
    readonly taskAtStart: TaskAnswers | undefined,
  ) {
    this.sock = sock;
  }

  /**
   * Loads the parasite into a seized task and starts it. Precondition: `inj` is seized and has no
   * parasite running.
   */
  static infectSync(inj: Injection, blob: Blob = loadParasiteBlob(), options: InfectOptions = {}): Parasite {
    const pid = inj.pid;
    const gadgets = inj.findGadgets();
    const fpLen = inj.saved.xsave.length + 4; // the most a frame's fpstate takes (the whole image)
    const chainMax = align(24 + SIGFRAME.size + 64 + fpLen, 64);
    const ctlOff = align(blob.size, PAGE);
    const chainOff = 256;
    const frameOff = chainOff + chainMax;
    const bufOff = frameOff + chainMax;
    const stackOff = align(ctlOff + bufOff + BUF_SIZE, PAGE);
    const size = stackOff + STACK_SIZE + THREAD_STACK_SIZE;

    // 1-2. The blob's home in the task, and our descriptor of the same file.
    const { base, memfd } = mapBlobHome(inj, size, options.blobHome ?? 'auto');
    try {
      pwrite(memfd, blob.code, 0n);
    } catch (err) {
      close(memfd);
      throw err;
    }

    // 3. The self-cure chain and frame, for the case where we die while the parasite runs. The
    // frame's extended state is cut to what this task's rt_sigreturn accepts (sigframe.ts), from
    // the CPU's XSAVE layout, read before the task was seized (prepareSync).
    const ctlAddr = base + BigInt(ctlOff);
    const stackTop = base + BigInt(stackOff + STACK_SIZE) - 64n;
    const xstate = sigframeXstateLayout(inj.saved.xsave, cpuXstateLayout());
    const orig = restartedRegs(undoInterruptEintr(inj.saved.regs));
    const ctl = Buffer.alloc(CTL.size);
    let chainAddr = 0n;
    let chain = Buffer.alloc(0);
    if (gadgets.syscallRet && gadgets.popRaxRet) {
      const below = inj.saved.regs.rsp - 128n; // the red zone belongs to the interrupted code
      const start = (below - BigInt(chainMax)) & ~63n;
      const stackVma = inj.seizedMaps().find((v) => v.start <= start && inj.saved.regs.rsp <= v.end && v.perms.startsWith('rw'));
      if (stackVma) {
        const frame = buildSigframe(orig, inj.saved.sigmask, inj.saved.xsave, start + 16n, gadgets.syscallRet, xstate);
        chain = Buffer.alloc(16 + frame.length);
        chain.writeBigUInt64LE(gadgets.popRaxRet, 0);
        chain.writeBigUInt64LE(15n /* rt_sigreturn */, 8);
        frame.copy(chain, 16);
        chainAddr = start;
      }
    }
    const frameInBlob = ctlAddr + BigInt(frameOff);
    const fallback = buildSigframe(orig, inj.saved.sigmask, inj.saved.xsave, frameInBlob, 0n, xstate);

    // 4. The control socket: the daemon opens it and connects to a listening socket of ours
    // (abstract name), as the first thing it does; the address travels in the control area.
    const listenName = `\0criu-ts-compel-${process.pid}-${pid}-${Date.now()}-${Math.random().toString(36).slice(2)}`;
    const addr = sockaddrUn(listenName);
    if (addr.length > CTL.connect_addr_max) throw new RangeError(`socket address of ${addr.length} bytes`);
    ctl.writeBigUInt64LE(PARASITE_MAGIC, CTL.magic);
    ctl.writeInt32LE(-1, CTL.sock);
    ctl.writeBigUInt64LE(base, CTL.blob_addr);
    ctl.writeBigUInt64LE(BigInt(size), CTL.blob_len);
    ctl.writeBigUInt64LE(chainAddr, CTL.chain_addr);
    ctl.writeBigUInt64LE(BigInt(chain.length), CTL.chain_len);
    ctl.writeBigUInt64LE(BigInt(chainOff), CTL.chain_off);
    ctl.writeBigUInt64LE(gadgets.syscallRet ?? 0n, CTL.gadget_syscall_ret);
    ctl.writeBigUInt64LE(BigInt(16 + SIGFRAME.uc_stack), CTL.uc_stack_off);
    ctl.writeBigUInt64LE(frameInBlob, CTL.frame_in_blob);
    ctl.writeUInt32LE(addr.length, CTL.connect_len);
    addr.copy(ctl, CTL.connect_addr);
    // The buffer is free until our first request: the daemon's answers at start go there.
    if (options.taskAtStart) ctl.writeBigUInt64LE(BigInt(bufOff), CTL.task_at_start_off);
    pwrite(memfd, ctl, BigInt(ctlOff));
    if (chain.length > 0) pwrite(memfd, chain, BigInt(ctlOff + chainOff));
    pwrite(memfd, fallback, BigInt(ctlOff + frameOff));

    // 5. Start the daemon on the blob's stack and take its connection.
    const listener = socket(AF_UNIX, SOCK.SEQPACKET | SOCK.CLOEXEC);
    let sock: Fd;
    let remoteSock: number;
    let started = false;
    try {
      try {
        bind(listener, addr);
        listen(listener, 1);
        inj.startWorkerSync({ ...inj.saved.regs, rip: base + BigInt(blob.symbols.parasite_entry_daemon!), rsp: stackTop, rdi: ctlAddr });
        started = true;
        options.meanwhile?.();
        sock = acceptDaemon(listener, inj);
        remoteSock = readCtlSock(memfd, ctlOff);
        if (remoteSock < 0) throw new CompelError('parasite', pid, `the parasite connected but its control area shows no socket (${remoteSock})`);
      } catch (err) {
        // The daemon did not come up: take the thread back and close what it may have opened;
        // cure unmaps the blob and puts the registers back.
        if (started) {
          try {
            inj.takeBackWorkerSync('parasite start');
            const opened = readCtlSock(memfd, ctlOff);
            if (opened >= 0) inj.syscallRawSync('close', opened);
          } catch { /* the first failure is the one to report */ }
        }
        close(memfd);
        throw err;
      }
    } finally {
      close(listener);
    }
    inj.undoOnDeath('parasite socket', 'close', remoteSock);
    setsockopt(sock, SOL_SOCKET, SO.RCVTIMEO, timeval(inj.timeoutMs));
    setsockopt(sock, SOL_SOCKET, SO.SNDTIMEO, timeval(inj.timeoutMs));
    let taskAtStart: TaskAnswers | undefined;
    if (options.taskAtStart) {
      const raw = Buffer.alloc(8 + TASK_ANSWERS_SIZE);
      pread(memfd, raw, BigInt(ctlOff + bufOff));
      if (raw.readBigInt64LE(0) >= 0n) taskAtStart = decodeTaskAnswers(raw.subarray(8));
    }
    const parasite = new Parasite(inj, base, size, memfd, ctlOff, bufOff, sock, remoteSock, blob, chainAddr !== 0n, xstate, taskAtStart);
    inj.onCure(() => parasite.stopSync());
    return parasite;
  }

  /** Sends one request (with fds attached if given) and returns the reply. */
  private command(cmd: ParasiteCommand, args: Array<number | bigint> = [], fds: Fd[] = []): { ret: bigint; data: Buffer; fds: Fd[] } {
    this.send(cmd, args, fds);
    return this.receive(cmd);
  }

  /**
   * A request sent whose reply is not read yet (see dumpPagesStart): the next request, cure's
   * FINI included, reads that reply first, so replies never cross.
   */
  private inFlight: ParasiteCommand | null = null;

  private send(cmd: ParasiteCommand, args: Array<number | bigint>, fds: Fd[]): void {
    if (this.sock === null || this.stopped) throw new CompelError('state', this.injection.pid, 'parasite command after cure');
    this.settle();
    this.req.fill(0);
    this.req.writeUInt32LE(cmd, 0);
    args.forEach((a, i) => this.req.writeBigUInt64LE(BigInt.asUintN(64, BigInt(a)), 8 + i * 8));
    try {
      retryEintr(() => sendmsg(this.sock!, this.req, fds));
    } catch (err) {
      throw this.explainSocketError(err, cmd);
    }
    this.inFlight = cmd;
  }

  /**
   * Reads the reply of a request still in flight, if any, and drops it (whoever started it did
   * not wait for it): before any other request, and before anything else is written to the
   * control area, which the parasite may still be reading (the iovecs of DUMP_PAGES).
   */
  private settle(): void {
    if (this.inFlight !== null) this.receive(this.inFlight);
  }

  /**
   * Calls `whileWaiting` about once a millisecond until the reply in flight can be read (or the
   * socket has failed, which receive() then reports), for at most the injection's timeout.
   */
  private pollReply(whileWaiting: () => void): void {
    const deadline = Date.now() + this.injection.timeoutMs;
    while (Date.now() < deadline) {
      let ready = 0;
      try {
        ready = pollOne(this.sock!, POLL.IN, 1);
      } catch (err) {
        if (!isSysError(err, 'EINTR')) return; // receive() meets the same failure and says it
      }
      if (ready !== 0) return;
      whileWaiting();
    }
  }

  private receive(cmd: ParasiteCommand): { ret: bigint; data: Buffer; fds: Fd[] } {
    if (this.sock === null) throw new CompelError('state', this.injection.pid, 'parasite reply after cure');
    // Whatever happens below, this reply is no longer awaited (a broken socket has no more).
    this.inFlight = null;
    try {
      // With SO_RCVTIMEO set, a signal to us interrupts recvmsg with EINTR even when its handler
      // asks for restarts (socket(7)); the reply is still on its way: wait again.
      const got = retryEintr(() => recvmsg(this.sock!, this.rep, 8));
      if (got.bytes < REP_HDR_SIZE) throw new CompelError('parasite', this.injection.pid, `short reply (${got.bytes} bytes) to command ${cmd}`);
      const ret = this.rep.readBigInt64LE(0);
      const rcmd = this.rep.readUInt32LE(8);
      const len = this.rep.readUInt32LE(12);
      if (rcmd !== cmd || len > got.bytes - REP_HDR_SIZE) {
        throw new CompelError('parasite', this.injection.pid, `reply out of protocol: command ${rcmd} len ${len} to request ${cmd}`);
      }
      return { ret, data: Buffer.from(this.rep.subarray(REP_HDR_SIZE, REP_HDR_SIZE + len)), fds: got.fds };
    } catch (err) {
      throw this.explainSocketError(err, cmd);
    }
  }

  private explainSocketError(err: unknown, cmd: ParasiteCommand): unknown {
    if (err instanceof SysError && (err.code === 'EAGAIN' || err.code === 'EPIPE' || err.code === 'ECONNRESET')) {
      return new CompelError(err.code === 'EAGAIN' ? 'timeout' : 'parasite', this.injection.pid, `parasite did not answer command ${cmd} (${err.code})`, {}, err);
    }
    return err;
  }

  private check(ret: bigint, what: string): bigint {
    if (ret < 0n && ret >= -4095n) throw new SysError(what, Number(-ret), `in the parasite, pid ${this.injection.pid}`);
    return ret;
  }

  /** The tid and pid the parasite runs as (a health check). */
  ping(): { tid: number; pid: number } {
    const r = this.command(CMD.PING);
    return { tid: Number(r.ret), pid: Number(r.data.readBigInt64LE(0)) };
  }

  /** A system call made by the parasite itself: no ptrace round trip. Returns RAX (-errno on failure). */
  syscallRaw(nameOrNr: SyscallName | number, ...args: Array<number | bigint>): bigint {
    if (args.length > 5) throw new RangeError('the parasite passes at most 5 syscall arguments');
    const nr = typeof nameOrNr === 'number' ? nameOrNr : syscallNumber(nameOrNr);
    return this.command(CMD.SYSCALL, [nr, ...args]).ret;
  }

  /** rt_sigaction(sig, NULL, &old) for signals 1..64. */
  dumpSigactions(): Sigaction[] {
    const r = this.command(CMD.DUMP_SIGACTIONS);
    return decodeSigactions(r.data, Number(r.ret));
  }

  /**
   * What dumpMisc, dumpSigactions and dumpItimers answer, in one request: one round trip to the
   * parasite instead of three while the task is frozen.
   */
  dumpTask(): TaskAnswers {
    const r = this.command(CMD.DUMP_TASK);
    this.check(r.ret, 'dump task');
    if (r.data.length < TASK_ANSWERS_SIZE) throw new CompelError('parasite', this.injection.pid, `DUMP_TASK reply of ${r.data.length} bytes, ${TASK_ANSWERS_SIZE} expected`);
    return decodeTaskAnswers(r.data);
  }

  /** getitimer() for ITIMER_REAL, ITIMER_VIRTUAL and ITIMER_PROF. */
  dumpItimers(): { real: Itimer; virtual: Itimer; prof: Itimer } {
    const r = this.command(CMD.DUMP_ITIMERS);
    this.check(r.ret, 'getitimer');
    return decodeItimers(r.data);
  }

  /** timer_gettime() and timer_getoverrun() of POSIX timers (default: every id in /proc/PID/timers). */
  dumpPosixTimers(ids: number[] = listPosixTimers(this.injection.pid)): PosixTimer[] {
    if (ids.length === 0) return [];
    if (ids.length * POSIX_TIMER_SIZE > REPLY_MAX) throw new RangeError(`too many timers in one request: ${ids.length}`);
    const buf = Buffer.alloc(ids.length * 4);
    ids.forEach((id, i) => buf.writeInt32LE(id, i * 4));
    this.settle();
    pwrite(this.memfd, buf, BigInt(this.ctlOff + this.bufOff));
    const r = this.command(CMD.DUMP_POSIX_TIMERS, [ids.length, this.bufOff]);
    this.check(r.ret, 'timer_gettime');
    const out: PosixTimer[] = [];
    for (let i = 0; i < Number(r.ret); i++) {
      const o = i * POSIX_TIMER_SIZE;
      out.push({
        id: r.data.readInt32LE(o), overrun: r.data.readInt32LE(o + 4),
        intervalSec: r.data.readBigInt64LE(o + 8), intervalNsec: r.data.readBigInt64LE(o + 16),
        valueSec: r.data.readBigInt64LE(o + 24), valueNsec: r.data.readBigInt64LE(o + 32),
      });
    }
    return out;
  }

  /** Ids, umask, prctl state, personality, sigaltstack, clear_child_tid and comm of the worker thread. */
  dumpMisc(): TaskMisc {
    const r = this.command(CMD.DUMP_MISC);
    if (r.data.length < MISC_SIZE) throw new CompelError('parasite', this.injection.pid, `DUMP_MISC reply of ${r.data.length} bytes`);
    return decodeMisc(r.data);
  }

  /**
   * The DUMP_MISC answer of another thread of the task (sigaltstack, tid address, pdeath signal,
   * securebits and no_new_privs are per thread): the thread runs the parasite's dump_misc itself,
   * on a stack of its own in the blob, while the daemon waits for requests. One ptrace round trip
   * instead of one per question. Precondition: `tid` is a seized thread other than the worker.
   */
  threadMisc(tid: Pid): TaskMisc {
    const fn = this.blob.symbols.parasite_dump_misc;
    const entry = this.blob.symbols.parasite_entry_call;
    if (fn === undefined || entry === undefined) throw new CompelError('parasite', this.injection.pid, 'the parasite blob has no parasite_dump_misc');
    if (tid === this.injection.worker) return this.dumpMisc();
    this.settle();
    const out = this.base + BigInt(this.ctlOff + this.bufOff);
    const stackTop = this.base + BigInt(this.size) - 64n;
    const call = { entry: this.base + BigInt(entry), ctlAddr: this.base + BigInt(this.ctlOff), memfd: this.memfd, ctlOff: this.ctlOff, remoteSock: this.remoteSock };
    callInBlob(this.injection, tid, call, this.base + BigInt(fn), stackTop, [out], `parasite_dump_misc in thread ${tid}`);
    const raw = Buffer.alloc(MISC_SIZE);
    pread(this.memfd, raw, BigInt(this.ctlOff + this.bufOff));
    return decodeMisc(raw);
  }

  /** Installs copies of our `fds` in the task (SCM_RIGHTS); returns their numbers there (close-on-exec). */
  sendFds(fds: Fd[]): number[] {
    if (fds.length === 0 || fds.length > 16) throw new RangeError('send 1..16 fds at a time');
    const r = this.command(CMD.RECV_FDS, [], fds);
    const out: number[] = [];
    for (let i = 0; i < Number(r.ret); i++) out.push(r.data.readInt32LE(i * 4));
    return out;
  }

  /** Copies of the task's fds `remoteFds` (up to 5 per call), received here with SCM_RIGHTS. */
  receiveFds(remoteFds: number[]): Fd[] {
    if (remoteFds.length === 0 || remoteFds.length > 5) throw new RangeError('receive 1..5 fds at a time');
    const r = this.command(CMD.SEND_FDS, [remoteFds.length, ...remoteFds]);
    this.check(r.ret, 'sendmsg');
    return r.fds;
  }

  /** Our pipe for moving pages, made once: 1 MiB where allowed (the most without CAP_SYS_RESOURCE). */
  private localPipe(): { r: Fd; w: Fd; remoteW: number | null; size: number } {
    if (this.pipe) return this.pipe;
    const [r, w] = pipe2();
    let size = 64 * 1024;
    try {
      const max = Number(readFileSync('/proc/sys/fs/pipe-max-size', 'utf8'));
      size = fcntl(w, F.SETPIPE_SZ, Math.min(max, 1 << 20));
    } catch { /* keep the default size */ }
    this.pipe = { r, w, remoteW: null, size };
    return this.pipe;
  }

  /** localPipe, with its write end installed in the task for good (for VMSPLICE requests). */
  private ensurePipe(): { r: Fd; w: Fd; remoteW: number; size: number } {
    const p = this.localPipe();
    if (p.remoteW === null) p.remoteW = this.sendFds([p.w])[0]!;
    return p as { r: Fd; w: Fd; remoteW: number; size: number };
  }

  /**
   * Moves the task's pages in `ranges` into a pipe with vmsplice (no copy: the pipe references the
   * pages) and hands each filled pipe to `drain` (which must empty it, e.g. splice to a file),
   * in chunks of at most the pipe's size. Returns the bytes moved.
   * Precondition: the task stays stopped until the pipe is drained (the pages are referenced, not copied).
   */
  vmspliceRanges(ranges: readonly RemoteRange[], drain: (pipeRead: Fd, bytes: number) => void): number {
    const p = this.ensurePipe();
    const maxIov = Math.floor(BUF_SIZE / 16);
    let total = 0;
    let batch: Array<[bigint, number]> = [];
    let batchBytes = 0;
    const flush = () => {
      if (batch.length === 0) return;
      this.putIovecs(batch);
      const r = this.command(CMD.VMSPLICE, [p.remoteW, this.bufOff, batch.length, 0]);
      const n = Number(this.check(r.ret, 'vmsplice'));
      if (n !== batchBytes) throw new CompelError('parasite', this.injection.pid, `vmsplice moved ${n} of ${batchBytes} bytes`);
      drain(p.r, n);
      total += n;
      batch = [];
      batchBytes = 0;
    };
    for (const range of ranges) {
      let addr = BigInt(range.addr);
      let left = range.len;
      while (left > 0) {
        const take = Math.min(left, p.size - batchBytes);
        batch.push([addr, take]);
        batchBytes += take;
        addr += BigInt(take);
        left -= take;
        if (batchBytes === p.size || batch.length === maxIov) flush();
      }
    }
    flush();
    return total;
  }

  /** Writes `ranges` as struct iovec[] into the control area's buffer, for VMSPLICE and DUMP_PAGES; returns their total length. */
  private putIovecs(ranges: ReadonlyArray<readonly [bigint, number]>): number {
    this.settle();
    const iov = Buffer.alloc(ranges.length * 16);
    let total = 0;
    ranges.forEach(([addr, len], i) => {
      iov.writeBigUInt64LE(addr, i * 16);
      iov.writeBigUInt64LE(BigInt(len), i * 16 + 8);
      total += len;
    });
    pwrite(this.memfd, iov, BigInt(this.ctlOff + this.bufOff));
    return total;
  }

  /** The bytes of `ranges`, in order, through vmsplice (for tests and small reads). */
  readPages(ranges: readonly RemoteRange[]): Buffer {
    const out: Buffer[] = [];
    this.vmspliceRanges(ranges, (fd, bytes) => {
      const buf = Buffer.alloc(bytes);
      let got = 0;
      for (let i = 0; got < bytes && i < 10_000; i++) got += readFd(fd, buf.subarray(got));
      out.push(buf);
    });
    return Buffer.concat(out);
  }

  /**
   * Writes the pages of `ranges` to `outFd` at its file position: vmsplice then splice, one copy.
   *
   * By default the injector drains the pipe: one request per pipeful (1 MiB at most). With
   * `inTask`, the parasite gets the file and the pipe's read end and does the whole loop itself,
   * one request per 1024 ranges. The writes are then the task's: they count against its
   * RLIMIT_FSIZE (a larger file would raise SIGXFSZ in it) and its memory cgroup's page cache,
   * so the caller decides when that is harmless.
   */
  dumpPages(ranges: readonly RemoteRange[], outFd: Fd, options: DumpPagesOptions = {}): number {
    return this.dumpPagesStart(ranges, outFd, options)();
  }

  /**
   * dumpPages, returning as soon as the last in-task request is sent: the parasite copies those
   * pages on its own thread while the caller does other work, then the function returned waits
   * for the reply and gives the bytes written (it throws as dumpPages would). Until then, any
   * other use of this parasite (cure included) first waits for that reply and drops it. Without
   * `inTask`, everything is done before this returns.
   */
  dumpPagesStart(ranges: readonly RemoteRange[], outFd: Fd, options: DumpPagesOptions = {}): () => number {
    if (!options.inTask) {
      const moved = this.vmspliceRanges(ranges, (fd, bytes) => {
        let done = 0;
        for (let i = 0; done < bytes && i < 10_000; i++) done += splice(fd, null, outFd, null, bytes - done);
      });
      return () => moved;
    }
    // Both ends of the pipe travel with each request (and are closed after it in the task): no
    // round trip to install them first, while the task is frozen.
    const p = this.localPipe();
    const maxIov = Math.floor(BUF_SIZE / 16);
    let total = 0;
    const request = (batch: readonly RemoteRange[]) => {
      const want = this.putIovecs(batch.map((r): [bigint, number] => [BigInt(r.addr), r.len]));
      this.send(CMD.DUMP_PAGES, [0, this.bufOff, batch.length], [outFd, p.r, p.w]);
      return () => {
        if (this.inFlight !== CMD.DUMP_PAGES) throw new CompelError('state', this.injection.pid, 'the reply to DUMP_PAGES was taken by another request');
        if (options.whileWaiting) this.pollReply(options.whileWaiting);
        const n = Number(this.check(this.receive(CMD.DUMP_PAGES).ret, 'dump pages'));
        if (n !== want) throw new CompelError('parasite', this.injection.pid, `the parasite wrote ${n} of ${want} bytes of pages`);
        return n;
      };
    };
    let first = 0;
    for (; first + maxIov < ranges.length; first += maxIov) total += request(ranges.slice(first, first + maxIov))();
    if (first >= ranges.length) return () => total;
    const last = request(ranges.slice(first));
    return () => total + last();
  }

  /**
   * Loads a user blob (see compileBlob) into the task, executable, and returns a handle whose
   * `call(symbol, ...args)` runs that function on the parasite's thread. Unmapped on cure.
   */
  loadBlob(blob: Blob): LoadedBlob {
    this.settle();
    const len = align(Math.max(blob.size, blob.code.length, 1), PAGE);
    const addr = this.check(
      this.syscallRaw('mmap', 0, len, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.PRIVATE | MAP.ANONYMOUS, -1),
      'mmap',
    );
    this.userBlobs.push([addr, len]);
    this.injection.writeMemorySync(addr, blob.code);
    const base = asRemoteAddress(addr);
    return {
      base,
      call: (symbol, ...args) => {
        const off = blob.symbols[symbol];
        if (off === undefined) throw new RangeError(`blob has no symbol '${symbol}'`);
        if (args.length > 5) throw new RangeError('at most 5 arguments');
        return this.command(CMD.CALL, [base + BigInt(off), ...args]).ret;
      },
    };
  }

  private readonly userBlobs: Array<[bigint, number]> = [];

  /**
   * Stops the daemon (FINI, then PTRACE_INTERRUPT while it waits for the next request), then
   * unmaps the blob and closes the socket in the task with remote syscalls. Called by the
   * injection's cure.
   */
  stopSync(): void {
    if (this.stopped) return;
    const inj = this.injection;
    try {
      for (const [addr, len] of this.userBlobs.splice(0)) this.syscallRaw('munmap', addr, len);
      if (this.pipe?.remoteW != null) this.syscallRaw('close', this.pipe.remoteW);
      this.command(CMD.FINI, [PARASITE_MAGIC]);
      inj.takeBackWorkerSync('parasite FINI');
    } finally {
      this.stopped = true;
      if (this.sock !== null) close(this.sock);
      this.sock = null;
      if (this.pipe) { close(this.pipe.r); close(this.pipe.w); this.pipe = null; }
      close(this.memfd);
    }
    inj.syscallRawSync('close', this.remoteSock);
    inj.forgetUndo('parasite socket');
    inj.unmapSync(this.base);
  }
}

/**
 * The daemon's connection on `listener`, within the injection's timeout. Only the task itself
 * may connect: the abstract name is visible in /proc/net/unix, so a connection from any other
 * process is refused (and closed) rather than taken for the parasite.
 */
function acceptDaemon(listener: Fd, inj: Injection): Fd {
  const deadline = Date.now() + inj.timeoutMs;
  for (let round = 0; round < 1000; round++) {
    const left = deadline - Date.now();
    if (left <= 0) break;
    let ready: number;
    try {
      ready = pollOne(listener, POLL.IN, left);
    } catch (err) {
      // A signal to us (a profiler's SIGPROF, a terminal's SIGWINCH): wait on for what is left.
      if (isSysError(err, 'EINTR')) continue;
      throw err;
    }
    if (ready === 0) break;
    const conn = accept4(listener, SOCK.CLOEXEC);
    const ucred = getsockopt(conn, SOL_SOCKET, SO.PEERCRED, 12); // struct ucred: pid, uid, gid
    if (ucred.readInt32LE(0) === inj.pid) return conn;
    close(conn);
  }
  throw new CompelError('timeout', inj.pid, `the parasite did not connect within ${inj.timeoutMs} ms`, { state: taskState(inj.pid, inj.worker) });
}

/** The control socket's number in the task, as the daemon recorded it in the control area (-1: none). */
function readCtlSock(memfd: Fd, ctlOff: number): number {
  const raw = Buffer.alloc(4);
  pread(memfd, raw, BigInt(ctlOff + CTL.sock));
  return raw.readInt32LE(0);
}

/** Where a blob call reports (parasite_entry_call's registers): the blob's control area and socket. */
interface BlobCallSite {
  /** Address of parasite_entry_call in the task. */
  readonly entry: bigint;
  readonly ctlAddr: bigint;
  /** The blob's memfd on our side, and the control area's offset in it. */
  readonly memfd: Fd;
  readonly ctlOff: number;
  /** The control socket's fd in the task: the call waits on it to be taken back. */
  readonly remoteSock: number;
}

/**
 * Calls `fn(args)` of the blob in thread `tid` through parasite_entry_call (see its comment in
 * native/parasite-entry.S and Injection.callSync): the result comes back in ctl->call_ret once
 * ctl->call_done is set, read through the memfd. Returns it.
 */
function callInBlob(inj: Injection, tid: Pid, site: BlobCallSite, fn: bigint, stackTop: bigint, args: Array<number | bigint>, what: string): bigint {
  const a = args.map((x) => BigInt.asUintN(64, BigInt(x)));
  const slot = Buffer.alloc(16);
  pwrite(site.memfd, slot, BigInt(site.ctlOff + CTL.call_ret));
  return inj.callSync(tid, what, (own, chainSp, syscallRet) => ({
    ...own, rip: site.entry, rsp: stackTop & ~0xfn, rdi: fn, rsi: a[0] ?? 0n, rdx: a[1] ?? 0n, rcx: a[2] ?? 0n, r8: a[3] ?? 0n, r9: a[4] ?? 0n,
    r12: site.ctlAddr, r13: chainSp ?? 0n, r14: chainSp === null ? 0n : syscallRet, r15: BigInt(site.remoteSock),
  }), () => {
    pread(site.memfd, slot, BigInt(site.ctlOff + CTL.call_ret));
    return slot.readBigUInt64LE(8) === 0n ? undefined : slot.readBigInt64LE(0);
  });
}

/** Runs a socket call again while it fails with EINTR (bounded: a signal storm is an error). */
function retryEintr<T>(call: () => T): T {
  for (let attempt = 0; ; attempt++) {
    try {
      return call();
    } catch (err) {
      if (!(err instanceof SysError && err.code === 'EINTR') || attempt >= 1000) throw err;
    }
  }
}

/** Options of {@link Parasite.dumpPagesStart} and {@link Parasite.dumpPages}. */
export interface DumpPagesOptions {
  /** The parasite writes the pages itself, on the task's thread (else we splice what it vmsplices). */
  readonly inTask?: boolean;
  /**
   * In-task only: called about once a millisecond while we wait for the parasite's reply (work
   * for our own CPU meanwhile, such as starting the writeback of what is written so far).
   */
  readonly whileWaiting?: () => void;
}

/** How {@link Parasite.infectSync} puts the blob in the task. */
export interface InfectOptions {
  /**
   * 'auto' (default): a shared anonymous mapping opened through /proc/PID/map_files when we may
   * (one remote syscall), else a memfd (three). 'memfd': the memfd way always.
   */
  blobHome?: 'auto' | 'memfd';
  /**
   * The daemon collects what {@link Parasite.dumpTask} answers as it starts, before it connects,
   * and the parasite has it as `taskAtStart`: one round trip to the task less. Meant for a task
   * that stays frozen until it is used (only the ITIMER_REAL countdown moves meanwhile).
   */
  taskAtStart?: boolean;
  /**
   * Work for our own thread while the task starts the daemon (it runs in the task's thread,
   * usually on another CPU): called once, after the daemon was started and before we wait for
   * its connection. If it throws, the infection is undone and its error thrown.
   */
  meanwhile?: () => void;
}

/**
 * A shared mapping of `size` bytes in the task, readable, writable and executable, with our own
 * descriptor of the file behind it (what the blob and the control area are written through).
 *
 * First way, one remote syscall: a shared anonymous mapping (mmap), whose shmem file we open
 * through /proc/PID/map_files. That needs CAP_SYS_ADMIN or CAP_CHECKPOINT_RESTORE in the initial
 * user namespace (proc(5)); each remote syscall is two ptrace stops of the frozen task, 0.5-1 ms
 * on these machines. Second way, three: memfd_create in the task, opened by us through
 * /proc/PID/fd, mapped (mmap) and closed in the task.
 *
 * Either way MAP_POPULATE: the parasite's first touch of each page of its code, stack and buffers
 * would otherwise be a page fault in the frozen task, and faults are dear on these machines
 * (shadow paging): populated, the first requests (misc, sigactions, the page copy's start) took
 * about 3 ms less (medians of 15 dumps of a 64 MiB memhog each way).
 */
function mapBlobHome(inj: Injection, size: number, how: 'auto' | 'memfd'): { base: RemoteAddress; memfd: Fd } {
  if (how === 'auto' && mapFilesAllowed()) {
    const base = inj.mapSync(size, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.SHARED | MAP.ANONYMOUS | MAP.POPULATE);
    try {
      return { base, memfd: open(`/proc/${inj.pid}/map_files/${base.toString(16)}-${(base + BigInt(size)).toString(16)}`, O.RDWR) };
    } catch (err) {
      inj.unmapSync(base);
      // Not ours to open after all (a user namespace): the memfd way. Anything else is a failure.
      if (!isSysError(err, 'EPERM') && !isSysError(err, 'EACCES')) throw err;
      mapFilesRefused = true;
    }
  }
  // A memfd in the task. Its name goes on the worker's stack (below its return chain), or in a
  // page mapped for it when the task has no chain.
  const name = Buffer.from('criu-ts-parasite\0');
  let scratch: RemoteAddress | null = null;
  let namePtr = inj.stackScratchSync(name);
  if (namePtr === null) {
    scratch = inj.mapSync(PAGE);
    inj.writeMemorySync(scratch, name);
    namePtr = scratch;
  }
  // Each descriptor's undo is registered before it exists (see Injection.undoOnDeath): the
  // task's next descriptor is its lowest free one.
  inj.undoOnDeath('parasite memfd', 'close', inj.lowestFreeFd());
  const remoteMemfd = Number(inj.syscallRawSync('memfd_create', namePtr, 1 /* MFD_CLOEXEC */));
  if (remoteMemfd < 0) {
    inj.forgetUndo('parasite memfd');
    if (scratch !== null) inj.unmapSync(scratch);
    throw new SysError('memfd_create', -remoteMemfd, `remote, in pid ${inj.pid}`);
  }
  inj.undoOnDeath('parasite memfd', 'close', remoteMemfd);
  let memfd: Fd;
  try {
    memfd = open(`/proc/${inj.pid}/fd/${remoteMemfd}`, O.RDWR);
    ftruncate(memfd, size);
  } catch (err) {
    inj.syscallRawSync('close', remoteMemfd);
    inj.forgetUndo('parasite memfd');
    if (scratch !== null) inj.unmapSync(scratch);
    throw err;
  }
  // Mapped in the task; the task's descriptor is not needed any more.
  try {
    return { base: inj.mapSync(size, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.SHARED | MAP.POPULATE, remoteMemfd), memfd };
  } catch (err) {
    close(memfd);
    throw err;
  } finally {
    inj.syscallRawSync('close', remoteMemfd);
    inj.forgetUndo('parasite memfd');
    if (scratch !== null) inj.unmapSync(scratch);
  }
}

/** CAP_SYS_ADMIN (21) and CAP_CHECKPOINT_RESTORE (40), as bits of CapEff. */
const MAP_FILES_CAPS = (1n << 21n) | (1n << 40n);
let mapFilesRefused = false;
/** Our CapEff has one of MAP_FILES_CAPS: read once (infection runs while the task is frozen). */
let mapFilesCaps: boolean | undefined;

/** Whether we may open /proc/PID/map_files entries: one of MAP_FILES_CAPS, and no refusal seen yet. */
function mapFilesAllowed(): boolean {
  if (mapFilesRefused) return false;
  if (mapFilesCaps === undefined) {
    const line = /^CapEff:\s+([0-9a-f]+)$/m.exec(readFileSync('/proc/self/status', 'utf8'));
    mapFilesCaps = line !== null && (BigInt(`0x${line[1]}`) & MAP_FILES_CAPS) !== 0n;
  }
  return mapFilesCaps;
}

/** Loads and starts the parasite in a seized task. */
export function infectSync(inj: Injection, blob?: Blob, options?: InfectOptions): Parasite {
  return Parasite.infectSync(inj, blob, options);
}

// File descriptors, fs state (cwd, root, umask) and the session of the restored task.
//
// Every open file is created by the task itself (remote syscalls), so it is the task's own open
// file description with the dumped flags. By kind:
//   reg        openat of the dumped path (or its recreated ghost), lseek to the dumped position
//   tty        criu-ts's own terminal, inherited by the stub (--shell-job)
//   pipe       pipe2 once per pipe; each end used by the dump goes to its fds, the buffered bytes
//              are written back (by criu-ts, through /proc/PID/fd) and the capacity is set again
//   fifo       the path opened O_RDWR first (a holder, so that no open blocks and the buffered
//              bytes have a pipe to stay in), then opened with the dumped flags
//   eventfd    eventfd2 (semaphore mode kept), the counter written back
//   signalfd   signalfd4 with the dumped mask
//   eventpoll  epoll_create1; its targets are added once every fd has its final number
//   timerfd    timerfd_create; armed last, with the remaining time and pending ticks
//   unixsk     every unix socket of the tree at once, in the first process that has one (pairs,
//              listeners and their accepted connections depend on each other, and their ends
//              may be in different processes; the others take theirs from criu-ts with a
//              remote pidfd_getfd): see unix-sockets.ts
//   inetsk     made by criu-ts (TCP repair works on a local fd) and taken by the task with a
//              remote pidfd_getfd: see inet-sockets.ts
//   pty        a pty of the tree (master or slave): made by criu-ts with its index, termios and
//              queued bytes (ptys.ts), taken by the task with a remote pidfd_getfd
//   ctty       /dev/tty opened again, once the task has its pty as controlling terminal
//   fanotify   fanotify_init with the dumped flags, then every mark again (fanotify.ts)
// Fds that shared one description at dump time (same files.img id, e.g. stdout and stderr on one
// file) get one open and dups, so they share the offset again. Across processes (a pipe between
// two commands, a file inherited over fork): the first process that needs the file creates it,
// criu-ts keeps a duplicate of it (pidfd_getfd), and every later process takes that very open
// file description from criu-ts with a remote pidfd_getfd (SharedFiles below).
//
// Numbering: the stub's own fds (0-2: /dev/null or criu-ts's terminal) are still there, and a
// fresh open takes the lowest free number. So every source is first moved above the highest
// dumped fd (F_DUPFD), then the stub's fds are closed, then each source is dup3'd onto its
// dumped number (with O_CLOEXEC from fdinfo), and finally the temporaries are closed.
import { readdirSync, readlinkSync } from 'node:fs';
import {
  asPid, close as closeLocal, errnoName, F, fcntl, SysError, O, open as openLocal, pidfdGetfd, pidfdOpen, write as writeLocal, type Fd,
} from '@criu-ts/sys';
import { createNetlinkSocket } from './netlink-sockets.js';
import { createPacketSocket } from './packet-sockets.js';
import type { FdImage, ImageSet, RegFile } from './image-set.js';
import { LEASE_BREAKING, LOCK_KIND, unixSocketsOf, type FileOwner, type FileLockImage, type InotifyWatch, type OpenFileImage, type PipeData } from './fd-images.js';
import { createUnixSockets, planUnixSockets, type UnixSocketImage } from './unix-sockets.js';
import { RestoreError } from './errors.js';
import type { InetSockets } from './inet-sockets.js';
import { remote, remoteOpen } from './memory.js';
import { MemfdInodes } from './memfd.js';
import type { Ptys } from './ptys.js';
import { fanotifyMarkCalls } from './fanotify.js';
import type { RestoreTask } from './remote-task.js';

const SEEK_SET = 0;
const AT_FDCWD = -100;
/** Flags that only make sense when creating a file: never replayed. */
const CREATE_ONLY = O.CREAT | O.EXCL | O.TRUNC | O.CLOEXEC;
/** __O_TMPFILE: fdinfo keeps it (with O_DIRECTORY: O_TMPFILE is both) on a file opened so. */
const O_TMPFILE_BIT = 0o20000000;

/**
 * The flags to open a regular file again with: without the creation-only ones and, for a file
 * made with O_TMPFILE (which was its directory's open), without O_TMPFILE's __O_TMPFILE |
 * O_DIRECTORY, which would make the open of the file itself fail (ENOTDIR).
 */
function reopenFlags(flags: number): number {
  const out = flags & ~CREATE_ONLY;
  return out & O_TMPFILE_BIT ? out & ~(O_TMPFILE_BIT | O.DIRECTORY) : out;
}
const O_DIRECT = 0o40000;
/** The status flags F_SETFL can change (fcntl(2)): the rest of a file's flags is fixed at open. */
const O_ASYNC = 0o20000;
/**
 * The status flags F_SETFL can change (fcntl(2)) and that are set as each file is made. O_ASYNC
 * is not among them: turning it on records the fd number SIGIO reports (si_fd), so it is set on
 * the final fd once every fd is in place.
 */
const SETFL_MASK = O.APPEND | O.NONBLOCK | O_DIRECT | 0o1000000 /* O_NOATIME */;

/** The open flags a file entry of any kind carries (terminals and sockets too), for O_ASYNC. */
function statusFlagsOf(file: OpenFileImage<RegFile>): number {
  switch (file.kind) {
    case 'reg':
    case 'fifo':
      return file.reg.flags;
    default:
      return 'flags' in file ? file.flags : 0;
  }
}
const EPOLL_CTL_ADD = 1;
const F_SETSIG = 10;
const F_SETOWN_EX = 15;
const EFD_SEMAPHORE = 1;
/** TFD_IOC_SET_TICKS = _IOW('T', 0, u64). */
const TFD_IOC_SET_TICKS = 0x40085400;

function openFds(pid: number): number[] {
  return readdirSync(`/proc/${pid}/fd`).map(Number).filter((n) => Number.isInteger(n)).sort((a, b) => a - b);
}

function isTerminal(pid: number, fd: number): boolean {
  try {
    return /^\/dev\/(pts\/\d+|tty\w*|console)$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`));
  } catch {
    return false;
  }
}

const u64 = (v: bigint): Buffer => {
  const b = Buffer.alloc(8);
  b.writeBigUInt64LE(BigInt.asUintN(64, v));
  return b;
};

/**
 * Open files that more than one restored process holds (by files.img id), and pipes whose ends
 * are in more than one process (by pipe id): created once, by the first process that needs them,
 * then held by criu-ts (a pidfd_getfd duplicate: the same open file description) until every
 * process has taken its copy. One per restore; close() when the restore ends, either way.
 */
export class SharedFiles {
  private readonly files = new Map<number, Fd>();
  private readonly pipes = new Map<number, { read: Fd; write: Fd }>();
  /** criu-ts's duplicates of the unix sockets made by another process than the one using them, by file id. */
  private readonly unixFds = new Map<number, Fd>();
  /** Whether the tree's unix sockets were made (by the first process that needed one). */
  unixMade = false;

  private constructor(
    private readonly fileIds: ReadonlySet<number>,
    private readonly pipeIds: ReadonlySet<number>,
    /** Every unix socket of the tree, once each: made together (see FileCreator's unixsk case). */
    readonly unixSockets: readonly UnixSocketImage[],
    /** Every file in flight in the tree's unix sockets, by file id (made by the process that makes the sockets). */
    readonly inFlight: ReadonlyMap<number, FdImage>,
  ) {}

  /** Which files and pipes the processes of `sets` share (terminals excepted: each takes criu-ts's own). */
  static plan(sets: readonly ImageSet[]): SharedFiles {
    const fileUsers = new Map<number, Set<number>>();
    const pipeUsers = new Map<number, Set<number>>();
    const add = (map: Map<number, Set<number>>, key: number, pid: number) => {
      if (!map.has(key)) map.set(key, new Set());
      map.get(key)!.add(pid);
    };
    // Files in flight are made by the process that makes the unix sockets: the first that has one.
    const unixMaker = sets.find((set) => set.fds.some((slot) => slot.file.kind === 'unixsk'))?.pid;
    const inFlight = new Map<number, FdImage>();
    for (const set of sets) {
      for (const slot of set.fds) {
        // Terminals: criu-ts's own (shell job) or made by criu-ts for every holder (ptys.ts).
        if (slot.file.kind === 'tty' || slot.file.kind === 'pty') continue;
        add(fileUsers, slot.fileId, set.pid);
        if (slot.file.kind === 'pipe') add(pipeUsers, slot.file.pipeId, set.pid);
      }
      for (const slot of set.inFlight) {
        inFlight.set(slot.fileId, slot);
        if (unixMaker === undefined) continue;
        add(fileUsers, slot.fileId, unixMaker);
        if (slot.file.kind === 'pipe') add(pipeUsers, slot.file.pipeId, unixMaker);
      }
    }
    const shared = (map: Map<number, Set<number>>) => new Set([...map].filter(([, users]) => users.size > 1).map(([key]) => key));
    return new SharedFiles(shared(fileUsers), shared(pipeUsers), unixSocketsOf(sets.flatMap((s) => [...s.fds, ...s.inFlight])), inFlight);
  }

  /** criu-ts's duplicate of unix socket `fileId` when another process made it. */
  unixSocket(fileId: number): Fd | undefined {
    return this.unixFds.get(fileId);
  }

  /** Keeps duplicates of the unix sockets process `pid` made for other processes (fd in `pid` by file id). */
  keepUnixSockets(pid: number, fds: ReadonlyMap<number, number>, ownIds: ReadonlySet<number>): void {
    this.unixMade = true;
    for (const [fileId, fd] of fds) if (!ownIds.has(fileId) && !this.unixFds.has(fileId)) this.unixFds.set(fileId, SharedFiles.grab(pid, fd));
  }

  isShared(fileId: number): boolean {
    return this.fileIds.has(fileId);
  }

  isSharedPipe(pipeId: number): boolean {
    return this.pipeIds.has(pipeId);
  }

  /** criu-ts's duplicate of a shared file already created, if any. */
  file(fileId: number): Fd | undefined {
    return this.files.get(fileId);
  }

  pipe(pipeId: number): { read: Fd; write: Fd } | undefined {
    return this.pipes.get(pipeId);
  }

  /** Duplicates fd `fd` of restored process `pid` into criu-ts. */
  private static grab(pid: number, fd: number): Fd {
    const pidfd = pidfdOpen(asPid(pid));
    try {
      return pidfdGetfd(pidfd, fd);
    } finally {
      closeLocal(pidfd);
    }
  }

  keepFile(fileId: number, pid: number, fd: number): void {
    if (this.fileIds.has(fileId) && !this.files.has(fileId)) this.files.set(fileId, SharedFiles.grab(pid, fd));
  }

  keepPipe(pipeId: number, pid: number, read: number, write: number): void {
    if (this.pipeIds.has(pipeId) && !this.pipes.has(pipeId)) this.pipes.set(pipeId, { read: SharedFiles.grab(pid, read), write: SharedFiles.grab(pid, write) });
  }

  close(): void {
    for (const fd of this.files.values()) closeLocal(fd);
    for (const p of this.pipes.values()) {
      closeLocal(p.read);
      closeLocal(p.write);
    }
    for (const fd of this.unixFds.values()) closeLocal(fd);
    this.files.clear();
    this.pipes.clear();
    this.unixFds.clear();
  }
}

/** Creates the task's open files, one kind at a time, parking each above every fd number in use. */
class FileCreator {
  private nextTemp: number;
  /** Pipes made so far, by pipe id: their two ends (parked fds) and which ends the dump uses. */
  private readonly pipes = new Map<number, { read: number; write: number; used: Set<number> }>();
  /** FIFO holders (O_RDWR opens), by pipe id. */
  private readonly fifoHolders = new Map<number, number>();
  /** Parked fds that are not any dumped file: closed once everything is in place. */
  readonly extra: number[] = [];
  /** Parked fds of the unix sockets, by file id (all made on the first one met). */
  private unixSockets?: Map<number, number>;
  /** Work for after every fd has its final number. */
  readonly afterPlacement: Array<(finalFd: (fileId: number) => number) => void> = [];
  /** Parked fd of every file made (or received) so far, by file id: one open file description each. */
  private readonly made = new Map<number, number>();

  constructor(
    private readonly task: RestoreTask,
    private readonly inherited: readonly number[],
    firstTemp: number,
    private readonly pathOf: (f: RegFile) => string,
    private readonly allSlots: readonly FdImage[] = [],
    private readonly shared: SharedFiles | undefined,
    private readonly inet: InetSockets | undefined,
    private readonly memfds: MemfdInodes,
    private readonly ptys: Ptys | undefined,
    /** Files in flight in unix sockets' queues that this process may have to make, by file id. */
    private readonly inFlightFiles: ReadonlyMap<number, FdImage> = new Map(),
  ) {
    this.nextTemp = firstTemp;
  }

  /**
   * The parked fd of a file in flight (SCM_RIGHTS), made here (or received) on first use; closed
   * with the temporaries once its message is sent (criu-ts sends a duplicate).
   */
  private inFlight(fileId: number): number {
    const slot = this.inFlightFiles.get(fileId) ?? this.allSlots.find((f) => f.fileId === fileId);
    if (!slot) throw new Error(`file id ${fileId} in flight in a unix socket's queue is not among the files to make`);
    const fd = this.create(slot);
    this.extra.push(fd);
    return fd;
  }

  /** A pidfd of criu-ts inside the task, for taking shared files from criu-ts (parked; closed at the end). */
  private criuPidfd: number | undefined;

  /** Takes criu-ts's fd `ours` into the task (remote pidfd_getfd: the same open file description). */
  private receive(ours: Fd, what: string): number {
    if (this.criuPidfd === undefined) {
      this.criuPidfd = this.park(this.call('pidfd_open of criu-ts', 'pidfd_open', process.pid, 0));
      this.extra.push(this.criuPidfd);
    }
    return this.park(this.call(`pidfd_getfd of ${what} from criu-ts`, 'pidfd_getfd', this.criuPidfd, ours, 0));
  }

  /** Creates one open file (or takes it from another process that has it) and returns its parked fd. */
  create(slot: FdImage): number {
    const known = this.made.get(slot.fileId);
    if (known !== undefined) return known;
    const fd = this.createOrReceive(slot);
    this.made.set(slot.fileId, fd);
    return fd;
  }

  private createOrReceive(slot: FdImage): number {
    const handed = slot.file.kind === 'pipe' ? undefined : this.shared?.file(slot.fileId);
    if (handed !== undefined) return this.receive(handed, `file id ${slot.fileId}`);
    const fd = this.createHere(slot);
    if (slot.owner && slot.file.kind !== 'tty') this.setOwner(fd, slot.owner, slot.fd >= 0 ? `fd ${slot.fd}` : `file id ${slot.fileId} (in flight)`);
    if (slot.file.kind !== 'tty' && slot.file.kind !== 'pty') this.shared?.keepFile(slot.fileId, this.task.pid, fd);
    return fd;
  }

  /** F_SETOWN_EX and F_SETSIG, as the file had them (they belong to the open file description). */
  private setOwner(fd: number, owner: FileOwner, what: string): void {
    if (owner.pid !== 0) {
      const ownerEx = Buffer.alloc(8);
      ownerEx.writeInt32LE(owner.type, 0);
      ownerEx.writeInt32LE(owner.pid, 4);
      const [arg] = this.task.scratchPut(ownerEx);
      this.call(`F_SETOWN_EX of ${what}`, 'fcntl', fd, F_SETOWN_EX, arg!);
    }
    if (owner.signum !== 0) this.call(`F_SETSIG of ${what}`, 'fcntl', fd, F_SETSIG, owner.signum);
  }

  private call(what: string, name: Parameters<RestoreTask['syscallRawSync']>[0], ...args: Array<number | bigint>): number {
    return Number(remote(this.task, 'files', what, name, ...args));
  }

  /** Moves `fd` to the next free number above every dumped and inherited fd. */
  private park(fd: number, closeOriginal = true): number {
    const temp = this.call(`F_DUPFD of fd ${fd}`, 'fcntl', fd, F.DUPFD, this.nextTemp);
    this.nextTemp = temp + 1;
    if (closeOriginal) this.call(`close ${fd}`, 'close', fd);
    return temp;
  }

  private setStatusFlags(fd: number, flags: number, what: string): void {
    if (flags & SETFL_MASK) this.call(`F_SETFL of ${what}`, 'fcntl', fd, F.SETFL, flags & SETFL_MASK);
  }

  /** Writes buffered bytes into a pipe of the task, from criu-ts, through /proc/PID/fd. */
  private fillPipe(fd: number, data: PipeData | undefined, what: string): void {
    if (!data) return;
    const writer = openLocal(`/proc/${this.task.pid}/fd/${fd}`, O.WRONLY | O.NONBLOCK);
    try {
      if (data.size !== undefined && fcntl(writer, F.GETPIPE_SZ) !== data.size) fcntl(writer, F.SETPIPE_SZ, data.size);
      for (let done = 0; done < data.bytes.byteLength; ) {
        const n = writeLocal(writer, data.bytes.subarray(done));
        if (n <= 0) throw new Error(`${what}: the pipe took ${done} of ${data.bytes.byteLength} bytes`);
        done += n;
      }
    } finally {
      closeLocal(writer);
    }
  }

  private createHere(slot: FdImage): number {
    const file: OpenFileImage<RegFile> = slot.file;
    const what = `fd ${slot.fd} (file id ${slot.fileId}, ${file.kind})`;
    switch (file.kind) {
      case 'reg': {
        const fd = remoteOpen(this.task, 'files', this.pathOf(file.reg), reopenFlags(file.reg.flags));
        if (file.reg.pos !== 0n) this.call(`lseek ${file.reg.name} to ${file.reg.pos}`, 'lseek', fd, file.reg.pos, SEEK_SET);
        return this.park(fd);
      }
      case 'tty': {
        // A terminal with --shell-job: criu-ts's own terminal, which the stub inherited.
        const candidates = [slot.fd, 0, 1, 2].filter((n) => this.inherited.includes(n) && isTerminal(this.task.pid, n));
        if (candidates.length === 0) throw new Error(`fd ${slot.fd} was a terminal but criu-ts has none to give (stdin/stdout/stderr are not terminals)`);
        return this.park(candidates[0]!, false);
      }
      case 'pipe': {
        let pipe = this.pipes.get(file.pipeId);
        const elsewhere = pipe ? undefined : this.shared?.pipe(file.pipeId);
        if (elsewhere) {
          // Made by another process (its bytes are already in it): this one takes both ends.
          pipe = { read: this.receive(elsewhere.read, `pipe ${file.pipeId}`), write: this.receive(elsewhere.write, `pipe ${file.pipeId}`), used: new Set() };
          this.pipes.set(file.pipeId, pipe);
        } else if (!pipe) {
          const [ends] = this.task.scratchPut(Buffer.alloc(8));
          this.call(`pipe2 for pipe ${file.pipeId}`, 'pipe2', ends!, file.flags & O_DIRECT);
          const got = this.task.read(ends!, 8);
          pipe = { read: this.park(got.readInt32LE(0)), write: this.park(got.readInt32LE(4)), used: new Set() };
          this.pipes.set(file.pipeId, pipe);
          this.fillPipe(pipe.write, file.data, `pipe ${file.pipeId}`);
          this.shared?.keepPipe(file.pipeId, this.task.pid, pipe.read, pipe.write);
        }
        const end = (file.flags & 3) === O.WRONLY ? O.WRONLY : O.RDONLY;
        let fd = end === O.WRONLY ? pipe.write : pipe.read;
        if (pipe.used.has(end)) {
          // A second open file description of the same end (reopened through /proc at dump time).
          fd = this.park(remoteOpen(this.task, 'files', `/proc/self/fd/${fd}`, end));
        }
        pipe.used.add(end);
        this.setStatusFlags(fd, file.flags, what);
        return fd;
      }
      case 'fifo': {
        const path = this.pathOf(file.reg);
        let holder = this.fifoHolders.get(file.pipeId);
        if (holder === undefined) {
          holder = this.park(remoteOpen(this.task, 'files', path, O.RDWR | O.NONBLOCK));
          this.fifoHolders.set(file.pipeId, holder);
          this.extra.push(holder);
          this.fillPipe(holder, file.data, `FIFO ${path}`);
        }
        const fd = this.park(remoteOpen(this.task, 'files', path, (file.reg.flags & ~CREATE_ONLY) | O.NONBLOCK));
        this.call(`F_SETFL of ${what}`, 'fcntl', fd, F.SETFL, file.reg.flags & SETFL_MASK);
        return fd;
      }
      case 'eventfd': {
        const fd = this.park(this.call(`eventfd2 for ${what}`, 'eventfd2', 0, file.semaphore ? EFD_SEMAPHORE : 0));
        if (file.counter !== 0n) {
          const [counter] = this.task.scratchPut(u64(file.counter));
          this.call(`write the counter of ${what}`, 'write', fd, counter!, 8);
        }
        this.setStatusFlags(fd, file.flags, what);
        return fd;
      }
      case 'unixsk': {
        // Every unix socket of the tree is made at once, by the first process that has one
        // (pairs, listeners and accepted connections depend on each other, and their ends may be
        // in different processes); the others take theirs from criu-ts with pidfd_getfd.
        const made = this.unixSockets?.get(file.id);
        if (made !== undefined) return made;
        const elsewhere = this.shared?.unixSocket(file.id);
        if (elsewhere !== undefined) return this.receive(elsewhere, what);
        if (this.shared?.unixMade) throw new Error(`${what}: the unix sockets of the tree were made without this one`);
        if (!this.unixSockets) {
          const own = unixSocketsOf(this.allSlots);
          const sockets = this.shared?.unixSockets ?? unixSocketsOf([...this.allSlots, ...this.inFlightFiles.values()]);
          const invalid = (message: string, evidence: Record<string, unknown> = {}): never => {
            throw new RestoreError('validate', message, evidence);
          };
          this.unixSockets = createUnixSockets({
            pid: this.task.pid,
            call: (w, name, ...args) => this.call(w, name, ...args),
            put: (...parts) => this.task.scratchPut(...parts),
            read: (addr, length) => this.task.read(addr as never, length),
            park: (fd) => this.park(fd),
            inFlight: (fileId) => this.inFlight(fileId),
          }, sockets, planUnixSockets(sockets, invalid));
          for (const s of sockets) {
            const fd = this.unixSockets.get(s.id)!;
            this.setStatusFlags(fd, s.flags, `unix socket id ${s.id}`);
          }
          // Sockets of other processes: criu-ts keeps them for those, this process closes its copy.
          const ownIds = new Set(own.map((s) => s.id));
          this.shared?.keepUnixSockets(this.task.pid, this.unixSockets, ownIds);
          for (const [id, fd] of this.unixSockets) if (!ownIds.has(id)) this.extra.push(fd);
        }
        return this.unixSockets.get(file.id)!;
      }
      case 'memfd': {
        // Each file entry is an open file description of the inode, which criu-ts made once for
        // the whole restore (mappings of it and other processes' fds open the same one).
        const fd = this.park(remoteOpen(this.task, 'files', this.memfds.pathOf(file.inode, what), file.flags & ~CREATE_ONLY));
        if (file.pos !== 0n) this.call(`lseek of ${what}`, 'lseek', fd, file.pos, SEEK_SET);
        this.setStatusFlags(fd, file.flags, what);
        return fd;
      }
      case 'pty': {
        if (!this.ptys) throw new Error(`${what}: ptys need the restore's Ptys`);
        // criu-ts's open file, status flags already as dumped (ptys.ts).
        return this.receive(this.ptys.fileFor(file.id, what), `${what} (pty ${file.info.index})`);
      }
      case 'ctty': {
        // /dev/tty: the task's controlling terminal, a pty of the tree it has had since its clone.
        const fd = this.park(remoteOpen(this.task, 'files', '/dev/tty', (file.flags & ~CREATE_ONLY) | O.NOCTTY));
        this.setStatusFlags(fd, file.flags, what);
        return fd;
      }
      case 'fanotify': {
        const fd = this.park(this.call(`fanotify_init for ${what}`, 'fanotify_init', file.initFlags, file.eventFlags));
        this.setStatusFlags(fd, file.flags, what);
        for (const mark of fanotifyMarkCalls(file.marks)) {
          const [path] = this.task.scratchPut(this.task.cString(mark.path));
          this.call(`fanotify_mark(0x${mark.flags.toString(16)}, 0x${mark.mask.toString(16)}) of ${mark.path} for ${what}`, 'fanotify_mark', fd, mark.flags, mark.mask, AT_FDCWD, path!);
        }
        return fd;
      }
      case 'inotify': {
        const fd = this.park(this.call(`inotify_init1 for ${what}`, 'inotify_init1', 0));
        this.setStatusFlags(fd, file.flags, what);
        this.addWatches(fd, file.watches, what);
        return fd;
      }
      case 'inetsk': {
        if (!this.inet) throw new Error(`${what}: inet sockets need the restore's InetSockets`);
        const ours = this.inet.create(file.sk);
        try {
          const fd = this.receive(ours as Fd, `${what}`);
          this.setStatusFlags(fd, file.sk.flags, what);
          return fd;
        } finally {
          this.inet.handedOver(ours);
        }
      }
      case 'netlinksk':
      case 'packetsk': {
        const ours = file.kind === 'netlinksk' ? createNetlinkSocket(file.sk) : createPacketSocket(file.sk);
        try {
          const fd = this.receive(ours, `${what}`);
          this.setStatusFlags(fd, file.sk.flags, what);
          return fd;
        } finally {
          closeLocal(ours);
        }
      }
      case 'signalfd': {
        const [mask] = this.task.scratchPut(u64(file.mask));
        const fd = this.park(this.call(`signalfd4 for ${what}`, 'signalfd4', -1, mask!, 8, 0));
        this.setStatusFlags(fd, file.flags, what);
        return fd;
      }
      case 'eventpoll': {
        const fd = this.park(this.call(`epoll_create1 for ${what}`, 'epoll_create1', 0));
        this.setStatusFlags(fd, file.flags, what);
        this.afterPlacement.push((finalFd) => {
          const epfd = finalFd(slot.fileId);
          for (const t of file.targets) {
            const event = Buffer.alloc(12); // struct epoll_event is packed on x86_64
            event.writeUInt32LE(t.events, 0);
            event.writeBigUInt64LE(BigInt.asUintN(64, t.data), 4);
            const [ev] = this.task.scratchPut(event);
            this.call(`epoll_ctl(ADD) of fd ${t.tfd} to epoll fd ${epfd}`, 'epoll_ctl', epfd, EPOLL_CTL_ADD, t.tfd, ev!);
          }
        });
        return fd;
      }
      case 'timerfd': {
        const fd = this.park(this.call(`timerfd_create for ${what}`, 'timerfd_create', file.clockid, 0));
        this.setStatusFlags(fd, file.flags, what);
        // Armed last so that the remaining time starts running as late as possible. The dumped
        // value is what was left (fdinfo), so it is set relative even for an absolute timer.
        this.afterPlacement.push((finalFd) => {
          const tfd = finalFd(slot.fileId);
          if (file.value[0] !== 0n || file.value[1] !== 0n) {
            const spec = Buffer.concat([u64(file.interval[0]), u64(file.interval[1]), u64(file.value[0]), u64(file.value[1])]);
            const [its] = this.task.scratchPut(spec);
            this.call(`timerfd_settime of ${what}`, 'timerfd_settime', tfd, 0, its!, 0);
          }
          if (file.ticks !== 0n) {
            const [ticks] = this.task.scratchPut(u64(file.ticks));
            this.call(`TFD_IOC_SET_TICKS of ${what}`, 'ioctl', tfd, TFD_IOC_SET_TICKS, ticks!);
          }
        });
        return fd;
      }
    }
  }

  /**
   * Adds each watch so that it gets its dumped watch descriptor. The kernel hands out wds in
   * increasing order and does not reuse a removed one until it wraps, so watches are added in
   * wd order and a number skipped at dump time (a watch removed since) is skipped here by
   * adding and removing a throwaway watch. Removing queues an IN_IGNORED event the task never
   * had: the queue is drained at the end (events queued at dump time are not kept, as in CRIU).
   */
  private addWatches(fd: number, watches: readonly InotifyWatch[], what: string): void {
    let skipped = false;
    for (const w of [...watches].sort((a, b) => a.wd - b.wd)) {
      const [path] = this.task.scratchPut(this.task.cString(w.path));
      for (let attempt = 0; ; attempt++) {
        const got = this.call(`inotify_add_watch ${w.path} for ${what}`, 'inotify_add_watch', fd, path!, w.mask);
        if (got === w.wd) break;
        if (got > w.wd || attempt > w.wd) {
          throw new Error(`${what}: watch ${w.path} came back as wd ${got}, not ${w.wd} (another watch of that inode, or wd numbers already used)`);
        }
        this.call(`inotify_rm_watch ${got} for ${what}`, 'inotify_rm_watch', fd, got);
        skipped = true;
      }
    }
    if (!skipped) return;
    const flags = this.call(`F_GETFL of ${what}`, 'fcntl', fd, F.GETFL);
    this.call(`F_SETFL of ${what}`, 'fcntl', fd, F.SETFL, flags | O.NONBLOCK);
    const [buffer] = this.task.scratchPut(Buffer.alloc(1024));
    for (let i = 0; i < 1000; i++) {
      const n = Number(this.task.syscallRawSync('read', fd, buffer!, 1024));
      if (n <= 0) break;
    }
    this.call(`F_SETFL of ${what}`, 'fcntl', fd, F.SETFL, flags);
  }

  /** Pipe ends no dumped fd uses (the other end lived outside the dump) are closed at the end. */
  unusedPipeEnds(): number[] {
    const unused: number[] = [];
    for (const p of this.pipes.values()) {
      if (!p.used.has(O.RDONLY)) unused.push(p.read);
      if (!p.used.has(O.WRONLY)) unused.push(p.write);
    }
    return unused;
  }
}

const LOCK_SH = 1;
const LOCK_EX = 2;
const LOCK_NB = 4;
const F_SETLK = 6;
const F_OFD_SETLK = 37;

/**
 * Takes a dumped file lock again, in the task, without waiting: a lock someone else took
 * meanwhile is a restore failure (as in criu), not a hang.
 *
 * A lease (F_SETLEASE) is taken by the task itself, so that the kernel makes the task the
 * file's owner for the break signal (fs/locks.c lease_setup: __f_setown to current), and F_SETSIG
 * restored with the file decides which signal that is. The kernel refuses (EAGAIN) a write
 * lease while any other open file description of the file exists anywhere, and a read lease
 * while the file is open for writing anywhere: criu-ts's own temporaries are closed by now (its
 * duplicates of files shared between restored processes are the lease's own open file
 * description, which does not count), but another process holding the file fails it, and the
 * error says so.
 */
function takeLock(task: RestoreTask, lock: FileLockImage, accessMode: number): void {
  const what = `${lock.type === 1 ? 'write' : 'read'} ${lock.flag === LOCK_KIND.LEASE ? 'lease' : 'lock'} on fd ${lock.fd}`;
  switch (lock.flag) {
    case LOCK_KIND.FLOCK:
      remote(task, 'files', `flock: ${what}`, 'flock', lock.fd, (lock.type === 1 ? LOCK_EX : LOCK_SH) | LOCK_NB);
      return;
    case LOCK_KIND.LEASE:
      if (lock.type & LEASE_BREAKING) breakLeaseAgain(task, lock, accessMode);
      else setLease(task, lock.fd, lock.type, what);
      return;
    default: {
      // struct flock: short l_type, short l_whence, (pad), off_t l_start, off_t l_len, pid_t l_pid.
      const flock = Buffer.alloc(32);
      flock.writeInt16LE(lock.type, 0);
      flock.writeInt16LE(0 /* SEEK_SET */, 2);
      flock.writeBigInt64LE(lock.start, 8);
      flock.writeBigInt64LE(lock.len, 16);
      const [arg] = task.scratchPut(flock);
      const posix = lock.flag === LOCK_KIND.POSIX;
      remote(task, 'files', `${posix ? 'F_SETLK' : 'F_OFD_SETLK'}: ${what}`, 'fcntl', lock.fd, posix ? F_SETLK : F_OFD_SETLK, arg!);
    }
  }
}

const F_RDLCK = 0;
const F_WRLCK = 1;
const F_UNLCK = 2;

/** fcntl(fd, F_SETLEASE, type) in the task, with what stands in its way when the kernel says EAGAIN. */
function setLease(task: RestoreTask, fd: number, type: number, what: string): void {
  const got = Number(task.syscallRawSync('fcntl', fd, F.SETLEASE, type));
  if (got >= 0) return;
  const why = got === -11 ? `: the file is open elsewhere (${type === F_WRLCK ? 'any other open file description' : 'an open for writing'} stands in its way)` : '';
  throw new RestoreError('files', `F_SETLEASE: ${what} failed with ${errnoName(-got)}${why}`, { pid: task.pid, fd, type, errno: -got });
}

/**
 * A lease that was being broken when dumped: taken as it was before the break, then broken
 * again from criu-ts with a non-blocking open of the file that conflicts with it, as CRIU does:
 * O_RDONLY when the lease was going down to a read lease (only a write lease is broken so),
 * O_WRONLY when it was going away. The kernel then signals the task again (F_SETSIG's signal,
 * kept pending: every signal is blocked in the task until its release) and gives it a new
 * lease-break-time to answer; no opener waits on it (the dumped one was outside the dump).
 * The type before the break is not recorded: a lease going down to read was a write lease; one
 * going away was a read lease when the fd is read-only (CRIU's guess too), a write lease
 * otherwise (a read lease cannot be had on a file open for writing).
 */
function breakLeaseAgain(task: RestoreTask, lock: FileLockImage, accessMode: number): void {
  const target = lock.type & ~LEASE_BREAKING;
  const before = target === F_RDLCK || accessMode !== O.RDONLY ? F_WRLCK : F_RDLCK;
  const what = `${before === F_WRLCK ? 'write' : 'read'} lease on fd ${lock.fd} (being broken to ${target === F_UNLCK ? 'none' : 'read'})`;
  setLease(task, lock.fd, before, what);
  let opened: Fd | undefined;
  try {
    opened = openLocal(`/proc/${task.pid}/fd/${lock.fd}`, (target === F_UNLCK ? O.WRONLY : O.RDONLY) | O.NONBLOCK);
  } catch (error) {
    // EWOULDBLOCK: the open conflicts with the lease, whose break has started.
    if (error instanceof SysError && error.code === 'EAGAIN') return;
    throw new RestoreError('files', `breaking the ${what} again`, { pid: task.pid, fd: lock.fd }, error);
  }
  closeLocal(opened);
  throw new RestoreError('files', `breaking the ${what} again: the open did not conflict with the lease`, { pid: task.pid, fd: lock.fd });
}

/**
 * `memfds`: the restore's memfd inodes (made for mappings already, or on first use here); when
 * not given, this call makes, seals and closes its own.
 */
export function restoreFiles(
  task: RestoreTask, set: ImageSet, pathOf: (f: RegFile) => string = (f) => f.linkRemap ?? f.name, shared?: SharedFiles, inet?: InetSockets, memfds?: MemfdInodes,
  ptys?: Ptys,
): void {
  if (!memfds) {
    const own = new MemfdInodes();
    try {
      restoreFiles(task, set, pathOf, shared, inet, own, ptys);
      own.sealAll();
    } finally {
      own.closeAll();
    }
    return;
  }
  const pid = task.pid;
  const inherited = openFds(pid);
  const inFlight = shared?.inFlight ?? new Map(set.inFlight.map((f) => [f.fileId, f]));
  const creator = new FileCreator(task, inherited, Math.max(2, ...set.fds.map((f) => f.fd), ...inherited) + 1, pathOf, set.fds, shared, inet, memfds, ptys, inFlight);
  const temps = new Map<number, number>(); // file id -> parked fd (above every dumped one)
  for (const slot of set.fds) {
    if (!temps.has(slot.fileId)) temps.set(slot.fileId, creator.create(slot));
  }
  const parked = new Set([...temps.values(), ...creator.extra, ...creator.unusedPipeEnds()]);
  for (const fd of inherited) {
    if (!parked.has(fd)) remote(task, 'files', `close inherited fd ${fd}`, 'close', fd);
  }
  const finalFds = new Map<number, number>();
  for (const f of set.fds) {
    remote(task, 'files', `dup3 onto fd ${f.fd}`, 'dup3', temps.get(f.fileId)!, f.fd, f.cloexec ? O.CLOEXEC : 0);
    if (!finalFds.has(f.fileId)) finalFds.set(f.fileId, f.fd);
  }
  for (const work of creator.afterPlacement) work((fileId) => finalFds.get(fileId)!);
  for (const [fileId, fd] of finalFds) {
    const slot = set.fds.find((f) => f.fileId === fileId)!;
    if (!(statusFlagsOf(slot.file) & O_ASYNC)) continue;
    const flags = Number(remote(task, 'files', `F_GETFL of fd ${fd}`, 'fcntl', fd, F.GETFL));
    remote(task, 'files', `F_SETFL O_ASYNC of fd ${fd}`, 'fcntl', fd, F.SETFL, flags | O_ASYNC);
  }
  const dumped = new Set(set.fds.map((f) => f.fd));
  for (const t of parked) if (!dumped.has(t)) remote(task, 'files', `close temporary fd ${t}`, 'close', t);
  // Locks last: closing any fd of a file drops the process's POSIX locks on it, temporaries too.
  for (const lock of set.locks) {
    const slot = set.fds.find((f) => f.fd === lock.fd)!;
    takeLock(task, lock, slot.file.kind === 'reg' ? slot.file.reg.flags & 3 : O.RDWR);
  }
}

export function restoreFs(task: RestoreTask, set: ImageSet): void {
  const [cwd] = task.scratchPut(task.cString(set.cwd.name));
  remote(task, 'fs', `chdir ${set.cwd.name}`, 'chdir', cwd!);
  if (set.root.name !== '/') {
    const [root] = task.scratchPut(task.cString(set.root.name));
    remote(task, 'fs', `chroot ${set.root.name}`, 'chroot', root!);
  }
  if (set.umask !== undefined) remote(task, 'fs', 'umask', 'umask', set.umask);
}

/**
 * A session leader gets its own session again (setsid: sid = pgid = its pid); a process-group
 * leader of a shell job its own group inside criu-ts's session; anything else stays in
 * criu-ts's group (only possible with --shell-job, checked when reading the images).
 */
export function restoreSession(task: RestoreTask, set: ImageSet): void {
  if (set.sid === set.pid) remote(task, 'session', 'setsid', 'setsid');
  else if (set.pgid === set.pid) remote(task, 'session', 'setpgid(0, 0)', 'setpgid', 0, 0);
}

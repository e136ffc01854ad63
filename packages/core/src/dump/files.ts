// Open files of a task: files.img (one file_entry per open file description), fdinfo-N.img (one
// entry per descriptor, pointing at its file id), and what deleted files need (remap-fpath.img
// plus a ghost-file-N.img holding the contents).
//
// Regular files, directories and character devices such as /dev/null are REG entries, named by
// path, with the open flags and position /proc/PID/fdinfo shows. A file that was unlinked while
// open keeps its name with " (deleted)" stripped; its contents go to a ghost image so restore can
// recreate it. Pipes and FIFOs (files/pipes.ts) and eventfd, epoll, signalfd and timerfd
// (files/anon-inodes.ts), AF_UNIX sockets with their queued messages (files/unix-sockets.ts) and
// TCP/UDP/raw sockets over IPv4/IPv6 (files/inet-sockets.ts), netlink and packet sockets
// (files/netlink-sockets.ts, files/packet-sockets.ts), inotify and fanotify groups
// (files/inotify.ts, files/fanotify.ts) and terminals, ptys of the tree included
// (files/terminals.ts), have entries of their own. Other kinds (io_uring...) are refused up
// front with an error naming the fd and its kind.
import { closeSync, fstatSync, openSync, readFileSync, readSync, readdirSync, readlinkSync, statSync, unlinkSync, type Stats } from 'node:fs';
import { dirname, join } from 'node:path';
import type { DecodedMessage } from '@criu-ts/images';
import { asPid, kcmp, unixDiagDump, type Fd, type Pid } from '@criu-ts/sys';
import { anonInodeKind, eventfdEntry, eventpollEntry, signalfdEntry, timerfdEntry } from './files/anon-inodes.js';
import { pipeInode, readPipeContents, type PipeContents } from './files/pipes.js';
import {
  controllingTerminalOf, deviceNumbers, masterSessionId, ptyMasterIndex, ptySlaveRdev, sessionOf, terminalKind, ttyInfoEntry, ttyInfoId, TTY_TYPE, type TerminalKind,
} from './files/terminals.js';
import { drainPtyInput, drainTty, refillPty } from '../pty-queues.js';
import { inotifyEntry } from './files/inotify.js';
import { fanotifyEntry } from './files/fanotify.js';
import { memfdInodeEntry, memfdName } from './files/memfd.js';
import { noOwner, ownerOf } from './files/owner.js';
import { FILE_LOCK_FLAG, fileLocks } from './files/locks.js';
import { peekQueue, socketInode, UnixSocketDumper, UnixSocketRefused, unixSocketInodes, type UnixDumpContext } from './files/unix-sockets.js';
import { grabFd, InetSocketDumper, precheckInetSocket, socketKindOf, type InetDumpOptions, type SocketRefused } from './files/inet-sockets.js';
import { netlinkSocketEntry } from './files/netlink-sockets.js';
import { PacketSocketTable } from './files/packet-sockets.js';
import { AT_SYMLINK_FOLLOW, close as closeFd, linkat, SysError } from '@criu-ts/sys';

/** fd_types values (fdinfo.proto). */
export const FD_TYPE = {
  REG: 1, PIPE: 2, FIFO: 3, INETSK: 4, UNIXSK: 5, EVENTFD: 6, EVENTPOLL: 7, INOTIFY: 8, SIGNALFD: 9, PACKETSK: 10, TTY: 11, FANOTIFY: 12, NETLINKSK: 13, TIMERFD: 17, MEMFD: 18,
} as const;
const O_CLOEXEC = 0o2000000;
const AF_NETLINK = 16;
const AF_PACKET = 17;
const KCMP_FILE = 0;
const FD_CLOEXEC = 1;

export class UnsupportedFileError extends Error {
  constructor(
    readonly fd: number,
    readonly target: string,
    readonly kind: string,
    /** Why, when it is more than "not supported yet". */
    readonly why = 'descriptors cannot be dumped yet',
  ) {
    super(`fd ${fd} (${target}): ${kind} ${why}`);
    this.name = 'UnsupportedFileError';
  }
}

/** A descriptor in flight in a unix socket's queue (SCM_RIGHTS) of a kind restore cannot send again. */
export class InFlightFileRefused extends UnsupportedFileError {
  constructor(target: string, reason: string, where: string) {
    super(-1, target, reason);
    this.message = `${where} is ${target}: ${reason} in flight (SCM_RIGHTS) cannot be dumped (files, pipes, FIFOs, unix sockets, eventfds, signalfds and memfds can)`;
    this.name = 'InFlightFileRefused';
  }
}

export interface GhostFile {
  readonly id: number;
  readonly entry: DecodedMessage;
  /** Where to read the contents from: the task's fd through /proc (the file has no name any more). */
  readonly source: string;
  readonly size: number;
}


export interface FileTableOptions {
  /** Largest deleted-while-open file whose contents are saved (criu's --ghost-limit). */
  readonly ghostLimit: number;
  /** Terminals are dumped (criu's --shell-job) instead of refused. */
  readonly shellJob?: boolean;
  /** File locks are saved (criu's --file-locks) instead of refused. */
  readonly fileLocks?: boolean;
  /**
   * Files unlinked while open are given a hard link to be restored through (criu's
   * --link-remap) where the kernel allows one, instead of a copy of their contents (ghost file).
   * Without it, an unlinked file that still has other links is refused.
   */
  readonly linkRemap?: boolean;
  /** Datagram unix sockets connected to a named socket outside the dump are saved (criu's --ext-unix-sk). */
  readonly extUnixSk?: boolean;
  /** The dump's TCP/UDP sockets (refused without it). */
  readonly inet?: InetSocketDumper;
  /**
   * Inodes of every socket a process of the dumped tree holds: a unix socket whose peer is among
   * them is dumped with it (its other end may be in another process: a socketpair shared across
   * fork, a connection between parent and child). Without it, each process's own sockets.
   */
  readonly treeSockets?: ReadonlySet<number>;
  /** Every process of the dumped tree (the sessions of terminals are looked up among them). */
  readonly treePids?: readonly number[];
}

/** Where one end of a pty is open in the dump: the first fd of its open file. */
interface PtyEnd {
  readonly pid: number;
  readonly fd: number;
  readonly path: string;
  readonly infoId: number;
}

export class FileTable {
  private nextId = 1;
  readonly files: DecodedMessage[] = [];
  readonly remaps: DecodedMessage[] = [];
  readonly ghosts: GhostFile[] = [];
  private readonly mappedFiles = new Map<string, number>();
  /** Buffered bytes of every pipe and FIFO met, by pipe inode (pipes-data.img, fifo-data.img). */
  readonly pipeData = new Map<number, PipeContents>();
  readonly fifoData = new Map<number, PipeContents>();
  /** fd_types of every file id, for fds that share an earlier fd's file. */
  private readonly typeOf = new Map<number, number>();
  private nextGhostId = 1;
  /**
   * Queued messages of unix sockets (sk-queues.img), oldest first per socket, by the receiving
   * socket's file id; `rights`: the file ids of the descriptors a message carries (SCM_RIGHTS).
   */
  readonly socketQueues: Array<{ idFor: number; bytes: Buffer; addr?: Buffer; rights?: number[] }> = [];
  /** Inodes of the sockets outside the dump already recorded (--ext-unix-sk). */
  private readonly externalSockets = new Set<number>();
  /** One per dumped process: peers are looked up among that process's sockets. */
  private readonly unixSockets = new Map<number, UnixSocketDumper>();
  /** packet_diag of the netns, read on the first packet socket. */
  private readonly packetSockets = new PacketSocketTable();
  /** Packet rings' bytes (packet-ring-<id>.img), by the socket's file id. */
  readonly packetRings: Array<{ id: number; bytes: Buffer }> = [];
  /** Sockets mapped into a task (packet rings), by inode: the file id their VMAs name, reserved before their fd is met. */
  private readonly mappedSockets = new Map<number, { id: number; maps: Array<{ pid: number; start: bigint; end: bigint; offset: bigint }> }>();
  /** Packet sockets described from an fd (a mapped one must be), with the length of their rings' mapping. */
  private readonly describedSockets = new Map<number, number>();
  private unixInodes?: Set<number>;
  /** The sock_diag dump of every unix socket and their peeked queues, shared by the processes' dumpers (taken once: the tree is frozen). */
  private readonly unixContext: UnixDumpContext = { queues: new Map() };
  /** Sockets dumped with the tree: those of its fds, then those found in flight in their queues. */
  private readonly treeSockets: Set<number> | undefined;
  /** Every descriptor dumped so far (the tree's and criu-ts's own copies of those in flight), for kcmp. */
  private readonly seenFds: Array<{ readonly pid: Pid; readonly fd: number; readonly id: number }> = [];
  /** Unix sockets whose entry is being made (a socket in flight in its own queue would recurse). */
  private readonly socketsInProgress = new Set<number>();

  /** tty-info.img entries, one per terminal device (ids as CRIU numbers them: terminals.ts). */
  readonly ttyInfos: DecodedMessage[] = [];
  /** st_rdev of each tty-info id recorded (two devices must not share an id). */
  private readonly ttyInfoIds = new Map<number, number>();
  /** The ptys met, by index: their master (one open file at most: each open of /dev/ptmx is a new pty) and slaves. */
  private readonly ptys = new Map<number, { master?: PtyEnd; slaves: PtyEnd[] }>();
  /** /dev/tty files met: decided in finishTerminals (their process's controlling terminal must be a pty of the dump). */
  private readonly cttyEnds: Array<{ pid: number; fd: number; path: string }> = [];
  /** tty-data.img entries: bytes queued in the ptys of the dump (see finishTerminals). */
  readonly ttyData: DecodedMessage[] = [];

  /** memfd.img entries, by inode number (the shmid of their contents), and where to read them. */
  readonly memfdInodes = new Map<number, DecodedMessage>();
  readonly memfdSources = new Map<number, { procFd: string; size: number }>();

  /** Hard links made for link remaps (--link-remap), removed again if the dump fails. */
  readonly linkRemapPaths: string[] = [];

  /** file-lock.img entries (criu's --file-locks). */
  readonly locks: DecodedMessage[] = [];
  private readonly lockKeys = new Set<string>();

  constructor(private readonly options: FileTableOptions) {
    this.treeSockets = options.treeSockets ? new Set(options.treeSockets) : undefined;
  }

  /**
   * Peeks the queue of every unix socket of the tree before any is dumped, following the
   * sockets in flight in them (and in their queues, in turn): a socket whose peer is in flight
   * is dumped with it (a socketpair one end of which was sent and not received yet), so those
   * must be known first. Each queue is peeked once (UnixDumpContext); the descriptors in flight
   * stay open in criu-ts until close().
   */
  peekUnixQueues(tasks: ReadonlyArray<{ readonly pid: Pid; readonly fds: readonly number[] }>): void {
    const diag = (this.unixContext.sockets ??= unixDiagDump());
    let buf: Buffer | undefined; // as big as the largest datagram a unix socket can queue (see unix-sockets.ts)
    const walk = (sock: Fd, ino: number, refuse: (reason: string) => never): void => {
      const sk = diag.get(ino);
      if (!sk || sk.state === 10 /* TCP_LISTEN */ || this.unixContext.queues.has(ino)) return;
      const queue = peekQueue(sock, sk.type, refuse, (buf ??= Buffer.allocUnsafe(8 << 20)));
      this.unixContext.queues.set(ino, queue);
      for (const [i, m] of queue.entries()) {
        for (const f of m.fds) {
          let inner: number | undefined;
          try {
            inner = socketInode(readlinkSync(`/proc/self/fd/${f}`));
          } catch {
            inner = undefined;
          }
          if (inner === undefined || !diag.has(inner)) continue;
          this.treeSockets?.add(inner);
          walk(f, inner, (reason) => refuse(`queued message ${i + 1} carries unix socket:[${inner}], whose own queue cannot be dumped: ${reason}`));
        }
      }
    };
    for (const { pid, fds } of tasks) {
      for (const fd of fds) {
        const ino = socketInodeOf(pid, fd);
        if (ino === undefined || !diag.has(ino) || this.unixContext.queues.has(ino)) continue;
        if (diag.get(ino)!.state === 10 /* TCP_LISTEN: its queue holds connections */) continue;
        const dup = grabFd(pid, fd);
        try {
          walk(dup, ino, (reason) => {
            throw new UnixSocketRefused(fd, ino, `(process ${pid}) ${reason}`);
          });
        } finally {
          closeFd(dup);
        }
      }
    }
  }

  /** Closes criu-ts's copies of the descriptors in flight (once the images are written: deleted files in flight are read through them). */
  close(): void {
    for (const queue of this.unixContext.queues.values()) for (const m of queue) for (const f of m.fds) closeFd(f);
    this.unixContext.queues.clear();
  }

  private get ghostLimit(): number {
    return this.options.ghostLimit;
  }

  private get shellJob(): boolean {
    return this.options.shellJob === true;
  }

  private get fileLocksAllowed(): boolean {
    return this.options.fileLocks === true;
  }

  /** The dump's TCP/UDP sockets (refused without it). */
  private get inet(): InetSocketDumper | undefined {
    return this.options.inet;
  }

  private allocate(): number {
    return this.nextId++;
  }

  private regEntry(id: number, path: string, flags: number, pos: bigint, stats: Stats | undefined, sizeFromStat: boolean): DecodedMessage {
    const reg: DecodedMessage = { id, flags, pos, fown: noOwner(), name: path };
    if (stats) {
      if (sizeFromStat && stats.isFile()) reg.size = BigInt(stats.size);
      reg.mode = stats.mode;
    }
    return reg;
  }

  /**
   * The file of a file-backed mapping (one id per file, whatever the number of VMAs). A file
   * deleted while mapped (`deleted`, as /proc/PID/maps says) gets its contents saved as a ghost
   * file, as an fd of a deleted file does: `statSource` (its /proc/PID/map_files entry) still
   * opens it. Deleted files are told apart by inode, since another file may take the same name.
   */
  mappedFile(path: string, openFlags: number, statSource: string, deleted = false): number {
    let stats: Stats | undefined;
    if (deleted) stats = statSync(statSource);
    const key = `${path}\0${openFlags}\0${stats?.ino ?? ''}`;
    const known = this.mappedFiles.get(key);
    if (known !== undefined) return known;
    const id = this.allocate();
    if (!stats) {
      try {
        stats = statSync(statSource);
      } catch {
        stats = undefined;
      }
    }
    // Unlinked while mapped: a link remap (--link-remap) where the kernel allows one, else a
    // ghost file when no link is left; with links left elsewhere, only a link keeps the mapping
    // on the same file, so it is refused without --link-remap.
    const linked = deleted && this.options.linkRemap === true ? this.linkRemap(id, statSource, path) : false;
    if (deleted && !linked && stats!.nlink > 0 && this.options.linkRemap !== true) {
      throw new Error(`${path} is mapped (${statSource}) after its name was removed, and the file has ${stats!.nlink} other link(s); dump with --link-remap to save it through a link`);
    }
    this.files.push({ type: FD_TYPE.REG, id, reg: this.regEntry(id, path, openFlags, 0n, stats, true) });
    this.mappedFiles.set(key, id);
    if (deleted && !linked && stats!.nlink === 0) this.ghost(id, statSource, stats!);
    return id;
  }

  /**
   * The file id of the socket a task maps (a packet socket's rings: /proc/PID/maps shows
   * socket:[ino]), as CRIU records it in the VMA's shmid: the id its files.img entry gets when
   * its descriptor is met in the files stage (checkMappedSockets then makes sure it was).
   */
  mappedSocket(ino: number, pid: number, start: bigint, end: bigint, offset: bigint): number {
    const known = this.mappedSockets.get(ino);
    if (known) {
      known.maps.push({ pid, start, end, offset });
      return known.id;
    }
    const id = this.allocate();
    this.mappedSockets.set(ino, { id, maps: [{ pid, start, end, offset }] });
    return id;
  }

  /**
   * After every fd is described: each mapping of a socket must be one restore can make again, a
   * whole ring mapping (packet_mmap takes nothing else) of a socket its own process holds (restore
   * maps that process's fd). Otherwise the images would look complete and not restore.
   */
  checkMappedSockets(): void {
    for (const [ino, m] of this.mappedSockets) {
      const ringBytes = this.describedSockets.get(ino);
      for (const map of m.maps) {
        const where = `process ${map.pid} maps socket:[${ino}] at 0x${map.start.toString(16)}-0x${map.end.toString(16)}`;
        if (ringBytes === undefined) throw new Error(`${where} (a packet ring) but no descriptor of the dumped tree holds that socket: it cannot be made again to map`);
        if (!this.seenFds.some((f) => f.pid === map.pid && f.id === m.id)) throw new Error(`${where} but holds no descriptor of it (another process does): restore maps the rings from the process's own descriptor`);
        if (map.offset !== 0n || map.end - map.start !== BigInt(ringBytes)) {
          throw new Error(`${where}, offset ${map.offset}: only the whole rings (${ringBytes} bytes from offset 0) can be mapped again, not a part`);
        }
      }
    }
  }

  /**
   * The MEMFD file a mapping of a memfd refers to (vma shmid), as CRIU records it: a file entry
   * no fd uses, pointing at the memfd's inode (memfd.img), which an fd of the same memfd shares.
   * `source` (the mapping's /proc/PID/map_files entry) opens the memfd for its contents.
   */
  mappedMemfd(name: string, source: string): number {
    const stats = statSync(source);
    const key = `memfd\0${stats.ino}`;
    const known = this.mappedFiles.get(key);
    if (known !== undefined) return known;
    const inodeId = this.memfdInodeId(source, name, stats);
    const id = this.allocate();
    // CRIU records the mapping's file with no flags; the VMA's fdflags say how it was opened.
    this.files.push({ type: FD_TYPE.MEMFD, id, memfd: { id, flags: 0, pos: 0n, fown: noOwner(), inode_id: inodeId } });
    this.typeOf.set(id, FD_TYPE.MEMFD);
    this.mappedFiles.set(key, id);
    return id;
  }

  /** The memfd.img inode id of the memfd `procFd` opens, recorded on first sight. */
  private memfdInodeId(procFd: string, name: string, stats: Stats): number {
    const known = this.memfdInodes.get(stats.ino)?.inode_id as bigint | undefined;
    if (known !== undefined) return Number(known);
    const inodeId = this.memfdInodes.size + 1;
    this.memfdInodes.set(stats.ino, memfdInodeEntry(procFd, name, stats, inodeId));
    this.memfdSources.set(stats.ino, { procFd, size: stats.size });
    return inodeId;
  }

  /** A directory given by path (cwd, root): CRIU records these with no open flags. */
  directory(path: string, statSource: string): number {
    const id = this.allocate();
    this.files.push({ type: FD_TYPE.REG, id, reg: this.regEntry(id, path, 0, 0n, statSync(statSource), false) });
    return id;
  }

  /**
   * One descriptor of task `pid`. One sharing the open file description of an fd dumped before
   * (dup, inherited; kcmp(2) KCMP_FILE says so) shares its file entry, as they share one offset.
   * `taskFds` are all the task's descriptors (epoll targets are looked up among them).
   */
  descriptor(pid: Pid, fd: number, taskFds: readonly number[] = []): DecodedMessage {
    const entry = this.describe(pid, fd, (candidate) => {
      for (const earlier of this.seenFds) if (kcmp(earlier.pid, pid, KCMP_FILE, earlier.fd, candidate) === 0) return earlier.id;
      return undefined;
    }, taskFds);
    this.seenFds.push({ pid, fd, id: Number(entry.id) });
    return entry;
  }

  /**
   * A descriptor in flight (SCM_RIGHTS) in a unix socket's queue, open in criu-ts as `ours`: a
   * file entry like any other (no fd of the tree points at it; restore sends it again), sharing
   * the id of a tree fd with the same open file description. Kinds restore can send again:
   * regular files and directories, pipes, FIFOs, unix sockets, eventfd, signalfd, memfd;
   * anything else is refused, naming it (`what`: the socket's fd and the message).
   */
  private inFlight(ours: Fd, what: string): number {
    const target = readlinkSync(`/proc/self/fd/${ours}`);
    const refuse = (reason: string): never => {
      throw new InFlightFileRefused(target, reason, what);
    };
    const ino = socketInode(target);
    if (ino !== undefined) {
      if (!this.unixContext.sockets?.has(ino)) refuse('a socket other than AF_UNIX');
      if (this.socketsInProgress.has(ino)) refuse('a unix socket whose queue holds itself (a reference cycle)');
    }
    const anon = anonInodeKind(target);
    if (anon !== undefined && anon !== 'eventfd' && anon !== 'signalfd') refuse(`an ${anon} descriptor`);
    if (ino === undefined && anon === undefined && pipeInode(target) === undefined) {
      const stats = statSync(`/proc/self/fd/${ours}`);
      if (terminalKind(target, stats)) refuse('a terminal');
    }
    const self = asPid(process.pid);
    try {
      return Number(this.descriptor(self, ours).id);
    } catch (error) {
      if (error instanceof InFlightFileRefused) throw error;
      // Its own refusal names criu-ts's copy of it: say where it is in flight instead.
      throw new InFlightFileRefused(target, `cannot be dumped: ${(error as Error).message}; a descriptor`, what);
    }
  }

  private describe(pid: Pid, fd: number, sameAs: (fd: number) => number | undefined, taskFds: readonly number[] = []): DecodedMessage {
    const procFd = `/proc/${pid}/fd/${fd}`;
    const fdinfoText = readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8');
    const info = parseFdinfo(fdinfoText);
    const fdinfoFlags = info.flags & O_CLOEXEC ? FD_CLOEXEC : 0;
    const flags = info.flags & ~O_CLOEXEC;
    let target = readlinkSync(procFd);
    const shared = sameAs(fd);
    this.collectLocks(pid, fd, fdinfoText, `fd ${fd} of process ${pid} (${target})`, shared !== undefined);
    if (shared !== undefined) return { id: shared, flags: fdinfoFlags, type: this.typeOf.get(shared)!, fd };
    const what = `fd ${fd} of process ${pid} (${target})`;

    const add = (type: number, member: string, entry: DecodedMessage, hasOwner = true, id = this.allocate()): DecodedMessage => {
      this.files.push({ type, id, [member]: { id, ...entry, ...(hasOwner ? { fown: ownerOf(pid, fd) } : {}) } });
      this.typeOf.set(id, type);
      return { id, flags: fdinfoFlags, type, fd };
    };

    const pipeId = pipeInode(target);
    if (pipeId !== undefined) {
      this.pipeContents(pipeId, pid, fd, this.pipeData);
      return add(FD_TYPE.PIPE, 'pipe', { pipe_id: pipeId, flags });
    }
    const anon = anonInodeKind(target);
    if (anon !== undefined) {
      switch (anon) {
        case 'eventfd':
          return add(FD_TYPE.EVENTFD, 'efd', eventfdEntry(fdinfoText, flags, what));
        case 'eventpoll':
          return add(FD_TYPE.EVENTPOLL, 'epfd', eventpollEntry(pid, fd, fdinfoText, flags, taskFds));
        case 'signalfd':
          return add(FD_TYPE.SIGNALFD, 'sgfd', signalfdEntry(fdinfoText, flags, what));
        case 'inotify':
          return add(FD_TYPE.INOTIFY, 'ify', inotifyEntry(fdinfoText, flags, what));
        case 'fanotify':
          return add(FD_TYPE.FANOTIFY, 'ffy', fanotifyEntry(pid, fdinfoText, flags, what));
        case 'timerfd':
          return add(FD_TYPE.TIMERFD, 'tfd', timerfdEntry(fdinfoText, flags, what));
        default:
          throw new UnsupportedFileError(fd, target, anon);
      }
    }
    const socketIno = socketInode(target);
    if (socketIno !== undefined) {
      // Read once per dump (the task is frozen; a socket it had is not one it makes meanwhile).
      this.unixInodes ??= unixSocketInodes(pid);
      if (!this.unixInodes.has(socketIno)) {
        if (!this.inet) throw new UnsupportedFileError(fd, target, 'socket (not AF_UNIX)');
        // The inet dumper's duplicate (taken already for a TCP socket when the locks were chosen).
        const dup = this.inet.dupOf(pid, fd);
        const kind = socketKindOf(dup);
        if (kind.domain === AF_NETLINK) return add(FD_TYPE.NETLINKSK, 'nlsk', netlinkSocketEntry(dup, fd, socketIno, flags, kind.protocol));
        const mapping = this.mappedSockets.get(socketIno);
        if (mapping && kind.domain !== AF_PACKET) throw new UnsupportedFileError(fd, target, `socket mapped into memory at 0x${mapping.maps[0]!.start.toString(16)} (only packet sockets' rings can be)`);
        if (kind.domain === AF_PACKET) {
          const packet = this.packetSockets.entry(dup, fd, socketIno, flags);
          const slot = add(FD_TYPE.PACKETSK, 'psk', packet.entry, true, mapping?.id ?? this.allocate());
          if (packet.ringBytes) this.packetRings.push({ id: Number(slot.id), bytes: packet.ringBytes });
          this.describedSockets.set(socketIno, packet.ringBytes?.length ?? 0);
          return slot;
        }
        const inet = this.inet.dump(pid, fd, socketIno, flags);
        const slot = add(FD_TYPE.INETSK, 'isk', inet.entry);
        for (const d of inet.queue) this.socketQueues.push({ idFor: Number(slot.id), bytes: d.bytes, addr: d.addr });
        return slot;
      }
      let dumper = this.unixSockets.get(pid);
      if (!dumper) {
        const sockets = this.treeSockets ?? new Set(taskFds.map((n) => socketInodeOf(pid, n)).filter((n): n is number => n !== undefined));
        dumper = new UnixSocketDumper(pid, sockets, this.unixContext, this.options.extUnixSk === true);
        this.unixSockets.set(pid, dumper);
      }
      this.socketsInProgress.add(socketIno);
      let slot: DecodedMessage;
      const queue: Array<{ bytes: Buffer; rights?: number[] }> = [];
      try {
        const socket = dumper.dump(fd, socketIno, flags);
        slot = add(FD_TYPE.UNIXSK, 'usk', socket.entry);
        for (const [i, m] of socket.queue.entries()) {
          const rights = m.fds.map((f, j) => this.inFlight(f, `descriptor ${j + 1} of queued message ${i + 1} of ${what}`));
          queue.push({ bytes: m.bytes, ...(rights.length > 0 ? { rights } : {}) });
        }
      } finally {
        this.socketsInProgress.delete(socketIno);
      }
      for (const [ino, entry] of dumper.externals) {
        if (this.externalSockets.has(ino)) continue;
        const id = this.allocate();
        this.externalSockets.add(ino);
        this.files.push({ type: FD_TYPE.UNIXSK, id, usk: { id, ...entry, fown: noOwner() } });
      }
      for (const m of queue) this.socketQueues.push({ idFor: Number(slot.id), ...m });
      return slot;
    }

    const stats = statSync(procFd);
    const memfd = memfdName(target);
    if (memfd !== undefined && stats.isFile() && stats.nlink === 0) {
      return add(FD_TYPE.MEMFD, 'memfd', { flags, pos: info.pos, inode_id: this.memfdInodeId(procFd, memfd, stats) });
    }
    if (stats.isFIFO()) {
      const regId = this.allocate();
      this.files.push({ type: FD_TYPE.REG, id: regId, reg: this.regEntry(regId, target, flags, 0n, stats, false) });
      this.typeOf.set(regId, FD_TYPE.REG);
      this.pipeContents(stats.ino, pid, fd, this.fifoData);
      return add(FD_TYPE.FIFO, 'fifo', { pipe_id: stats.ino, regf_id: regId }, false);
    }
    if (!stats.isFile() && !stats.isDirectory() && !stats.isCharacterDevice() && !stats.isBlockDevice()) {
      throw new UnsupportedFileError(fd, target, 'special file');
    }
    const terminal = terminalKind(target, stats);
    if (terminal) {
      if (terminal.type === TTY_TYPE.CONSOLE) throw new UnsupportedFileError(fd, target, 'console (the machine\'s own terminal, which no restore can hand back)');
      // A pty slave is decided once every process is seen (finishTerminals): its master may be in the dump.
      // So is /dev/tty: it is the task's controlling terminal, which may be a pty of the dump.
      if (!this.shellJob && terminal.type !== TTY_TYPE.PTY && terminal.type !== TTY_TYPE.CTTY) throw new UnsupportedFileError(fd, target, 'terminal (dump it with --shell-job; restore then gives it criu-ts\'s terminal)');
      return this.terminal(pid, fd, target, flags, fdinfoFlags, stats, terminal);
    }
    const id = this.allocate();
    // Unlinked while open: /proc says "PATH (deleted)". With no link left (nlink 0) the file is
    // saved as a ghost (its contents), unless --link-remap can give it a link again (an
    // O_TMPFILE file may be linked); with links left elsewhere, only a link keeps it the same file.
    const unlinked = target.endsWith(' (deleted)');
    if (unlinked) target = target.slice(0, -' (deleted)'.length);
    const linked = unlinked && this.options.linkRemap === true ? this.linkRemap(id, procFd, target) : false;
    if (unlinked && !linked && stats.nlink > 0 && this.options.linkRemap !== true) {
      throw new UnsupportedFileError(fd, `${target} (deleted)`, 'file', `cannot be dumped: its name was removed but the file has ${stats.nlink} other link(s); dump with --link-remap to save it through a link (restore then opens it there)`);
    }
    this.files.push({ type: FD_TYPE.REG, id, reg: { ...this.regEntry(id, target, flags, info.pos, stats, true), fown: ownerOf(pid, fd) } });
    this.typeOf.set(id, FD_TYPE.REG);
    if (unlinked && !linked) this.ghost(id, procFd, stats);
    return { id, flags: fdinfoFlags, type: FD_TYPE.REG, fd };
  }

  /**
   * A terminal: its TTY entry, its device path as a REG entry (written first, with the next id,
   * as CRIU 4.2 does), one tty-info entry per device end.
   */
  private terminal(pid: Pid, fd: number, path: string, flags: number, fdinfoFlags: number, stats: Stats, found: TerminalKind): DecodedMessage {
    const dup = grabFd(pid, fd);
    try {
      const kind: TerminalKind = found.master ? { ...found, index: ptyMasterIndex(dup) } : found;
      const infoId = ttyInfoId(kind);
      const knownRdev = this.ttyInfoIds.get(infoId);
      if (knownRdev === undefined) {
        const treePids = this.options.treePids ?? [pid];
        // /dev/tty stands for the task's controlling terminal: its session is the task's.
        const session = kind.type === TTY_TYPE.CTTY ? controllingTerminalOf(pid) : sessionOf(kind.type === TTY_TYPE.PTY ? ptySlaveRdev(kind.index) : stats.rdev, treePids);
        if (kind.master && session.sid === 0) {
          const outside = masterSessionId(dup);
          if (outside !== 0) {
            throw new UnsupportedFileError(fd, path, `pty master (index ${kind.index})`, `cannot be dumped: its slave is the controlling terminal of session ${outside}, whose processes are outside the dump`);
          }
        }
        this.ttyInfos.push(ttyInfoEntry(infoId, dup, stats, kind, { sid: session.sid, pgrp: session.pgrp }));
        this.ttyInfoIds.set(infoId, stats.rdev);
      } else if (knownRdev !== stats.rdev && !kind.master) {
        throw new UnsupportedFileError(fd, path, 'terminal', `cannot be dumped: it would share tty-info id ${infoId} with another device (rdev ${knownRdev}), as CRIU numbers them`);
      }
      if (kind.type === TTY_TYPE.CTTY) this.cttyEnds.push({ pid, fd, path });
      if (kind.type === TTY_TYPE.PTY) {
        let pty = this.ptys.get(kind.index);
        if (!pty) this.ptys.set(kind.index, (pty = { slaves: [] }));
        if (!kind.master && !this.shellJob) {
          const foreign = foreignDevpts(stats, fd, path, pid);
          if (foreign) throw foreign;
        }
        const end = { pid, fd, path, infoId };
        if (kind.master) pty.master = end;
        else pty.slaves.push(end);
      }
      const id = this.allocate();
      const regId = this.allocate();
      this.files.push({ type: FD_TYPE.REG, id: regId, reg: this.regEntry(regId, path, flags, 0n, stats, false) });
      this.typeOf.set(regId, FD_TYPE.REG);
      this.files.push({ type: FD_TYPE.TTY, id, tty: { id, tty_info_id: infoId, flags, fown: ownerOf(pid, fd), regf_id: regId } });
      this.typeOf.set(id, FD_TYPE.TTY);
      return { id, flags: fdinfoFlags, type: FD_TYPE.TTY, fd };
    } finally {
      closeFd(dup);
    }
  }

  /**
   * Once every process's fds are recorded: a pty slave whose master is not in the dump is a
   * terminal from outside (refused without --shell-job, naming the fd); for every pair with
   * both ends in the dump, the bytes queued in it (tty-data.img, keyed by the tty-info id of
   * the end that would read them), read and written straight back (pty-queues.ts), so the
   * tasks find them there whether they are killed or run on.
   */
  finishTerminals(): void {
    for (const end of this.cttyEnds) {
      const ctty = controllingTerminalOf(end.pid);
      if (ctty.ptyIndex !== undefined && this.ptys.get(ctty.ptyIndex)?.master) continue; // restore opens /dev/tty again once the pty is its terminal
      if (!this.shellJob) throw outsideCttyError(end.pid, end.fd, end.path, ctty.rdev);
    }
    for (const [index, pty] of this.ptys) {
      if (!pty.master) {
        if (!this.shellJob) {
          const first = pty.slaves[0]!;
          throw unpairedSlaveError(first.pid, first.fd, first.path, index);
        }
        continue;
      }
      const slave = pty.slaves[0];
      if (!slave) continue; // no slave open: nothing can have been written to the master, and input needs a reader to exist
      const master = grabFd(pty.master.pid, pty.master.fd);
      let slaveDup: ReturnType<typeof grabFd> | undefined;
      try {
        slaveDup = grabFd(slave.pid, slave.fd);
        const packet = this.ttyInfos.find((e) => e.id === pty.master!.infoId)?.packet_mode === true;
        const output = drainTty(master, packet);
        const input = drainPtyInput(master, slaveDup);
        if (output.length > 0 || input.length > 0) refillPty(master, slaveDup, { output, input }, `pty ${index}`);
        if (output.length > 0) this.ttyData.push({ tty_id: pty.master.infoId, data: output });
        if (input.length > 0) this.ttyData.push({ tty_id: slave.infoId, data: input });
      } finally {
        if (slaveDup !== undefined) closeFd(slaveDup);
        closeFd(master);
      }
    }
  }

  /**
   * file_lock_entry for each lock this fd shows, once per lock: flock and OFD locks and leases
   * belong to the open file description (every fd sharing it, in any process, shows them: they
   * are recorded on its first fd, and `sharedDescription` says this fd is not it), POSIX locks
   * to a process (recorded on an fd of the process that holds them).
   */
  private collectLocks(pid: number, fd: number, fdinfoText: string, what: string, sharedDescription: boolean): void {
    const locks = fileLocks(fdinfoText, what);
    if (locks.length === 0) return;
    if (!this.fileLocksAllowed) throw new Error(`${what} holds a file lock (${locks.length} in all on it); dump with --file-locks to save it`);
    for (const lock of locks) {
      if (lock.flag === FILE_LOCK_FLAG.POSIX) {
        if (lock.holder !== pid) continue;
        const key = `${lock.device}:${lock.inode}:${lock.start}:${lock.len}:${lock.type}:${pid}`;
        if (this.lockKeys.has(key)) continue;
        this.lockKeys.add(key);
      } else if (sharedDescription) {
        continue;
      }
      // A lease's range is the whole file ("0 EOF"): start 0, len 0, as CRIU records it.
      this.locks.push({ flag: lock.flag, type: lock.type, pid, fd, start: lock.start, len: lock.len });
    }
  }

  /** One pipe_data_entry per pipe (or FIFO), however many ends and fds the dump holds. */
  private pipeContents(pipeId: number, pid: number, fd: number, into: Map<number, PipeContents>): void {
    if (into.has(pipeId)) return;
    into.set(pipeId, readPipeContents(pid, fd));
  }

  /**
   * A link remap (--link-remap) for file `originalId`, whose name `path` was removed: a hard
   * link to it made beside that name (link_remap.N, N the link's own files.img id, as CRIU
   * names it), a REG entry for the link and a LINKED remap-fpath entry, as CRIU 4.2 writes
   * them. False when the kernel will not link the file (an unlinked file with no other link,
   * an O_TMPFILE opened with O_EXCL: ENOENT; its directory gone...): it is then saved as a
   * ghost. The links made are removed if the dump fails (removeLinkRemaps), and by the restore.
   */
  private linkRemap(originalId: number, procFd: string, path: string): boolean {
    const dir = dirname(path);
    for (let attempt = 0; attempt < 100; attempt++) {
      const linkId = this.allocate();
      const link = join(dir, `link_remap.${linkId}`);
      try {
        linkat(procFd, link, AT_SYMLINK_FOLLOW);
      } catch (error) {
        if (error instanceof SysError && error.code === 'EEXIST') continue; // a link another dump left here: the name only has to be unique
        return false;
      }
      this.linkRemapPaths.push(link);
      // CRIU records the link as a file of its own with no flags, position or owner.
      this.files.push({ type: FD_TYPE.REG, id: linkId, reg: { id: linkId, flags: 0, pos: 0n, fown: noOwner(), name: link } });
      this.typeOf.set(linkId, FD_TYPE.REG);
      this.remaps.push({ orig_id: originalId, remap_id: linkId, remap_type: 0 /* LINKED */ });
      return true;
    }
    return false;
  }

  /** Removes every link this dump made (a failed dump leaves the filesystem as it found it). */
  removeLinkRemaps(): void {
    for (const link of this.linkRemapPaths.splice(0)) {
      try {
        unlinkSync(link);
      } catch {
        /* already gone */
      }
    }
  }

  private ghost(originalId: number, procFd: string, stats: Stats): void {
    if (stats.isFile() && stats.size > this.ghostLimit) {
      throw new Error(`deleted file behind ${procFd} is ${stats.size} bytes, over the ghost limit of ${this.ghostLimit} (--ghost-limit)`);
    }
    const ghostId = this.nextGhostId++;
    const entry: DecodedMessage = {
      uid: stats.uid, gid: stats.gid, mode: stats.mode,
      dev: encodeKernelDev(stats.dev), ino: BigInt(stats.ino),
      atim: timeval(stats.atimeMs), mtim: timeval(stats.mtimeMs),
    };
    this.remaps.push({ orig_id: originalId, remap_id: ghostId, remap_type: 1 /* GHOST */ });
    this.ghosts.push({ id: ghostId, entry, source: procFd, size: stats.isFile() ? stats.size : 0 });
  }
}

/** anon_inode kinds with a dumper (files/anon-inodes.ts). */
const SUPPORTED_ANON_INODES = new Set(['eventfd', 'eventpoll', 'signalfd', 'timerfd', 'inotify', 'fanotify']);

/**
 * The first descriptor of `pid` of a kind dump cannot save (raw, packet and netlink sockets, established TCP
 * connections without `inet.tcpEstablished`/`tcpClose`, io_uring, userfaultfd,
 * perf events, bpf objects, fanotify groups with permission events or filesystem marks, pidfds...), found from /proc alone: checked before the task
 * is frozen, so that refusing it costs the task nothing. The files stage checks again (an fd may
 * be opened in between).
 */
export function findUnsupportedDescriptor(pid: number, inet: InetDumpOptions = {}, options: { linkRemap?: boolean } = {}): UnsupportedFileError | SocketRefused | undefined {
  let fds: string[];
  try {
    fds = readdirSync(`/proc/${pid}/fd`);
  } catch {
    return undefined; // gone: the freeze reports it
  }
  let unixInodes: Set<number> | undefined;
  for (const name of fds.sort((a, b) => Number(a) - Number(b))) {
    let target: string;
    let fdinfo: string;
    try {
      target = readlinkSync(`/proc/${pid}/fd/${name}`);
      fdinfo = readFileSync(`/proc/${pid}/fdinfo/${name}`, 'utf8');
    } catch {
      continue; // closed meanwhile: the files stage sees what is there then
    }
    // Locks and leases of a kind or state that cannot be saved (a lease being broken...).
    try {
      fileLocks(fdinfo, `fd ${name}`);
    } catch (error) {
      const why = (error as Error).message.replace(/^fd \d+ /, '');
      return new UnsupportedFileError(Number(name), target, 'file', `cannot be dumped: it ${why}`);
    }
    const deletedWithLinks = deletedButLinked(pid, Number(name), target);
    if (deletedWithLinks && !options.linkRemap) {
      return new UnsupportedFileError(Number(name), target, 'file', `cannot be dumped: its name was removed but the file has ${deletedWithLinks} other link(s); dump with --link-remap to save it through a link (restore then opens it there)`);
    }
    const anon = anonInodeKind(target);
    if (anon !== undefined && !SUPPORTED_ANON_INODES.has(anon)) return new UnsupportedFileError(Number(name), target, anon);
    if (anon === 'fanotify') {
      // Everything the files stage will need (marks of known kinds, no permission events, the
      // marked inodes and mounts found again) checked now, while refusing costs nothing.
      try {
        fanotifyEntry(pid, fdinfo, 0, `fd ${name}`);
      } catch (error) {
        const why = (error as Error).message.replace(/^fd \d+: (fanotify group cannot be dumped: )?/, '');
        return new UnsupportedFileError(Number(name), target, 'fanotify group', `cannot be dumped: ${why}`);
      }
    }
    const socketIno = socketInode(target);
    if (socketIno !== undefined) {
      unixInodes ??= unixSocketInodes(pid);
      if (unixInodes.has(socketIno)) continue;
      let dup;
      try {
        dup = grabFd(pid, Number(name));
      } catch {
        continue; // closed meanwhile; the files stage sees what is there then
      }
      try {
        const refused = precheckInetSocket(dup, Number(name), socketIno, inet);
        if (refused) return refused;
      } finally {
        closeFd(dup);
      }
    }
  }
  return undefined;
}

/**
 * The number of links a file open at fd `fd` of `pid` still has when its name (`target`, as
 * /proc shows it) was removed: 0 when it was not removed, or has no link left (a ghost file).
 */
function deletedButLinked(pid: number, fd: number, target: string): number {
  if (!target.endsWith(' (deleted)') || !target.startsWith('/')) return 0;
  try {
    const stats = statSync(`/proc/${pid}/fd/${fd}`);
    return stats.isFile() ? stats.nlink : 0;
  } catch {
    return 0;
  }
}

/** Inodes of the sockets behind fds `fds` of process `pid`. */
export function socketInodesOf(pid: number, fds: readonly number[]): number[] {
  return fds.map((n) => socketInodeOf(pid, n)).filter((n): n is number => n !== undefined);
}

/** `pid` and its descendants, from /proc/PID/task/TID/children (the tree as it is now, not frozen). */
function treeOf(pid: number): number[] {
  const out: number[] = [];
  const queue = [pid];
  while (queue.length > 0) {
    const p = queue.shift()!;
    out.push(p);
    let tids: string[] = [];
    try {
      tids = readdirSync(`/proc/${p}/task`);
    } catch {
      continue;
    }
    for (const tid of tids) {
      try {
        for (const c of readFileSync(`/proc/${p}/task/${tid}/children`, 'utf8').split(' ').filter(Boolean)) queue.push(Number(c));
      } catch {
        /* gone */
      }
    }
  }
  return out;
}

/**
 * A terminal from outside open in the tree of `pid` (a pty slave whose master is not in the
 * tree, /dev/tty of a process whose controlling terminal is not such a pty, a VT or serial
 * line: only --shell-job dumps them; the console never), found before the freeze so that
 * refusing it costs nothing. The files stage decides again on the frozen tree (finishTerminals).
 */
export function findOutsideTerminal(pid: number): UnsupportedFileError | undefined {
  const masters = new Set<number>();
  const slaves: Array<{ pid: number; fd: number; path: string; index: number }> = [];
  const cttys: Array<{ pid: number; fd: number; path: string }> = [];
  const tree = treeOf(pid);
  for (const p of tree) {
    let fds: string[];
    try {
      fds = readdirSync(`/proc/${p}/fd`);
    } catch {
      continue;
    }
    for (const name of fds) {
      try {
        const path = readlinkSync(`/proc/${p}/fd/${name}`);
        if (!path.startsWith('/dev/')) continue; // terminals are device nodes: no stat for the rest
        const kind = terminalKind(path, statSync(`/proc/${p}/fd/${name}`));
        if (kind === undefined) continue;
        if (kind.type === TTY_TYPE.CTTY) cttys.push({ pid: p, fd: Number(name), path });
        if (kind.type !== TTY_TYPE.PTY && kind.type !== TTY_TYPE.CTTY) {
          return new UnsupportedFileError(Number(name), path, `terminal of process ${p}`, kind.type === TTY_TYPE.CONSOLE ? 'is the machine\'s console, which no restore can hand back' : 'is from outside the dump (dump it with --shell-job; restore then gives it criu-ts\'s terminal)');
        }
        if (kind.type !== TTY_TYPE.PTY) continue;
        if (!kind.master) {
          const foreign = foreignDevpts(statSync(`/proc/${p}/fd/${name}`), Number(name), path, p);
          if (foreign) return foreign;
          slaves.push({ pid: p, fd: Number(name), path, index: kind.index });
          continue;
        }
        const dup = grabFd(p, Number(name));
        try {
          masters.add(ptyMasterIndex(dup));
          const sid = masterSessionId(dup);
          if (sid !== 0 && !tree.includes(sid)) {
            return new UnsupportedFileError(Number(name), path, `pty master (index ${ptyMasterIndex(dup)}) of process ${p}`, `cannot be dumped: its slave is the controlling terminal of session ${sid}, whose leader is outside the dump`);
          }
        } finally {
          closeFd(dup);
        }
      } catch {
        continue; // closed meanwhile: the files stage sees what is there then
      }
    }
  }
  const alone = slaves.sort((a, b) => a.pid - b.pid || a.fd - b.fd).find((s) => !masters.has(s.index));
  if (alone) return unpairedSlaveError(alone.pid, alone.fd, alone.path, alone.index);
  for (const c of cttys) {
    let ctty;
    try {
      ctty = controllingTerminalOf(c.pid);
    } catch {
      continue;
    }
    if (ctty.ptyIndex === undefined || !masters.has(ctty.ptyIndex)) return outsideCttyError(c.pid, c.fd, c.path, ctty.rdev);
  }
  return undefined;
}

function outsideCttyError(pid: number, fd: number, path: string, rdev: number): UnsupportedFileError {
  const terminal = rdev === 0 ? 'it has none' : `device ${deviceNumbers(rdev).major}:${deviceNumbers(rdev).minor}`;
  return new UnsupportedFileError(fd, path, `controlling terminal of process ${pid}`, `cannot be dumped: it is not a pty of the dump (${terminal}; dump with --shell-job, and restore gives it criu-ts's terminal)`);
}

/**
 * A pty slave of another devpts instance than criu-ts's /dev/pts (a container's own, mounted
 * with newinstance): restore opens criu-ts's /dev/ptmx, whose indexes are another set.
 */
function foreignDevpts(slave: Stats, fd: number, path: string, pid: number): UnsupportedFileError | undefined {
  let ours: number;
  try {
    ours = statSync('/dev/pts/ptmx').dev;
  } catch {
    return undefined; // no devpts here to compare with: restore says what it finds
  }
  if (slave.dev === ours) return undefined;
  return new UnsupportedFileError(fd, path, `pty slave of process ${pid}`, `cannot be dumped: it belongs to another devpts instance (device ${slave.dev}, criu-ts's /dev/pts is ${ours}), whose ptys criu-ts cannot make again`);
}

function unpairedSlaveError(pid: number, fd: number, path: string, index: number): UnsupportedFileError {
  return new UnsupportedFileError(fd, path, `terminal of process ${pid}`, `cannot be dumped alone: the master of pty ${index} is outside the dump (dump with --shell-job, and restore gives it criu-ts's terminal; or dump the process holding the master too)`);
}

function socketInodeOf(pid: number, fd: number): number | undefined {
  try {
    return socketInode(readlinkSync(`/proc/${pid}/fd/${fd}`));
  } catch {
    return undefined;
  }
}

/** Reads a ghost file's contents through the task's fd link. */
export function readGhostContents(ghost: GhostFile): Uint8Array {
  const fd = openSync(ghost.source, 'r');
  try {
    const size = fstatSync(fd).size;
    const out = Buffer.alloc(size);
    for (let done = 0; done < size; ) {
      const n = readSync(fd, out, done, size - done, done);
      if (n === 0) break;
      done += n;
    }
    return out;
  } finally {
    closeSync(fd);
  }
}

function timeval(ms: number): DecodedMessage {
  const sec = Math.floor(ms / 1000);
  return { tv_sec: BigInt(sec), tv_usec: BigInt(Math.round((ms - sec * 1000) * 1000)) };
}

/** st_dev as the kernel encodes it for CRIU's `(criu).dev` fields: major << 20 | minor. */
export function encodeKernelDev(dev: number): number {
  // glibc's st_dev encoding: major in bits 8-19 (and 32+), minor in bits 0-7 and 20+.
  const major = ((dev >>> 8) & 0xfff) | Math.floor(dev / 2 ** 32) & ~0xfff;
  const minor = (dev & 0xff) | ((dev >>> 12) & ~0xff & 0xfff00);
  return ((major << 20) | minor) >>> 0;
}

export interface Fdinfo {
  readonly pos: bigint;
  readonly flags: number;
  readonly mntId: number;
}

export function parseFdinfo(text: string): Fdinfo {
  const field = (name: string): string | undefined => new RegExp(`^${name}:\\s*(\\S+)`, 'm').exec(text)?.[1];
  return {
    pos: BigInt(field('pos') ?? '0'),
    flags: parseInt(field('flags') ?? '0', 8),
    mntId: Number(field('mnt_id') ?? '-1'),
  };
}

// AF_UNIX sockets: the unix_sk_entry CRIU writes for each (files.img, type UNIXSK) and the
// messages waiting in its receive queue (sk-queues.img: sk_packet_entry + payload, by the id of
// the socket whose queue holds them).
//
// What the socket is comes from NETLINK_SOCK_DIAG (one dump of every unix socket of the
// namespace, see @criu-ts/sys sock-diag.ts): type, state, bound name, peer inode, shutdown bits,
// queue lengths, pending connections of a listener. Socket options and queued data come from
// the socket itself: criu-ts takes a duplicate of the task's fd with pidfd_getfd (the same open
// file description, so the same socket) and
//   - reads SOL_SOCKET options with getsockopt;
//   - peeks every queued message without taking it out: SO_PEEK_OFF 0 makes each
//     recvmsg(MSG_PEEK) start where the previous one ended (socket(7)), so successive peeks walk
//     the queue; one peek returns one datagram/record (dgram, seqpacket) or a run of bytes
//     (stream). SO_PEEK_OFF is put back to what it was (-1: disabled) afterwards.
// The task sees no change: nothing is read out of its sockets.
//
// A connection a listener of the process has not accepted yet is recorded as CRIU does: its
// client's peer is the listener.
//
// Both ends of a connection may be in different processes of the tree (a socketpair made before
// fork, a connection between a server and its child): each end is dumped with its own process,
// as one socket of files.img each, peers by inode. A datagram socket connected to a named socket
// outside the tree is dumped with --ext-unix-sk (the peer is recorded as an external entry).
// Descriptors in flight (SCM_RIGHTS) are peeked too (a peek installs copies in criu-ts's table)
// and dumped by FileTable as files of their own, named by the message's scm entry (see
// peekQueue for what a stream peek can and cannot tell).
// Refused, naming the fd: any other peer outside the dumped tree, credentials in flight, data sent on a
// connection not accepted yet, names relative to a directory, sockets sock_diag does not see
// (another network namespace).
import { readFileSync, statSync } from 'node:fs';
import { close, getSocketFilter, getsockopt, MSG, pidfdGetfd, pidfdOpen, recvmsg, SO, SOL_SOCKET, setsockopt, unixDiagDump, isSysError, type Fd, type Pid, type UnixDiagSocket } from '@criu-ts/sys';
import type { DecodedMessage } from '@criu-ts/images';

const TCP_ESTABLISHED = 1;
const TCP_LISTEN = 10;
const SOCK_DGRAM = 2;
const SCM_CREDENTIALS = 2;
/** unix_sk_entry.uflags: the socket is outside the dumped tree (CRIU's USK_EXTERN). */
export const USK_EXTERN = 1;
/** ids-N.img numbers the task's namespaces in CRIU's order (dump.ts): net is the second. */
const NET_NS_ID = 2;
/** Bigger than any datagram the kernel lets a unix socket queue (bounded by the sender's SO_SNDBUF, at most INT_MAX / 2 with SO_SNDBUFFORCE but never that in practice). */
const PEEK_BUFFER_SIZE = 8 << 20;

export class UnixSocketRefused extends Error {
  constructor(
    readonly fd: number,
    readonly ino: number,
    reason: string,
  ) {
    super(`fd ${fd} (socket:[${ino}]): ${reason}`);
    this.name = 'UnixSocketRefused';
  }
}

/** The socket inode in a /proc/PID/fd link such as `socket:[1234]`, or undefined. */
export function socketInode(link: string): number | undefined {
  const match = /^socket:\[(\d+)\]$/.exec(link);
  return match ? Number(match[1]) : undefined;
}

/** Inodes of the AF_UNIX sockets of `pid`'s network namespace (/proc/PID/net/unix, unix(7)). */
export function unixSocketInodes(pid: number): Set<number> {
  const inodes = new Set<number>();
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/net/unix`, 'utf8');
  } catch {
    return inodes;
  }
  // Num RefCount Protocol Flags Type St Inode [Path]
  for (const line of text.split('\n').slice(1)) {
    const cols = line.trim().split(/\s+/);
    if (cols.length >= 7) inodes.add(Number(cols[6]));
  }
  return inodes;
}

/** One message of a receive queue, as a peek gave it. */
export interface PeekedMessage {
  readonly bytes: Buffer;
  /**
   * The descriptors it carries (SCM_RIGHTS), installed in criu-ts's own table by the peek: new
   * fds for the same open file descriptions. The caller owns them (closes them when done).
   */
  readonly fds: readonly Fd[];
}

export interface DumpedUnixSocket {
  /** The usk member without id and fown (FileTable adds them). */
  readonly entry: DecodedMessage;
  /** Messages in the socket's receive queue, oldest first. */
  readonly queue: readonly PeekedMessage[];
}

/**
 * What the unix socket dumpers of one dump share: the sock_diag dump of every unix socket, the
 * inodes of the sockets dumped with the tree (those of its fds and those in flight in their
 * queues), and each socket's queue, peeked once (a peek installs the fds in flight anew).
 */
export interface UnixDumpContext {
  sockets?: Map<number, UnixDiagSocket>;
  readonly queues: Map<number, PeekedMessage[]>;
}

/** The unix sockets of one dumped task. */
export class UnixSocketDumper {
  private peekBuffer?: Buffer;

  /** `taskSockets`: every socket inode the dumped tree holds an fd of (a peer among them is dumped too, whichever process holds it). */
  /** `diag`: a cache of the sock_diag dump, shared between the dumpers of one dump. */
  constructor(
    private readonly pid: Pid,
    private readonly taskSockets: ReadonlySet<number>,
    private readonly diagCache: UnixDumpContext = { queues: new Map() },
    private readonly extUnixSk = false,
  ) {}

  private get diag(): Map<number, UnixDiagSocket> {
    this.diagCache.sockets ??= unixDiagDump();
    return this.diagCache.sockets;
  }

  private lookup(ino: number): UnixDiagSocket | undefined {
    return this.diag.get(ino);
  }

  /** The entry and queued messages of the socket behind fd `fd` (inode `ino`, file flags `flags`). */
  dump(fd: number, ino: number, flags: number): DumpedUnixSocket {
    const refuse = (reason: string): never => {
      throw new UnixSocketRefused(fd, ino, reason);
    };
    const sk = this.lookup(ino) ?? refuse('sock_diag does not report this unix socket (in another network namespace?)');
    const listening = sk.state === TCP_LISTEN;
    const name = sk.name ?? Buffer.alloc(0);
    const abstract = name.length > 0 && name[0] === 0;
    const path = name.length > 0 && !abstract ? name.toString('utf8').replace(/\0+$/, '') : undefined;
    if (path !== undefined && !path.startsWith('/')) refuse(`bound to the relative path "${path}" (names relative to a directory are not supported yet)`);
    if (listening) {
      // Connections waiting to be accepted are restored by connecting their clients again,
      // which needs the clients: they must be sockets of the process too.
      const outside = (sk.icons ?? []).filter((client) => !this.taskSockets.has(client));
      if (outside.length > 0 || (sk.rqlen?.rqueue ?? 0) > (sk.icons?.length ?? 0)) {
        refuse(`listening socket with connection(s) from outside the dumped process not accepted yet (${outside.map((c) => `socket:[${c}]`).join(', ') || 'clients unknown'})`);
      }
    }
    let peer = sk.peer ?? 0;
    if (peer === 0 && sk.state === TCP_ESTABLISHED && sk.type !== SOCK_DGRAM) {
      // A connected stream socket whose peer has no inode: the peer is a connection still in a
      // listener's accept queue (sock_diag lists the connecting sockets of those as the
      // listener's ICONS), or a socket that was closed. CRIU records the listener as the peer of
      // a connection not accepted yet; restore connects it to the listener again.
      const listener = [...this.diag.values()].find((l) => l.icons?.includes(ino));
      // Otherwise the peer was closed: peer 0, as CRIU records it; the socket still holds what
      // the peer sent before closing, then reads the end of the stream.
      if (!listener) {
        /* peer stays 0 */
      } else if (!this.taskSockets.has(listener.ino)) {
        refuse(`its connection waits in the accept queue of listening socket:[${listener!.ino}] outside the dumped process (external unix sockets, criu's --ext-unix-sk, are not supported)`);
      }
      // What it sent waits in a socket no fd reaches (the accepted end to be), so it cannot be read.
      else {
        if ((sk.rqlen?.wqueue ?? 0) > 0) refuse(`its connection is not accepted yet and holds ${sk.rqlen!.wqueue} bytes of sent data (data on connections not accepted yet is not supported)`);
        peer = listener.ino;
      }
    }
    if (peer !== 0 && !this.taskSockets.has(peer)) this.external(peer, sk, refuse);

    const pidfd = pidfdOpen(this.pid);
    let sock: Fd | undefined;
    try {
      sock = pidfdGetfd(pidfd, fd);
      const opts = socketOptions(sock);
      const queue = listening ? [] : this.queueOf(sock, ino, sk.type, refuse);
      if (queue.length > 0 && opts.so_passcred) {
        refuse(`${queue.length} queued message(s) carry the sender's credentials (SO_PASSCRED is on); credentials in flight are not supported`);
      }
      const entry: DecodedMessage = {
        ino, type: sk.type, state: sk.state, flags, uflags: 0, backlog: sk.rqlen?.wqueue ?? 0, peer, opts, name,
      };
      if (sk.shutdown) entry.shutdown = sk.shutdown;
      if (path !== undefined) {
        let file: ReturnType<typeof statSync> | undefined;
        try {
          file = statSync(path);
        } catch {
          file = undefined;
        }
        // The bound file is gone, or the path now names another file: the socket keeps its name
        // but has no file. Restore binds it and removes the file again.
        if (!file || !file.isSocket() || (sk.vfs && file.ino !== sk.vfs.ino)) entry.deleted = true;
        else entry.file_perms = { mode: file.mode, uid: file.uid, gid: file.gid };
      }
      entry.ns_id = NET_NS_ID;
      return { entry, queue };
    } finally {
      if (sock !== undefined) close(sock);
      close(pidfd);
    }
  }

  /**
   * A peer outside the dumped process (criu's --ext-unix-sk): recorded as a unix_sk_entry of its
   * own with USK_EXTERN and its name, and no fd, as CRIU does; restore connects to that name
   * again. Only a datagram socket can be reconnected so (a stream connection cannot be made
   * again without its peer's cooperation), and only to a peer that has a name: the typical case
   * is a logger's socket connected to /dev/log.
   */
  private external(peer: number, sk: UnixDiagSocket, refuse: (reason: string) => never): void {
    if (!this.extUnixSk) refuse(`its peer socket:[${peer}] is outside the dumped process; dump with --ext-unix-sk to connect it to the peer's name again at restore`);
    if (sk.type !== SOCK_DGRAM) refuse(`its peer socket:[${peer}] is outside the dumped process; only datagram sockets connected outside can be reconnected (--ext-unix-sk), not a stream connection`);
    const outside = this.lookup(peer);
    if (!outside?.name || outside.name.length === 0) refuse(`its peer socket:[${peer}] outside the dumped process has no name to connect to again`);
    if (!this.externals.has(peer)) {
      this.externals.set(peer, {
        ino: peer, type: outside!.type, state: outside!.state, flags: 0, uflags: USK_EXTERN, backlog: 0, peer: 0,
        opts: { so_sndbuf: 0, so_rcvbuf: 0, so_snd_tmo_sec: 0n, so_snd_tmo_usec: 0n, so_rcv_tmo_sec: 0n, so_rcv_tmo_usec: 0n },
        name: outside!.name, ns_id: NET_NS_ID,
      });
    }
  }

  /** The peers outside the process met so far (--ext-unix-sk), by inode: unix_sk_entry without id and fown. */
  readonly externals = new Map<number, DecodedMessage>();

  /** The queue of socket `ino` (open as `sock`), peeked once per dump (see UnixDumpContext). */
  queueOf(sock: Fd, ino: number, type: number, refuse: (reason: string) => never): PeekedMessage[] {
    let queue = this.diagCache.queues.get(ino);
    if (!queue) {
      queue = peekQueue(sock, type, refuse, (this.peekBuffer ??= Buffer.allocUnsafe(PEEK_BUFFER_SIZE)));
      this.diagCache.queues.set(ino, queue);
    }
    return queue;
  }
}

/** SCM_MAX_FD: the most descriptors one message can carry (include/net/scm.h). */
const SCM_MAX_FD = 253;

/**
 * Every message in the receive queue of `sock`, oldest first, left in place, with the
 * descriptors each carries (SCM_RIGHTS). A peek of a descriptor in flight installs a new fd for
 * the same open file description in the peeker's table (unix_peek_fds, net/unix/af_unix.c;
 * checked on this kernel), which is how criu-ts gets at them without taking them out.
 *
 * Record and datagram sockets give one message per peek, descriptors and all. A stream peek
 * glues the bytes of successive sends together up to the end of the first send that carries
 * descriptors, and reports them. Where that send starts cannot be learnt by peeking: on this
 * kernel (6.18) a stream peek walks on into the following sends even once its buffer is full
 * and reports the descriptors of the first one that has some, whatever its length (checked: a
 * 1-byte peek of "plain before" followed by "file"+fd reports the fd). So a stream message here
 * is a run of bytes whose last send carried the descriptors; restore sends the run's last byte
 * with them (see the restore side), so a reader that takes the descriptors' message in one read
 * gets them with it, as before.
 */
export function peekQueue(sock: Fd, type: number, refuse: (reason: string) => never, buf: Buffer): PeekedMessage[] {
  const saved = getsockopt(sock, SOL_SOCKET, SO.PEEK_OFF).readInt32LE(0);
  const messages: PeekedMessage[] = [];
  const closeAll = (fds: readonly Fd[]) => {
    for (const f of fds) close(f);
  };
  const peek = (offset: number, length: number): ReturnType<typeof recvmsg> | undefined => {
    setsockopt(sock, SOL_SOCKET, SO.PEEK_OFF, offset);
    try {
      return recvmsg(sock, buf.subarray(0, length), SCM_MAX_FD, MSG.PEEK | MSG.DONTWAIT);
    } catch (error) {
      if (isSysError(error, 'EAGAIN')) return undefined; // the queue is walked
      throw error;
    }
  };
  let offset = 0;
  try {
    for (;;) {
      const got = peek(offset, buf.length);
      if (!got) break;
      if (got.controlTypes.includes(SCM_CREDENTIALS)) {
        closeAll(got.fds);
        refuse('a queued message carries credentials (SCM_CREDENTIALS); credentials in flight are not supported');
      }
      if (got.truncated) {
        closeAll(got.fds);
        refuse(`a queued message is larger than ${buf.length} bytes, or carries more than ${SCM_MAX_FD} descriptors`);
      }
      // 0: the end of a stream whose reading side is shut down. A zero-length datagram looks
      // the same and ends the walk too (the kernel offers no way to tell them apart by peeking).
      if (got.bytes === 0) {
        closeAll(got.fds);
        break;
      }
      // A full buffer: the walk went on past it, so the descriptors may belong to bytes further on.
      if (type !== SOCK_DGRAM && got.fds.length > 0 && got.bytes === buf.length) {
        closeAll(got.fds);
        refuse(`more than ${buf.length} bytes are queued before descriptors in flight`);
      }
      messages.push({ bytes: Buffer.from(buf.subarray(0, got.bytes)), fds: got.fds });
      offset += got.bytes;
    }
  } catch (error) {
    for (const m of messages) closeAll(m.fds);
    throw error;
  } finally {
    setsockopt(sock, SOL_SOCKET, SO.PEEK_OFF, saved);
  }
  return messages;
}

const int = (sock: Fd, name: number): number => getsockopt(sock, SOL_SOCKET, name).readInt32LE(0);

/**
 * The socket's classic BPF filter (SO_ATTACH_FILTER, e.g. tcpdump's or dhclient's) as CRIU's
 * so_filter words: one struct sock_filter per 64-bit word. An eBPF filter cannot be read back.
 */
function socketFilter(sock: Fd): bigint[] {
  let program: Buffer;
  try {
    program = getSocketFilter(sock);
  } catch (error) {
    if (isSysError(error, 'EACCES')) throw new Error('an eBPF socket filter (SO_ATTACH_BPF) is attached to it; the kernel cannot give it back to be restored');
    throw error;
  }
  return Array.from({ length: program.length / 8 }, (_, i) => program.readBigUInt64LE(i * 8));
}

function timeoutOf(sock: Fd, name: number): [bigint, bigint] {
  const tv = getsockopt(sock, SOL_SOCKET, name, 16);
  return [tv.readBigUInt64LE(0), tv.readBigUInt64LE(8)];
}

/**
 * sk_opts_entry with the fields CRIU 4.2 writes for a unix socket, in its order; for an inet
 * socket (`unix` false) without SO_PASSCRED/SO_PASSSEC, which CRIU records for unix sockets only
 * and which this kernel refuses on inet sockets (EOPNOTSUPP).
 */
export function socketOptions(sock: Fd, unix = true): DecodedMessage {
  const [sndSec, sndUsec] = timeoutOf(sock, SO.SNDTIMEO);
  const [rcvSec, rcvUsec] = timeoutOf(sock, SO.RCVTIMEO);
  const opts: DecodedMessage = {
    so_sndbuf: int(sock, SO.SNDBUF) >>> 0,
    so_rcvbuf: int(sock, SO.RCVBUF) >>> 0,
    so_snd_tmo_sec: sndSec, so_snd_tmo_usec: sndUsec, so_rcv_tmo_sec: rcvSec, so_rcv_tmo_usec: rcvUsec,
    reuseaddr: int(sock, SO.REUSEADDR) !== 0,
    so_priority: int(sock, SO.PRIORITY) >>> 0,
    so_rcvlowat: int(sock, SO.RCVLOWAT) >>> 0,
  };
  const mark = int(sock, SO.MARK) >>> 0;
  if (mark !== 0) opts.so_mark = mark;
  if (unix) {
    opts.so_passcred = int(sock, SO.PASSCRED) !== 0;
    opts.so_passsec = int(sock, SO.PASSSEC) !== 0;
  }
  opts.so_dontroute = int(sock, SO.DONTROUTE) !== 0;
  opts.so_no_check = int(sock, SO.NO_CHECK) !== 0;
  const filter = socketFilter(sock);
  if (filter.length > 0) opts.so_filter = filter;
  opts.so_reuseport = int(sock, SO.REUSEPORT) !== 0;
  opts.so_broadcast = int(sock, SO.BROADCAST) !== 0;
  opts.so_keepalive = int(sock, SO.KEEPALIVE) !== 0;
  opts.so_oobinline = int(sock, SO.OOBINLINE) >>> 0;
  opts.so_buf_lock = int(sock, SO.BUF_LOCK) >>> 0;
  return opts;
}

// AF_INET/AF_INET6 sockets: the inet_sk_entry CRIU writes for each (files.img, type INETSK) and,
// for an established TCP connection dumped with --tcp-established, tcp-stream-<ino in hex>.img
// (tcp_stream_entry + the receive and send queue bytes), through @criu-ts/soccr's repair mode.
//
// What the socket is comes from the socket itself: criu-ts takes a duplicate of the task's fd
// with pidfd_getfd (the same open file description, so the same socket) and reads its kind
// (SO_DOMAIN/SO_TYPE/SO_PROTOCOL), addresses (getsockname/getpeername), TCP state (TCP_INFO) and
// options (getsockopt); NETLINK_SOCK_DIAG adds what no getsockopt tells: a listener's backlog and
// the connections waiting in its accept queue, and shutdown bits.
//
// Established TCP connections (and the half-closed states soccr handles) are, in this order:
//   1. locked (dump.ts, right after the freeze): the peer's packets are dropped, so that nothing
//      the peer sends changes the queues being read, and so that the peer sees no reset while
//      the connection has no owner (connectionsToLock below finds them);
//   2. paused and saved (soccr pause + save: TCP_REPAIR on, sequence numbers, both queues, window,
//      options) - options of the socket are read before, since repair mode forces SO_REUSEADDR;
//   3. after the dump: killed with the task while still in repair mode (the kernel then drops the
//      socket without a FIN or RST, and the lock stays until a restore lifts it), or, when the
//      tasks resume (--leave-running, -s, a failed dump), taken out of repair mode and unlocked.
// With --tcp-close the connections are recorded without their state and without a lock (a
// restore then gives the task closed sockets in their place, as criu does).
//
// Datagrams waiting in a UDP socket are peeked (SO_PEEK_OFF walks the queue, as for unix
// sockets; nothing is taken out) with their source addresses and go to sk-queues.img, the
// source in sk_packet_entry field 3 (`addr`, which CRIU reserves for it and leaves empty: CRIU
// drops UDP queues). Restore puts them back with the same source.
//
// A listener's TCP_DEFER_ACCEPT and TCP_FASTOPEN (nginx's "listen ... deferred fastopen=N") go to
// tcp_opts_entry fields 101 and 102, criu-ts's own: CRIU's format has no place for them and CRIU
// restores such a listener without them.
//
// Connections waiting in a listener's accept queue (connected, accepted by nobody yet) are, with
// --tcp-established, accepted by criu-ts itself on its duplicate of the listener (the tasks are
// frozen: nobody else takes them), locked and saved like the others, and written inside the
// listener's inet_sk_entry (criu-ts's field accept_queue, in queue order). When the tasks run on
// (--leave-running, -s, a failed dump) they go back into the listener's queue, in order,
// through soccr's requeueConnection; restore does the same for the restored listener.
//
// Raw sockets (any protocol, IPv4 and IPv6) are recorded with their bound and connected
// addresses (the latter from /proc/net/raw*, see rawPeerOf) and ip_opts.raw: IP_HDRINCL,
// IP_NODEFRAG and the ICMP/ICMPv6 type filter. Their queue cannot be walked without taking it,
// so one with packets waiting is refused (CRIU drops them).
//
// Refused, naming the fd: any other family or protocol (netlink and packet sockets have their
// own files); a raw socket with packets waiting; an established connection without
// --tcp-established or --tcp-close (with its addresses); a TCP socket in a state soccr cannot
// save (SYN_SENT...); a listener with connections waiting in its accept queue without
// --tcp-established, or where the kernel cannot queue connections back, unless --skip-in-flight
// (they are then left behind, as criu leaves them).
import { readFileSync, readlinkSync } from 'node:fs';
import type { DecodedMessage } from '@criu-ts/images';
import { accept4, close, getsockopt, pollOne, POLL, inetDiagDump, isSysError, MSG, pidfdGetfd, pidfdOpen, setsockopt, SO, SOL_SOCKET, sock, SockDiagError, type Fd, type InetDiagSocket, type Pid, IPPROTO, SOL, IP_OPT, IPV6_OPT, TCP_OPT, ICMP_FILTER, ICMP6_FILTER } from '@criu-ts/sys';
import { acceptQueueRefillUnsupported, discard, pause, requeueConnection, resume, save, SUPPORTED_STATES, tcpStateName, TcpState, toImageForm, wireKey, type ConnectionKey, type InetAddress, type TcpConnectionState } from '@criu-ts/soccr';
import { socketOptions } from './unix-sockets.js';

const AF_UNIX = 1;
const AF_INET = 2;
const AF_INET6 = 10;
const AF_NETLINK = 16;
const AF_PACKET = 17;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_RAW = 3;
/** ids-N.img numbers the task's namespaces in CRIU's order (dump.ts): net is the second. */
const NET_NS_ID = 2;

export interface InetDumpOptions {
  /** Save established TCP connections through repair mode (criu's --tcp-established). */
  readonly tcpEstablished?: boolean;
  /** Record established connections without their state; restore closes them (criu's --tcp-close). */
  readonly tcpClose?: boolean;
  /** Dump listeners with connections not accepted yet; those connections are lost (criu's --skip-in-flight). */
  readonly skipInFlight?: boolean;
}

/** A socket dump refuses (any family: inet, netlink, packet), with what it is and why. */
export class SocketRefused extends Error {
  constructor(
    readonly fd: number,
    readonly ino: number,
    readonly kind: string,
    reason: string,
  ) {
    super(`fd ${fd} (socket:[${ino}], ${kind}): ${reason}`);
    this.name = 'SocketRefused';
  }
}

/** A socket's family, type and protocol, as the kernel reports them. */
export interface SocketKind {
  readonly domain: number;
  readonly type: number;
  readonly protocol: number;
}

export function socketKindOf(fd: Fd | number): SocketKind {
  const int = (name: number) => getsockopt(fd as Fd, SOL_SOCKET, name).readInt32LE(0);
  return { domain: int(SO.DOMAIN), type: int(SO.TYPE), protocol: int(38 /* SO_PROTOCOL */) };
}

const FAMILY_NAMES: Record<number, string> = { [AF_UNIX]: 'AF_UNIX', [AF_INET]: 'AF_INET', [AF_INET6]: 'AF_INET6', [AF_NETLINK]: 'AF_NETLINK', [AF_PACKET]: 'AF_PACKET' };
const TYPE_NAMES: Record<number, string> = { 1: 'SOCK_STREAM', 2: 'SOCK_DGRAM', 3: 'SOCK_RAW', 4: 'SOCK_RDM', 5: 'SOCK_SEQPACKET', 10: 'SOCK_PACKET' };

/** "TCP/IPv4", "raw IPv6 socket (protocol 58)", "netlink socket (protocol 0)"... */
export function describeSocketKind(k: SocketKind): string {
  const ip = k.domain === AF_INET ? 'IPv4' : 'IPv6';
  if (k.domain === AF_INET || k.domain === AF_INET6) {
    if (k.type === SOCK_STREAM && k.protocol === IPPROTO.TCP) return `TCP/${ip}`;
    if (k.type === SOCK_DGRAM && k.protocol === IPPROTO.UDP) return `UDP/${ip}`;
    if (k.type === SOCK_RAW) return `raw ${ip} socket (protocol ${k.protocol})`;
    return `${ip} ${TYPE_NAMES[k.type] ?? `type ${k.type}`} socket (protocol ${k.protocol})`;
  }
  if (k.domain === AF_NETLINK) return `netlink socket (protocol ${k.protocol})`;
  if (k.domain === AF_PACKET) return `packet socket (${TYPE_NAMES[k.type] ?? `type ${k.type}`})`;
  return `${FAMILY_NAMES[k.domain] ?? `family ${k.domain}`} socket (${TYPE_NAMES[k.type] ?? `type ${k.type}`}, protocol ${k.protocol})`;
}

/** Why a socket of this kind cannot be dumped, or undefined when it can (TCP, UDP and raw over IPv4/IPv6; netlink and packet: files/netlink-sockets.ts, files/packet-sockets.ts). */
export function unsupportedSocketReason(k: SocketKind): string | undefined {
  if (k.domain === AF_INET || k.domain === AF_INET6) {
    if ((k.type === SOCK_STREAM && k.protocol === IPPROTO.TCP) || (k.type === SOCK_DGRAM && k.protocol === IPPROTO.UDP) || k.type === SOCK_RAW) return undefined;
    return 'sockets of this kind cannot be dumped yet (TCP, UDP and raw ones can)';
  }
  if (k.domain === AF_NETLINK || k.domain === AF_PACKET) return undefined;
  return 'sockets of this kind cannot be dumped yet (unix, TCP, UDP, raw, netlink and packet ones can)';
}

const fmt = (a: InetAddress): string => (a.family === 6 ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);

function peerOf(fd: Fd | number): InetAddress | undefined {
  try {
    return sock.getpeername(fd as number);
  } catch (error) {
    if (isSysError(error, 'ENOTCONN')) return undefined;
    throw error;
  }
}

/**
 * The address a raw socket is connected to, or undefined. getpeername cannot tell (a raw socket
 * has no destination port, and the kernel answers ENOTCONN for that), and this kernel has no
 * raw sock_diag; /proc/net/raw and raw6 show it: rem_address, with st 01 (ESTABLISHED) once
 * connected. Addresses there are the in_addr/in6_addr bytes as host-order u32 words in hex.
 */
function rawPeerOf(ino: number, family: number): InetAddress | undefined {
  const v4 = family === AF_INET;
  let table: string;
  try {
    table = readFileSync(v4 ? '/proc/net/raw' : '/proc/net/raw6', 'utf8');
  } catch {
    return undefined;
  }
  for (const line of table.split('\n').slice(1)) {
    const f = line.trim().split(/\s+/);
    if (f.length < 10 || Number(f[9]) !== ino) continue;
    if (f[3] !== '01') return undefined;
    const hex = f[2]!.split(':')[0]!;
    const bytes = Buffer.alloc(hex.length / 2);
    for (let i = 0; i < hex.length / 8; i++) bytes.writeUInt32LE(parseInt(hex.slice(i * 8, i * 8 + 8), 16) >>> 0, i * 4);
    return v4 ? { family: 4, address: sock.formatIPv4(bytes), port: 0 } : { family: 6, address: sock.formatIPv6(bytes), port: 0, flowinfo: 0, scopeId: 0 };
  }
  return undefined;
}

/** A TCP socket's state number (TCP_INFO). */
function tcpState(fd: Fd | number): number {
  return sock.getTcpInfo(fd as number).state;
}

/** Connected TCP states: the ones that carry a connection to save (soccr's supported states) or to refuse. */
const isConnectedTcp = (state: number) => state !== TcpState.LISTEN && state !== TcpState.CLOSE;

/**
 * The reason an established connection is refused before anything is frozen, or undefined.
 * Run on a duplicate of the task's fd (`dup`); `fd`/`ino` only name it.
 */
export function precheckInetSocket(dup: Fd, fd: number, ino: number, opts: InetDumpOptions): SocketRefused | undefined {
  const kind = socketKindOf(dup);
  const reason = unsupportedSocketReason(kind);
  const what = describeSocketKind(kind);
  if (reason) return new SocketRefused(fd, ino, what, reason);
  if (kind.domain === AF_NETLINK || kind.domain === AF_PACKET || kind.type !== SOCK_STREAM || kind.protocol !== IPPROTO.TCP) return undefined;
  const state = tcpState(dup);
  if (!isConnectedTcp(state)) return undefined;
  const local = sock.getsockname(dup as number);
  const remote = peerOf(dup);
  const conn = `${fmt(local)} -> ${remote ? fmt(remote) : '?'}, ${tcpStateName(state)}`;
  if (!SUPPORTED_STATES.has(state)) return new SocketRefused(fd, ino, `${what} ${conn}`, `a connection in state ${tcpStateName(state)} cannot be dumped (${[...SUPPORTED_STATES].map(tcpStateName).join(', ')} can)`);
  if (!opts.tcpEstablished && !opts.tcpClose) return new SocketRefused(fd, ino, `${what} ${conn}`, 'an established TCP connection; dump it with --tcp-established (tcpEstablished) to save it, or --tcp-close (tcpClose) to have restore close it');
  return undefined;
}

/** Duplicates fd `fd` of `pid` into criu-ts (pidfd_getfd: the same socket). */
export function grabFd(pid: number, fd: number): Fd {
  const pidfd = pidfdOpen(pid as Pid);
  try {
    return pidfdGetfd(pidfd, fd);
  } finally {
    close(pidfd);
  }
}

/** A datagram waiting in a UDP socket: its bytes and the sockaddr it came from. */
export interface QueuedDatagram {
  readonly bytes: Buffer;
  readonly addr: Buffer;
}

/** A connection criu-ts took from a listener's accept queue: its fd in criu-ts, inode, lock key, state once saved. */
interface QueuedConnection {
  readonly dup: Fd;
  readonly ino: number;
  readonly key: ConnectionKey;
  saved?: TcpConnectionState;
}

/** One tcp-stream-<ino>.img to write. */
export interface TcpStreamImage {
  readonly ino: number;
  readonly entry: DecodedMessage;
  readonly queues: { type: 'tcp-queues'; inq: Uint8Array; outq: Uint8Array };
}

/** The inet sockets of one dump (every task of the tree). */
export class InetSocketDumper {
  private readonly diag = new Map<string, Map<number, InetDiagSocket> | undefined>();
  /** Duplicates of the tasks' inet sockets, by "pid/fd" (closed by close()). */
  private readonly dups = new Map<string, Fd>();
  /** Sockets put in repair mode, with their connection: resumed or left to die with their task. */
  private readonly repaired: Array<{ dup: Fd; key: ConnectionKey }> = [];
  /** Connections taken from listeners' accept queues, by listener inode, in queue order. */
  private readonly acceptQueues = new Map<number, { listener: Fd; connections: QueuedConnection[] }>();
  readonly tcpStreams: TcpStreamImage[] = [];

  /** `onQueuedTaken`: told of each connection taken from an accept queue (the dump guard keeps a copy). */
  constructor(
    private readonly opts: InetDumpOptions,
    private readonly onQueuedTaken?: (listener: Fd, connection: Fd) => void,
  ) {}

  /** criu-ts's duplicate of fd `fd` of `pid` (any socket), taken once per dump and closed by close(). */
  dupOf(pid: number, fd: number): Fd {
    const k = `${pid}/${fd}`;
    let dup = this.dups.get(k);
    if (dup === undefined) this.dups.set(k, (dup = grabFd(pid, fd)));
    return dup;
  }

  /**
   * The connections the dump will save through repair mode, as the network lock keys them (an
   * IPv4-mapped IPv6 connection by its IPv4 addresses: that is what its packets carry).
   * Precondition: the tasks are frozen.
   */
  connectionsToLock(tasks: ReadonlyArray<{ readonly pid: number; readonly fds: readonly number[] }>): ConnectionKey[] {
    if (!this.opts.tcpEstablished || this.opts.tcpClose) return [];
    const keys = new Map<string, ConnectionKey>();
    for (const t of tasks) {
      for (const fd of t.fds) {
        let link: string;
        try {
          link = readlinkSync(`/proc/${t.pid}/fd/${fd}`);
        } catch {
          continue;
        }
        if (!link.startsWith('socket:')) continue;
        const dup = this.dupOf(t.pid, fd);
        const kind = socketKindOf(dup);
        if ((kind.domain !== AF_INET && kind.domain !== AF_INET6) || kind.type !== SOCK_STREAM || kind.protocol !== IPPROTO.TCP) continue;
        const state = tcpState(dup);
        if (state === TcpState.LISTEN) {
          for (const q of this.takeAcceptQueue(dup, Number(link.slice(8, -1)), kind.domain)) keys.set(`${fmt(q.key.local)} ${fmt(q.key.remote)}`, q.key);
          continue;
        }
        if (!SUPPORTED_STATES.has(state)) continue;
        const remote = peerOf(dup);
        if (!remote) continue;
        const key = wireKey({ local: sock.getsockname(dup as number), remote });
        keys.set(`${fmt(key.local)} ${fmt(key.remote)}`, key);
      }
    }
    return [...keys.values()];
  }

  /**
   * Accepts every connection waiting in listener `ino` (criu-ts's duplicate `listener`), once per
   * listener, when they can be queued back; returns them. Precondition: the tasks are frozen.
   */
  private takeAcceptQueue(listener: Fd, ino: number, family: number): QueuedConnection[] {
    const taken = this.acceptQueues.get(ino);
    if (taken) return taken.connections;
    if (this.opts.skipInFlight || (this.diagOf(family, IPPROTO.TCP, ino)?.rqueue ?? 0) === 0 || acceptQueueRefillUnsupported() !== undefined) return [];
    const connections: QueuedConnection[] = [];
    this.acceptQueues.set(ino, { listener, connections });
    // The duplicate shares the task's file description, O_NONBLOCK included (not to be touched):
    // accept only what poll says is there.
    while ((pollOne(listener, POLL.IN, 0) & POLL.IN) !== 0) {
      let conn: Fd;
      try {
        conn = accept4(listener, sock.SOCK_NONBLOCK);
      } catch (error) {
        if (isSysError(error, 'EAGAIN')) break;
        throw error;
      }
      const remote = peerOf(conn);
      if (!remote) {
        close(conn); // reset by its peer while it waited: nothing left to keep
        continue;
      }
      const ino = Number(readlinkSync(`/proc/self/fd/${conn}`).slice(8, -1));
      connections.push({ dup: conn, ino, key: wireKey({ local: sock.getsockname(conn as number), remote }) });
      this.onQueuedTaken?.(listener, conn);
    }
    return connections;
  }

  private diagOf(family: number, protocol: number, ino: number): InetDiagSocket | undefined {
    const k = `${family}/${protocol}`;
    if (!this.diag.has(k)) {
      try {
        this.diag.set(k, inetDiagDump(family, protocol));
      } catch (error) {
        // No diag module for the protocol (udp_diag): the socket itself tells the rest.
        if (!(error instanceof SockDiagError)) throw error;
        this.diag.set(k, undefined);
      }
    }
    return this.diag.get(k)?.get(ino);
  }

  /**
   * The isk member (without id and fown, which FileTable adds) of the socket behind fd `fd` of
   * `pid`, and the datagrams waiting in it (UDP).
   */
  dump(pid: number, fd: number, ino: number, flags: number): { entry: DecodedMessage; queue: QueuedDatagram[] } {
    const dup = this.dupOf(pid, fd);
    const kind = socketKindOf(dup);
    const what = describeSocketKind(kind);
    const refuse = (reason: string, detail = what): never => {
      throw new SocketRefused(fd, ino, detail, reason);
    };
    const unsupported = unsupportedSocketReason(kind);
    if (unsupported) refuse(unsupported);
    const tcp = kind.type === SOCK_STREAM && kind.protocol === IPPROTO.TCP;
    const raw = kind.type === SOCK_RAW;
    const local = sock.getsockname(dup as number);
    const remote = raw ? rawPeerOf(ino, kind.domain) : peerOf(dup);
    const state = tcp ? tcpState(dup) : remote ? TcpState.ESTABLISHED : TcpState.CLOSE;
    const diag = this.diagOf(kind.domain, kind.protocol, ino);
    const conn = `${what} ${fmt(local)}${remote ? ` -> ${fmt(remote)}` : ''}, ${tcpStateName(state)}`;

    // Read before repair mode: it forces SO_REUSEADDR on (soccr keeps the value for resume).
    const opts = inetSocketOptions(dup);
    const ipOpts = ipOptions(dup, kind.domain);
    const tcpOpts: DecodedMessage = tcp ? tcpOptions(dup) : {};
    let backlog = diag?.wqueue ?? 0;
    let acceptQueue: DecodedMessage[] | undefined;
    if (tcp && state === TcpState.LISTEN) {
      const taken = this.acceptQueues.get(ino);
      const waiting = diag?.rqueue ?? 0;
      if (taken && taken.connections.length > 0) {
        acceptQueue = taken.connections.map((q) => this.saveQueued(q, kind, flags));
      } else if (waiting > 0 && !this.opts.skipInFlight) {
        const why = !this.opts.tcpEstablished || this.opts.tcpClose
          ? 'dump with --tcp-established (tcpEstablished) to save them'
          : `they cannot be put back here: ${acceptQueueRefillUnsupported() ?? 'unknown reason'}`;
        refuse(`listening socket with ${waiting} connection(s) not accepted yet (in flight); ${why}, or with --skip-in-flight (skipInFlight) to leave them behind`, conn);
      }
    } else if (tcp && isConnectedTcp(state)) {
      if (!SUPPORTED_STATES.has(state)) refuse(`a connection in state ${tcpStateName(state)} cannot be dumped`, conn);
      if (!this.opts.tcpClose) {
        if (!this.opts.tcpEstablished) refuse('an established TCP connection; dump it with --tcp-established (tcpEstablished) to save it, or --tcp-close (tcpClose) to have restore close it', conn);
        pause(dup as number);
        this.repaired.push({ dup, key: wireKey({ local, remote: remote! }) });
        const saved = save(dup as number);
        const form = toImageForm(saved);
        this.tcpStreams.push({ ino, entry: form.tcpStream, queues: form.queues });
        if (saved.cork) tcpOpts.cork = true;
        if (saved.nodelay) tcpOpts.nodelay = true;
        // What CRIU records here is the send queue as sock_diag counted it before repair.
        backlog = diag?.wqueue ?? saved.sendQueue.length;
      }
    } else if (tcp && state !== TcpState.CLOSE) {
      refuse(`TCP state ${tcpStateName(state)} cannot be dumped`, conn);
    }
    const entry: DecodedMessage = {
      ino, family: kind.domain, type: kind.type, proto: kind.protocol, state,
      src_port: local.port, dst_port: remote?.port ?? 0, flags, backlog,
      src_addr: addressWords(local), dst_addr: remote ? addressWords(remote) : kind.domain === AF_INET ? [0] : [0, 0, 0, 0],
      opts,
    };
    if (kind.domain === AF_INET6) entry.v6only = diag?.v6only ?? getsockopt(dup, SOL.IPV6, IPV6_OPT.V6ONLY).readInt32LE(0) !== 0;
    entry.ip_opts = ipOpts;
    entry.ns_id = NET_NS_ID;
    const shutdown = diag?.shutdown ?? 0;
    // A half-closed TCP connection carries its FINs in its state; other sockets keep the bits.
    if (shutdown !== 0 && !(tcp && isConnectedTcp(state))) entry.shutdown = shutdown;
    entry.tcp_opts = tcpOpts;
    if (acceptQueue) entry.accept_queue = acceptQueue;
    if (raw) {
      // A raw socket's queue cannot be walked without taking it (no SO_PEEK_OFF for raw sockets).
      if ((pollOne(dup, POLL.IN, 0) & POLL.IN) !== 0) refuse('packets are waiting in it; a raw socket\'s queue cannot be read without taking them from the program (dump again once it has read them)', conn);
      entry.ip_opts = { ...ipOpts, raw: rawOptions(dup, kind) };
      return { entry, queue: [] };
    }
    return { entry, queue: tcp ? [] : peekDatagrams(dup, conn) };
  }

  /** A connection taken from an accept queue, saved through repair mode: its nested inet_sk_entry (tcp-stream image queued). */
  private saveQueued(q: QueuedConnection, kind: SocketKind, flags: number): DecodedMessage {
    const opts = inetSocketOptions(q.dup);
    const ipOpts = ipOptions(q.dup, kind.domain);
    const tcpOpts = tcpOptions(q.dup);
    pause(q.dup as number);
    q.saved = save(q.dup as number);
    const form = toImageForm(q.saved);
    this.tcpStreams.push({ ino: q.ino, entry: form.tcpStream, queues: form.queues });
    const entry: DecodedMessage = {
      id: 0, ino: q.ino, family: kind.domain, type: kind.type, proto: kind.protocol, state: q.saved.state,
      src_port: q.saved.local.port, dst_port: q.saved.remote.port, flags, backlog: 0,
      src_addr: addressWords(q.saved.local), dst_addr: addressWords(q.saved.remote),
      fown: { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 }, opts,
    };
    if (kind.domain === AF_INET6) entry.v6only = getsockopt(q.dup, SOL.IPV6, IPV6_OPT.V6ONLY).readInt32LE(0) !== 0;
    entry.ip_opts = ipOpts;
    entry.ns_id = NET_NS_ID;
    entry.tcp_opts = tcpOpts;
    return entry;
  }

  /** The locked connections back in service: repair mode off (soccr resume), in dump order. */
  resumeAll(): string[] {
    const errors: string[] = [];
    for (const r of this.repaired.splice(0)) {
      try {
        resume(r.dup as number);
      } catch (error) {
        errors.push(`${fmt(r.key.local)} -> ${fmt(r.key.remote)}: ${(error as Error).message}`);
      }
    }
    // Connections taken from accept queues go back where they were, in their order: saved (if
    // the dump had not got that far), dropped silently from criu-ts, queued again.
    for (const { listener, connections } of this.acceptQueues.values()) {
      for (const q of connections.splice(0)) {
        try {
          if (!q.saved) {
            pause(q.dup as number);
            q.saved = save(q.dup as number);
          }
          discard(q.dup as number); // gone without a packet, even from the dump guard's copy
          requeueConnection(listener as number, q.saved);
        } catch (error) {
          errors.push(`${fmt(q.key.local)} -> ${fmt(q.key.remote)} (waiting to be accepted): ${(error as Error).message}`);
        }
      }
    }
    return errors;
  }

  /** Closes criu-ts's duplicates (a socket still in repair mode whose task is gone then vanishes without a packet). */
  close(): void {
    for (const dup of this.dups.values()) {
      try {
        close(dup);
      } catch {
        /* nothing to do */
      }
    }
    this.dups.clear();
    for (const { connections } of this.acceptQueues.values()) {
      for (const q of connections.splice(0)) {
        try {
          close(q.dup);
        } catch {
          /* nothing to do */
        }
      }
    }
    this.acceptQueues.clear();
  }
}

/** Bigger than any UDP datagram (64 KiB minus headers). */
const DATAGRAM_BUFFER = 1 << 16;

/** Every datagram queued in UDP socket `dup`, oldest first, with its source, left in place. */
function peekDatagrams(dup: Fd, what: string): QueuedDatagram[] {
  const saved = getsockopt(dup, SOL_SOCKET, SO.PEEK_OFF).readInt32LE(0);
  const out: QueuedDatagram[] = [];
  const buf = Buffer.allocUnsafe(DATAGRAM_BUFFER);
  setsockopt(dup, SOL_SOCKET, SO.PEEK_OFF, 0);
  try {
    for (;;) {
      let got: ReturnType<typeof sock.recvFrom>;
      try {
        got = sock.recvFrom(dup as number, buf, MSG.PEEK | MSG.DONTWAIT);
      } catch (error) {
        if (isSysError(error, 'EAGAIN')) break; // the queue is walked
        throw error;
      }
      // A zero-length datagram cannot be told from the end of the walk by peeking; it ends it.
      if (got.bytes === 0) break;
      if (!got.from) throw new Error(`${what}: a queued datagram has no source address`);
      out.push({ bytes: Buffer.from(buf.subarray(0, got.bytes)), addr: sock.encodeSockaddr(got.from) });
    }
  } finally {
    setsockopt(dup, SOL_SOCKET, SO.PEEK_OFF, saved);
  }
  return out;
}

/** in_addr / in6_addr bytes as little-endian u32 words, as CRIU stores addresses (127.0.0.1 is [0x0100007f]). */
export function addressWords(a: InetAddress): number[] {
  const b = a.family === 4 ? sock.parseIPv4(a.address) : sock.parseIPv6(a.address);
  const words: number[] = [];
  for (let i = 0; i < b.length; i += 4) words.push(b.readUInt32LE(i));
  return words;
}

/** sk_opts_entry of an inet socket: the SOL_SOCKET options CRIU 4.2 records (no SO_PASSCRED/PASSSEC: unix only), plus the device binding and linger. */
function inetSocketOptions(dup: Fd): DecodedMessage {
  const opts = socketOptions(dup, false);
  const dev = getsockopt(dup, SOL_SOCKET, SO.BINDTODEVICE, 16);
  const devName = dev.subarray(0, dev.indexOf(0) < 0 ? dev.length : dev.indexOf(0)).toString('utf8');
  if (devName) opts.so_bound_dev = devName;
  const linger = getsockopt(dup, SOL_SOCKET, SO.LINGER, 8);
  if (linger.length >= 8 && linger.readInt32LE(0) !== 0) opts.so_linger = linger.readInt32LE(4) >>> 0;
  return opts;
}

/**
 * ip_opts_raw_entry of a raw socket: IP_OPT.HDRINCL (IPV6_OPT.HDRINCL), IP_OPT.NODEFRAG when set, and the
 * ICMP type filter of an ICMP (ICMP_FILTER, one word) or ICMPv6 (ICMP6_FILTER, eight words)
 * socket, as the kernel's bitmap words.
 */
function rawOptions(dup: Fd, kind: SocketKind): DecodedMessage {
  const v4 = kind.domain === AF_INET;
  const int = (level: number, name: number) => getsockopt(dup, level, name).readInt32LE(0);
  const out: DecodedMessage = {};
  if (int(v4 ? SOL.IP : SOL.IPV6, v4 ? IP_OPT.HDRINCL : IPV6_OPT.HDRINCL) !== 0) out.hdrincl = true;
  if (v4 && int(SOL.IP, IP_OPT.NODEFRAG) !== 0) out.nodefrag = true;
  if (v4 && kind.protocol === IPPROTO.ICMP) {
    out.icmpv_filter = [getsockopt(dup, SOL.RAW, ICMP_FILTER).readUInt32LE(0)];
  } else if (!v4 && kind.protocol === IPPROTO.ICMPV6) {
    const words = getsockopt(dup, SOL.ICMPV6, ICMP6_FILTER, 32);
    out.icmpv_filter = Array.from({ length: words.length / 4 }, (_, i) => words.readUInt32LE(i * 4));
  }
  return out;
}

/** ip_opts_entry: TTL (or IPv6 hop limit) always, TOS/traffic class, FREEBIND and PKTINFO when set. */
function ipOptions(dup: Fd, family: number): DecodedMessage {
  const v4 = family === AF_INET;
  const level = v4 ? SOL.IP : SOL.IPV6;
  const int = (name: number) => getsockopt(dup, level, name).readInt32LE(0);
  const out: DecodedMessage = {};
  if (int(v4 ? IP_OPT.FREEBIND : IPV6_OPT.FREEBIND) !== 0) out.freebind = true;
  if (int(v4 ? IP_OPT.PKTINFO : IPV6_OPT.RECVPKTINFO) !== 0) out.pktinfo = true;
  const tos = int(v4 ? IP_OPT.TOS : IPV6_OPT.TCLASS);
  if (tos > 0) out.tos = tos;
  const ttl = int(v4 ? IP_OPT.TTL : IPV6_OPT.UNICAST_HOPS);
  if (ttl > 0) out.ttl = ttl;
  return out;
}

/**
 * tcp_opts_entry: the keepalive knobs always (as CRIU 4.2 writes them), NODELAY and CORK when set,
 * and (criu-ts's fields) TCP_DEFER_ACCEPT and TCP_FASTOPEN when set. Only a socket they were set
 * on has those two: an accepted connection starts with its accept queue zeroed (the kernel's
 * inet_csk_clone_lock), so connections never carry them.
 */
function tcpOptions(dup: Fd): DecodedMessage {
  const int = (name: number) => getsockopt(dup, SOL.TCP, name).readInt32LE(0);
  const out: DecodedMessage = {};
  if (int(TCP_OPT.CORK) !== 0) out.cork = true;
  if (int(TCP_OPT.NODELAY) !== 0) out.nodelay = true;
  out.keepcnt = int(TCP_OPT.KEEPCNT);
  out.keepidle = int(TCP_OPT.KEEPIDLE);
  out.keepintvl = int(TCP_OPT.KEEPINTVL);
  const deferAccept = int(TCP_OPT.DEFER_ACCEPT);
  if (deferAccept > 0) out.defer_accept = deferAccept;
  const fastopen = int(TCP_OPT.FASTOPEN);
  if (fastopen > 0) out.fastopen_qlen = fastopen;
  return out;
}

// AF_INET/AF_INET6 sockets on restore: files.img INETSK entries (inet_sk_entry) and, for
// established TCP connections, tcp-stream-<ino in hex>.img, checked, then recreated.
//
// Unlike the other kinds, each inet socket is made by criu-ts itself and then handed to the task
// (a remote pidfd_getfd of criu-ts's fd: the task gets the very socket, files.ts does the
// handing), because the TCP repair calls of @criu-ts/soccr work on a local fd. The restored
// process lives in criu-ts's network namespace (criu-ts restores no namespaces), so the socket
// is in the right one; its owner is criu-ts's user (root), as the process is at this point.
//
// How each shape comes back:
//   listener               socket, IPV6_OPT.V6ONLY, SO_REUSEADDR on for the bind (connections of the
//                          old process may still hold the port in TIME_WAIT), options (with
//                          TCP_DEFER_ACCEPT and TCP_FASTOPEN, when criu-ts's dump recorded them),
//                          bind, listen(backlog); then SO_REUSEADDR as dumped; then the
//                          connections that waited in its accept queue (criu-ts's accept_queue
//                          field) put back in it, in order (soccr requeueConnection); criu-ts keeps
//                          its copy of such a listener until the end, so that a failed restore
//                          can take them out again silently (repair mode) instead of the
//                          listener's close resetting them
//   established TCP        soccr restore() in repair mode: bound, connected without a handshake,
//   (and half-closed)      queues refilled, window and options set; options as dumped; repair mode
//                          is left just before the tasks run (resumeAll), the network lock lifted
//                          once they run (unlock)
//   with --tcp-close       a fresh unconnected socket in its place (criu's --tcp-close): the
//                          program gets errors from it and reconnects as after a network failure
//   UDP                    socket, bind (when it was bound), connect (when it was connected);
//                          the datagrams that were waiting in it (sk-queues.img, with their
//                          source in the `addr` field criu-ts writes) sent to it again from that
//                          source, on a raw socket (soccr sendCraftedDatagrams)
//   other TCP (CLOSE)      socket, bind when it was bound
//
// Network lock: every connection of the images is locked before the first socket exists (the
// dump left them locked; locking again is a no-op then, and needed when the images come from
// elsewhere). On failure, only the locks this restore added are lifted: a connection the dump
// locked stays locked for the next restore attempt.
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { accept4 as acceptConnection, listen as listenFd, pollOne, POLL, SO, SOL_SOCKET, sock, type Fd, IPPROTO, SOL, IP_OPT, IPV6_OPT, TCP_OPT, ICMP_FILTER, ICMP6_FILTER } from '@criu-ts/sys';
import {
  decodeTcpStreamImage, discard, fromImageForm, requeueConnection, sendCraftedDatagrams, listLocksSync, lockHeldSync, resume, restore as restoreConnection, SoccrError, SUPPORTED_STATES, TcpState,
  tcpStateName, unlockHeldSync, wireKey, keyText, type ConnectionKey, type InetAddress, type LockBackend, type TcpConnectionState,
} from '@criu-ts/soccr';
import { applySocketOptions, socketSteps } from './unix-sockets.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Invalid = (message: string, evidence?: Record<string, unknown>) => never;

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const SOCK_DGRAM = 2;
const SOCK_RAW = 3;

export interface InetSocketImage {
  readonly id: number;
  readonly ino: number;
  readonly family: number;
  readonly type: number;
  readonly proto: number;
  readonly state: number;
  readonly flags: number;
  readonly backlog: number;
  readonly local: InetAddress;
  /** The peer of a connected socket. */
  readonly remote?: InetAddress;
  readonly v6only: boolean;
  readonly opts: Msg;
  readonly ipOpts: Msg;
  readonly tcpOpts: Msg;
  readonly shutdown: number;
  /** How restore makes it (see the module doc). */
  readonly how: 'listen' | 'connection' | 'closed-connection' | 'udp' | 'raw' | 'plain';
  /** The saved connection ('connection' only). */
  readonly connection?: TcpConnectionState;
  /** UDP: datagrams that were waiting in it, oldest first, with their sources. */
  readonly queue: readonly QueuedDatagram[];
  /** Listener: the connections that waited in its accept queue, in order. */
  readonly acceptQueue: readonly TcpConnectionState[];
}

export interface QueuedDatagram {
  readonly bytes: Uint8Array;
  readonly from: InetAddress;
}

/** The datagrams of sk-queues.img that carry a source address (UDP), by the id of their socket. */
export function readDatagramQueues(entries: ReadonlyArray<{ message: Msg; bytes?: Uint8Array }>, invalid: Invalid): Map<number, QueuedDatagram[]> {
  const queues = new Map<number, QueuedDatagram[]>();
  for (const [i, e] of entries.entries()) {
    if (e.message.addr === undefined) continue;
    const idFor = Number(e.message.id_for);
    let from: InetAddress;
    try {
      from = sock.decodeSockaddr(Buffer.from(e.message.addr as Uint8Array));
    } catch (error) {
      return invalid(`sk-queues.img entry ${i}: addr of the datagram for socket id ${idFor} is no inet address: ${(error as Error).message}`, { idFor });
    }
    let queue = queues.get(idFor);
    if (!queue) queues.set(idFor, (queue = []));
    queue.push({ bytes: e.bytes ?? new Uint8Array(0), from });
  }
  return queues;
}

export interface InetRestoreOptions {
  /** Established connections come back through repair mode (criu's --tcp-established). */
  readonly tcpEstablished?: boolean;
  /** Established connections come back closed (criu's --tcp-close, or a dump made with it). */
  readonly tcpClose?: boolean;
}

const fmt = (a: InetAddress): string => (a.family === 6 ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);

export function describeInetSocket(s: InetSocketImage): string {
  const proto = s.proto === IPPROTO.TCP ? 'TCP' : s.type === SOCK_RAW ? `raw (protocol ${s.proto})` : 'UDP';
  return `${proto} socket id ${s.id} (socket:[${s.ino}] ${fmt(s.local)}${s.remote ? ` -> ${fmt(s.remote)}` : ''}, ${tcpStateName(s.state)})`;
}

function address(words: unknown, family: 4 | 6, port: number, field: string, where: string, invalid: Invalid): InetAddress {
  const n = family === 4 ? 1 : 4;
  if (!Array.isArray(words) || words.length < n) invalid(`${where}: inet_sk_entry.${field} has ${Array.isArray(words) ? words.length : 'no'} words; IPv${family} needs ${n}`, { field, value: words });
  const b = Buffer.alloc(n * 4);
  (words as unknown[]).slice(0, n).forEach((w, i) => b.writeUInt32LE(Number(w) >>> 0, i * 4));
  return family === 4 ? { family, address: sock.formatIPv4(b), port } : { family, address: sock.formatIPv6(b), port, flowinfo: 0, scopeId: 0 };
}

/** One INETSK files.img entry, checked on its own (`where` names it in errors); reads its tcp-stream image when it has one. */
export function readInetSocket(id: number, isk: Msg, dir: string, where: string, invalid: Invalid, options: InetRestoreOptions, queue: readonly QueuedDatagram[] = []): InetSocketImage {
  const family = Number(isk.family);
  const type = Number(isk.type);
  const proto = Number(isk.proto);
  const state = Number(isk.state);
  const ino = Number(isk.ino);
  if (family !== AF_INET && family !== AF_INET6) invalid(`${where}: inet socket family ${family} is neither AF_INET nor AF_INET6`, { family });
  const tcp = type === SOCK_STREAM && proto === IPPROTO.TCP;
  const udp = type === SOCK_DGRAM && proto === IPPROTO.UDP;
  const raw = type === SOCK_RAW;
  if (!tcp && !udp && !raw) invalid(`${where}: inet socket of type ${type} and protocol ${proto} (only TCP, UDP and raw sockets are restored)`, { type, proto });
  if (raw && !(proto > 0 && proto < 256)) invalid(`${where}: raw socket of protocol ${proto}`, { proto });
  const fam: 4 | 6 = family === AF_INET ? 4 : 6;
  const srcPort = Number(isk.src_port);
  const dstPort = Number(isk.dst_port);
  if (!(srcPort >= 0 && srcPort < 65536 && dstPort >= 0 && dstPort < 65536)) invalid(`${where}: port out of range (${srcPort}, ${dstPort})`);
  const local = address(isk.src_addr, fam, srcPort, 'src_addr', where, invalid);
  const connected = tcp ? state !== TcpState.LISTEN && state !== TcpState.CLOSE : state === TcpState.ESTABLISHED;
  const remote = connected ? address(isk.dst_addr, fam, dstPort, 'dst_addr', where, invalid) : undefined;
  if (queue.length > 0 && !udp) invalid(`${where}: sk-queues.img holds datagrams for a TCP socket`);
  for (const d of queue) if (d.from.family !== fam) invalid(`${where}: a queued datagram comes from an IPv${d.from.family} address to an IPv${fam} socket`, { from: d.from });
  let how: InetSocketImage['how'];
  let connection: TcpConnectionState | undefined;
  if (udp || raw) {
    if (state !== TcpState.ESTABLISHED && state !== TcpState.CLOSE) invalid(`${where}: ${udp ? 'UDP' : 'raw'} socket in state ${state}`, { state });
    how = udp ? 'udp' : 'raw';
  } else if (state === TcpState.LISTEN) how = 'listen';
  else if (state === TcpState.CLOSE) how = 'plain';
  else {
    const conn = `${fmt(local)} -> ${fmt(remote!)}, ${tcpStateName(state)}`;
    if (!SUPPORTED_STATES.has(state)) invalid(`${where}: TCP connection ${conn} is in a state restore cannot recreate`, { state });
    const streamName = `tcp-stream-${ino.toString(16)}.img`;
    if (options.tcpClose) how = 'closed-connection';
    else if (!options.tcpEstablished) {
      invalid(`${where}: established TCP connection ${conn}; restore it with --tcp-established (tcpEstablished), or with --tcp-close (tcpClose) to get a closed socket in its place`, { state });
    } else if (!existsSync(join(dir, streamName))) {
      invalid(`${where}: established TCP connection ${conn} has no ${streamName} (dumped with --tcp-close?); restore it with --tcp-close (tcpClose)`, { file: join(dir, streamName) });
    } else {
      how = 'connection';
      try {
        const form = decodeTcpStreamImage(readFileSync(join(dir, streamName)), streamName);
        connection = fromImageForm({ ...form, inetSk: isk });
      } catch (error) {
        const evidence = error instanceof SoccrError ? { file: join(dir, streamName), ...error.evidence } : { file: join(dir, streamName) };
        invalid(`${where}: ${streamName} does not describe connection ${conn}: ${(error as Error).message}`, evidence);
      }
    }
  }
  const acceptQueue: TcpConnectionState[] = [];
  const queued = (isk.accept_queue as Msg[] | undefined) ?? [];
  if (queued.length > 0 && how! !== 'listen') invalid(`${where}: a socket in state ${tcpStateName(state)} has connections in an accept queue`, { state });
  queued.forEach((q, i) => {
    const inQueue = readInetSocket(id, q, dir, `${where}, connection ${i + 1} of its accept queue`, invalid, { ...options, tcpClose: false });
    const c = inQueue.connection!;
    if (inQueue.family !== family || inQueue.proto !== proto) invalid(`${where}: connection ${i + 1} of its accept queue is not of the listener's family and protocol`);
    if (c.state !== TcpState.ESTABLISHED && c.state !== TcpState.CLOSE_WAIT) invalid(`${where}: connection ${i + 1} of its accept queue is in state ${tcpStateName(c.state)}; only ESTABLISHED and CLOSE_WAIT ones wait there`, { state: c.state });
    if (c.sendQueue.length > 0) invalid(`${where}: connection ${i + 1} of its accept queue has ${c.sendQueue.length} bytes to send; nothing can be sent before accept()`);
    acceptQueue.push(c);
  });
  return {
    id, ino, family, type, proto, state, flags: Number(isk.flags ?? 0), backlog: Number(isk.backlog ?? 0), local,
    ...(remote ? { remote } : {}), v6only: isk.v6only === true, opts: (isk.opts as Msg | undefined) ?? {},
    ipOpts: (isk.ip_opts as Msg | undefined) ?? {}, tcpOpts: (isk.tcp_opts as Msg | undefined) ?? {}, shutdown: Number(isk.shutdown ?? 0) & 3,
    how: how!, ...(connection ? { connection } : {}), queue, acceptQueue,
  };
}

/** The connections of sockets that restore recreates through repair mode, as the network lock keys them. */
export function connectionKeysOf(sockets: Iterable<InetSocketImage>): ConnectionKey[] {
  const keys = new Map<string, ConnectionKey>();
  for (const s of sockets) {
    for (const c of s.how === 'connection' ? [s.connection!] : s.acceptQueue) {
      const key = wireKey({ local: c.local, remote: c.remote });
      keys.set(`${key.local.family}|${keyText(key)}`, key);
    }
  }
  return [...keys.values()];
}

/**
 * The inet sockets of one restore: the network lock around them, the sockets made (in criu-ts,
 * see the module doc), repair mode left at the end. One per restore.
 */
export class InetSockets {
  /** Repaired connections still held by criu-ts (left in repair mode until resumeAll). */
  private readonly repaired: Array<{ fd: number; what: string }> = [];
  /** Listeners whose accept queue was refilled: criu-ts's copy is kept until resumeAll or abandon. */
  private readonly queuedListeners: number[] = [];
  private addedLocks: ConnectionKey[] = [];
  private backend: LockBackend | undefined;

  constructor(
    private readonly keys: readonly ConnectionKey[],
    private readonly holder: string,
  ) {}

  /** Locks every connection of the images that is not locked yet (the dump normally left them locked). */
  lock(): void {
    if (this.keys.length === 0) return;
    const already = new Set(listLocksSync().map((l) => `${l.key.local.family}|${keyText(l.key)}`));
    const missing = this.keys.filter((k) => !already.has(`${k.local.family}|${keyText(k)}`));
    this.backend = lockHeldSync(missing, { holder: this.holder });
    this.addedLocks = missing;
  }

  /** Makes the socket in criu-ts; returns its fd (hand it to the task, then call handedOver). */
  create(s: InetSocketImage): number {
    const what = describeInetSocket(s);
    const step = socketSteps(what);
    if (s.how === 'connection') {
      const fd = step('recreating the connection (TCP repair)', () => restoreConnection(s.connection!));
      this.repaired.push({ fd, what });
      // SO_REUSEADDR is soccr's to put back (repair mode forces it); the rest as dumped.
      step('setting its options', () => setOptions(fd, s, { reuseaddr: false }));
      return fd;
    }
    const family = s.family === AF_INET ? sock.AF_INET : sock.AF_INET6;
    const fd = step('socket', () => sock.socket(family, s.type | sock.SOCK_CLOEXEC, s.proto));
    try {
      // A raw socket has its protocol as port from the start: the kernel refuses V6ONLY then.
      if (s.family === AF_INET6 && s.how !== 'raw') step('IPV6_OPT.V6ONLY', () => sock.setsockoptInt(fd, SOL.IPV6, IPV6_OPT.V6ONLY, s.v6only ? 1 : 0));
      step('setting its options', () => setOptions(fd, s, { reuseaddr: true }));
      if (s.how === 'raw') {
        step('its raw options', () => setRawOptions(fd, s));
        // A raw socket's "port" is its protocol: only a bound address counts.
        if (!/^(0\.0\.0\.0|::)$/.test(s.local.address)) step(`bind to ${s.local.address}`, () => sock.bind(fd, { ...s.local, port: 0 }));
        if (s.remote) step(`connect to ${s.remote.address}`, () => sock.connect(fd, { ...s.remote!, port: 0 }));
        return fd;
      }
      const bound = s.local.port !== 0 || !/^(0\.0\.0\.0|::)$/.test(s.local.address);
      if (s.how === 'listen' || (bound && s.how !== 'closed-connection')) {
        // Let the bind share the port with what the old process left in TIME_WAIT; the dumped value follows.
        step('SO_REUSEADDR for the bind', () => sock.setsockoptInt(fd, SOL_SOCKET, SO.REUSEADDR, 1));
        step(`bind to ${fmt(s.local)}`, () => sock.bind(fd, s.local));
        if (s.opts.reuseaddr !== true) step('SO_REUSEADDR', () => sock.setsockoptInt(fd, SOL_SOCKET, SO.REUSEADDR, 0));
      }
      if (s.how === 'listen') step(`listen(${s.backlog})`, () => sysListen(fd, s.backlog));
      if (s.acceptQueue.length > 0) {
        this.queuedListeners.push(fd);
        s.acceptQueue.forEach((c, i) =>
          step(`putting connection ${i + 1} of ${s.acceptQueue.length} (${fmt(c.remote)}) back in its accept queue`, () => requeueConnection(fd, c)),
        );
      }
      if (s.how === 'udp' && s.remote) step(`connect to ${fmt(s.remote)}`, () => sock.connect(fd, s.remote!));
      if (s.queue.length > 0) step(`putting back ${s.queue.length} queued datagram(s)`, () => refillDatagrams(fd, s));
      return fd;
    } catch (error) {
      const at = this.queuedListeners.indexOf(fd);
      if (at >= 0) {
        this.queuedListeners.splice(at, 1);
        drainSilently(fd);
      }
      sock.close(fd);
      throw error;
    }
  }

  /** The task has its copy of socket `fd`: criu-ts's goes, except for connections still to be taken out of repair mode. */
  handedOver(fd: number): void {
    if (!this.repaired.some((r) => r.fd === fd) && !this.queuedListeners.includes(fd)) sock.close(fd);
  }

  /** Every repaired connection out of repair mode (TCP_REPAIR off sends a window probe). Before the tasks run. */
  resumeAll(): void {
    for (const fd of this.queuedListeners.splice(0)) sock.close(fd);
    for (const r of this.repaired.splice(0)) {
      try {
        resume(r.fd);
      } finally {
        sock.close(r.fd);
      }
    }
  }

  /** Lifts the lock of every connection of the images. After the tasks run. */
  unlock(): void {
    if (this.keys.length === 0) return;
    unlockHeldSync(this.keys, this.backend ? { backend: this.backend } : {});
    this.addedLocks = [];
  }

  /**
   * A failed restore: criu-ts's copies of repaired connections are closed (still in repair mode:
   * silently, once the killed tasks' copies are gone too) and the locks this restore added are
   * lifted; those the dump made stay, for another attempt.
   */
  abandon(): string[] {
    const errors: string[] = [];
    for (const fd of this.queuedListeners.splice(0)) {
      try {
        drainSilently(fd);
        sock.close(fd);
      } catch (error) {
        errors.push(`taking the queued connections out of a listener: ${(error as Error).message}`);
      }
    }
    for (const r of this.repaired.splice(0)) {
      try {
        sock.close(r.fd);
      } catch {
        /* nothing to do */
      }
    }
    try {
      if (this.addedLocks.length > 0) unlockHeldSync(this.addedLocks, this.backend ? { backend: this.backend } : {});
    } catch (error) {
      errors.push((error as Error).message);
    }
    this.addedLocks = [];
    return errors;
  }
}


/** ip_opts_raw_entry back on a raw socket: header inclusion, no-fragment, the ICMP type filter. */
function setRawOptions(fd: number, s: InetSocketImage): void {
  const raw = (s.ipOpts.raw as Msg | undefined) ?? {};
  const v4 = s.family === AF_INET;
  if (raw.hdrincl === true) sock.setsockoptInt(fd, v4 ? SOL.IP : SOL.IPV6, v4 ? IP_OPT.HDRINCL : IPV6_OPT.HDRINCL, 1);
  if (raw.nodefrag === true) sock.setsockoptInt(fd, SOL.IP, IP_OPT.NODEFRAG, 1);
  const filter = (raw.icmpv_filter as unknown[] | undefined) ?? [];
  if (filter.length === 0) return;
  const words = Buffer.alloc(filter.length * 4);
  filter.forEach((w, i) => words.writeUInt32LE(Number(w) >>> 0, i * 4));
  if (v4 && s.proto === IPPROTO.ICMP && filter.length === 1) sock.setsockoptBuf(fd, SOL.RAW, ICMP_FILTER, words);
  else if (!v4 && s.proto === IPPROTO.ICMPV6 && filter.length === 8) sock.setsockoptBuf(fd, SOL.ICMPV6, ICMP6_FILTER, words);
  else throw new Error(`an ICMP filter of ${filter.length} words does not fit a raw IPv${v4 ? 4 : 6} socket of protocol ${s.proto}`);
}

/**
 * Takes every connection out of listener `fd`'s accept queue and drops it without a packet
 * (repair mode): a listener that closes with connections queued resets them, and their clients
 * would lose connections a later restore can still bring back.
 */
function drainSilently(fd: number): void {
  while ((pollOne(fd as Fd, POLL.IN, 0) & POLL.IN) !== 0) {
    let conn: number;
    try {
      conn = acceptConnection(fd as Fd, sock.SOCK_NONBLOCK);
    } catch {
      return; // EAGAIN: empty (or not a listener any more)
    }
    discard(conn);
  }
}

/**
 * Sends the socket its queued datagrams again, each from its original source, to the address
 * it is bound to (the loopback address of its family when bound to any). Loopback delivers
 * them within the sendto; the first one is checked to have arrived (bounded wait).
 */
function refillDatagrams(fd: number, s: InetSocketImage): void {
  const here = sock.getsockname(fd);
  const to: InetAddress = /^(0\.0\.0\.0|::)$/.test(here.address) ? (here.family === 4 ? { family: 4, address: '127.0.0.1', port: here.port } : { ...here, address: '::1' }) : here;
  sendCraftedDatagrams(s.queue.map((d) => ({ from: d.from, to, payload: d.bytes })));
  const deadline = Date.now() + 1000;
  while (sock.siocInq(fd) === 0 && s.queue[0]!.bytes.length > 0) {
    if (Date.now() > deadline) throw new Error(`the datagrams sent to ${fmt(to)} did not arrive`);
  }
}

function sysListen(fd: number, backlog: number): void {
  listenFd(fd as Fd, backlog);
}

/** sk_opts, ip_opts and tcp_opts of the image on socket `fd` (SO_REUSEADDR only when `reuseaddr`). */
function setOptions(fd: number, s: InetSocketImage, which: { reuseaddr: boolean }): void {
  const opts = { ...s.opts };
  if (!which.reuseaddr) delete opts.reuseaddr;
  applySocketOptions(fd as Fd, opts, describeInetSocket(s));
  const set = (level: number, name: number, value: number, label: string) => {
    try {
      sock.setsockoptInt(fd, level, name, value);
    } catch (error) {
      throw new Error(`setsockopt(${label}) failed: ${(error as Error).message}`, { cause: error });
    }
  };
  if (typeof opts.so_bound_dev === 'string' && opts.so_bound_dev !== '') {
    sock.setsockoptBuf(fd, SOL_SOCKET, SO.BINDTODEVICE, Buffer.from(`${opts.so_bound_dev}\0`));
  }
  if (opts.so_linger !== undefined) {
    const l = Buffer.alloc(8);
    l.writeInt32LE(1, 0);
    l.writeInt32LE(Number(opts.so_linger), 4);
    sock.setsockoptBuf(fd, SOL_SOCKET, SO.LINGER, l);
  }
  const v4 = s.family === AF_INET;
  const ip = s.ipOpts;
  const level = v4 ? SOL.IP : SOL.IPV6;
  if (ip.freebind === true) set(level, v4 ? IP_OPT.FREEBIND : IPV6_OPT.FREEBIND, 1, 'FREEBIND');
  if (ip.pktinfo === true) set(level, v4 ? IP_OPT.PKTINFO : IPV6_OPT.RECVPKTINFO, 1, 'PKTINFO');
  if (Number(ip.tos ?? 0) > 0) set(level, v4 ? IP_OPT.TOS : IPV6_OPT.TCLASS, Number(ip.tos), 'TOS');
  if (Number(ip.ttl ?? 0) > 0 && currentInt(fd, level, v4 ? IP_OPT.TTL : IPV6_OPT.UNICAST_HOPS) !== Number(ip.ttl)) set(level, v4 ? IP_OPT.TTL : IPV6_OPT.UNICAST_HOPS, Number(ip.ttl), 'TTL');
  if (s.proto === IPPROTO.TCP) {
    const t = s.tcpOpts;
    if (t.keepcnt !== undefined) set(SOL.TCP, TCP_OPT.KEEPCNT, Number(t.keepcnt), 'TCP_OPT.KEEPCNT');
    if (t.keepidle !== undefined) set(SOL.TCP, TCP_OPT.KEEPIDLE, Number(t.keepidle), 'TCP_OPT.KEEPIDLE');
    if (t.keepintvl !== undefined) set(SOL.TCP, TCP_OPT.KEEPINTVL, Number(t.keepintvl), 'TCP_OPT.KEEPINTVL');
    // A repaired connection has these from its saved state already.
    if (s.how !== 'connection') {
      if (t.nodelay === true) set(SOL.TCP, TCP_OPT.NODELAY, 1, 'TCP_OPT.NODELAY');
      if (t.cork === true) set(SOL.TCP, TCP_OPT.CORK, 1, 'TCP_OPT.CORK');
      // Before listen(), as the program set them: tcp(7) takes both on a closed socket.
      if (Number(t.defer_accept ?? 0) > 0) set(SOL.TCP, TCP_OPT.DEFER_ACCEPT, Number(t.defer_accept), 'TCP_OPT.DEFER_ACCEPT');
      if (Number(t.fastopen_qlen ?? 0) > 0) set(SOL.TCP, TCP_OPT.FASTOPEN, Number(t.fastopen_qlen), 'TCP_OPT.FASTOPEN');
    }
  }
}

function currentInt(fd: number, level: number, name: number): number {
  return sock.getsockoptInt(fd, level, name);
}

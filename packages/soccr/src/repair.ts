/**
 * Save and restore one live TCP connection with the kernel's TCP repair mode.
 *
 * Repair mode (setsockopt TCP_REPAIR, CAP_NET_ADMIN) turns a TCP socket into
 * a passive object: nothing it does reaches the wire, its sequence numbers
 * and queues can be read and written directly, connect() makes no handshake,
 * and close() drops the connection silently (no FIN, no RST).
 *
 * ## Saving (the connection keeps its owner until `close`)
 *
 *   1. `pause(fd)`          TCP_REPAIR = 1, then TCP_REPAIR_QUEUE = send.
 *                           TCP_REPAIR alone does NOT stop transmission:
 *                           tcp_write_xmit() (run by the pacing timer, TSQ,
 *                           release_sock) still puts new data on the wire
 *                           unless the send queue is selected, in which case
 *                           it moves the data to the retransmit queue without
 *                           sending it. One path is not covered: the zero-window
 *                           probe and keepalive timers call tcp_write_wakeup(),
 *                           which transmits new data straight away whenever the
 *                           peer's window is open (measured: a connection paused
 *                           while pacing held back data with a 15 KiB window
 *                           open sent it during the dump; the restored socket
 *                           then took the peer's ACKs for "unsent" data and
 *                           stalled for good). So pause also sets the send
 *                           window to 0 (TCP_REPAIR_WINDOW): the timers then
 *                           send bare probes. From here no *new* data leaves
 *                           (retransmissions, probes and ACKs still may; they
 *                           carry nothing past the state being saved).
 *   2. `save(fd)`           reads, in this order:
 *        TCP_INFO           state (must be ESTABLISHED or half-closed),
 *                           option bits, window scales;
 *        SIOCOUTQ/SIOCINQ   queue lengths (send queue = unacked + unsent,
 *                           minus our FIN if one is queued);
 *        TCP_MAXSEG, TCP_TIMESTAMP, TCP_NODELAY, TCP_CORK;
 *        for the receive then the send queue: TCP_REPAIR_QUEUE = queue,
 *                           TCP_QUEUE_SEQ (rcv_nxt / write_seq), and
 *                           recv(MSG_PEEK) of the queue's bytes;
 *        SIOCOUTQNSD        the never-sent tail (write_seq - snd_nxt), read
 *                           last, with the send queue selected again: new
 *                           data transmitted while the receive queue was
 *                           selected is counted as sent, and nothing new can
 *                           be transmitted after it. (Read earlier, the peer
 *                           could receive bytes the state calls never sent;
 *                           the restored socket's snd_nxt would then lie
 *                           behind the peer's ACKs, which it discards as
 *                           "ACK of unsent data": the connection stalls.)
 *        TCP_REPAIR_WINDOW, getsockname/getpeername.
 *      The send queue stays selected until close or resume.
 *   3. either `close(fd)` while still in repair mode - the connection
 *      vanishes from this host without a packet - and later `restore()`
 *      elsewhere; or `resume(fd)` (TCP_REPAIR = 0) to carry on as before.
 *
 * ## Restoring (while the peer's packets are held off by the network lock)
 *
 *   1. socket(), TCP_REPAIR = 1 (which also lets bind() reuse the port).
 *   2. bind(local address).
 *   3. TCP_REPAIR_QUEUE = receive, TCP_QUEUE_SEQ = rcv_nxt - unread bytes;
 *      TCP_REPAIR_QUEUE = send,    TCP_QUEUE_SEQ = write_seq - unacked bytes.
 *      (Both only accepted while the socket is CLOSE; a FIN counted in a
 *      saved sequence is taken off here and put back in step 8.)
 *   4. connect(peer address): straight to ESTABLISHED, no SYN.
 *   5. TCP_REPAIR_OPTIONS (SACK, window scales, timestamps, MSS clamp -
 *      accepted only once ESTABLISHED), then TCP_TIMESTAMP.
 *   6. Receive queue: TCP_REPAIR_QUEUE = receive, send() the unread bytes
 *      (they land in the receive queue and move rcv_nxt).
 *      Send queue: TCP_REPAIR_QUEUE = send, send() the bytes that had been
 *      sent but not acknowledged (queued as already sent: the peer may have
 *      them; the retransmit timer covers the case it does not).
 *   7. TCP_REPAIR_WINDOW (checked by the kernel against rcv_nxt, so after
 *      the receive queue).
 *   8. Half-closed states: our FIN goes back with shutdown(SHUT_WR) (with
 *      the send queue selected when the FIN had been acknowledged, so it
 *      counts as sent); the peer's FIN, which no call can put back, is
 *      delivered as a crafted FIN segment from the peer's address on a raw
 *      socket, marked so the network lock lets it through (raw-segment.ts).
 *   9. The never-sent tail of the send queue: TCP_REPAIR = 0 for the
 *      duration of a plain send() (so it goes out as normal new data), then
 *      TCP_REPAIR = 1 again.
 *  10. the caller lifts the network lock, then `resume(fd)` (TCP_REPAIR = 0,
 *      which sends a window probe so the peer speaks again at once).
 */
import { connect as connectRaw, sock, SysError, type Fd } from '@criu-ts/sys';
import { SoccrError } from './errors.js';
import {
  FIN_RECEIVED_STATES,
  FIN_SENT_STATES,
  SUPPORTED_STATES,
  TcpState,
  tcpStateName,
  type TcpConnectionState,
} from './tcp-state.js';
import { sendCraftedSegment, TH_ACK, TH_FIN } from './raw-segment.js';

const TCP_NODELAY = 1;
const TCP_CORK = 3;
const SO_SNDBUFFORCE = 32;
const SO_SNDBUF = 7;
const EAGAIN = 11;
const ENOMEM = 12;

function sysStep<T>(what: string, evidence: Record<string, unknown>, f: () => T): T {
  try {
    return f();
  } catch (e) {
    if (e instanceof SysError) {
      if (e.code === 'EPERM' && what === 'TCP_REPAIR on') {
        throw new SoccrError('NO_REPAIR', 'TCP_REPAIR refused: CAP_NET_ADMIN is needed', { ...evidence, errno: e.errno }, { cause: e });
      }
      throw new SoccrError('SYSCALL', `${what} failed: ${e.message}`, { ...evidence, step: what, errno: e.errno, syscall: e.syscall }, { cause: e });
    }
    throw e;
  }
}

/** Throws NOT_TCP unless fd is a TCP stream socket; returns its family. */
export function assertTcpSocket(fd: number): 4 | 6 {
  let proto: number, type: number, domain: number;
  try {
    type = sock.getsockoptInt(fd, sock.SOL_SOCKET, sock.SO_TYPE);
    proto = sock.getsockoptInt(fd, sock.SOL_SOCKET, sock.SO_PROTOCOL);
    domain = sock.getsockoptInt(fd, sock.SOL_SOCKET, sock.SO_DOMAIN);
  } catch (e) {
    throw new SoccrError('NOT_TCP', `fd ${fd} is not a socket`, { fd, error: (e as Error).message }, { cause: e });
  }
  if (type !== sock.SOCK_STREAM || proto !== sock.IPPROTO_TCP || (domain !== sock.AF_INET && domain !== sock.AF_INET6)) {
    throw new SoccrError('NOT_TCP', `fd ${fd} is not a TCP socket`, { fd, domain, type, protocol: proto });
  }
  return domain === sock.AF_INET ? 4 : 6;
}

/**
 * SO_REUSEADDR of sockets while they are in repair mode, by fd: entering
 * repair sets sk_reuse to "force" and leaving it sets it to "off"
 * (net/ipv4/tcp.c, TCP_REPAIR), so the owner's value is kept here between
 * pause()/restore() and resume().
 */
const reuseWhileRepairing = new Map<number, boolean>();
/** The send window of paused sockets before pause closed it (see step 1), by fd. */
const windowBeforePause = new Map<number, sock.TcpRepairWindow>();

/** Step 1 of saving: TCP_REPAIR on. The socket stops sending anything. */
export function pause(fd: number): void {
  assertTcpSocket(fd);
  // The kernel refuses repair mode on a listening socket with EPERM, which
  // would read as a missing capability: check the state first.
  const st = sysStep('TCP_INFO', { fd }, () => sock.getTcpInfo(fd)).state;
  if (!SUPPORTED_STATES.has(st)) {
    throw new SoccrError('UNSUPPORTED_STATE', `cannot save a connection in state ${tcpStateName(st)}`, {
      fd,
      state: st,
      stateName: tcpStateName(st),
      supported: [...SUPPORTED_STATES].map(tcpStateName),
    });
  }
  const reuse = sysStep('SO_REUSEADDR', { fd }, () => sock.getsockoptInt(fd, sock.SOL_SOCKET, sock.SO_REUSEADDR));
  sysStep('TCP_REPAIR on', { fd }, () => sock.setTcpRepair(fd, 1));
  reuseWhileRepairing.set(fd, reuse === 1);
  // No new data on the wire from here (see step 1 above).
  try {
    sysStep('TCP_REPAIR_QUEUE send', { fd }, () => sock.setTcpRepairQueue(fd, sock.TCP_SEND_QUEUE));
    const w = sysStep('TCP_REPAIR_WINDOW', { fd }, () => sock.getTcpRepairWindow(fd));
    windowBeforePause.set(fd, w);
    sysStep('TCP_REPAIR_WINDOW (send window closed)', { fd }, () => sock.setTcpRepairWindow(fd, { ...w, sndWnd: 0 }));
  } catch (e) {
    try {
      resume(fd);
    } catch {
      /* the first error is the one to report */
    }
    throw e;
  }
}

/**
 * Drops the connection from this host without a packet and closes `fd`: repair mode on, then a
 * disconnect (connect to AF_UNSPEC), which in repair mode sends neither FIN nor RST. Unlike a
 * plain close, the disconnect takes effect even while other descriptors (another process's, a
 * dump guard's) still hold the socket: its addresses are free for the connection to be
 * recreated at once (requeueConnection, restore).
 */
export function discard(fd: number): void {
  try {
    sysStep('TCP_REPAIR on', { fd }, () => sock.setTcpRepair(fd, 1));
    sysStep('disconnect (AF_UNSPEC)', { fd }, () => connectRaw(fd as Fd, Buffer.alloc(16)));
  } finally {
    sock.close(fd);
  }
}

/** Leaves repair mode (TCP_REPAIR = 0, with a window probe to the peer) and puts SO_REUSEADDR back. */
export function resume(fd: number): void {
  const before = windowBeforePause.get(fd);
  windowBeforePause.delete(fd);
  if (before) {
    // Reopen what pause closed, unless an ACK has set a window since.
    const now = sysStep('TCP_REPAIR_WINDOW', { fd }, () => sock.getTcpRepairWindow(fd));
    if (now.sndWnd === 0) sysStep('TCP_REPAIR_WINDOW (send window reopened)', { fd }, () => sock.setTcpRepairWindow(fd, { ...now, sndWnd: before.sndWnd, maxWindow: Math.max(now.maxWindow, before.sndWnd) }));
  }
  sysStep('TCP_REPAIR_QUEUE none', { fd }, () => sock.setTcpRepairQueue(fd, sock.TCP_NO_QUEUE));
  sysStep('TCP_REPAIR off', { fd }, () => sock.setTcpRepair(fd, 0));
  const reuse = reuseWhileRepairing.get(fd);
  reuseWhileRepairing.delete(fd);
  if (reuse) sysStep('SO_REUSEADDR', { fd }, () => sock.setsockoptInt(fd, sock.SOL_SOCKET, sock.SO_REUSEADDR, 1));
}

/**
 * Step 2 of saving: reads the whole connection state. Precondition: `pause(fd)`.
 * Touches nothing but the selected repair queue (left on the send queue, as
 * pause() set it); on error the socket is still paused.
 */
export function save(fd: number): TcpConnectionState {
  assertTcpSocket(fd);
  const info = sysStep('TCP_INFO', { fd }, () => sock.getTcpInfo(fd));
  if (!SUPPORTED_STATES.has(info.state)) {
    throw new SoccrError('UNSUPPORTED_STATE', `cannot save a connection in state ${tcpStateName(info.state)}`, {
      fd,
      state: info.state,
      stateName: tcpStateName(info.state),
      supported: [...SUPPORTED_STATES].map(tcpStateName),
    });
  }
  const finSent = FIN_SENT_STATES.has(info.state);
  let outqLen = sysStep('SIOCOUTQ', { fd }, () => sock.siocOutq(fd));
  const inqLen = sysStep('SIOCINQ', { fd }, () => sock.siocInq(fd));
  // write_seq counts our FIN; the byte counts must not (it carries no data).
  if (finSent && outqLen > 0) outqLen--;
  const mssClamp = sysStep('TCP_MAXSEG', { fd }, () => sock.getsockoptInt(fd, sock.SOL_TCP, sock.TCP_MAXSEG));
  const timestamp = info.options & sock.TCPI_OPT_TIMESTAMPS ? sysStep('TCP_TIMESTAMP', { fd }, () => sock.getTcpTimestamp(fd)) : 0;
  const nodelay = sysStep('TCP_NODELAY', { fd }, () => sock.getsockoptInt(fd, sock.SOL_TCP, TCP_NODELAY)) !== 0;
  const cork = sysStep('TCP_CORK', { fd }, () => sock.getsockoptInt(fd, sock.SOL_TCP, TCP_CORK)) !== 0;
  const recv = readQueue(fd, sock.TCP_RECV_QUEUE, inqLen);
  // Leaves the send queue selected: from here on nothing new is transmitted,
  // so snd_nxt (hence the never-sent count below) is final.
  const send = readQueue(fd, sock.TCP_SEND_QUEUE, outqLen);
  let unsentLen = sysStep('SIOCOUTQNSD', { fd }, () => sock.siocOutqNsd(fd));
  if (finSent && unsentLen > 0) unsentLen--;
  const read = sysStep('TCP_REPAIR_WINDOW', { fd }, () => sock.getTcpRepairWindow(fd));
  // The peer's window as it was, not as pause closed it.
  const paused = windowBeforePause.get(fd);
  const window = paused && read.sndWnd === 0 ? { ...read, sndWnd: paused.sndWnd, maxWindow: Math.max(read.maxWindow, paused.sndWnd) } : read;
  const local = sysStep('getsockname', { fd }, () => sock.getsockname(fd));
  const remote = sysStep('getpeername', { fd }, () => sock.getpeername(fd));
  return {
    state: info.state,
    local,
    remote,
    sendSeq: send.seq,
    recvSeq: recv.seq,
    recvQueue: recv.bytes,
    sendQueue: send.bytes,
    unsentLength: unsentLen,
    mssClamp,
    optionMask: info.options & (sock.TCPI_OPT_TIMESTAMPS | sock.TCPI_OPT_SACK | sock.TCPI_OPT_WSCALE),
    sndWscale: info.options & sock.TCPI_OPT_WSCALE ? info.sndWscale : 0,
    rcvWscale: info.options & sock.TCPI_OPT_WSCALE ? info.rcvWscale : 0,
    timestamp,
    window,
    nodelay,
    cork,
    reuseaddr: reuseWhileRepairing.get(fd) ?? false,
  };
}

function readQueue(fd: number, queue: number, len: number): { seq: number; bytes: Buffer } {
  const name = queue === sock.TCP_RECV_QUEUE ? 'receive' : 'send';
  sysStep(`TCP_REPAIR_QUEUE ${name}`, { fd }, () => sock.setTcpRepairQueue(fd, queue));
  const seq = sysStep(`TCP_QUEUE_SEQ ${name}`, { fd }, () => sock.getTcpQueueSeq(fd));
  if (len === 0) return { seq, bytes: Buffer.alloc(0) };
  // One byte more than expected: getting exactly `len` proves the ioctl's
  // count and the queue agree (nothing arrived or left in between).
  const buf = Buffer.allocUnsafe(len + 1);
  const got = sysStep(`peek ${name} queue`, { fd, len }, () => sock.recv(fd, buf, sock.MSG_PEEK | sock.MSG_DONTWAIT));
  if (got !== len) {
    throw new SoccrError('QUEUE', `${name} queue holds ${got} bytes, expected ${len}`, { fd, queue: name, expected: len, got });
  }
  return { seq, bytes: buf.subarray(0, len) };
}

/** Checks a state object before anything is created from it. */
export function validateState(s: TcpConnectionState): void {
  const bad = (msg: string, ev: Record<string, unknown>) => {
    throw new SoccrError('BAD_STATE', msg, ev);
  };
  if (!SUPPORTED_STATES.has(s.state)) {
    throw new SoccrError('UNSUPPORTED_STATE', `cannot restore a connection in state ${tcpStateName(s.state)}`, {
      state: s.state,
      stateName: tcpStateName(s.state),
    });
  }
  if (s.local.family !== s.remote.family) bad('local and remote address families differ', { local: s.local, remote: s.remote });
  if (s.unsentLength > s.sendQueue.length) bad('unsent length exceeds send queue', { unsentLength: s.unsentLength, sendQueue: s.sendQueue.length });
  for (const [k, v] of Object.entries({ sendSeq: s.sendSeq, recvSeq: s.recvSeq, timestamp: s.timestamp })) {
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) bad(`${k} is not a u32`, { [k]: v });
  }
}

export interface RestoreOptions {
  /**
   * Leave repair mode at the end (default false: the caller first lifts the
   * network lock, then calls `resume(fd)`).
   */
  resume?: boolean;
  /** Extra bytes to put in front of the receive queue (data a user-space reader had taken but not consumed). */
  recvPrefix?: Buffer;
}

/**
 * Recreates the connection on a new socket and returns its fd (blocking,
 * close-on-exec, in repair mode unless `resume`). The old socket must be
 * gone (closed in repair mode), else ADDRESS_IN_USE. On failure the new
 * socket is closed (in repair mode: silently) and nothing is left behind.
 */
export function restore(state: TcpConnectionState, opts: RestoreOptions = {}): number {
  validateState(state);
  const family = state.local.family === 4 ? sock.AF_INET : sock.AF_INET6;
  const fd = sysStep('socket', {}, () => sock.socket(family, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, sock.IPPROTO_TCP));
  try {
    restoreOnto(fd, state, opts);
    if (opts.resume) resume(fd);
    return fd;
  } catch (e) {
    try {
      sock.close(fd);
    } catch {
      /* already failing; the first error is the one to report */
    }
    throw e;
  }
}

/** Steps 1-9 on a fresh, unbound socket `fd` of the state's family. */
export function restoreOnto(fd: number, s: TcpConnectionState, opts: RestoreOptions = {}): void {
  validateState(s);
  const fam = assertTcpSocket(fd);
  if (fam !== s.local.family) {
    throw new SoccrError('FAMILY_MISMATCH', `state is IPv${s.local.family} but the socket is IPv${fam}`, { fd, socketFamily: fam, stateFamily: s.local.family });
  }
  const ev = { fd, local: s.local, remote: s.remote, state: tcpStateName(s.state) };
  const finSent = FIN_SENT_STATES.has(s.state);
  const finReceived = FIN_RECEIVED_STATES.has(s.state);
  const finAcked = s.state === TcpState.FIN_WAIT2;
  const prefix = opts.recvPrefix ?? Buffer.alloc(0);
  const recvBytes = prefix.length ? Buffer.concat([prefix, s.recvQueue]) : s.recvQueue;
  const sentLen = s.sendQueue.length - s.unsentLength;

  sysStep('TCP_REPAIR on', ev, () => sock.setTcpRepair(fd, 1));
  sysStep('bind', ev, () => sock.bind(fd, s.local));
  // The saved sequences count a FIN that step 8 puts back; start below it.
  const rcvNxt = (s.recvSeq - (finReceived ? 1 : 0)) >>> 0;
  const writeSeq = (s.sendSeq - (finSent ? 1 : 0)) >>> 0;
  sysStep('TCP_QUEUE_SEQ receive', ev, () => {
    sock.setTcpRepairQueue(fd, sock.TCP_RECV_QUEUE);
    sock.setTcpQueueSeq(fd, (rcvNxt - recvBytes.length) >>> 0);
  });
  sysStep('TCP_QUEUE_SEQ send', ev, () => {
    sock.setTcpRepairQueue(fd, sock.TCP_SEND_QUEUE);
    sock.setTcpQueueSeq(fd, (writeSeq - s.sendQueue.length) >>> 0);
  });
  try {
    sock.connect(fd, s.remote);
  } catch (e) {
    if (e instanceof SysError && (e.code === 'EADDRNOTAVAIL' || e.code === 'EADDRINUSE' || e.code === 'EISCONN')) {
      throw new SoccrError('ADDRESS_IN_USE', `connection ${fmt(s.local)} -> ${fmt(s.remote)} still exists on this host (${e.code})`, { ...ev, errno: e.errno }, { cause: e });
    }
    throw new SoccrError('SYSCALL', `repair connect failed: ${(e as Error).message}`, ev, { cause: e });
  }
  const ropts: { code: number; value: number }[] = [];
  if (s.optionMask & sock.TCPI_OPT_SACK) ropts.push({ code: sock.TCPOPT_SACK_PERM, value: 0 });
  if (s.optionMask & sock.TCPI_OPT_WSCALE) ropts.push({ code: sock.TCPOPT_WINDOW, value: s.sndWscale | (s.rcvWscale << 16) });
  if (s.optionMask & sock.TCPI_OPT_TIMESTAMPS) ropts.push({ code: sock.TCPOPT_TIMESTAMP, value: 0 });
  ropts.push({ code: sock.TCPOPT_MAXSEG, value: s.mssClamp });
  sysStep('TCP_REPAIR_OPTIONS', { ...ev, options: ropts }, () => sock.setTcpRepairOptions(fd, ropts));
  if (s.optionMask & sock.TCPI_OPT_TIMESTAMPS) sysStep('TCP_TIMESTAMP', ev, () => sock.setTcpTimestamp(fd, s.timestamp));

  ensureSendBuffer(fd, s.sendQueue.length);
  fillQueue(fd, sock.TCP_RECV_QUEUE, recvBytes, ev);
  fillQueue(fd, sock.TCP_SEND_QUEUE, s.sendQueue.subarray(0, sentLen), ev);
  sysStep('TCP_REPAIR_QUEUE none', ev, () => sock.setTcpRepairQueue(fd, sock.TCP_NO_QUEUE));

  if (s.window) {
    const w = { ...s.window };
    // rcv_wup was saved past the peer's FIN, which is not in rcv_nxt yet.
    if (finReceived) {
      w.rcvWup = (w.rcvWup - 1) >>> 0;
      w.rcvWnd = (w.rcvWnd + 1) >>> 0;
    }
    sysStep('TCP_REPAIR_WINDOW', { ...ev, window: w }, () => sock.setTcpRepairWindow(fd, w));
  }

  // Never-sent bytes go out as new data: they precede any FIN of ours.
  if (s.unsentLength > 0) {
    sysStep('TCP_REPAIR off (unsent data)', ev, () => sock.setTcpRepair(fd, -1));
    sendAll(fd, s.sendQueue.subarray(sentLen), ev, 'unsent');
    sysStep('TCP_REPAIR on (after unsent data)', ev, () => sock.setTcpRepair(fd, 1));
  }

  const snd_una = (writeSeq - s.sendQueue.length) >>> 0;
  const peerFin = () =>
    sendCraftedSegment({ from: s.remote, to: s.local, seq: rcvNxt, ack: snd_una, flags: TH_FIN | TH_ACK, window: s.window?.rcvWnd ?? 65535 });
  const ourFin = () => {
    // With the send queue selected the FIN counts as already sent (it was).
    if (finAcked) sock.setTcpRepairQueue(fd, sock.TCP_SEND_QUEUE);
    sock.shutdown(fd, sock.SHUT_WR);
    if (finAcked) sock.setTcpRepairQueue(fd, sock.TCP_NO_QUEUE);
  };
  // Order matters: in CLOSING ours went first, in LAST_ACK theirs did.
  if (finSent && s.state !== TcpState.LAST_ACK) sysStep('restore our FIN', ev, ourFin);
  if (finReceived) sysStep('deliver peer FIN', ev, peerFin);
  if (s.state === TcpState.LAST_ACK) sysStep('restore our FIN', ev, ourFin);
  if (finAcked) {
    // The peer had acknowledged our FIN: tell the socket so (FIN_WAIT1 -> FIN_WAIT2).
    sysStep('deliver peer ACK of FIN', ev, () =>
      sendCraftedSegment({ from: s.remote, to: s.local, seq: rcvNxt, ack: (writeSeq + 1) >>> 0, flags: TH_ACK, window: s.window?.rcvWnd ?? 65535 }),
    );
  }
  if (s.nodelay) sysStep('TCP_NODELAY', ev, () => sock.setsockoptInt(fd, sock.SOL_TCP, TCP_NODELAY, 1));
  if (s.cork) sysStep('TCP_CORK', ev, () => sock.setsockoptInt(fd, sock.SOL_TCP, TCP_CORK, 1));
  reuseWhileRepairing.set(fd, s.reuseaddr ?? false);
  const got = sock.getTcpInfo(fd).state;
  if (got !== s.state) {
    throw new SoccrError('BAD_STATE', `restored socket is ${tcpStateName(got)}, expected ${tcpStateName(s.state)}`, { ...ev, got: tcpStateName(got) });
  }
}

/**
 * The kernel charges queued bytes against sk_sndbuf even in repair mode, and
 * a fresh socket starts at tcp_wmem[1] (16 KiB): a large saved send queue
 * would not fit. SO_SNDBUFFORCE (CAP_NET_ADMIN) lifts the cap to what the
 * queue needs; the kernel doubles the value it is given.
 */
function ensureSendBuffer(fd: number, queued: number): void {
  if (queued === 0) return;
  const cur = sock.getsockoptInt(fd, sock.SOL_SOCKET, SO_SNDBUF);
  const want = queued * 2 + 65536;
  if (cur < want) sysStep('SO_SNDBUFFORCE', { fd, want }, () => sock.setsockoptInt(fd, sock.SOL_SOCKET, SO_SNDBUFFORCE, Math.ceil(want / 2) + 65536));
}

function fillQueue(fd: number, queue: number, bytes: Buffer, ev: Record<string, unknown>): void {
  if (bytes.length === 0) return;
  const name = queue === sock.TCP_RECV_QUEUE ? 'receive' : 'send';
  sysStep(`TCP_REPAIR_QUEUE ${name}`, ev, () => sock.setTcpRepairQueue(fd, queue));
  sendAll(fd, bytes, ev, name);
}

/**
 * send() until every byte is taken. In repair mode the receive-queue path
 * allocates one linear buffer per call, so a large call can fail with
 * ENOMEM; halve the chunk and go on (bounded: chunk never below 1 KiB).
 */
function sendAll(fd: number, bytes: Buffer, ev: Record<string, unknown>, what: string): void {
  let off = 0;
  let chunk = Math.min(bytes.length, 1 << 20);
  let stalls = 0;
  while (off < bytes.length) {
    const piece = bytes.subarray(off, off + chunk);
    try {
      const n = sock.send(fd, piece, sock.MSG_DONTWAIT | sock.MSG_NOSIGNAL);
      if (n <= 0) throw new SoccrError('QUEUE', `send returned ${n}`, ev);
      off += n;
      stalls = 0;
    } catch (e) {
      if (e instanceof SysError && (e.errno === ENOMEM || e.errno === EAGAIN) && chunk > 1024 && stalls < 64) {
        chunk >>= 1;
        stalls++;
        continue;
      }
      throw new SoccrError('QUEUE', `could not refill the ${what} queue (${off} of ${bytes.length} bytes in)`, { ...ev, queue: what, written: off, total: bytes.length }, { cause: e });
    }
  }
}

function fmt(a: { family: 4 | 6; address: string; port: number }): string {
  return a.family === 6 ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

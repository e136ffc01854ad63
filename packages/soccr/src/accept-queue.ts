/**
 * Putting a connection back into a listener's accept queue, where a process finds it with its
 * next accept() as if the client had just connected.
 *
 * A connection nobody has accepted yet has no descriptor: criu-ts accepts it itself at dump
 * time (on its duplicate of the listener) and saves it like any other connection. Restoring it
 * as a connected socket would not do: the program expects to accept() it. Linux has no call
 * that adds a socket to an accept queue, and a new handshake would give the server a new
 * initial sequence number, which the client (who knows the old one) would reject.
 *
 * What Linux 6.9+ does offer is a SYN-cookie hook for BPF: a TC-ingress program may, for an
 * incoming ACK, call the kfunc bpf_sk_assign_tcp_reqsk(skb, listener, attrs) to say "this ACK
 * completes a handshake I vouch for, with these options". The kernel then builds the connection
 * from the ACK - its receive sequence from the ACK's seq, its send sequence from the ACK's
 * ack_seq, its timestamp clock so that the next TSval equals attrs.rcv_tsecr - and queues it on
 * the listener exactly as a cookie-validated handshake: accept() returns it.
 *
 * So, per connection, in the listener's network namespace, with the network lock holding off the
 * real client:
 *   1. a sockmap holding the listener (the exact socket: a lookup by address could pick another
 *      member of a SO_REUSEPORT group), and a two-slot array for the program's outcome;
 *   2. a SCHED_CLS program, built here with this connection's constants, attached to lo's tcx
 *      ingress: for the one packet carrying the lock-bypass mark, the connection's ports and
 *      sequence number, it calls the kfunc and records the result;
 *   3. that ACK, sent from the client's address on a raw socket (raw-segment.ts), carrying the
 *      first bytes of the saved receive queue; the rest follow as ordinary segments the new
 *      connection receives (each checked through sock_diag), then the client's FIN if there
 *      was one (CLOSE_WAIT);
 *   4. the program detached (link closed) right after its one packet.
 * The client sees nothing: the new connection's first segments are ACKs of data it already had
 * acknowledged, with the timestamps it expects.
 *
 * Only a connection the server has sent nothing on can be queued back (an unaccepted one never
 * has); its peer's timestamp (ts_recent) is not saved by repair mode, so it starts at 0, which
 * the kernel treats as "no PAWS reference yet" until the client's next segment.
 */
import {
  BPF_ATTACH,
  BPF_MAP_TYPE,
  BPF_PROG_TYPE,
  bpfLinkCreateTcx,
  bpfMapCreate,
  bpfMapLookup,
  bpfMapUpdate,
  bpfProgLoad,
  close,
  errnoName,
  inetDiagList,
  sock,
  vmlinuxBtfFuncId,
  sleepSync,
  BpfProgram, FP, R0, R1, R2, R3, R4, R6, R7, R8,
  type Fd,
} from '@criu-ts/sys';
import { readFileSync } from 'node:fs';
import { SoccrError } from './errors.js';
import { LOCK_BYPASS_MARK, sendCraftedSegment, TH_ACK, TH_FIN, TH_PSH } from './raw-segment.js';
import { TcpState, tcpStateName, type InetAddress, type TcpConnectionState } from './tcp-state.js';
import { wireKey } from './network-lock-sync.js';

const KFUNC = 'bpf_sk_assign_tcp_reqsk';
const HELPER = { MAP_LOOKUP_ELEM: 1, SKB_LOAD_BYTES: 26, SK_RELEASE: 86 } as const;
/** The loopback device is the first one of every network namespace. */
const LOOPBACK_IFINDEX = 1;
/** TCX_PASS ends the tcx chain and lets the packet up the stack; TCX_NEXT lets the next program decide. */
const TCX_PASS = 0;
const TCX_NEXT = -1;
/** __sk_buff.mark */
const SKB_MARK = 8;
/** Ethernet header in front of the IP header at lo's TC ingress. */
const ETH_HLEN = 14;
/** The program records "not found in the sockmap" with this value (no errno is that large). */
const NO_LISTENER = -100000;
/**
 * How the receive queue is cut into crafted segments. Two kernel rules decide what the new
 * connection takes:
 *  - an in-order segment is queued whole as long as the receive window is not zero, however far
 *    past the window it reaches;
 *  - a raw socket's packet is one linear buffer, charged (truesize) at its allocation size, a
 *    power of two; once one segment costs more than half the receive buffer, the window the
 *    connection computes next is zero.
 * So the bytes go in segments that fill a 32 KiB allocation (window stays open), and the last
 * up to 64 KiB go in one segment filling a 64 KiB allocation. A size fills its allocation when
 * it is the bucket minus skb_shared_info (320), the cache-line rounding (64), the raw socket's
 * link-layer headroom and alignment slack (16 + 15), and the IP and TCP headers.
 */
const SKB_OVERHEAD = 320 + 64 + 31;
function segmentSizes(ipHeader: number, tcpHeader: number): { step: number; last: number } {
  return { step: 32768 - SKB_OVERHEAD - ipHeader - tcpHeader, last: 65536 - SKB_OVERHEAD - ipHeader - tcpHeader };
}

const TCPI_OPT = { TIMESTAMPS: 1, SACK: 2, WSCALE: 4, ECN: 8 } as const;

/** The kfunc's BTF id, or why this kernel has none; looked up once per process (the BTF is 5 MB). */
let kfuncLookup: { id: number } | { reason: string } | undefined;
function lookupKfunc(): { id: number } | { reason: string } {
  if (!kfuncLookup) {
    try {
      const id = vmlinuxBtfFuncId(KFUNC);
      kfuncLookup = id === undefined ? { reason: `the kernel has no ${KFUNC} (Linux 6.9+ with CONFIG_SYN_COOKIES)` } : { id };
    } catch (error) {
      kfuncLookup = { reason: `the kernel's BTF cannot be read (${(error as Error).message}); CONFIG_DEBUG_INFO_BTF is needed` };
    }
  }
  return kfuncLookup;
}

/** Why this machine cannot queue connections back, or undefined when it can. */
export function acceptQueueRefillUnsupported(): string | undefined {
  const k = lookupKfunc();
  return 'reason' in k ? k.reason : undefined;
}

function kfuncId(): number {
  const k = lookupKfunc();
  if ('reason' in k) throw new SoccrError('UNSUPPORTED_STATE', `a connection cannot be put back in an accept queue: ${k.reason}`, { kfunc: KFUNC });
  return k.id;
}

/** struct bpf_tcp_req_attrs (20 bytes) for the connection's options. */
function requestAttributes(s: TcpConnectionState): Buffer {
  const a = Buffer.alloc(20);
  const ts = (s.optionMask & TCPI_OPT.TIMESTAMPS) !== 0;
  a.writeUInt32LE(0, 0); // rcv_tsval: the client's clock is not saved (see the file comment)
  a.writeUInt32LE(ts ? s.timestamp >>> 0 : 0, 4); // rcv_tsecr: our next TSval
  a.writeUInt16LE(s.mssClamp, 8);
  const wscale = (s.optionMask & TCPI_OPT.WSCALE) !== 0;
  a[10] = wscale ? s.rcvWscale : 0;
  a[11] = wscale ? s.sndWscale : 0;
  a[12] = (s.optionMask & TCPI_OPT.ECN) !== 0 ? 1 : 0;
  a[13] = wscale ? 1 : 0;
  a[14] = (s.optionMask & TCPI_OPT.SACK) !== 0 ? 1 : 0;
  a[15] = ts ? 1 : 0;
  // usec_ts_ok (16) and reserved[3] stay 0
  return a;
}

/** Network-order bytes of an address as the u32 words a little-endian load sees. */
function leWord(b: Buffer, offset = 0): number {
  return b.readInt32LE(offset);
}

interface ProgramConstants {
  family: 4 | 6;
  /** The crafted ACK's source and destination ports and sequence number, as sent. */
  ports: Buffer;
  seq: Buffer;
  attrs: Buffer;
  listenerMap: Fd;
  outcomeMap: Fd;
}

/**
 * The program: pass anything that is not our ACK; for our ACK, take the listener out of the
 * sockmap, call the kfunc, release the listener, and record (slot 0) that it ran and (slot 1)
 * what the kfunc returned.
 */
function buildProgram(c: ProgramConstants, kfunc: number): Buffer {
  const tcpOffset = ETH_HLEN + (c.family === 4 ? 20 : 40); // our raw IP header has no options
  const attrs = c.attrs;
  const p = new BpfProgram();
  p.movReg(R6, R1)
    .load('W', R2, R6, SKB_MARK)
    .jumpIfImm('ne', R2, LOCK_BYPASS_MARK, 'other')
    // ports and seq: 8 bytes at the TCP header
    .movReg(R1, R6).movImm(R2, tcpOffset).movReg(R3, FP).addImm(R3, -8).movImm(R4, 8)
    .callHelper(HELPER.SKB_LOAD_BYTES)
    .jumpIfImm('ne', R0, 0, 'other')
    .load('W', R2, FP, -8).jump32IfImm('ne', R2, leWord(c.ports), 'other')
    .load('W', R2, FP, -4).jump32IfImm('ne', R2, leWord(c.seq), 'other')
    // the listener
    .storeImm('W', FP, -12, 0)
    .loadMapFd(R1, c.listenerMap).movReg(R2, FP).addImm(R2, -12)
    .callHelper(HELPER.MAP_LOOKUP_ELEM)
    .movImm(R8, NO_LISTENER)
    .jumpIfImm('eq', R0, 0, 'record')
    .movReg(R7, R0);
  // struct bpf_tcp_req_attrs at fp-32
  for (let i = 0; i < 20; i += 4) p.storeImm('W', FP, -32 + i, attrs.readInt32LE(i));
  p.movReg(R1, R6).movReg(R2, R7).movReg(R3, FP).addImm(R3, -32).movImm(R4, 20)
    .callKfunc(kfunc)
    .movReg(R8, R0)
    .movReg(R1, R7).callHelper(HELPER.SK_RELEASE)
    .label('record')
    .storeImm('W', FP, -12, 0)
    .loadMapFd(R1, c.outcomeMap).movReg(R2, FP).addImm(R2, -12)
    .callHelper(HELPER.MAP_LOOKUP_ELEM)
    .jumpIfImm('eq', R0, 0, 'done')
    .storeImm('DW', R0, 0, 1)
    .storeImm('W', FP, -12, 1)
    .loadMapFd(R1, c.outcomeMap).movReg(R2, FP).addImm(R2, -12)
    .callHelper(HELPER.MAP_LOOKUP_ELEM)
    .jumpIfImm('eq', R0, 0, 'done')
    .storeReg('DW', R0, 0, R8)
    .label('done')
    .movImm(R0, TCX_PASS)
    .exit()
    .label('other')
    .movImm(R0, TCX_NEXT)
    .exit();
  return p.assemble();
}

function tcpOptions(s: TcpConnectionState): Buffer | undefined {
  if ((s.optionMask & TCPI_OPT.TIMESTAMPS) === 0) return undefined;
  // NOP, NOP, TS(kind 8, len 10): TSval 0 (the client's clock is unknown), TSecr = our clock.
  const o = Buffer.alloc(12);
  o[0] = 1;
  o[1] = 1;
  o[2] = 8;
  o[3] = 10;
  o.writeUInt32BE(0, 4);
  o.writeUInt32BE(s.timestamp >>> 0, 8);
  return o;
}

const fmt = (a: InetAddress) => (a.family === 6 ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);

/** The accept-queue connection with these addresses, as sock_diag sees it (its bytes queued in rqueue). */
function findQueued(s: TcpConnectionState): { state: number; rqueue: number } | undefined {
  const family = s.local.family === 4 ? sock.AF_INET : sock.AF_INET6;
  const local = s.local.family === 4 ? sock.parseIPv4(s.local.address) : sock.parseIPv6(s.local.address);
  const remote = s.remote.family === 4 ? sock.parseIPv4(s.remote.address) : sock.parseIPv6(s.remote.address);
  for (const d of inetDiagList(family, sock.IPPROTO_TCP)) {
    if (d.localPort !== s.local.port || d.remotePort !== s.remote.port || d.state === TcpState.LISTEN) continue;
    if (d.localAddress.subarray(0, local.length).equals(local) && d.remoteAddress.subarray(0, remote.length).equals(remote)) return d;
  }
  return undefined;
}

/** Polls `check` until it returns true, for at most `ms` (the stack handles looped-back packets in the sender's context; this covers softirq deferral). */
function waitFor(check: () => boolean, ms: number): boolean {
  const deadline = Date.now() + ms;
  for (;;) {
    if (check()) return true;
    if (Date.now() >= deadline) return false;
    sleepSync(2);
  }
}

/**
 * Puts saved connection `s` (an unaccepted one: ESTABLISHED or CLOSE_WAIT, nothing sent by the
 * server) into the accept queue of listening socket `listenerFd`, in the calling thread's network
 * namespace. The client's packets must be held off (network lock) until the caller is done.
 */
export function requeueConnection(listenerFd: number, s: TcpConnectionState): void {
  const ev = { listenerFd, local: fmt(s.local), remote: fmt(s.remote), state: tcpStateName(s.state) };
  if (s.state !== TcpState.ESTABLISHED && s.state !== TcpState.CLOSE_WAIT) {
    throw new SoccrError('UNSUPPORTED_STATE', `a connection in state ${tcpStateName(s.state)} cannot wait in an accept queue`, ev);
  }
  if (s.sendQueue.length !== 0) {
    throw new SoccrError('BAD_STATE', `a connection waiting in an accept queue has sent nothing, this one has ${s.sendQueue.length} bytes queued`, ev);
  }
  const syncookies = readFileSync('/proc/sys/net/ipv4/tcp_syncookies', 'utf8').trim();
  if (syncookies === '0') {
    throw new SoccrError('UNSUPPORTED_STATE', 'net.ipv4.tcp_syncookies is 0 in this network namespace: the kernel then ignores the handshake that puts the connection back', ev);
  }
  const kfunc = kfuncId();
  const finReceived = s.state === TcpState.CLOSE_WAIT;
  const rcvNxt = (s.recvSeq - (finReceived ? 1 : 0)) >>> 0;
  const firstSeq = (rcvNxt - s.recvQueue.length) >>> 0;
  const ack = s.sendSeq >>> 0;
  // The client's window as last advertised; a connection saved by another process than the one
  // that paused it reads 0 there (pause closes it), and then the largest it ever advertised does.
  const clientWindow = s.window?.sndWnd || s.window?.maxWindow || 65535;
  const window = Math.min(0xffff, Math.max(1, clientWindow >>> ((s.optionMask & TCPI_OPT.WSCALE) !== 0 ? s.sndWscale : 0)));
  const options = tcpOptions(s);
  // A dual-stack listener's IPv4 client has IPv4-mapped IPv6 addresses on our side; on the wire
  // (and so in the crafted segments and the program) it is IPv4.
  const wire = wireKey({ local: s.local, remote: s.remote });
  const segment = (seq: number, flags: number, payload?: Buffer) =>
    sendCraftedSegment({ from: wire.remote, to: wire.local, seq, ack, flags, window, ...(options ? { options } : {}), ...(payload ? { payload } : {}) });

  const ports = Buffer.alloc(4);
  ports.writeUInt16BE(s.remote.port, 0);
  ports.writeUInt16BE(s.local.port, 2);
  const seqBytes = Buffer.alloc(4);
  seqBytes.writeUInt32BE(firstSeq, 0);
  const sizes = segmentSizes(wire.local.family === 4 ? 20 : 40, 20 + (options?.length ?? 0));
  const nextPart = (from: number) => s.recvQueue.subarray(from, from + (s.recvQueue.length - from <= sizes.last ? sizes.last : sizes.step));

  const fds: Fd[] = [];
  try {
    const listenerMap = bpfMapCreate(BPF_MAP_TYPE.SOCKMAP, 4, 4, 1, 'criu_ts_lsn');
    fds.push(listenerMap);
    const key0 = Buffer.alloc(4);
    const fdValue = Buffer.alloc(4);
    fdValue.writeUInt32LE(listenerFd, 0);
    try {
      bpfMapUpdate(listenerMap, key0, fdValue);
    } catch (error) {
      throw new SoccrError('SYSCALL', `the listener (fd ${listenerFd}) cannot go into a sockmap: ${(error as Error).message}`, ev, { cause: error });
    }
    const outcomeMap = bpfMapCreate(BPF_MAP_TYPE.ARRAY, 4, 8, 2, 'criu_ts_out');
    fds.push(outcomeMap);
    const program = bpfProgLoad({
      type: BPF_PROG_TYPE.SCHED_CLS,
      instructions: buildProgram({ family: wire.local.family, ports, seq: seqBytes, attrs: requestAttributes(s), listenerMap, outcomeMap }, kfunc),
      // kfuncs are only callable from GPL-compatible programs; this one is criu-ts's (MIT) and dual-licensed for the kernel.
      license: 'Dual MIT/GPL',
      name: 'criu_ts_requeue',
      expectedAttachType: BPF_ATTACH.TCX_INGRESS,
    });
    fds.push(program);
    const link = bpfLinkCreateTcx(program, LOOPBACK_IFINDEX, BPF_ATTACH.TCX_INGRESS);
    fds.push(link);

    const first = nextPart(0);
    segment(firstSeq, TH_ACK | (first.length ? TH_PSH : 0), first.length ? first : undefined);
    const outcome = (slot: number) => bpfMapLookup(outcomeMap, Buffer.from([slot, 0, 0, 0]), 8).readBigInt64LE(0);
    if (!waitFor(() => outcome(0) === 1n, 1000)) {
      throw new SoccrError('QUEUE', 'the handshake ACK never reached the program on lo (routing or a filter before TC ingress?)', ev);
    }
    const result = Number(outcome(1));
    if (result === NO_LISTENER) throw new SoccrError('QUEUE', `the listener (fd ${listenerFd}) was not found in the sockmap`, ev);
    if (result !== 0) throw new SoccrError('QUEUE', `${KFUNC} refused the connection: ${errnoName(-result)} (${result})`, { ...ev, result });
    close(link);
    fds.pop();

    const queuedBytes = () => findQueued(s)?.rqueue ?? -1;
    if (!waitFor(() => queuedBytes() === first.length, 1000)) {
      const seen = findQueued(s);
      throw new SoccrError('QUEUE', seen ? `the queued connection holds ${seen.rqueue} bytes, ${first.length} were sent` : 'the kernel did not make the connection from the handshake ACK (syncookie check failed?)', { ...ev, sent: first.length, seen: seen?.rqueue });
    }
    // The rest of the receive queue: a segment not taken met a zero window, which nothing
    // will open before the program reads, so there is no point in sending it again.
    for (let queued = first.length; queued < s.recvQueue.length; ) {
      const part = nextPart(queued);
      segment((firstSeq + queued) >>> 0, TH_ACK | TH_PSH, part);
      const target = queued + part.length;
      if (!waitFor(() => queuedBytes() === target, 500)) {
        const taken = queuedBytes();
        throw new SoccrError('QUEUE', `the queued connection took ${Math.max(taken, 0)} of the ${s.recvQueue.length} bytes of its receive queue (its window closed; the saved connection's receive buffer was bigger?)`, { ...ev, sent: target, taken });
      }
      queued = target;
    }
    if (finReceived) {
      segment(rcvNxt, TH_FIN | TH_ACK);
      if (!waitFor(() => findQueued(s)?.state === TcpState.CLOSE_WAIT, 1000)) {
        throw new SoccrError('QUEUE', "the client's FIN was not taken by the queued connection", ev);
      }
    }
  } finally {
    for (const fd of fds.reverse()) close(fd);
  }
}

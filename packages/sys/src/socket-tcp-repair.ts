/**
 * Socket calls that TCP connection repair needs (used by @criu-ts/soccr).
 *
 * One typed wrapper per call; each documents the call it wraps and throws
 * `SysError` (syscall name + errno) when the call fails. Exported from the
 * package index as the namespace `sock` so the short names (`bind`, `send`,
 * `close`) never clash with the generic wrappers next door.
 *
 * Kernel facts the constants rely on (include/uapi/linux/tcp.h, sockios.h):
 * - TCP_REPAIR (19) needs CAP_NET_ADMIN. Value 1 = on, 0 = off (sends a
 *   window probe so the peer learns our window), -1 = off without probe.
 * - TCP_REPAIR_QUEUE (20) selects which queue TCP_QUEUE_SEQ (21), recv()
 *   and send() act on while in repair mode: 1 = receive, 2 = send.
 * - TCP_REPAIR_OPTIONS (22) takes an array of `{u32 code; u32 value}`; only
 *   accepted once the socket is ESTABLISHED (i.e. after the repair connect).
 * - TCP_REPAIR_WINDOW (29) is `{snd_wl1, snd_wnd, max_window, rcv_wnd,
 *   rcv_wup}`, five u32.
 * - SIOCINQ = FIONREAD (0x541b), SIOCOUTQ = TIOCOUTQ (0x5411) and
 *   SIOCOUTQNSD (0x894b) give, for TCP: rcv_nxt - copied_seq (minus a
 *   received FIN), write_seq - snd_una, write_seq - snd_nxt.
 */
import { sysCallNumber } from './ffi.js';
import { SYSCALL_NUMBERS as N } from './syscall-numbers.js';

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const SOCK_STREAM = 1;
export const SOCK_RAW = 3;
export const SOCK_NONBLOCK = 0o4000;
export const SOCK_CLOEXEC = 0o2000000;
export const IPPROTO_TCP = 6;
export const IPPROTO_IPV6 = 41;
export const SOL_SOCKET = 1;
export const SOL_TCP = 6;
export const SO_REUSEADDR = 2;
export const SO_TYPE = 3;
export const SO_PROTOCOL = 38;
export const SO_DOMAIN = 39;
export const SO_MARK = 36;
export const IPV6_CHECKSUM = 7;
export const IPV6_V6ONLY = 26;
export const TCP_MAXSEG = 2;
export const TCP_INFO = 11;
export const TCP_REPAIR = 19;
export const TCP_REPAIR_QUEUE = 20;
export const TCP_QUEUE_SEQ = 21;
export const TCP_REPAIR_OPTIONS = 22;
export const TCP_TIMESTAMP = 24;
export const TCP_REPAIR_WINDOW = 29;
export const TCP_REPAIR_ON = 1;
export const TCP_REPAIR_OFF = 0;
export const TCP_REPAIR_OFF_NO_WP = -1;
export const TCP_NO_QUEUE = 0;
export const TCP_RECV_QUEUE = 1;
export const TCP_SEND_QUEUE = 2;
export const TCPOPT_MAXSEG = 2;
export const TCPOPT_WINDOW = 3;
export const TCPOPT_SACK_PERM = 4;
export const TCPOPT_TIMESTAMP = 8;
export const TCPI_OPT_TIMESTAMPS = 1;
export const TCPI_OPT_SACK = 2;
export const TCPI_OPT_WSCALE = 4;
export const MSG_PEEK = 0x2;
export const MSG_DONTWAIT = 0x40;
export const MSG_NOSIGNAL = 0x4000;
export const SHUT_WR = 1;
export const SIOCINQ = 0x541b;
export const SIOCOUTQ = 0x5411;
export const SIOCOUTQNSD = 0x894b;

/** An IPv4 or IPv6 socket address. `address` is textual (`10.0.0.1`, `::1`). */
export interface InetAddress {
  family: 4 | 6;
  address: string;
  port: number;
  /** IPv6 only: sin6_flowinfo and sin6_scope_id. */
  flowinfo?: number;
  scopeId?: number;
}

// ---------------------------------------------------------------- addresses

/** Parses a textual IPv4 address into its 4 bytes; throws on bad syntax. */
export function parseIPv4(text: string): Buffer {
  const parts = text.split('.');
  if (parts.length !== 4 || !parts.every((p) => /^\d{1,3}$/.test(p) && Number(p) <= 255)) {
    throw new RangeError(`not an IPv4 address: ${JSON.stringify(text)}`);
  }
  return Buffer.from(parts.map(Number));
}

/** Parses a textual IPv6 address (with `::` and a trailing dotted quad) into 16 bytes. */
export function parseIPv6(text: string): Buffer {
  const bad = () => new RangeError(`not an IPv6 address: ${JSON.stringify(text)}`);
  let s = text;
  const pct = s.indexOf('%');
  if (pct >= 0) s = s.slice(0, pct);
  // A trailing dotted quad (::ffff:1.2.3.4) stands for the last two groups.
  const lastColon = s.lastIndexOf(':');
  if (s.slice(lastColon + 1).includes('.')) {
    const v4 = parseIPv4(s.slice(lastColon + 1));
    s = `${s.slice(0, lastColon + 1)}${v4.readUInt16BE(0).toString(16)}:${v4.readUInt16BE(2).toString(16)}`;
  }
  const halves = s.split('::');
  if (halves.length > 2) throw bad();
  const parse = (h: string): number[] =>
    h === ''
      ? []
      : h.split(':').map((g) => {
          if (!/^[0-9a-fA-F]{1,4}$/.test(g)) throw bad();
          return parseInt(g, 16);
        });
  let groups: number[];
  if (halves.length === 2) {
    const head = parse(halves[0]!);
    const rest = parse(halves[1]!);
    const missing = 8 - head.length - rest.length;
    if (missing < 1) throw bad();
    groups = [...head, ...new Array<number>(missing).fill(0), ...rest];
  } else {
    groups = parse(halves[0]!);
  }
  if (groups.length !== 8) throw bad();
  const out = Buffer.alloc(16);
  groups.forEach((g, i) => out.writeUInt16BE(g, i * 2));
  return out;
}

/** Formats 4 bytes as dotted quad. */
export function formatIPv4(bytes: Uint8Array): string {
  return Array.from(bytes.subarray(0, 4)).join('.');
}

/** Formats 16 bytes in RFC 5952 form (longest zero run compressed, lower case). */
export function formatIPv6(bytes: Uint8Array): string {
  const b = Buffer.from(bytes.subarray(0, 16));
  const groups = Array.from({ length: 8 }, (_, i) => b.readUInt16BE(i * 2));
  // IPv4-mapped addresses read better with their dotted quad.
  if (groups.slice(0, 5).every((g) => g === 0) && groups[5] === 0xffff) {
    return `::ffff:${formatIPv4(b.subarray(12))}`;
  }
  let bestStart = -1;
  let bestLen = 1;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) { i++; continue; }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLen) { bestStart = i; bestLen = j - i; }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestStart < 0) return hex.join(':');
  return `${hex.slice(0, bestStart).join(':')}::${hex.slice(bestStart + bestLen).join(':')}`;
}

/** Encodes a `struct sockaddr_in` (16 bytes) or `struct sockaddr_in6` (28 bytes). */
export function encodeSockaddr(a: InetAddress): Buffer {
  if (a.family === 4) {
    const b = Buffer.alloc(16);
    b.writeUInt16LE(AF_INET, 0);
    b.writeUInt16BE(a.port, 2);
    parseIPv4(a.address).copy(b, 4);
    return b;
  }
  const b = Buffer.alloc(28);
  b.writeUInt16LE(AF_INET6, 0);
  b.writeUInt16BE(a.port, 2);
  b.writeUInt32BE(a.flowinfo ?? 0, 4);
  parseIPv6(a.address).copy(b, 8);
  b.writeUInt32LE(a.scopeId ?? 0, 24);
  return b;
}

/** Decodes a `sockaddr_in`/`sockaddr_in6`; throws for any other family. */
export function decodeSockaddr(b: Buffer): InetAddress {
  const family = b.readUInt16LE(0);
  if (family === AF_INET && b.length >= 16) {
    return { family: 4, address: formatIPv4(b.subarray(4, 8)), port: b.readUInt16BE(2) };
  }
  if (family === AF_INET6 && b.length >= 28) {
    return {
      family: 6,
      address: formatIPv6(b.subarray(8, 24)),
      port: b.readUInt16BE(2),
      flowinfo: b.readUInt32BE(4),
      scopeId: b.readUInt32LE(24),
    };
  }
  throw new RangeError(`not an inet socket address (family ${family}, ${b.length} bytes)`);
}

// ---------------------------------------------------------------- plain calls

/** socket(2). Returns the new fd (flags in `type` as given: add SOCK_CLOEXEC yourself). */
export function socket(domain: number, type: number, protocol: number): number {
  return sysCallNumber('socket', N.socket, [domain, type, protocol]);
}

/** close(2). */
export function close(fd: number): void {
  sysCallNumber('close', N.close, [fd], `fd ${fd}`);
}

/** bind(2) to an inet address. */
export function bind(fd: number, addr: InetAddress): void {
  const sa = encodeSockaddr(addr);
  sysCallNumber('bind', N.bind, [fd, sa, sa.length], fmt(addr));
}

/** connect(2) to an inet address. In TCP repair mode this makes no handshake. */
export function connect(fd: number, addr: InetAddress): void {
  const sa = encodeSockaddr(addr);
  sysCallNumber('connect', N.connect, [fd, sa, sa.length], fmt(addr));
}

/** getsockname(2), decoded. */
export function getsockname(fd: number): InetAddress {
  const b = Buffer.alloc(128);
  const len = u32(b.length);
  sysCallNumber('getsockname', N.getsockname, [fd, b, len], `fd ${fd}`);
  return decodeSockaddr(b.subarray(0, len.readUInt32LE(0)));
}

/** getpeername(2), decoded. */
export function getpeername(fd: number): InetAddress {
  const b = Buffer.alloc(128);
  const len = u32(b.length);
  sysCallNumber('getpeername', N.getpeername, [fd, b, len], `fd ${fd}`);
  return decodeSockaddr(b.subarray(0, len.readUInt32LE(0)));
}

/** shutdown(2). */
export function shutdown(fd: number, how: number): void {
  sysCallNumber('shutdown', N.shutdown, [fd, how], `fd ${fd}`);
}

/** setsockopt(2) with an `int` value. */
export function setsockoptInt(fd: number, level: number, name: number, value: number): void {
  const b = Buffer.alloc(4);
  b.writeInt32LE(value);
  setsockoptBuf(fd, level, name, b);
}

/** getsockopt(2) of an `int` value. */
export function getsockoptInt(fd: number, level: number, name: number): number {
  return getsockoptBuf(fd, level, name, 4).readInt32LE(0);
}

/** setsockopt(2) with raw option bytes. */
export function setsockoptBuf(fd: number, level: number, name: number, value: Buffer): void {
  sysCallNumber('setsockopt', N.setsockopt, [fd, level, name, value, value.length], `fd ${fd} level ${level} option ${name}`);
}

/** getsockopt(2) into a buffer of `size` bytes; returns the bytes the kernel filled. */
export function getsockoptBuf(fd: number, level: number, name: number, size: number): Buffer {
  const b = Buffer.alloc(size);
  const len = u32(size);
  sysCallNumber('getsockopt', N.getsockopt, [fd, level, name, b, len], `fd ${fd} level ${level} option ${name}`);
  return b.subarray(0, len.readUInt32LE(0));
}

/** ioctl(2) whose argument is an `int *` the kernel fills (SIOCINQ and friends). */
export function ioctlGetInt(fd: number, request: number, what = `request 0x${request.toString(16)}`): number {
  const b = Buffer.alloc(4);
  sysCallNumber('ioctl', N.ioctl, [fd, request, b], `fd ${fd} ${what}`);
  return b.readInt32LE(0);
}

/** recv(2) into `buf`; returns the byte count. */
export function recv(fd: number, buf: Buffer, flags: number): number {
  // recv(2) is recvfrom(2) without an address.
  return sysCallNumber('recvfrom', N.recvfrom, [fd, buf, buf.length, flags, 0, 0], `fd ${fd}`);
}

/** send(2) of `buf`; returns the byte count the kernel took. */
export function send(fd: number, buf: Buffer, flags: number): number {
  // send(2) is sendto(2) without an address.
  return sysCallNumber('sendto', N.sendto, [fd, buf, buf.length, flags, 0, 0], `fd ${fd}`);
}

/** sendto(2) of `buf` to an inet address (raw sockets). */
export function sendto(fd: number, buf: Buffer, flags: number, to: InetAddress): number {
  const sa = encodeSockaddr(to);
  return sysCallNumber('sendto', N.sendto, [fd, buf, buf.length, flags, sa, sa.length], `fd ${fd} to ${fmt(to)}`);
}

// ---------------------------------------------------------------- TCP repair

/** setsockopt(TCP_REPAIR): 1 on, 0 off (with window probe), -1 off without probe. */
export function setTcpRepair(fd: number, mode: 1 | 0 | -1): void {
  setsockoptInt(fd, SOL_TCP, TCP_REPAIR, mode);
}

/** setsockopt(TCP_REPAIR_QUEUE): which queue the next seq/recv/send calls act on. */
export function setTcpRepairQueue(fd: number, queue: number): void {
  setsockoptInt(fd, SOL_TCP, TCP_REPAIR_QUEUE, queue);
}

/** getsockopt(TCP_QUEUE_SEQ): send queue -> write_seq, receive queue -> rcv_nxt. */
export function getTcpQueueSeq(fd: number): number {
  return getsockoptBuf(fd, SOL_TCP, TCP_QUEUE_SEQ, 4).readUInt32LE(0);
}

/** setsockopt(TCP_QUEUE_SEQ): only allowed while the socket is still CLOSE. */
export function setTcpQueueSeq(fd: number, seq: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(seq >>> 0);
  setsockoptBuf(fd, SOL_TCP, TCP_QUEUE_SEQ, b);
}

/** setsockopt(TCP_REPAIR_OPTIONS) with `{code, value}` pairs (struct tcp_repair_opt[]). */
export function setTcpRepairOptions(fd: number, opts: ReadonlyArray<{ code: number; value: number }>): void {
  const b = Buffer.alloc(8 * opts.length);
  opts.forEach((o, i) => {
    b.writeUInt32LE(o.code >>> 0, i * 8);
    b.writeUInt32LE(o.value >>> 0, i * 8 + 4);
  });
  setsockoptBuf(fd, SOL_TCP, TCP_REPAIR_OPTIONS, b);
}

/** struct tcp_repair_window. */
export interface TcpRepairWindow {
  sndWl1: number;
  sndWnd: number;
  maxWindow: number;
  rcvWnd: number;
  rcvWup: number;
}

/** getsockopt(TCP_REPAIR_WINDOW); needs repair mode on. */
export function getTcpRepairWindow(fd: number): TcpRepairWindow {
  const b = getsockoptBuf(fd, SOL_TCP, TCP_REPAIR_WINDOW, 20);
  return {
    sndWl1: b.readUInt32LE(0),
    sndWnd: b.readUInt32LE(4),
    maxWindow: b.readUInt32LE(8),
    rcvWnd: b.readUInt32LE(12),
    rcvWup: b.readUInt32LE(16),
  };
}

/** setsockopt(TCP_REPAIR_WINDOW); the kernel checks it against rcv_nxt, so set it after the receive queue. */
export function setTcpRepairWindow(fd: number, w: TcpRepairWindow): void {
  const b = Buffer.alloc(20);
  [w.sndWl1, w.sndWnd, w.maxWindow, w.rcvWnd, w.rcvWup].forEach((v, i) => b.writeUInt32LE(v >>> 0, i * 4));
  setsockoptBuf(fd, SOL_TCP, TCP_REPAIR_WINDOW, b);
}

/** The part of struct tcp_info that repair needs. */
export interface TcpInfo {
  state: number;
  /** TCPI_OPT_* bits. */
  options: number;
  sndWscale: number;
  rcvWscale: number;
  rto: number;
  sndMss: number;
  rcvMss: number;
}

/** getsockopt(TCP_INFO), the leading fields (layout from linux/tcp.h). */
export function getTcpInfo(fd: number): TcpInfo {
  const b = getsockoptBuf(fd, SOL_TCP, TCP_INFO, 104);
  if (b.length < 24) throw new RangeError(`TCP_INFO returned only ${b.length} bytes`);
  return {
    state: b[0]!,
    options: b[5]!,
    // Bitfield byte: snd_wscale is the low nibble, rcv_wscale the high one (little endian).
    sndWscale: b[6]! & 0x0f,
    rcvWscale: b[6]! >> 4,
    rto: b.readUInt32LE(8),
    sndMss: b.readUInt32LE(16),
    rcvMss: b.readUInt32LE(20),
  };
}

/** getsockopt(TCP_TIMESTAMP): the socket's current TCP timestamp clock (with its offset). */
export function getTcpTimestamp(fd: number): number {
  return getsockoptBuf(fd, SOL_TCP, TCP_TIMESTAMP, 4).readUInt32LE(0);
}

/** setsockopt(TCP_TIMESTAMP): sets the offset so the clock reads `ts` now. */
export function setTcpTimestamp(fd: number, ts: number): void {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(ts >>> 0);
  setsockoptBuf(fd, SOL_TCP, TCP_TIMESTAMP, b);
}

/** ioctl(SIOCINQ): unread bytes in the receive queue. */
export function siocInq(fd: number): number {
  return ioctlGetInt(fd, SIOCINQ, 'SIOCINQ');
}

/** ioctl(SIOCOUTQ): bytes in the send queue not yet acknowledged (sent or not). */
export function siocOutq(fd: number): number {
  return ioctlGetInt(fd, SIOCOUTQ, 'SIOCOUTQ');
}

/** ioctl(SIOCOUTQNSD): bytes in the send queue never sent. */
export function siocOutqNsd(fd: number): number {
  return ioctlGetInt(fd, SIOCOUTQNSD, 'SIOCOUTQNSD');
}

function u32(v: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(v);
  return b;
}

function fmt(a: InetAddress): string {
  return a.family === 6 ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`;
}

/** recvfrom(2) that also returns the source address (datagram sockets); `from` is absent when the kernel gives none. */
export function recvFrom(fd: number, buf: Buffer, flags: number): { bytes: number; from?: InetAddress } {
  const sa = Buffer.alloc(128);
  const len = u32(sa.length);
  const bytes = sysCallNumber('recvfrom', N.recvfrom, [fd, buf, buf.length, flags, sa, len], `fd ${fd}`);
  const n = len.readUInt32LE(0);
  const family = n >= 2 ? sa.readUInt16LE(0) : 0;
  return family === AF_INET || family === AF_INET6 ? { bytes, from: decodeSockaddr(sa.subarray(0, n)) } : { bytes };
}

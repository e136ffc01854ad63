/**
 * Hand-built TCP segments, sent "from the peer" to a socket under repair.
 *
 * No repair call can mark a FIN (or the ACK of our FIN) as received, so a
 * restored half-closed socket is told the old-fashioned way: a segment with
 * the peer's addresses, the expected sequence number and an acceptable ACK,
 * written on a raw socket with our own IP header (IPPROTO_RAW implies
 * IP_HDRINCL / IPV6_HDRINCL, so the spoofed source is kept as is). The
 * destination is a local address, so the segment loops back into our own
 * stack. SO_MARK = LOCK_BYPASS_MARK lets it through the network lock, whose
 * rules drop every unmarked packet of a locked connection.
 */
import { sock } from '@criu-ts/sys';
import type { InetAddress } from './tcp-state.js';

export const TH_FIN = 0x01;
export const TH_SYN = 0x02;
export const TH_RST = 0x04;
export const TH_PSH = 0x08;
export const TH_ACK = 0x10;

/** Packets carrying this mark pass the network lock (same value as CRIU's, so rules agree). */
export const LOCK_BYPASS_MARK = 0xc114;

const IPPROTO_RAW = 255;
const IPPROTO_UDP = 17;
const SO_MARK = 36;

export interface SegmentSpec {
  from: InetAddress;
  to: InetAddress;
  seq: number;
  ack: number;
  flags: number;
  window: number;
  /** TCP options, a multiple of 4 bytes (pad with NOPs). */
  options?: Uint8Array;
  payload?: Uint8Array;
}

function sum16(buf: Buffer, acc = 0): number {
  for (let i = 0; i + 1 < buf.length; i += 2) acc += buf.readUInt16BE(i);
  if (buf.length & 1) acc += buf[buf.length - 1]! << 8;
  return acc;
}
function fold(acc: number): number {
  while (acc > 0xffff) acc = (acc & 0xffff) + (acc >>> 16);
  return ~acc & 0xffff;
}

/** Builds the IP + TCP bytes of a segment (checksums filled). */
export function buildSegment(s: SegmentSpec): Buffer {
  if (s.from.family !== s.to.family) throw new RangeError('segment addresses of different families');
  const options = s.options ?? new Uint8Array(0);
  if (options.length % 4 !== 0 || options.length > 40) throw new RangeError(`TCP options of ${options.length} bytes (a multiple of 4, at most 40)`);
  const payload = s.payload ?? new Uint8Array(0);
  const headerLength = 20 + options.length;
  const tcp = Buffer.alloc(headerLength + payload.length);
  tcp.set(options, 20);
  tcp.set(payload, headerLength);
  tcp.writeUInt16BE(s.from.port, 0);
  tcp.writeUInt16BE(s.to.port, 2);
  tcp.writeUInt32BE(s.seq >>> 0, 4);
  tcp.writeUInt32BE(s.ack >>> 0, 8);
  tcp[12] = (headerLength / 4) << 4; // data offset in 32-bit words
  tcp[13] = s.flags;
  // The window field is scaled by the receiver; a too-small value only shrinks what it may send until the next ACK.
  tcp.writeUInt16BE(Math.min(s.window, 0xffff), 14);
  if (s.from.family === 4) {
    const src = sock.parseIPv4(s.from.address);
    const dst = sock.parseIPv4(s.to.address);
    const pseudo = Buffer.alloc(12);
    src.copy(pseudo, 0);
    dst.copy(pseudo, 4);
    pseudo[9] = sock.IPPROTO_TCP;
    pseudo.writeUInt16BE(tcp.length, 10);
    tcp.writeUInt16BE(fold(sum16(tcp, sum16(pseudo))), 16);
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(20 + tcp.length, 2);
    ip[8] = 64;
    ip[9] = sock.IPPROTO_TCP;
    src.copy(ip, 12);
    dst.copy(ip, 16);
    ip.writeUInt16BE(fold(sum16(ip)), 10);
    return Buffer.concat([ip, tcp]);
  }
  const src = sock.parseIPv6(s.from.address);
  const dst = sock.parseIPv6(s.to.address);
  const pseudo = Buffer.alloc(40);
  src.copy(pseudo, 0);
  dst.copy(pseudo, 16);
  pseudo.writeUInt32BE(tcp.length, 32);
  pseudo[39] = sock.IPPROTO_TCP;
  tcp.writeUInt16BE(fold(sum16(tcp, sum16(pseudo))), 16);
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(tcp.length, 4);
  ip[6] = sock.IPPROTO_TCP;
  ip[7] = 64;
  src.copy(ip, 8);
  dst.copy(ip, 24);
  return Buffer.concat([ip, tcp]);
}

/** Sends one crafted segment towards `spec.to` (a local address), marked to pass the lock. */
export function sendCraftedSegment(spec: SegmentSpec): void {
  const family = spec.to.family === 4 ? sock.AF_INET : sock.AF_INET6;
  const fd = sock.socket(family, sock.SOCK_RAW | sock.SOCK_CLOEXEC, IPPROTO_RAW);
  try {
    sock.setsockoptInt(fd, sock.SOL_SOCKET, SO_MARK, LOCK_BYPASS_MARK);
    const pkt = buildSegment(spec);
    // For raw IPv6 sockets the port field must be 0 (or the protocol); 0 is always fine.
    sock.sendto(fd, pkt, 0, { ...spec.to, port: 0 });
  } finally {
    sock.close(fd);
  }
}

/**
 * Builds the IP + UDP bytes of a datagram from `from` to `to` carrying `payload` (checksums
 * filled: optional for IPv4, required for IPv6). Used to put queued datagrams back into a
 * restored UDP socket with their original source address.
 */
export function buildDatagram(from: InetAddress, to: InetAddress, payload: Uint8Array): Buffer {
  if (from.family !== to.family) throw new RangeError('datagram addresses of different families');
  const udp = Buffer.alloc(8 + payload.length);
  udp.writeUInt16BE(from.port, 0);
  udp.writeUInt16BE(to.port, 2);
  udp.writeUInt16BE(udp.length, 4);
  Buffer.from(payload.buffer, payload.byteOffset, payload.byteLength).copy(udp, 8);
  const v4 = from.family === 4;
  const src = v4 ? sock.parseIPv4(from.address) : sock.parseIPv6(from.address);
  const dst = v4 ? sock.parseIPv4(to.address) : sock.parseIPv6(to.address);
  const pseudo = Buffer.alloc(v4 ? 12 : 40);
  src.copy(pseudo, 0);
  dst.copy(pseudo, src.length);
  if (v4) {
    pseudo[9] = IPPROTO_UDP;
    pseudo.writeUInt16BE(udp.length, 10);
  } else {
    pseudo.writeUInt32BE(udp.length, 32);
    pseudo[39] = IPPROTO_UDP;
  }
  // A computed 0 is sent as 0xffff (RFC 768): 0 means "no checksum".
  udp.writeUInt16BE(fold(sum16(udp, sum16(pseudo))) || 0xffff, 6);
  if (v4) {
    const ip = Buffer.alloc(20);
    ip[0] = 0x45;
    ip.writeUInt16BE(20 + udp.length, 2);
    ip[8] = 64;
    ip[9] = IPPROTO_UDP;
    src.copy(ip, 12);
    dst.copy(ip, 16);
    ip.writeUInt16BE(fold(sum16(ip)), 10);
    return Buffer.concat([ip, udp]);
  }
  const ip = Buffer.alloc(40);
  ip.writeUInt32BE(0x60000000, 0);
  ip.writeUInt16BE(udp.length, 4);
  ip[6] = IPPROTO_UDP;
  ip[7] = 64;
  src.copy(ip, 8);
  dst.copy(ip, 24);
  return Buffer.concat([ip, udp]);
}

/** Sends datagrams with spoofed sources towards local addresses (loopback delivers them before sendto returns, in practice). */
export function sendCraftedDatagrams(datagrams: ReadonlyArray<{ from: InetAddress; to: InetAddress; payload: Uint8Array }>): void {
  const fds = new Map<number, number>();
  try {
    for (const d of datagrams) {
      const family = d.to.family === 4 ? sock.AF_INET : sock.AF_INET6;
      let fd = fds.get(family);
      if (fd === undefined) fds.set(family, (fd = sock.socket(family, sock.SOCK_RAW | sock.SOCK_CLOEXEC, IPPROTO_RAW)));
      sock.sendto(fd, buildDatagram(d.from, d.to, d.payload), 0, { ...d.to, port: 0 });
    }
  } finally {
    for (const fd of fds.values()) sock.close(fd);
  }
}

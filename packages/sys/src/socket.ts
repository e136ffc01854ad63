// Socket calls, including file-descriptor passing (SCM_RIGHTS, unix(7)).
import { addressOf, sysCallNumber } from './ffi.js';
import { SYSCALL_NUMBERS as N } from './syscall-numbers.js';
import { asFd, type Fd } from './types.js';

export const AF_UNIX = 1;
export const AF_INET = 2;
export const AF_INET6 = 10;
export const AF_PACKET = 17;
export const SOCK = { STREAM: 1, DGRAM: 2, RAW: 3, SEQPACKET: 5, NONBLOCK: 0o4000, CLOEXEC: 0o2000000 } as const;
export const SOL_SOCKET = 1;
/** Protocol numbers (in.h) and the option levels named after them. */
export const IPPROTO = { ICMP: 1, TCP: 6, UDP: 17, ICMPV6: 58 } as const;
export const SOL = { IP: 0, IPV6: 41, TCP: 6, ICMPV6: 58, RAW: 255, PACKET: 263 } as const;
/** Options at level SOL.IP (ip(7), raw(7)), SOL.IPV6 (ipv6(7)) and SOL.TCP (tcp(7)). */
export const IP_OPT = { TOS: 1, TTL: 2, HDRINCL: 3, PKTINFO: 8, FREEBIND: 15, NODEFRAG: 22 } as const;
export const IPV6_OPT = { UNICAST_HOPS: 16, V6ONLY: 26, HDRINCL: 36, RECVPKTINFO: 49, TCLASS: 67, FREEBIND: 78 } as const;
/** ICMP type filters of raw sockets: ICMP_FILTER at SOL.RAW (one u32), ICMP6_FILTER at SOL.ICMPV6 (eight u32). */
export const ICMP_FILTER = 1;
export const ICMP6_FILTER = 1;
/** AF_PACKET options at level SOL.PACKET (packet(7)). */
export const PACKET_OPT = {
  ADD_MEMBERSHIP: 1, RX_RING: 5, COPY_THRESH: 7, AUXDATA: 8, ORIGDEV: 9, VERSION: 10, RESERVE: 12, TX_RING: 13, LOSS: 14,
  VNET_HDR: 15, TIMESTAMP: 17, FANOUT: 18,
} as const;
export const TCP_OPT = { NODELAY: 1, CORK: 3, KEEPIDLE: 4, KEEPINTVL: 5, KEEPCNT: 6, DEFER_ACCEPT: 9, FASTOPEN: 23 } as const;
export const SO = {
  REUSEADDR: 2, TYPE: 3, ERROR: 4, DONTROUTE: 5, BROADCAST: 6, SNDBUF: 7, RCVBUF: 8, KEEPALIVE: 9, OOBINLINE: 10,
  NO_CHECK: 11, PRIORITY: 12, LINGER: 13, REUSEPORT: 15, PASSCRED: 16, PEERCRED: 17, RCVLOWAT: 18, RCVTIMEO: 20,
  SNDTIMEO: 21, BINDTODEVICE: 25, SNDBUFFORCE: 32, RCVBUFFORCE: 33, PASSSEC: 34, MARK: 36, DOMAIN: 39, PEEK_OFF: 42,
  BUF_LOCK: 72,
} as const;
export const SCM_RIGHTS = 1;
export const MSG = { PEEK: 2, TRUNC: 0x20, DONTWAIT: 0x40, WAITALL: 0x100, NOSIGNAL: 0x4000, CMSG_CLOEXEC: 0x4000_0000 } as const;
export const SHUT = { RD: 0, WR: 1, RDWR: 2 } as const;

/** Size of struct msghdr on x86_64 (7 members, pointers and size_t are 8 bytes). */
export const MSGHDR_SIZE = 56;
/** Size of struct cmsghdr's header: cmsg_len (size_t), cmsg_level, cmsg_type (int). */
export const CMSGHDR_SIZE = 16;
/** Most fds one SCM_RIGHTS message carries (SCM_MAX_FD in the kernel). */
export const SCM_MAX_FD = 253;

/** socket(domain, type, protocol); CLOEXEC is always added. */
export function socket(domain: number, type: number, protocol = 0): Fd {
  return asFd(sysCallNumber('socket', N.socket, [domain, type | SOCK.CLOEXEC, protocol]));
}

/** socketpair(domain, type, protocol). */
export function socketpair(domain: number, type: number, protocol = 0): [Fd, Fd] {
  const sv = Buffer.alloc(8);
  sysCallNumber('socketpair', N.socketpair, [domain, type | SOCK.CLOEXEC, protocol, sv]);
  return [asFd(sv.readInt32LE(0)), asFd(sv.readInt32LE(4))];
}

/**
 * A struct sockaddr_un for `path`; a name starting with '\0' is in the abstract namespace and
 * its length is exactly sun_family + the name bytes (no terminating NUL), per unix(7).
 */
export function sockaddrUn(path: string): Buffer {
  const name = Buffer.from(path, 'utf8');
  if (name.length > 107) throw new RangeError(`unix socket path too long (${name.length} > 107): ${path}`);
  const abstract = name[0] === 0;
  const addr = Buffer.alloc(2 + name.length + (abstract ? 0 : 1));
  addr.writeUInt16LE(AF_UNIX, 0);
  name.copy(addr, 2);
  return addr;
}

/** A struct sockaddr_ll (20 bytes) for packet sockets: `protocol` an ethertype (host order), `ifindex` 0 for every interface. */
export function sockaddrLl(protocol: number, ifindex: number): Buffer {
  const ll = Buffer.alloc(20);
  ll.writeUInt16LE(AF_PACKET, 0);
  ll.writeUInt16BE(protocol, 2);
  ll.writeInt32LE(ifindex, 4);
  return ll;
}

/** bind(fd, addr, addrlen). */
export function bind(fd: Fd, addr: Uint8Array): void {
  sysCallNumber('bind', N.bind, [fd, addr, addr.byteLength], `fd ${fd}`);
}

/** listen(fd, backlog). */
export function listen(fd: Fd, backlog = 16): void {
  sysCallNumber('listen', N.listen, [fd, backlog], `fd ${fd}`);
}

/** accept4(fd, NULL, NULL, flags); CLOEXEC is always added. */
export function accept4(fd: Fd, flags = 0): Fd {
  return asFd(sysCallNumber('accept4', N.accept4, [fd, 0, 0, flags | SOCK.CLOEXEC], `fd ${fd}`));
}

/** connect(fd, addr, addrlen). */
export function connect(fd: Fd, addr: Uint8Array): void {
  sysCallNumber('connect', N.connect, [fd, addr, addr.byteLength], `fd ${fd}`);
}

/** getsockname(fd) as the raw sockaddr bytes the kernel wrote (any family). */
export function getsockname(fd: Fd): Buffer {
  return sockaddrCall('getsockname', N.getsockname, fd);
}

/** getpeername(fd) as the raw sockaddr bytes the kernel wrote (any family). */
export function getpeername(fd: Fd): Buffer {
  return sockaddrCall('getpeername', N.getpeername, fd);
}

function sockaddrCall(name: string, nr: number, fd: Fd): Buffer {
  const addr = Buffer.alloc(128); // sizeof(struct sockaddr_storage)
  const len = Buffer.alloc(4);
  len.writeUInt32LE(addr.length);
  sysCallNumber(name, nr, [fd, addr, len], `fd ${fd}`);
  return addr.subarray(0, Math.min(len.readUInt32LE(0), addr.length));
}

/** shutdown(fd, how). */
export function shutdown(fd: Fd, how: number): void {
  sysCallNumber('shutdown', N.shutdown, [fd, how], `fd ${fd}`);
}

/** setsockopt(fd, level, name, value): an int option when `value` is a number. */
export function setsockopt(fd: Fd, level: number, name: number, value: number | Uint8Array): void {
  let buf: Uint8Array;
  if (typeof value === 'number') {
    const b = Buffer.alloc(4);
    b.writeInt32LE(value);
    buf = b;
  } else buf = value;
  sysCallNumber('setsockopt', N.setsockopt, [fd, level, name, buf, buf.byteLength], `fd ${fd} level ${level} opt ${name}`);
}

/** getsockopt(fd, level, name) into a buffer of `size` bytes; returns the bytes the kernel filled. */
export function getsockopt(fd: Fd, level: number, name: number, size = 4): Buffer {
  const buf = Buffer.alloc(size);
  const len = Buffer.alloc(4);
  len.writeUInt32LE(size);
  sysCallNumber('getsockopt', N.getsockopt, [fd, level, name, buf, len], `fd ${fd} level ${level} opt ${name}`);
  return buf.subarray(0, len.readUInt32LE(0));
}

const SO_GET_FILTER = 26; // = SO_ATTACH_FILTER

/**
 * getsockopt(SO_GET_FILTER): the classic BPF program attached to the socket, 8 bytes (struct
 * sock_filter) per instruction; empty when there is none. The option's length is counted in
 * instructions, not bytes (a first call with length 0 asks how many). An eBPF filter
 * (SO_ATTACH_BPF) has no classic form to give back: the kernel answers EACCES.
 */
export function getSocketFilter(fd: Fd): Buffer {
  const len = Buffer.alloc(4);
  sysCallNumber('getsockopt', N.getsockopt, [fd, SOL_SOCKET, SO_GET_FILTER, 0, len], `fd ${fd} SO_GET_FILTER`);
  const count = len.readUInt32LE(0);
  if (count === 0) return Buffer.alloc(0);
  const filter = Buffer.alloc(count * 8);
  len.writeUInt32LE(count);
  sysCallNumber('getsockopt', N.getsockopt, [fd, SOL_SOCKET, SO_GET_FILTER, filter, len], `fd ${fd} SO_GET_FILTER`);
  return filter.subarray(0, len.readUInt32LE(0) * 8);
}

/** setsockopt(SO_ATTACH_FILTER) with the classic BPF program `filter` (8 bytes per instruction). */
export function attachSocketFilter(fd: Fd, filter: Buffer): void {
  const fprog = Buffer.alloc(16); // struct sock_fprog { u16 len; (pad) struct sock_filter *filter; }
  fprog.writeUInt16LE(filter.length / 8, 0);
  fprog.writeBigUInt64LE(addressOf(filter), 8);
  sysCallNumber('setsockopt', N.setsockopt, [fd, SOL_SOCKET, SO_GET_FILTER, fprog, fprog.length], `fd ${fd} SO_ATTACH_FILTER`);
  void filter; // referenced after the call: its address was in fprog
}

/** A timeval for SO_RCVTIMEO/SO_SNDTIMEO. */
export function timeval(ms: number): Buffer {
  const b = Buffer.alloc(16);
  b.writeBigInt64LE(BigInt(Math.floor(ms / 1000)), 0);
  b.writeBigInt64LE(BigInt((ms % 1000) * 1000), 8);
  return b;
}

function msghdr(data: Uint8Array, control: Uint8Array | null): { hdr: Buffer; iov: Buffer } {
  const iov = Buffer.alloc(16);
  iov.writeBigUInt64LE(addressOf(data), 0);
  iov.writeBigUInt64LE(BigInt(data.byteLength), 8);
  const hdr = Buffer.alloc(MSGHDR_SIZE);
  hdr.writeBigUInt64LE(addressOf(iov), 16); // msg_iov
  hdr.writeBigUInt64LE(1n, 24); // msg_iovlen
  if (control) {
    hdr.writeBigUInt64LE(addressOf(control), 32); // msg_control
    hdr.writeBigUInt64LE(BigInt(control.byteLength), 40); // msg_controllen
  }
  return { hdr, iov };
}

/** sendto(fd, data, flags, addr, addrlen): a datagram to `addr` (a sockaddr such as sockaddrUn's). Returns bytes sent. */
export function sendto(fd: Fd, data: Uint8Array, addr: Uint8Array, flags: number = MSG.NOSIGNAL): number {
  return sysCallNumber('sendto', N.sendto, [fd, data, data.byteLength, flags, addr, addr.byteLength], `fd ${fd}`);
}

/** CMSG_SPACE for `n` fds: header plus the int array rounded up to 8 bytes. */
function cmsgSpace(nfds: number): number {
  return CMSGHDR_SIZE + Math.ceil((nfds * 4) / 8) * 8;
}

/**
 * sendmsg(fd, {data, SCM_RIGHTS fds, to}, flags). At least one byte of data must go with the fds on
 * stream sockets, so callers send a small payload. `to`: the destination (msg_name, a sockaddr
 * such as sockaddrUn's) of a datagram on an unconnected socket. Returns bytes sent.
 */
export function sendmsg(fd: Fd, data: Uint8Array, fds: readonly Fd[] = [], flags: number = MSG.NOSIGNAL, to?: Uint8Array): number {
  if (fds.length > SCM_MAX_FD) throw new RangeError(`sendmsg: ${fds.length} fds > SCM_MAX_FD`);
  let control: Buffer | null = null;
  if (fds.length > 0) {
    control = Buffer.alloc(cmsgSpace(fds.length));
    control.writeBigUInt64LE(BigInt(CMSGHDR_SIZE + fds.length * 4), 0); // CMSG_LEN
    control.writeInt32LE(SOL_SOCKET, 8);
    control.writeInt32LE(SCM_RIGHTS, 12);
    fds.forEach((f, i) => control!.writeInt32LE(f, CMSGHDR_SIZE + i * 4));
  }
  const { hdr, iov } = msghdr(data, control);
  if (to) {
    hdr.writeBigUInt64LE(addressOf(to), 0); // msg_name
    hdr.writeUInt32LE(to.byteLength, 8); // msg_namelen
  }
  const n = sysCallNumber('sendmsg', N.sendmsg, [fd, hdr, flags], `fd ${fd}`);
  void iov; // keeps the iovec alive until the call returned
  void to;
  return n;
}

/** recvmsg(fd) into `data`; returns the byte count and any fds received with SCM_RIGHTS (close-on-exec). */
export function recvmsg(fd: Fd, data: Uint8Array, maxFds = 16, flags = 0): { bytes: number; fds: Fd[]; truncated: boolean; controlTypes: number[] } {
  const control = Buffer.alloc(cmsgSpace(maxFds));
  const { hdr, iov } = msghdr(data, control);
  const bytes = sysCallNumber('recvmsg', N.recvmsg, [fd, hdr, flags | MSG.CMSG_CLOEXEC], `fd ${fd}`);
  void iov;
  const fds: Fd[] = [];
  const controlTypes: number[] = [];
  const controlLen = Number(hdr.readBigUInt64LE(40));
  let off = 0;
  while (off + CMSGHDR_SIZE <= controlLen) {
    const len = Number(control.readBigUInt64LE(off));
    if (len < CMSGHDR_SIZE) break;
    controlTypes.push(control.readInt32LE(off + 12));
    if (control.readInt32LE(off + 8) === SOL_SOCKET && control.readInt32LE(off + 12) === SCM_RIGHTS) {
      for (let p = off + CMSGHDR_SIZE; p + 4 <= off + len; p += 4) fds.push(asFd(control.readInt32LE(p)));
    }
    off += Math.ceil(len / 8) * 8;
  }
  const msgFlags = hdr.readInt32LE(48);
  return { bytes, fds, truncated: (msgFlags & 0x28) !== 0 /* MSG_TRUNC | MSG_CTRUNC */, controlTypes };
}

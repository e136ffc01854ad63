// NETLINK_SOCK_DIAG for AF_UNIX sockets (sock_diag(7), linux/unix_diag.h) and, further down,
// AF_INET/AF_INET6 sockets (linux/inet_diag.h): what the kernel
// knows of every unix socket of the caller's network namespace, keyed by inode: type, state,
// bound name, the inode of the socket file it is bound to, its peer, queue lengths, pending
// connections of a listener, shutdown state.
//
// One request, answered by a dump of nlmsghdr + unix_diag_msg + rtattr messages until
// NLMSG_DONE:
//
//   request   nlmsghdr(len, SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST|NLM_F_DUMP, seq, 0)
//             unix_diag_req { u8 family=AF_UNIX, u8 protocol=0, u16 pad, u32 states,
//                             u32 ino, u32 show, u32 cookie[2] }                  (24 bytes)
//   answer    nlmsghdr + unix_diag_msg { u8 family, u8 type, u8 state, u8 pad, u32 ino,
//                                        u32 cookie[2] }                          (16 bytes)
//             + rtattr { u16 len, u16 type } + payload, each padded to 4 bytes
import { close, read } from './files.js';
import { AF_PACKET, getsockopt, sendmsg, SO, socket, SOL_SOCKET } from './socket.js';
import { isSysError, SysError } from './errors.js';

const AF_NETLINK = 16;
const NETLINK_SOCK_DIAG = 4;
const SOCK_RAW = 3;
const SOCK_DIAG_BY_FAMILY = 20;
const NLM_F_REQUEST = 1;
const NLM_F_DUMP = 0x300;
const NLMSG_ERROR = 2;
const NLMSG_DONE = 3;
const NLMSG_HDRLEN = 16;
const AF_UNIX = 1;

/** udiag_show bits (linux/unix_diag.h). */
export const UDIAG_SHOW = { NAME: 0x01, VFS: 0x02, PEER: 0x04, ICONS: 0x08, RQLEN: 0x10, MEMINFO: 0x20, UID: 0x40 } as const;
const UNIX_DIAG = { NAME: 0, VFS: 1, PEER: 2, ICONS: 3, RQLEN: 4, MEMINFO: 5, SHUTDOWN: 6, UID: 7 } as const;

/** One unix socket as sock_diag reports it. */
export interface UnixDiagSocket {
  readonly ino: number;
  /** SOCK_STREAM 1, SOCK_DGRAM 2, SOCK_SEQPACKET 5. */
  readonly type: number;
  /** TCP_ESTABLISHED 1, TCP_CLOSE 7, TCP_LISTEN 10 (the kernel reuses the TCP state numbers). */
  readonly state: number;
  /** sun_path as bound, without the family and with no NUL added or removed; undefined when unbound. */
  readonly name?: Buffer;
  /** The socket file a path-bound socket was bound to (kernel dev_t: major << 20 | minor). */
  readonly vfs?: { readonly ino: number; readonly dev: number };
  /** Inode of the peer (connected socket), absent when there is none. */
  readonly peer?: number;
  /** Inodes of the connections waiting in a listener's accept queue. */
  readonly icons?: readonly number[];
  /**
   * For a listener: pending connections and the backlog (max_ack_backlog). Otherwise: bytes in
   * the receive queue (stream: all of them; dgram: the first datagram) and bytes charged to the
   * send side (sk_wmem_alloc).
   */
  readonly rqlen?: { readonly rqueue: number; readonly wqueue: number };
  /** sk_shutdown bits: RCV_SHUTDOWN 1, SEND_SHUTDOWN 2. */
  readonly shutdown?: number;
  readonly uid?: number;
}

/**
 * Every AF_UNIX socket of the caller's network namespace, by inode (one NLM_F_DUMP request).
 * `show` selects the attributes (UDIAG_SHOW bits); all of them by default.
 */
export function unixDiagDump(show: number = 0x5f): Map<number, UnixDiagSocket> {
  const request = Buffer.alloc(24);
  request.writeUInt8(AF_UNIX, 0);
  request.writeUInt32LE(0xffffffff, 4); // every state
  request.writeUInt32LE(show, 12);
  request.writeUInt32LE(0xffffffff, 16); // INET_DIAG_NOCOOKIE
  request.writeUInt32LE(0xffffffff, 20);
  const sockets = new Map<number, UnixDiagSocket>();
  sockDiagDump(request, 'AF_UNIX', (msg) => {
    const diag = parseUnixDiag(msg);
    sockets.set(diag.ino, diag);
  });
  return sockets;
}

/**
 * One NLM_F_DUMP request of SOCK_DIAG_BY_FAMILY with `body` (the family's request struct);
 * `onMessage` gets the payload of every answer message until NLMSG_DONE.
 */
function sockDiagDump(body: Buffer, what: string, onMessage: (msg: Buffer) => void): void {
  const nl = socket(AF_NETLINK, SOCK_RAW, NETLINK_SOCK_DIAG);
  try {
    const request = Buffer.alloc(NLMSG_HDRLEN + body.length);
    request.writeUInt32LE(request.length, 0);
    request.writeUInt16LE(SOCK_DIAG_BY_FAMILY, 4);
    request.writeUInt16LE(NLM_F_REQUEST | NLM_F_DUMP, 6);
    request.writeUInt32LE(1, 8); // seq
    body.copy(request, NLMSG_HDRLEN);
    try {
      sendmsg(nl, request, [], 0);
    } catch (error) {
      // Seen once (EMSGSIZE on a fresh socket, cause unknown): say what the kernel compared.
      let sndbuf = -1;
      try { sndbuf = getsockopt(nl, SOL_SOCKET, SO.SNDBUF).readInt32LE(0); } catch { /* keep -1 */ }
      if (!(error instanceof SysError)) throw error;
      throw new SysError('sendmsg', error.errno, `sock_diag ${what} dump request of ${request.length} bytes, SO_SNDBUF ${sndbuf}, fd ${nl}`);
    }
    // Netlink dumps come in datagrams of up to about a page each; 64 KiB never truncates one.
    const buf = Buffer.alloc(64 << 10);
    for (;;) {
      let n: number;
      try {
        n = read(nl, buf);
      } catch (error) {
        if (isSysError(error, 'EINTR')) continue;
        throw error;
      }
      for (let off = 0; off + NLMSG_HDRLEN <= n; ) {
        const len = buf.readUInt32LE(off);
        const type = buf.readUInt16LE(off + 4);
        if (len < NLMSG_HDRLEN || off + len > n) throw new Error(`sock_diag: malformed netlink message (length ${len} at ${off} of ${n})`);
        if (type === NLMSG_DONE) return;
        if (type === NLMSG_ERROR) {
          const errno = -buf.readInt32LE(off + NLMSG_HDRLEN);
          throw new SockDiagError(`sock_diag: the kernel answered the ${what} dump with errno ${errno}`, errno);
        }
        if (type === SOCK_DIAG_BY_FAMILY) onMessage(buf.subarray(off + NLMSG_HDRLEN, off + len));
        off += (len + 3) & ~3;
      }
    }
  } finally {
    close(nl);
  }
}

/** The kernel refused a sock_diag dump (ENOENT: no diag module for that protocol, e.g. udp_diag not loaded). */
export class SockDiagError extends Error {
  constructor(
    message: string,
    readonly errno: number,
  ) {
    super(message);
    this.name = 'SockDiagError';
  }
}

// ---------------------------------------------------------------- AF_INET / AF_INET6
//
//   request   nlmsghdr + inet_diag_req_v2 { u8 family, u8 protocol, u8 ext, u8 pad, u32 states,
//                                           inet_diag_sockid id }                    (56 bytes)
//   answer    nlmsghdr + inet_diag_msg { u8 family, u8 state, u8 timer, u8 retrans,
//                                        inet_diag_sockid id, u32 expires, u32 rqueue,
//                                        u32 wqueue, u32 uid, u32 inode }             (72 bytes)
//             + rtattrs; INET_DIAG_SHUTDOWN (u8) and, for AF_INET6, INET_DIAG_SKV6ONLY (u8)
//             come with every socket
//   inet_diag_sockid { be16 sport, be16 dport, be32 src[4], be32 dst[4], u32 if, u32 cookie[2] }
const INET_DIAG_SHUTDOWN = 8;
const INET_DIAG_SKV6ONLY = 11;

/** One AF_INET/AF_INET6 socket as sock_diag reports it. */
export interface InetDiagSocket {
  readonly ino: number;
  readonly family: number;
  /** TCP state number (UDP: TCP_ESTABLISHED 1 when connected, TCP_CLOSE 7 otherwise). */
  readonly state: number;
  /**
   * Listener: connections waiting in the accept queue (rqueue) and the backlog it was given
   * (sk_max_ack_backlog, wqueue). Others: bytes in the receive and the send queue.
   */
  readonly rqueue: number;
  readonly wqueue: number;
  /** sk_shutdown bits: RCV_SHUTDOWN 1, SEND_SHUTDOWN 2. */
  readonly shutdown: number;
  /** AF_INET6 only: IPV6_V6ONLY. */
  readonly v6only?: boolean;
  readonly uid: number;
  /** Ports and addresses (network order bytes; IPv4 in the first 4 of 16). */
  readonly localPort: number;
  readonly remotePort: number;
  readonly localAddress: Buffer;
  readonly remoteAddress: Buffer;
}

/**
 * Every socket of `family` (AF_INET 2 or AF_INET6 10) and `protocol` (IPPROTO_TCP 6,
 * IPPROTO_UDP 17) in the caller's network namespace, by inode. Sockets without an inode (a
 * listener's connections not accepted yet) are left out: inetDiagList has them.
 */
export function inetDiagDump(family: number, protocol: number): Map<number, InetDiagSocket> {
  const sockets = new Map<number, InetDiagSocket>();
  for (const s of inetDiagList(family, protocol)) if (s.ino !== 0) sockets.set(s.ino, s);
  return sockets;
}

/** Every socket of `family` and `protocol` in the caller's network namespace, in the kernel's order. */
export function inetDiagList(family: number, protocol: number): InetDiagSocket[] {
  const request = Buffer.alloc(56);
  request.writeUInt8(family, 0);
  request.writeUInt8(protocol, 1);
  request.writeUInt32LE(0xffffffff, 4); // every state
  request.writeUInt32LE(0xffffffff, 48); // INET_DIAG_NOCOOKIE
  request.writeUInt32LE(0xffffffff, 52);
  const sockets: InetDiagSocket[] = [];
  sockDiagDump(request, `AF_${family === 10 ? 'INET6' : 'INET'} protocol ${protocol}`, (msg) => {
    let shutdown = 0;
    let v6only: boolean | undefined;
    for (let off = 72; off + 4 <= msg.length; ) {
      const len = msg.readUInt16LE(off);
      const type = msg.readUInt16LE(off + 2);
      if (len < 4 || off + len > msg.length) break;
      if (type === INET_DIAG_SHUTDOWN) shutdown = msg.readUInt8(off + 4);
      if (type === INET_DIAG_SKV6ONLY) v6only = msg.readUInt8(off + 4) !== 0;
      off += (len + 3) & ~3;
    }
    sockets.push({
      ino: msg.readUInt32LE(68), family: msg.readUInt8(0), state: msg.readUInt8(1), rqueue: msg.readUInt32LE(56), wqueue: msg.readUInt32LE(60),
      uid: msg.readUInt32LE(64), shutdown, ...(v6only !== undefined ? { v6only } : {}),
      localPort: msg.readUInt16BE(4), remotePort: msg.readUInt16BE(6),
      localAddress: Buffer.from(msg.subarray(8, 24)), remoteAddress: Buffer.from(msg.subarray(24, 40)),
    });
  });
  return sockets;
}

function parseUnixDiag(msg: Buffer): UnixDiagSocket {
  const diag: {
    -readonly [K in keyof UnixDiagSocket]: UnixDiagSocket[K];
  } = { type: msg.readUInt8(1), state: msg.readUInt8(2), ino: msg.readUInt32LE(4) };
  for (let off = 16; off + 4 <= msg.length; ) {
    const len = msg.readUInt16LE(off);
    const type = msg.readUInt16LE(off + 2);
    if (len < 4 || off + len > msg.length) break;
    const payload = msg.subarray(off + 4, off + len);
    switch (type) {
      case UNIX_DIAG.NAME:
        diag.name = Buffer.from(payload);
        break;
      case UNIX_DIAG.VFS:
        diag.vfs = { ino: payload.readUInt32LE(0), dev: payload.readUInt32LE(4) };
        break;
      case UNIX_DIAG.PEER:
        diag.peer = payload.readUInt32LE(0);
        break;
      case UNIX_DIAG.ICONS: {
        const icons: number[] = [];
        for (let p = 0; p + 4 <= payload.length; p += 4) icons.push(payload.readUInt32LE(p));
        diag.icons = icons;
        break;
      }
      case UNIX_DIAG.RQLEN:
        diag.rqlen = { rqueue: payload.readUInt32LE(0), wqueue: payload.readUInt32LE(4) };
        break;
      case UNIX_DIAG.SHUTDOWN:
        diag.shutdown = payload.readUInt8(0);
        break;
      case UNIX_DIAG.UID:
        diag.uid = payload.readUInt32LE(0);
        break;
    }
    off += (len + 3) & ~3;
  }
  return diag;
}

// ---------------------------------------------------------------- AF_PACKET
//
//   request   nlmsghdr + packet_diag_req { u8 family=AF_PACKET, u8 protocol, u16 pad, u32 ino,
//                                          u32 show, u32 cookie[2] }                (20 bytes)
//   answer    nlmsghdr + packet_diag_msg { u8 family, u8 type, u16 num (protocol, host order),
//                                          u32 ino, u32 cookie[2] }                 (16 bytes)
//             + rtattrs: PACKET_DIAG_INFO packet_diag_info { u32 ifindex, version, reserve,
//             copy_thresh, tstamp, flags }; PACKET_DIAG_MCLIST packet_diag_mclist[] { u32 index,
//             count; u16 type, alen; u8 addr[32] }; PACKET_DIAG_RX_RING / TX_RING (present when a
//             ring is set up) packet_diag_ring { u32 block_size, block_nr, frame_size, frame_nr,
//             retire_tmo, sizeof_priv, features }; PACKET_DIAG_FANOUT u32 (id | type << 16 | flags << 24)
const PACKET_SHOW = { INFO: 0x1, MCLIST: 0x2, RING_CFG: 0x4, FANOUT: 0x8 } as const;
const PACKET_DIAG = { INFO: 0, MCLIST: 1, RX_RING: 2, TX_RING: 3, FANOUT: 4 } as const;
/** packet_diag_info.pdi_flags */
export const PDI = { RUNNING: 0x1, AUXDATA: 0x2, ORIGDEV: 0x4, VNETHDR: 0x8, LOSS: 0x10 } as const;

/** A PACKET_RX_RING / PACKET_TX_RING as set up (tpacket_req3's fields; the last three are TPACKET_V3's). */
export interface PacketRingConfig {
  readonly blockSize: number;
  readonly blockNr: number;
  readonly frameSize: number;
  readonly frameNr: number;
  readonly retireTmo: number;
  readonly sizeofPriv: number;
  readonly features: number;
}

/** One AF_PACKET socket as sock_diag reports it. */
export interface PacketDiagSocket {
  readonly ino: number;
  readonly type: number;
  readonly protocol: number;
  readonly ifindex: number;
  readonly version: number;
  readonly reserve: number;
  readonly copyThresh: number;
  readonly tstamp: number;
  /** PDI bits. */
  readonly flags: number;
  readonly mclist: ReadonlyArray<{ index: number; count: number; type: number; addr: Buffer }>;
  readonly rxRing?: PacketRingConfig;
  readonly txRing?: PacketRingConfig;
  /** id | type << 16 | flags << 24, when the socket is in a fanout group. */
  readonly fanout?: number;
}

/** Every AF_PACKET socket of the caller's network namespace, by inode. */
export function packetDiagDump(): Map<number, PacketDiagSocket> {
  const request = Buffer.alloc(20);
  request.writeUInt8(AF_PACKET, 0);
  request.writeUInt32LE(PACKET_SHOW.INFO | PACKET_SHOW.MCLIST | PACKET_SHOW.RING_CFG | PACKET_SHOW.FANOUT, 8);
  const sockets = new Map<number, PacketDiagSocket>();
  sockDiagDump(request, 'AF_PACKET', (msg) => {
    const s: { -readonly [K in keyof PacketDiagSocket]: PacketDiagSocket[K] } = {
      ino: msg.readUInt32LE(4), type: msg.readUInt8(1), protocol: msg.readUInt16LE(2), ifindex: 0, version: 0, reserve: 0,
      copyThresh: 0, tstamp: 0, flags: 0, mclist: [],
    };
    for (let off = 16; off + 4 <= msg.length; ) {
      const len = msg.readUInt16LE(off);
      const type = msg.readUInt16LE(off + 2);
      if (len < 4 || off + len > msg.length) break;
      const p = msg.subarray(off + 4, off + len);
      if (type === PACKET_DIAG.INFO && p.length >= 24) {
        s.ifindex = p.readUInt32LE(0);
        s.version = p.readUInt32LE(4);
        s.reserve = p.readUInt32LE(8);
        s.copyThresh = p.readUInt32LE(12);
        s.tstamp = p.readUInt32LE(16);
        s.flags = p.readUInt32LE(20);
      } else if (type === PACKET_DIAG.MCLIST) {
        const list: Array<{ index: number; count: number; type: number; addr: Buffer }> = [];
        for (let i = 0; i + 44 <= p.length; i += 44) {
          const alen = p.readUInt16LE(i + 10);
          list.push({ index: p.readUInt32LE(i), count: p.readUInt32LE(i + 4), type: p.readUInt16LE(i + 8), addr: Buffer.from(p.subarray(i + 12, i + 12 + Math.min(alen, 32))) });
        }
        s.mclist = list;
      } else if ((type === PACKET_DIAG.RX_RING || type === PACKET_DIAG.TX_RING) && p.length >= 28) {
        const ring: PacketRingConfig = {
          blockSize: p.readUInt32LE(0), blockNr: p.readUInt32LE(4), frameSize: p.readUInt32LE(8), frameNr: p.readUInt32LE(12),
          retireTmo: p.readUInt32LE(16), sizeofPriv: p.readUInt32LE(20), features: p.readUInt32LE(24),
        };
        if (type === PACKET_DIAG.RX_RING) s.rxRing = ring;
        else s.txRing = ring;
      }
      else if (type === PACKET_DIAG.FANOUT && p.length >= 4) s.fanout = p.readUInt32LE(0);
      off += (len + 3) & ~3;
    }
    sockets.set(s.ino, s);
  });
  return sockets;
}

// AF_PACKET sockets on restore: files.img PACKETSK entries (packet_sock_entry), checked, then made
// by criu-ts and handed to the task like the other sockets (files.ts).
//
//   socket(AF_PACKET, type, htons(protocol))
//   the SOL_SOCKET options as dumped (a classic BPF filter included)
//   SOL_PACKET: PACKET_VERSION, PACKET_RESERVE, PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VNET_HDR,
//               PACKET_LOSS, PACKET_TIMESTAMP, PACKET_COPY_THRESH, where they differ from a new
//               socket's
//   bind(sockaddr_ll { protocol, ifindex })   when it was bound to an interface
//   PACKET_ADD_MEMBERSHIP for each multicast/promiscuous membership
// Refused at validation: rings and fanout groups (a dump by criu-ts never writes them).
import { bind, close, getsockopt, setsockopt, socket, type Fd } from '@criu-ts/sys';
import { applySocketOptions, socketSteps } from './unix-sockets.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Invalid = (message: string, evidence?: Record<string, unknown>) => never;

const AF_PACKET = 17;
const SOL_PACKET = 263;
const PACKET_OPT = {
  ADD_MEMBERSHIP: 1, COPY_THRESH: 7, AUXDATA: 8, ORIGDEV: 9, VERSION: 10, RESERVE: 12, LOSS: 14, VNET_HDR: 15, TIMESTAMP: 17,
} as const;
const PACKET_TYPES = new Set([2 /* SOCK_DGRAM */, 3 /* SOCK_RAW */, 10 /* SOCK_PACKET */]);

export interface PacketSocketImage {
  readonly id: number;
  readonly type: number;
  readonly protocol: number;
  readonly flags: number;
  readonly ifindex: number;
  readonly opts: Msg;
  readonly version: number;
  readonly reserve: number;
  readonly auxData: boolean;
  readonly origDev: boolean;
  readonly vnetHdr: boolean;
  readonly loss: boolean;
  readonly timestamp: number;
  readonly copyThresh: number;
  readonly mclist: ReadonlyArray<{ index: number; type: number; addr: Buffer }>;
}

/** One PACKETSK files.img entry, checked (`where` names it in errors). */
export function readPacketSocket(id: number, e: Msg, where: string, invalid: Invalid): PacketSocketImage {
  const type = Number(e.type);
  if (!PACKET_TYPES.has(type)) invalid(`${where}: packet socket of type ${type}`, { type });
  const protocol = Number(e.protocol);
  if (!(protocol >= 0 && protocol <= 0xffff)) invalid(`${where}: packet protocol ${protocol} is not 16 bits`, { protocol });
  if (e.rx_ring || e.tx_ring) invalid(`${where}: packet socket with a ring (PACKET_RX_RING/TX_RING): not restored yet`);
  if (e.fanout !== undefined && Number(e.fanout) !== 0xffffffff) invalid(`${where}: packet socket in fanout group ${Number(e.fanout) & 0xffff}: not restored yet`);
  const mclist = ((e.mclist as Msg[] | undefined) ?? []).map((m, i) => {
    const addr = Buffer.from((m.addr as Uint8Array | undefined) ?? new Uint8Array(0));
    if (addr.length > 8) invalid(`${where}: membership ${i + 1} has a ${addr.length}-byte address (PACKET_ADD_MEMBERSHIP takes 8 at most)`);
    return { index: Number(m.index), type: Number(m.type), addr };
  });
  return {
    id, type, protocol, flags: Number(e.flags ?? 0), ifindex: Number(e.ifindex ?? 0), opts: (e.opts as Msg | undefined) ?? {},
    version: Number(e.version ?? 0), reserve: Number(e.reserve ?? 0), auxData: e.aux_data === true, origDev: e.orig_dev === true,
    vnetHdr: e.vnet_hdr === true, loss: e.loss === true, timestamp: Number(e.timestamp ?? 0), copyThresh: Number(e.copy_thresh ?? 0), mclist,
  };
}

export function describePacketSocket(s: PacketSocketImage): string {
  return `packet socket id ${s.id} (protocol 0x${s.protocol.toString(16)}, ifindex ${s.ifindex})`;
}

const htons = (v: number) => ((v & 0xff) << 8) | ((v >> 8) & 0xff);

/** Makes the socket in criu-ts (see the module doc); returns its fd, for the task to take. */
export function createPacketSocket(s: PacketSocketImage): Fd {
  const what = describePacketSocket(s);
  const step = socketSteps(what);
  const fd = step('socket', () => socket(AF_PACKET, s.type, htons(s.protocol)));
  try {
    applySocketOptions(fd, s.opts, what);
    const option = (name: number, value: number, label: string) => {
      if (getsockopt(fd, SOL_PACKET, name).readInt32LE(0) !== value) step(label, () => setsockopt(fd, SOL_PACKET, name, value));
    };
    option(PACKET_OPT.VERSION, s.version, 'PACKET_VERSION');
    option(PACKET_OPT.RESERVE, s.reserve, 'PACKET_RESERVE');
    option(PACKET_OPT.AUXDATA, s.auxData ? 1 : 0, 'PACKET_AUXDATA');
    option(PACKET_OPT.ORIGDEV, s.origDev ? 1 : 0, 'PACKET_ORIGDEV');
    option(PACKET_OPT.VNET_HDR, s.vnetHdr ? 1 : 0, 'PACKET_VNET_HDR');
    option(PACKET_OPT.LOSS, s.loss ? 1 : 0, 'PACKET_LOSS');
    option(PACKET_OPT.TIMESTAMP, s.timestamp, 'PACKET_TIMESTAMP');
    if (s.copyThresh !== 0) step('PACKET_COPY_THRESH', () => setsockopt(fd, SOL_PACKET, PACKET_OPT.COPY_THRESH, s.copyThresh));
    if (s.ifindex !== 0) {
      const ll = Buffer.alloc(20); // struct sockaddr_ll
      ll.writeUInt16LE(AF_PACKET, 0);
      ll.writeUInt16BE(s.protocol, 2);
      ll.writeInt32LE(s.ifindex, 4);
      step(`bind to ifindex ${s.ifindex}`, () => bind(fd, ll));
    }
    for (const m of s.mclist) {
      const mreq = Buffer.alloc(16); // struct packet_mreq { int ifindex; u16 type, alen; u8 address[8]; }
      mreq.writeInt32LE(m.index, 0);
      mreq.writeUInt16LE(m.type, 4);
      mreq.writeUInt16LE(m.addr.length, 6);
      m.addr.copy(mreq, 8);
      step(`PACKET_ADD_MEMBERSHIP (ifindex ${m.index}, type ${m.type})`, () => setsockopt(fd, SOL_PACKET, PACKET_OPT.ADD_MEMBERSHIP, mreq));
    }
    return fd;
  } catch (error) {
    close(fd);
    throw error;
  }
}

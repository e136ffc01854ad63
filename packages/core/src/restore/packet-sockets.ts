// AF_PACKET sockets on restore: files.img PACKETSK entries (packet_sock_entry), checked, then made
// by criu-ts and handed to the task like the other sockets (files.ts).
//
//   socket(AF_PACKET, type, htons(protocol))
//   SOL.PACKET: PACKET_VERSION, PACKET_RESERVE, PACKET_AUXDATA, PACKET_ORIGDEV, PACKET_VNET_HDR,
//               PACKET_LOSS, PACKET_TIMESTAMP, PACKET_COPY_THRESH, where they differ from a new
//               socket's (all before the rings: the kernel refuses some once a ring exists)
//   PACKET_RX_RING / PACKET_TX_RING, the kernel moved to where it stood and the rings' bytes
//               written back (packet-rings/rings.ts); the task maps them later (restore.ts)
//   the SOL_SOCKET options as dumped (a classic BPF filter included: after the rings, so that
//               it does not stop the frames that move the kernel's position)
//   bind(sockaddr_ll { protocol, ifindex })   when it was bound to an interface, or had rings
//               (they were worked on loopback)
//   PACKET_ADD_MEMBERSHIP for each multicast/promiscuous membership
//   PACKET_FANOUT (id | type << 16 | flags << 24) for a member of a fanout group, once bound
//               (the kernel takes only a running socket): it joins the group of that id in the
//               network namespace, made by the first member restored
// Refused at validation: fanout groups balancing by a BPF program (a dump never writes them). Rings from an
// image without their bytes (CRIU's) come back empty, the kernel at frame 0, as CRIU does.
import { existsSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { AF_PACKET, bind, close, getsockopt, PACKET_OPT, setsockopt, sockaddrLl, socket, SOL, type Fd, type PacketRingConfig } from '@criu-ts/sys';
import { applySocketOptions, socketSteps } from './unix-sockets.js';
import { reproduceRings, ringMappingBytes, ringRefusal, RingMovedError, setRing, TPACKET, type PacketRings } from '../packet-rings/rings.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Invalid = (message: string, evidence?: Record<string, unknown>) => never;

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
  /** Fanout group membership, as PACKET_FANOUT takes it; undefined when in none. */
  readonly fanout?: number;
  readonly rings?: PacketRings;
  /** Where the kernel stood in the rings (0, 0 for images without it); for a V3 receive ring, rx is the active block. */
  readonly ringHeads?: { readonly rx: number; readonly tx: number; readonly blockOffset?: number; readonly blockLast?: number; readonly frozen: boolean };
  /** packet-ring-<id>.img, when the dump saved the rings' bytes. */
  readonly ringFile?: string;
}

function ringOf(e: Msg | undefined, where: string, invalid: Invalid): PacketRingConfig | undefined {
  if (!e) return undefined;
  const n = (name: string) => {
    const v = Number(e[name] ?? 0);
    if (!Number.isInteger(v) || v < 0 || v > 0xffffffff) invalid(`${where}: ring ${name} ${e[name]} is not a u32`);
    return v;
  };
  return {
    blockSize: n('block_size'), blockNr: n('block_nr'), frameSize: n('frame_size'), frameNr: n('frame_nr'),
    retireTmo: n('retire_tmo'), sizeofPriv: n('sizeof_priv'), features: n('features'),
  };
}

/** One PACKETSK files.img entry, checked (`where` names it in errors; `dir` has its packet-ring-<id>.img). */
export function readPacketSocket(id: number, e: Msg, where: string, invalid: Invalid, dir: string): PacketSocketImage {
  const type = Number(e.type);
  if (!PACKET_TYPES.has(type)) invalid(`${where}: packet socket of type ${type}`, { type });
  const protocol = Number(e.protocol);
  if (!(protocol >= 0 && protocol <= 0xffff)) invalid(`${where}: packet protocol ${protocol} is not 16 bits`, { protocol });
  const fanout = e.fanout === undefined || Number(e.fanout) === NO_FANOUT ? undefined : Number(e.fanout);
  if (fanout !== undefined && [6, 7].includes((fanout >>> 16) & 0xff)) invalid(`${where}: packet socket in a fanout group balancing by a BPF program (mode ${(fanout >>> 16) & 0xff}), which cannot be made again`);
  const mclist = ((e.mclist as Msg[] | undefined) ?? []).map((m, i) => {
    const addr = Buffer.from((m.addr as Uint8Array | undefined) ?? new Uint8Array(0));
    if (addr.length > 8) invalid(`${where}: membership ${i + 1} has a ${addr.length}-byte address (PACKET_ADD_MEMBERSHIP takes 8 at most)`);
    return { index: Number(m.index), type: Number(m.type), addr };
  });
  const version = Number(e.version ?? 0);
  const base: PacketSocketImage = {
    id, type, protocol, flags: Number(e.flags ?? 0), ifindex: Number(e.ifindex ?? 0), opts: (e.opts as Msg | undefined) ?? {},
    version, reserve: Number(e.reserve ?? 0), auxData: e.aux_data === true, origDev: e.orig_dev === true,
    vnetHdr: e.vnet_hdr === true, loss: e.loss === true, timestamp: Number(e.timestamp ?? 0), copyThresh: Number(e.copy_thresh ?? 0), mclist,
    ...(fanout !== undefined ? { fanout } : {}),
  };
  const rings: PacketRings = { version, rx: ringOf(e.rx_ring as Msg | undefined, where, invalid), tx: ringOf(e.tx_ring as Msg | undefined, where, invalid) };
  if (!rings.rx && !rings.tx) return base;
  const rx = Number(e.rx_ring_head ?? 0);
  const tx = Number(e.tx_ring_head ?? 0);
  const saved = e.rx_ring_head !== undefined || e.tx_ring_head !== undefined;
  // Without saved heads (CRIU's images) the ring starts empty at frame 0, whatever its version.
  const why = saved ? ringRefusal(rings) : undefined;
  if (why) invalid(`${where}: ${why}`);
  const rxLimit = rings.rx ? (version === TPACKET.V3 ? rings.rx.blockNr : rings.rx.frameNr) : 0;
  if ((rings.rx && rx >= rxLimit) || (rings.tx && tx >= rings.tx.frameNr)) invalid(`${where}: ring heads rx ${rx} / tx ${tx} lie past the rings' frames`, { rx, tx });
  let ringFile: string | undefined;
  if (saved) {
    ringFile = join(dir, `packet-ring-${id}.img`);
    const expected = ringMappingBytes(rings);
    if (!existsSync(ringFile)) invalid(`${where}: ${ringFile}, the bytes of its rings, is missing`, { file: ringFile });
    const size = statSync(ringFile).size;
    if (size !== expected) invalid(`${where}: ${ringFile} holds ${size} bytes, its rings ${expected}`, { file: ringFile, size, expected });
  }
  const v3 = e.rx_ring_block_offset !== undefined ? { blockOffset: Number(e.rx_ring_block_offset), blockLast: Number(e.rx_ring_block_last ?? e.rx_ring_block_offset) } : {};
  if (saved && rings.rx && version === TPACKET.V3 && v3.blockOffset === undefined && e.rx_ring_frozen !== true) invalid(`${where}: a TPACKET_V3 receive ring without its block offsets (rx_ring_block_offset)`);
  return { ...base, rings, ringHeads: { rx, tx, ...v3, frozen: e.rx_ring_frozen === true }, ...(ringFile ? { ringFile } : {}) };
}

/** The length a task's mapping of this socket's rings must have (0: it has none). */
export function packetRingMappingBytes(s: PacketSocketImage): number {
  return s.rings ? ringMappingBytes(s.rings) : 0;
}

export function describePacketSocket(s: PacketSocketImage): string {
  return `packet socket id ${s.id} (protocol 0x${s.protocol.toString(16)}, ifindex ${s.ifindex})`;
}

/** packet_sock_entry.fanout's default: in no group. */
const NO_FANOUT = 0xffffffff;

const htons = (v: number) => ((v & 0xff) << 8) | ((v >> 8) & 0xff);

/**
 * Makes the socket in criu-ts (see the module doc); returns its fd, for the task to take. A
 * TPACKET_V3 receive ring's retire timer may move it on just before its bytes are written back
 * (RingMovedError): the socket is then made again, up to three times.
 */
export function createPacketSocket(s: PacketSocketImage): Fd {
  for (let attempt = 1; ; attempt++) {
    try {
      return makePacketSocket(s);
    } catch (error) {
      if (!((error as Error).cause instanceof RingMovedError) || attempt === 3) throw error;
    }
  }
}

function makePacketSocket(s: PacketSocketImage): Fd {
  const what = describePacketSocket(s);
  const step = socketSteps(what);
  const fd = step('socket', () => socket(AF_PACKET, s.type, htons(s.protocol)));
  try {
    const option = (name: number, value: number, label: string) => {
      if (getsockopt(fd, SOL.PACKET, name).readInt32LE(0) !== value) step(label, () => setsockopt(fd, SOL.PACKET, name, value));
    };
    option(PACKET_OPT.VERSION, s.version, 'PACKET_VERSION');
    option(PACKET_OPT.RESERVE, s.reserve, 'PACKET_RESERVE');
    option(PACKET_OPT.AUXDATA, s.auxData ? 1 : 0, 'PACKET_AUXDATA');
    option(PACKET_OPT.ORIGDEV, s.origDev ? 1 : 0, 'PACKET_ORIGDEV');
    option(PACKET_OPT.VNET_HDR, s.vnetHdr ? 1 : 0, 'PACKET_VNET_HDR');
    option(PACKET_OPT.LOSS, s.loss ? 1 : 0, 'PACKET_LOSS');
    option(PACKET_OPT.TIMESTAMP, s.timestamp, 'PACKET_TIMESTAMP');
    if (s.copyThresh !== 0) step('PACKET_COPY_THRESH', () => setsockopt(fd, SOL.PACKET, PACKET_OPT.COPY_THRESH, s.copyThresh));
    const rings = s.rings;
    if (rings) {
      if (rings.rx) step('PACKET_RX_RING', () => setRing(fd, PACKET_OPT.RX_RING, rings.version, rings.rx!));
      if (rings.tx) step('PACKET_TX_RING', () => setRing(fd, PACKET_OPT.TX_RING, rings.version, rings.tx!));
      const heads = s.ringHeads ?? { rx: 0, tx: 0, frozen: false };
      const bytes = s.ringFile ? readFileSync(s.ringFile) : undefined;
      const v3 = rings.version === TPACKET.V3;
      const state = {
        rxHead: v3 ? 0 : heads.rx, txHead: heads.tx, rxActiveBlock: v3 ? heads.rx : 0, rxBlockOffset: heads.blockOffset ?? 0,
        rxBlockLast: heads.blockLast ?? 0, rxFrozen: heads.frozen, rxMaxFrameLen: 0,
      };
      const where = v3 && rings.rx ? `rx block ${heads.rx} at ${heads.blockOffset}${heads.frozen ? ', frozen' : ''}` : `rx frame ${heads.rx}`;
      step(`ring position (${where}, tx frame ${heads.tx}) and contents`, () => reproduceRings(fd, {
        rings, state, socketType: s.type, vnetHdr: s.vnetHdr, reserve: s.reserve, ...(bytes ? { bytes } : {}),
      }));
    }
    applySocketOptions(fd, s.opts, what);
    if (s.ifindex !== 0 || rings) {
      step(`bind to ifindex ${s.ifindex}`, () => bind(fd, sockaddrLl(s.protocol, s.ifindex)));
    }
    for (const m of s.mclist) {
      const mreq = Buffer.alloc(16); // struct packet_mreq { int ifindex; u16 type, alen; u8 address[8]; }
      mreq.writeInt32LE(m.index, 0);
      mreq.writeUInt16LE(m.type, 4);
      mreq.writeUInt16LE(m.addr.length, 6);
      m.addr.copy(mreq, 8);
      step(`PACKET_ADD_MEMBERSHIP (ifindex ${m.index}, type ${m.type})`, () => setsockopt(fd, SOL.PACKET, PACKET_OPT.ADD_MEMBERSHIP, mreq));
    }
    if (s.fanout !== undefined) {
      const value = Buffer.alloc(4); // u32: the flags byte may set the top bit
      value.writeUInt32LE(s.fanout >>> 0);
      step(`PACKET_FANOUT (group ${s.fanout & 0xffff}, mode ${(s.fanout >>> 16) & 0xff})`, () => setsockopt(fd, SOL.PACKET, PACKET_OPT.FANOUT, value));
    }
    return fd;
  } catch (error) {
    close(fd);
    throw error;
  }
}

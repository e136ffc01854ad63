// A packet socket's rings (PACKET_RX_RING / PACKET_TX_RING, packet_mmap): their memory and where
// the kernel stands in them, saved at dump and made identical again at restore.
//
// The ring memory is shared between the kernel and the program; the program keeps its own index
// of the frame it reads (or writes) next and trusts the kernel to be on the same frame. A new
// ring starts with the kernel at frame 0 and every frame empty, so bringing back the geometry
// alone (as CRIU does) leaves a program that had read k frames waiting on frame k while the
// kernel fills frame 0: it sees nothing until the kernel wraps around, and the frames it had
// not read yet are gone. So criu-ts also saves
//   - the kernel's position (kernel-state.ts): rx head, tx head;
//   - the ring's bytes: every frame header and its data, as the program left them;
// and at restore moves the new socket's kernel to the same position by having it do real work
// on loopback (it has no other way to move), then writes the saved bytes over the ring:
//   - tx head h: h throw-away frames queued in frames 0..h-1 and sent (send() with the socket
//     bound to lo with protocol 0, so it receives none of them);
//   - rx head h: the socket bound to lo for a protocol no one uses (LOCAL_ETHERTYPE), and h
//     frames of that protocol sent to lo from another socket; each lands in the next frame;
//   - a TPACKET_V3 receive ring (blocks, not frames): v3-receive.ts.
// Another packet socket of the same network namespace listening on lo for every protocol
// (tcpdump -i lo) sees those frames go by. The caller binds the socket as it was afterwards. Frames the program had filled for sending
// (SEND_REQUEST) go again when it calls send(), as they would have.
//
// Layout (packet_mmap.rst): a ring is block_nr blocks of block_size bytes, mapped back to back,
// RX ring first then TX ring in one mapping; frame i is frame (i mod frames-per-block) of block
// (i div frames-per-block). tp_status is the frame header's first word (unsigned long in
// TPACKET_V1, u32 in V2) and at byte 20 of a V3 (transmit) frame.
import { AF_PACKET, PACKET_OPT, SOL, sockaddrLl, sleepSync, mmap, munmap, processVmReadv, processVmWritev, getpid, asRemoteAddress, bind, close, sendto, setsockopt, sock, socket, type Fd, type PacketRingConfig } from '@criu-ts/sys';
import { PacketRingKernelReader, type PacketRingKernelState } from './kernel-state.js';
import { moveV3ReceiveRing, positionOf, samePosition } from './v3-receive.js';

export const TPACKET = { V1: 0, V2: 1, V3: 2 } as const;
const SOCK_RAW = 3;
const LOOPBACK_IFINDEX = 1;
/** IEEE 802 "local experimental" EtherTypes: of the frames that move the kernel's rx head, and of those that move its tx head (never taken for the former, even when loopback delivers them late). */
export const LOCAL_ETHERTYPE = 0x88b5;
const LOCAL_ETHERTYPE_TX = 0x88b6;
const TP_STATUS = { KERNEL: 0, AVAILABLE: 0, SEND_REQUEST: 1, SENDING: 2 } as const;
const PROT_READ = 1;
const PROT_WRITE = 2;
const MAP_SHARED = 1;
/** sizeof(struct virtio_net_hdr): what precedes each frame's data with PACKET_VNET_HDR. */
const VNET_HDR_BYTES = 10;

export interface PacketRings {
  /** PACKET_VERSION (TPACKET.*). */
  readonly version: number;
  readonly rx?: PacketRingConfig;
  readonly tx?: PacketRingConfig;
}

export function ringBytes(ring: PacketRingConfig | undefined): number {
  return ring ? ring.blockSize * ring.blockNr : 0;
}

/** Length of the one mapping of both rings (packet_mmap refuses any other length). */
export function ringMappingBytes(rings: PacketRings): number {
  return ringBytes(rings.rx) + ringBytes(rings.tx);
}

function frameOffset(ring: PacketRingConfig, index: number): number {
  const perBlock = Math.floor(ring.blockSize / ring.frameSize);
  return Math.floor(index / perBlock) * ring.blockSize + (index % perBlock) * ring.frameSize;
}

/** Where tp_status is in a frame, and its size, for frame-based rings of `version`. */
function statusField(version: number): { at: number; size: 4 | 8 } {
  if (version === TPACKET.V1) return { at: 0, size: 8 };
  if (version === TPACKET.V2) return { at: 0, size: 4 };
  return { at: 20, size: 4 };
}
function readStatus(ring: Buffer, at: number, size: 4 | 8): number {
  return size === 8 ? Number(ring.readBigUInt64LE(at) & 0xffffffffn) : ring.readUInt32LE(at);
}
function writeStatus(ring: Buffer, at: number, size: 4 | 8, status: number): void {
  if (size === 8) ring.writeBigUInt64LE(BigInt(status), at);
  else ring.writeUInt32LE(status, at);
}

/** Whether criu-ts can save and bring back this ring set (undefined) or why not. */
export function ringRefusal(rings: PacketRings): string | undefined {
  for (const ring of [rings.rx, rings.tx]) {
    if (ring && (ring.frameSize === 0 || ring.blockSize < ring.frameSize || ring.frameNr === 0)) return `ring geometry ${JSON.stringify(ring)} is not one the kernel accepts`;
  }
  return undefined;
}

/** What a dump keeps of a socket's rings. */
export interface RingSnapshot {
  readonly state: PacketRingKernelState;
  /** RX ring bytes then TX ring bytes, as mapped. */
  readonly bytes: Buffer;
}

function mapRings(fd: Fd, rings: PacketRings, prot: number): { addr: bigint; len: number } {
  const len = ringMappingBytes(rings);
  return { addr: mmap(0n, len, prot, MAP_SHARED, fd, 0), len };
}


/**
 * The rings' bytes and the kernel's position, taken together (`fd`: criu-ts's descriptor of the
 * socket; the tasks are frozen, but packets still arrive). A packet landing meanwhile would leave
 * position and bytes disagreeing, so the position is read before and after the copy and the copy
 * taken again when it moved; the pause before the copy lets a frame the kernel had started
 * writing be finished (it moves the head first, then writes the frame).
 */
export function snapshotRings(fd: Fd, rings: PacketRings, attempts = 20): RingSnapshot {
  const { addr, len } = mapRings(fd, rings, PROT_READ);
  const reader = new PacketRingKernelReader(fd);
  try {
    for (let attempt = 0; attempt < attempts; attempt++) {
      const before = reader.read();
      sleepSync(1);
      const bytes = Buffer.alloc(len);
      processVmReadv(getpid(), bytes, [{ addr: asRemoteAddress(addr), len }]);
      const after = reader.read();
      if (before.rxHead !== after.rxHead || before.txHead !== after.txHead) continue;
      if (rings.rx && rings.version === TPACKET.V3 && !samePosition(positionOf(before), positionOf(after))) continue;
      // A frame the kernel was sending (SENDING) has gone out by now, or goes with the old
      // socket: in the new ring it is free again.
      if (rings.tx) {
        const { at, size } = statusField(rings.version);
        const base = ringBytes(rings.rx);
        for (let i = 0; i < rings.tx.frameNr; i++) {
          const s = base + frameOffset(rings.tx, i) + at;
          if (readStatus(bytes, s, size) === TP_STATUS.SENDING) writeStatus(bytes, s, size, TP_STATUS.AVAILABLE);
        }
      }
      return { state: after, bytes };
    }
    throw new Error(`packets kept arriving in the ring over ${attempts} attempts to copy it whole`);
  } finally {
    reader.close();
    munmap(addr, len);
  }
}

/** setsockopt PACKET_RX_RING / PACKET_TX_RING with tpacket_req (V1/V2) or tpacket_req3 (V3). */
export function setRing(fd: Fd, option: typeof PACKET_OPT.RX_RING | typeof PACKET_OPT.TX_RING, version: number, ring: PacketRingConfig): void {
  const req = Buffer.alloc(version === TPACKET.V3 ? 28 : 16);
  req.writeUInt32LE(ring.blockSize, 0);
  req.writeUInt32LE(ring.blockNr, 4);
  req.writeUInt32LE(ring.frameSize, 8);
  req.writeUInt32LE(ring.frameNr, 12);
  if (version === TPACKET.V3) {
    req.writeUInt32LE(ring.retireTmo, 16);
    req.writeUInt32LE(ring.sizeofPriv, 20);
    req.writeUInt32LE(ring.features, 24);
  }
  setsockopt(fd, SOL.PACKET, option, req);
}


/** A minimal Ethernet frame of LOCAL_ETHERTYPE (zero addresses: loopback takes it as its own). */
function throwAwayFrame(etherType = LOCAL_ETHERTYPE, length = 60): Buffer {
  const frame = Buffer.alloc(length);
  frame.writeUInt16BE(etherType, 12);
  if (length >= 35) frame.write('criu-ts ring position', 14, 'latin1');
  return frame;
}

export interface RingReproduction {
  readonly rings: PacketRings;
  readonly state: PacketRingKernelState;
  /** The saved bytes (RX then TX); undefined for images without them (CRIU's): rings start empty. */
  readonly bytes?: Buffer;
  readonly socketType: number;
  readonly vnetHdr: boolean;
  /** PACKET_RESERVE: part of where a V3 packet's data starts, hence of its size in the block. */
  readonly reserve: number;
}

/** The V3 receive ring moved on between reaching its position and getting its bytes back (its retire timer): the socket must be made again. */
export class RingMovedError extends Error {}

/**
 * Moves the kernel of new socket `fd` (rings set, not bound yet) to the saved position and
 * writes the saved bytes over its rings. Leaves the socket bound to lo; the caller binds it as
 * dumped. `timeoutMs` bounds the wait for loopback to deliver the frames.
 */
export function reproduceRings(fd: Fd, r: RingReproduction, timeoutMs = 2000): void {
  const { rings, state } = r;
  const len = ringMappingBytes(rings);
  if (r.bytes && r.bytes.length !== len) throw new Error(`saved ring bytes are ${r.bytes.length}, the rings map ${len}`);
  const { addr } = mapRings(fd, rings, PROT_READ | PROT_WRITE);
  // Loaded on first use: rings from images without a position (CRIU's) need no reading.
  let reader: PacketRingKernelReader | undefined;
  const read = () => (reader ??= new PacketRingKernelReader(fd)).read();
  // The frames that move the receive head come from a socket of criu-ts's own (the ring's
  // socket may have a TX ring, which its sends would go through), made on first use.
  let sender: Fd | undefined;
  const toLoopback = sockaddrLl(LOCAL_ETHERTYPE, LOOPBACK_IFINDEX);
  const sendToLoopback = (frame: Buffer) => sendto((sender ??= socket(AF_PACKET, SOCK_RAW, 0)), frame, toLoopback, 0);
  try {
    if (rings.tx && state.txHead > 0) {
      if (state.txHead >= rings.tx.frameNr) throw new Error(`saved tx head ${state.txHead} is past the ring's ${rings.tx.frameNr} frames`);
      bind(fd, sockaddrLl(0, LOOPBACK_IFINDEX)); // protocol 0: the socket takes in nothing
      const { at, size } = statusField(rings.version);
      const dataAt = rings.version === TPACKET.V1 || rings.version === TPACKET.V2 ? 32 : 48; // tp_hdrlen - sizeof(sockaddr_ll)
      const lenAt = rings.version === TPACKET.V1 ? 8 : rings.version === TPACKET.V2 ? 4 : 16;
      const payload = r.socketType === SOCK_RAW ? throwAwayFrame(LOCAL_ETHERTYPE_TX) : throwAwayFrame().subarray(14);
      const frame = Buffer.concat([Buffer.alloc(r.vnetHdr ? VNET_HDR_BYTES : 0), payload]);
      const base = ringBytes(rings.rx);
      const ring = Buffer.alloc(ringBytes(rings.tx));
      for (let i = 0; i < state.txHead; i++) {
        const f = frameOffset(rings.tx, i);
        ring.writeUInt32LE(frame.length, f + lenAt);
        frame.copy(ring, f + dataAt);
        writeStatus(ring, f + at, size, TP_STATUS.SEND_REQUEST);
      }
      processVmWritev(getpid(), ring, [{ addr: asRemoteAddress(addr + BigInt(base)), len: ring.length }]);
      sock.send(fd, Buffer.alloc(0), 0); // blocking: returns once every queued frame is sent
      const now = read();
      if (now.txHead !== state.txHead) throw new Error(`tx head is ${now.txHead} after sending ${state.txHead} frames, not ${state.txHead}`);
    }
    if (rings.rx && rings.version === TPACKET.V3 && r.bytes) {
      bind(fd, sockaddrLl(LOCAL_ETHERTYPE, LOOPBACK_IFINDEX));
      const send = (length: number) => sendToLoopback(throwAwayFrame(LOCAL_ETHERTYPE, length));
      moveV3ReceiveRing(read, rings.rx, addr, positionOf(state), { raw: r.socketType === SOCK_RAW, reserve: r.reserve, vnetHdr: r.vnetHdr }, send);
    } else if (rings.rx && state.rxHead > 0) {
      if (state.rxHead >= rings.rx.frameNr) throw new Error(`saved rx head ${state.rxHead} is past the ring's ${rings.rx.frameNr} frames`);
      bind(fd, sockaddrLl(LOCAL_ETHERTYPE, LOOPBACK_IFINDEX));
      if (read().rxHead !== 0) throw new Error('a new receive ring does not start at frame 0');
      const frame = throwAwayFrame();
      for (let i = 0; i < state.rxHead; i++) sendToLoopback(frame);
      const deadline = performance.now() + timeoutMs;
      let now = read();
      while (now.rxHead !== state.rxHead && performance.now() < deadline) {
        sleepSync(1);
        now = read();
      }
      if (now.rxHead !== state.rxHead) throw new Error(`rx head is ${now.rxHead} after ${timeoutMs} ms, not the ${state.rxHead} sent on loopback`);
    }
    if (r.bytes) processVmWritev(getpid(), r.bytes, [{ addr: asRemoteAddress(addr), len }]);
    if (rings.rx && rings.version === TPACKET.V3 && r.bytes) {
      const now = positionOf(read());
      if (!samePosition(now, positionOf(state))) throw new RingMovedError(`the V3 receive ring moved to ${JSON.stringify(now)} while its bytes were written back`);
    }
  } finally {
    if (sender !== undefined) close(sender);
    reader?.close();
    munmap(addr, len);
  }
}

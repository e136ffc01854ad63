// packet-rings/: a ring's kernel position and bytes taken from one socket (snapshotRings) and
// given to a new one (reproduceRings) come out identical, for every kind of position: a
// TPACKET_V2 receive head part-way round, a TPACKET_V3 receive ring in the middle of a block,
// on an empty block its retire timer opened, and frozen (every block the program's). Sockets of
// this process, on loopback, for ethertypes of their own.
import { expect } from 'chai';
import { AF_PACKET, asRemoteAddress, bind, close, getpid, mmap, munmap, PACKET_OPT, processVmReadv, processVmWritev, sendto, setsockopt, sockaddrLl, socket, SOCK, SOL, type Fd, type PacketRingConfig } from '@criu-ts/sys';
import { readPacketRingKernelState } from '../src/packet-rings/kernel-state.js';
import { reproduceRings, ringMappingBytes, setRing, snapshotRings, TPACKET, type PacketRings } from '../src/packet-rings/rings.js';
import { positionOf, samePosition } from '../src/packet-rings/v3-receive.js';

const SOCK_RAW = SOCK.RAW;
const ETHERTYPE = 0x88bc;

const llOf = (protocol: number) => sockaddrLl(protocol, 1); // lo

function ringSocket(rings: PacketRings): Fd {
  const fd = socket(AF_PACKET, SOCK_RAW, 0);
  setsockopt(fd, SOL.PACKET, PACKET_OPT.VERSION, rings.version);
  if (rings.rx) setRing(fd, PACKET_OPT.RX_RING, rings.version, rings.rx);
  return fd;
}

function sleep(ms: number): void {
  Atomics.wait(new Int32Array(new SharedArrayBuffer(4)), 0, 0, ms);
}

/** Sends `count` frames of `length` bytes to the ring socket's ethertype on lo, and lets loopback deliver them. */
function send(count: number, length: number): void {
  const s = socket(AF_PACKET, SOCK_RAW, 0);
  try {
    const frame = Buffer.alloc(length);
    frame.writeUInt16BE(ETHERTYPE, 12);
    for (let i = 0; i < count; i++) {
      frame.writeUInt32BE(i, 14);
      sendto(s, frame, llOf(ETHERTYPE), 0);
    }
  } finally {
    close(s);
  }
  sleep(20);
}

function ringBytes(fd: Fd, rings: PacketRings): Buffer {
  const len = ringMappingBytes(rings);
  const addr = mmap(0n, len, 1, 1, fd, 0);
  try {
    const out = Buffer.alloc(len);
    processVmReadv(getpid(), out, [{ addr: asRemoteAddress(addr), len }]);
    return out;
  } finally {
    munmap(addr, len);
  }
}

/** Sets every V3 block's status to TP_STATUS_KERNEL but `keep` (what a program does once it has read them). */
function giveBackBlocks(fd: Fd, rings: PacketRings, keep: number[] = []): void {
  const len = ringMappingBytes(rings);
  const addr = mmap(0n, len, 3, 1, fd, 0);
  try {
    for (let b = 0; b < rings.rx!.blockNr; b++) {
      if (!keep.includes(b)) processVmWritev(getpid(), Buffer.alloc(4), [{ addr: asRemoteAddress(addr + BigInt(b * rings.rx!.blockSize + 8)), len: 4 }]);
    }
  } finally {
    munmap(addr, len);
  }
}

/** Snapshot of `original`, reproduced in a new socket: the same position and bytes. */
function roundTrip(original: Fd, rings: PacketRings): void {
  const saved = snapshotRings(original, rings);
  const copy = ringSocket(rings);
  try {
    reproduceRings(copy, { rings, state: saved.state, bytes: saved.bytes, socketType: SOCK_RAW, vnetHdr: false, reserve: 0 });
    const now = readPacketRingKernelState(copy);
    // (A frozen queue's offsets are stale ones of the block it closed last; block and flag are its position.)
    if (rings.version === TPACKET.V3) expect(samePosition(positionOf(now), positionOf(saved.state)), `${JSON.stringify(positionOf(now))} for ${JSON.stringify(positionOf(saved.state))}`).to.equal(true);
    else expect(now.rxHead).to.equal(saved.state.rxHead);
    expect(ringBytes(copy, rings).equals(saved.bytes), 'ring bytes').to.equal(true);
  } finally {
    close(copy);
  }
}

describe('packet rings: kernel position and bytes', function () {
  this.timeout(30_000);
  before(function () {
    if (process.getuid?.() !== 0) throw new Error('packet sockets need root (CI runs as root)');
  });
  const v3 = (retireTmo: number): PacketRings => ({
    version: TPACKET.V3, rx: { blockSize: 4096, blockNr: 4, frameSize: 2048, frameNr: 8, retireTmo, sizeofPriv: 0, features: 0 } satisfies PacketRingConfig,
  });

  it('TPACKET_V2: a receive head part-way round the ring', function () {
    const rings: PacketRings = { version: TPACKET.V2, rx: { blockSize: 8192, blockNr: 2, frameSize: 2048, frameNr: 8, retireTmo: 0, sizeofPriv: 0, features: 0 } };
    const fd = ringSocket(rings);
    try {
      bind(fd, llOf(ETHERTYPE));
      send(6, 100);
      expect(readPacketRingKernelState(fd).rxHead).to.equal(6);
      roundTrip(fd, rings);
    } finally {
      close(fd);
    }
  });

  it('TPACKET_V3: in the middle of a block, after the ring wrapped once', function () {
    const rings = v3(60_000);
    const fd = ringSocket(rings);
    try {
      bind(fd, llOf(ETHERTYPE));
      for (let round = 0; round < 5; round++) {
        send(3, 1000); // three 1088-byte packets per block: the fourth closes it
        giveBackBlocks(fd, rings, [readPacketRingKernelState(fd).rxActiveBlock]);
      }
      const s = positionOf(readPacketRingKernelState(fd));
      expect(s.frozen).to.equal(false);
      expect(s.offset).to.be.above(48);
      roundTrip(fd, rings);
    } finally {
      close(fd);
    }
  });

  it('TPACKET_V3: on an empty block the retire timer opened', function () {
    const rings = v3(5);
    const fd = ringSocket(rings);
    try {
      bind(fd, llOf(ETHERTYPE));
      send(4, 1000); // block 0 closed full, block 1 with one packet, closed by the timer: block 2 empty
      sleep(50);
      const s = positionOf(readPacketRingKernelState(fd));
      expect([s.block, s.offset, s.frozen]).to.deep.equal([2, 48, false]);
      roundTrip(fd, rings);
    } finally {
      close(fd);
    }
  });

  it('TPACKET_V3: frozen, every block still the program\'s', function () {
    const rings = v3(60_000);
    const fd = ringSocket(rings);
    try {
      bind(fd, llOf(ETHERTYPE));
      send(14, 1000); // 4 blocks of 3, then nowhere to go
      const s = positionOf(readPacketRingKernelState(fd));
      expect(s.frozen).to.equal(true);
      roundTrip(fd, rings);
    } finally {
      close(fd);
    }
  });
});

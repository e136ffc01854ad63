// A TPACKET_V3 receive ring brought to where the kernel stood in it at dump. V3 receives into
// blocks, not frames: the kernel fills its active block packet after packet, closes it (status
// USER, for the program) when the next packet does not fit or when the block's retire timer
// fires with packets in it, and opens the next block, unless the program still holds that one:
// then the queue is "frozen" until the program gives it back. Its position is therefore
//   the active block, the offset where its next packet goes, the offset of its last packet,
//   and whether it is frozen
// (kernel-state.ts reads them). A new ring starts at block 0, empty. This moves it by sending
// it frames on loopback of exactly chosen sizes (a frame of L bytes takes ALIGN8(base + L) in
// the block, base fixed by the socket's type, reserve and vnet header), reading the kernel's
// position after each, and giving back to the kernel every block it closes on the way (the
// bytes written afterwards say which blocks the program holds):
//   - in the target block: frames that end exactly at its last packet, then one that spans the
//     last packet's place;
//   - in the block before it: for a non-empty target, filled until the first frame meant for
//     the target no longer fits, so that frame opens the target; for an empty target, the
//     retire timer opens it (the only way the kernel opens a block without putting a packet in
//     it); for a frozen target, the target marked the program's before the block is closed;
//   - elsewhere: the block closed as fast as possible.
// Anything unexpected (the timer closing the target block meanwhile) just moves the kernel on;
// it goes around the ring again, within the time bound.
import { sleepSync, asRemoteAddress, getpid, processVmReadv, processVmWritev, type PacketRingConfig } from '@criu-ts/sys';
import type { PacketRingKernelState } from './kernel-state.js';

export interface V3ReceivePosition {
  readonly block: number;
  readonly offset: number;
  readonly last: number;
  readonly frozen: boolean;
}

export interface V3FrameShape {
  readonly raw: boolean;
  readonly reserve: number;
  readonly vnetHdr: boolean;
}

const BLOCK_STATUS_AT = 8; // tpacket_block_desc.hdr.bh1.block_status
const TP_STATUS_USER = 1;
const align8 = (n: number) => (n + 7) & ~7;

export function positionOf(s: PacketRingKernelState): V3ReceivePosition {
  return { block: s.rxActiveBlock, offset: s.rxBlockOffset, last: s.rxBlockLast, frozen: s.rxFrozen };
}

export function samePosition(a: V3ReceivePosition, b: V3ReceivePosition): boolean {
  // A frozen queue's offsets are those of the block it closed last: the block and the flag say it all.
  return a.block === b.block && a.frozen === b.frozen && (a.frozen || (a.offset === b.offset && a.last === b.last));
}

/**
 * Moves a new socket's V3 receive ring (mapped at `ring` in criu-ts, bound to lo for the frames
 * `send` sends; `read` tells where its kernel stands) to `target`. Throws when it cannot within `timeoutMs`.
 */
export function moveV3ReceiveRing(
  read: () => PacketRingKernelState, ringConfig: PacketRingConfig, ring: bigint, target: V3ReceivePosition, shape: V3FrameShape, send: (length: number) => void, timeoutMs = 5000,
): void {
  const blocks = ringConfig.blockNr;
  const blockSize = ringConfig.blockSize;
  if (target.block >= blocks) throw new Error(`saved active block ${target.block} is past the ring's ${blocks} blocks`);
  const base = (shape.raw ? 82 : 96) + shape.reserve + (shape.vnetHdr ? 10 : 0);
  const minimum = align8(base + (shape.raw ? 14 : 1));
  const start = read();
  const first = start.rxBlockOffset; // past the block header and private area
  const maximum = Math.min(start.rxMaxFrameLen, base + 65_000) & ~7;
  if ((!target.frozen && (target.offset < first || target.offset > blockSize || target.last < first || target.last > target.offset)) || maximum < minimum) {
    throw new Error(`saved V3 position ${JSON.stringify(target)} cannot be in blocks of ${blockSize} bytes starting at ${first}`);
  }
  const lengthFor = (total: number) => (shape.raw ? total - base : total - base + 14);
  const deadline = performance.now() + timeoutMs;
  const status = Buffer.alloc(4);
  const blockStatus = (b: number): number => {
    processVmReadv(getpid(), status, [{ addr: asRemoteAddress(ring + BigInt(b * blockSize + BLOCK_STATUS_AT)), len: 4 }]);
    return status.readUInt32LE(0);
  };
  const setBlockStatus = (b: number, value: number) => {
    status.writeUInt32LE(value, 0);
    processVmWritev(getpid(), status, [{ addr: asRemoteAddress(ring + BigInt(b * blockSize + BLOCK_STATUS_AT)), len: 4 }]);
  };
  let s = start;
  const moved = (a: PacketRingKernelState, b: PacketRingKernelState) => !samePosition(positionOf(a), positionOf(b));
  /** Sends one frame taking `total` bytes and waits until the kernel has taken it (or dropped it). */
  const inject = (total: number) => {
    send(lengthFor(total));
    const before = s;
    const until = Math.min(deadline, performance.now() + 1000);
    do {
      s = read();
      if (moved(before, s)) return;
      sleepSync(0.2);
    } while (performance.now() < until);
  };
  /** Sends frames that make the kernel close its active block (the last lands in the next). */
  const closeActive = () => {
    const room = blockSize - s.rxBlockOffset;
    inject(room <= maximum ? Math.max(minimum, align8(room)) : maximum);
  };
  const previous = (target.block + blocks - 1) % blocks;
  while (performance.now() < deadline) {
    s = read();
    if (samePosition(positionOf(s), target)) return;
    for (let b = 0; b < blocks; b++) if (b !== s.rxActiveBlock && (blockStatus(b) & TP_STATUS_USER)) setBlockStatus(b, 0);
    const at = s.rxBlockOffset;
    if (!target.frozen && !s.rxFrozen && s.rxActiveBlock === target.block) {
      // In the target block: the next boundary is its last packet's start, then its end.
      const boundary = at < target.last ? target.last : at === target.last && at < target.offset ? target.offset : -1;
      const gap = boundary - at;
      if (boundary >= 0 && gap >= minimum) {
        inject(gap <= maximum ? gap : gap - maximum >= minimum ? maximum : gap - minimum);
        continue;
      }
      closeActive(); // past the target (the timer, or an earlier frame): around the ring again
      continue;
    }
    if (!s.rxFrozen && s.rxActiveBlock === previous) {
      if (target.frozen) {
        setBlockStatus(target.block, TP_STATUS_USER);
        closeActive();
        continue;
      }
      if (target.offset === first) {
        // An empty target: only the retire timer opens a block without a packet, and it retires only a block with one.
        if (at === first) inject(minimum);
        const before = s;
        const until = Math.min(deadline, performance.now() + 3 * ringConfig.retireTmo + 500);
        while (performance.now() < until && !moved(before, (s = read()))) sleepSync(1);
        continue;
      }
      // The first frame for the target must not fit here, so that it opens the target.
      const firstChunk = target.last > first ? Math.min(target.last - first, maximum) : target.offset - first;
      const chunk = target.last > first && target.last - first > maximum && target.last - first - maximum < minimum ? target.last - first - minimum : firstChunk;
      if (at + chunk >= blockSize) inject(chunk);
      else inject(Math.min(maximum, Math.max(minimum, blockSize - chunk - at)));
      continue;
    }
    closeActive();
  }
  throw new Error(`the V3 receive ring is at ${JSON.stringify(positionOf(s))}, not ${JSON.stringify(target)}, after ${timeoutMs} ms`);
}

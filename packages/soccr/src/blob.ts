/**
 * The compact binary form of a TcpConnectionState, for passing a connection
 * between processes. Little endian throughout.
 *
 *   offset  size  field
 *   0       4     magic "SOCR"
 *   4       2     version (1)
 *   6       2     header length H (bytes from offset 8 to the queues; 124 in v1)
 *   8       1     state (kernel TCP state number)
 *   9       1     family (4 or 6)
 *   10      1     option mask (TCPI_OPT_*)
 *   11      1     flags: 1 window present, 2 nodelay, 4 cork, 8 SO_REUSEADDR
 *   12      1     snd_wscale
 *   13      1     rcv_wscale
 *   14      2     reserved (0)
 *   16      4     send seq (write_seq)         20  4  recv seq (rcv_nxt)
 *   24      4     mss clamp                    28  4  timestamp
 *   32      20    window: snd_wl1 snd_wnd max_window rcv_wnd rcv_wup
 *   52      2     local port                   54  2  remote port
 *   56      16    local address                72  16 remote address (IPv4: first 4 bytes)
 *   88      4     local scope id               92  4  remote scope id
 *   96      4     local flowinfo               100 4  remote flowinfo
 *   104     4     receive queue length R       108 4  send queue length S
 *   112     4     unsent length U (<= S)
 *   116     16    reserved (0)
 *   8+H     R     receive queue bytes
 *   8+H+R   S     send queue bytes
 *   end-4   4     CRC-32 of every byte before it
 *
 * A newer writer may grow H; a reader takes the fields it knows and skips
 * the rest. Every length is checked against the buffer before use.
 */
import { crc32 } from 'node:zlib';
import { sock } from '@criu-ts/sys';
import { SoccrError } from './errors.js';
import type { InetAddress, TcpConnectionState } from './tcp-state.js';

const MAGIC = 0x52434f53; // "SOCR" read as little-endian u32
export const BLOB_VERSION = 1;
const HEADER_V1 = 124;
const FIXED = 8 + HEADER_V1;

function putAddr(b: Buffer, off: number, a: InetAddress): void {
  (a.family === 4 ? sock.parseIPv4(a.address) : sock.parseIPv6(a.address)).copy(b, off);
}
function getAddr(b: Buffer, off: number, family: 4 | 6, port: number, scopeId: number, flowinfo: number): InetAddress {
  if (family === 4) return { family, address: sock.formatIPv4(b.subarray(off, off + 4)), port };
  return { family, address: sock.formatIPv6(b.subarray(off, off + 16)), port, scopeId, flowinfo };
}

/** Encodes a state into the compact binary form. */
export function encodeState(s: TcpConnectionState): Buffer {
  const R = s.recvQueue.length;
  const S = s.sendQueue.length;
  const b = Buffer.alloc(FIXED + R + S + 4);
  b.writeUInt32LE(MAGIC, 0);
  b.writeUInt16LE(BLOB_VERSION, 4);
  b.writeUInt16LE(HEADER_V1, 6);
  b[8] = s.state;
  b[9] = s.local.family;
  b[10] = s.optionMask;
  b[11] = (s.window ? 1 : 0) | (s.nodelay ? 2 : 0) | (s.cork ? 4 : 0) | (s.reuseaddr ? 8 : 0);
  b[12] = s.sndWscale;
  b[13] = s.rcvWscale;
  b.writeUInt32LE(s.sendSeq >>> 0, 16);
  b.writeUInt32LE(s.recvSeq >>> 0, 20);
  b.writeUInt32LE(s.mssClamp >>> 0, 24);
  b.writeUInt32LE(s.timestamp >>> 0, 28);
  const w = s.window ?? { sndWl1: 0, sndWnd: 0, maxWindow: 0, rcvWnd: 0, rcvWup: 0 };
  [w.sndWl1, w.sndWnd, w.maxWindow, w.rcvWnd, w.rcvWup].forEach((v, i) => b.writeUInt32LE(v >>> 0, 32 + 4 * i));
  b.writeUInt16LE(s.local.port, 52);
  b.writeUInt16LE(s.remote.port, 54);
  putAddr(b, 56, s.local);
  putAddr(b, 72, s.remote);
  b.writeUInt32LE(s.local.scopeId ?? 0, 88);
  b.writeUInt32LE(s.remote.scopeId ?? 0, 92);
  b.writeUInt32LE(s.local.flowinfo ?? 0, 96);
  b.writeUInt32LE(s.remote.flowinfo ?? 0, 100);
  b.writeUInt32LE(R, 104);
  b.writeUInt32LE(S, 108);
  b.writeUInt32LE(s.unsentLength, 112);
  s.recvQueue.copy(b, FIXED);
  s.sendQueue.copy(b, FIXED + R);
  b.writeUInt32LE(crc32(b.subarray(0, b.length - 4)) >>> 0, b.length - 4);
  return b;
}

/** Decodes the compact binary form; throws BAD_BLOB naming the field and offset at fault. */
export function decodeState(b: Buffer): TcpConnectionState {
  const bad = (field: string, offset: number, msg: string, ev: Record<string, unknown> = {}): never => {
    throw new SoccrError('BAD_BLOB', `${field} at offset ${offset}: ${msg}`, { field, offset, length: b.length, ...ev });
  };
  if (b.length < 8) bad('magic', 0, `blob is ${b.length} bytes, too short for a header`);
  const magic = b.readUInt32LE(0);
  if (magic !== MAGIC) bad('magic', 0, `0x${magic.toString(16)} is not "SOCR"`, { magic });
  const version = b.readUInt16LE(4);
  if (version < 1 || version > BLOB_VERSION) bad('version', 4, `unsupported version ${version} (this reader knows 1..${BLOB_VERSION})`, { version });
  const H = b.readUInt16LE(6);
  if (H < HEADER_V1) bad('header length', 6, `${H} is shorter than the ${HEADER_V1} bytes of version 1`, { headerLength: H });
  if (b.length < 8 + H + 4) bad('header', 8, `blob is ${b.length} bytes, header needs ${8 + H + 4}`);
  const R = b.readUInt32LE(104);
  const S = b.readUInt32LE(108);
  const U = b.readUInt32LE(112);
  const need = 8 + H + R + S + 4;
  if (b.length !== need) bad('queue lengths', 104, `queues of ${R} + ${S} bytes need a ${need}-byte blob, got ${b.length}`, { recvLength: R, sendLength: S, expected: need });
  if (U > S) bad('unsent length', 112, `${U} exceeds the send queue length ${S}`, { unsentLength: U, sendLength: S });
  const crc = b.readUInt32LE(b.length - 4);
  const actual = crc32(b.subarray(0, b.length - 4)) >>> 0;
  if (crc !== actual) bad('crc32', b.length - 4, `stored 0x${crc.toString(16)}, computed 0x${actual.toString(16)}`, { stored: crc, computed: actual });
  const family = b[9];
  if (family !== 4 && family !== 6) bad('family', 9, `${family} is neither 4 nor 6`, { family });
  const f = family as 4 | 6;
  const flags = b[11]!;
  const q = 8 + H;
  return {
    state: b[8]!,
    local: getAddr(b, 56, f, b.readUInt16LE(52), b.readUInt32LE(88), b.readUInt32LE(96)),
    remote: getAddr(b, 72, f, b.readUInt16LE(54), b.readUInt32LE(92), b.readUInt32LE(100)),
    optionMask: b[10]!,
    sndWscale: b[12]!,
    rcvWscale: b[13]!,
    sendSeq: b.readUInt32LE(16),
    recvSeq: b.readUInt32LE(20),
    mssClamp: b.readUInt32LE(24),
    timestamp: b.readUInt32LE(28),
    ...(flags & 1
      ? {
          window: {
            sndWl1: b.readUInt32LE(32),
            sndWnd: b.readUInt32LE(36),
            maxWindow: b.readUInt32LE(40),
            rcvWnd: b.readUInt32LE(44),
            rcvWup: b.readUInt32LE(48),
          },
        }
      : {}),
    nodelay: (flags & 2) !== 0,
    cork: (flags & 4) !== 0,
    reuseaddr: (flags & 8) !== 0,
    recvQueue: Buffer.from(b.subarray(q, q + R)),
    sendQueue: Buffer.from(b.subarray(q + R, q + R + S)),
    unsentLength: U,
  };
}

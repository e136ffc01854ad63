/**
 * TcpConnectionState to and from CRIU's image form (CRIU 4.x):
 *
 *   tcp-stream-<ino>.img   one tcp_stream_entry, then the receive queue
 *                          bytes (inq_len) and the send queue bytes
 *                          (outq_len) raw after it
 *   files.img              the socket's inet_sk_entry (addresses, ports,
 *                          state, tcp_opts) inside a file_entry
 *
 * Field meanings are CRIU's: inq_seq/outq_seq are the TCP_QUEUE_SEQ values
 * as read (rcv_nxt and write_seq, each counting a FIN if one is queued),
 * outq_len/unsq_len exclude our FIN, opt_mask holds TCPI_OPT_* bits.
 * Addresses are stored as the in_addr/in6_addr bytes read as
 * little-endian u32 words (127.0.0.1 is [0x0100007f]).
 *
 * The inet_sk_entry produced here carries only what describes the
 * connection; socket options (buffer sizes, timeouts, fown) are the dump
 * orchestrator's to fill from the live socket.
 */
import { ImageReader, ImageWriter, kindForName, type DecodedMessage } from '@criu-ts/images';
import { sock } from '@criu-ts/sys';
import { SoccrError } from './errors.js';
import { validateState } from './repair.js';
import type { InetAddress, TcpConnectionState } from './tcp-state.js';

const AF_INET = 2;
const AF_INET6 = 10;
const SOCK_STREAM = 1;
const IPPROTO_TCP = 6;

export interface TcpImageForm {
  /** The tcp_stream_entry message. */
  tcpStream: DecodedMessage;
  /** The raw queues after it. */
  queues: { type: 'tcp-queues'; inq: Uint8Array; outq: Uint8Array };
  /** The connection part of the inet_sk_entry. */
  inetSk: DecodedMessage;
}

function addrWords(a: InetAddress): number[] {
  const b = a.family === 4 ? sock.parseIPv4(a.address) : sock.parseIPv6(a.address);
  const out: number[] = [];
  for (let i = 0; i < b.length; i += 4) out.push(b.readUInt32LE(i));
  return out;
}

function wordsAddr(words: unknown, family: 4 | 6, port: number, what: string): InetAddress {
  const n = family === 4 ? 1 : 4;
  if (!Array.isArray(words) || words.length < n) {
    throw new SoccrError('BAD_STATE', `inet_sk_entry.${what} has ${Array.isArray(words) ? words.length : 'no'} words, IPv${family} needs ${n}`, { field: what, value: words });
  }
  const b = Buffer.alloc(n * 4);
  words.slice(0, n).forEach((w, i) => b.writeUInt32LE(Number(w) >>> 0, i * 4));
  return family === 4 ? { family, address: sock.formatIPv4(b), port } : { family, address: sock.formatIPv6(b), port, flowinfo: 0, scopeId: 0 };
}

/** The state in CRIU's image form. `ids` fills inet_sk_entry's id and ino. */
export function toImageForm(s: TcpConnectionState, ids: { id?: number; ino?: number } = {}): TcpImageForm {
  validateState(s);
  const tcpStream: DecodedMessage = {
    inq_len: s.recvQueue.length,
    inq_seq: s.recvSeq,
    outq_len: s.sendQueue.length,
    outq_seq: s.sendSeq,
    opt_mask: s.optionMask,
    snd_wscale: s.sndWscale,
    mss_clamp: s.mssClamp,
    ...(s.optionMask & sock.TCPI_OPT_WSCALE ? { rcv_wscale: s.rcvWscale } : {}),
    ...(s.optionMask & sock.TCPI_OPT_TIMESTAMPS ? { timestamp: s.timestamp } : {}),
    unsq_len: s.unsentLength,
    ...(s.window
      ? { snd_wl1: s.window.sndWl1, snd_wnd: s.window.sndWnd, max_window: s.window.maxWindow, rcv_wnd: s.window.rcvWnd, rcv_wup: s.window.rcvWup }
      : {}),
  };
  const inetSk: DecodedMessage = {
    ...(ids.id !== undefined ? { id: ids.id } : {}),
    ...(ids.ino !== undefined ? { ino: ids.ino } : {}),
    family: s.local.family === 4 ? AF_INET : AF_INET6,
    type: SOCK_STREAM,
    proto: IPPROTO_TCP,
    state: s.state,
    src_port: s.local.port,
    dst_port: s.remote.port,
    src_addr: addrWords(s.local),
    dst_addr: addrWords(s.remote),
    tcp_opts: { ...(s.cork ? { cork: true } : {}), ...(s.nodelay ? { nodelay: true } : {}) },
    ...(s.reuseaddr !== undefined ? { opts: { reuseaddr: s.reuseaddr } } : {}),
  };
  return { tcpStream, queues: { type: 'tcp-queues', inq: s.recvQueue, outq: s.sendQueue }, inetSk };
}

/** The state from CRIU's image form; refuses entries that do not describe a TCP connection. */
export function fromImageForm(f: TcpImageForm): TcpConnectionState {
  const t = f.tcpStream;
  const k = f.inetSk;
  const num = (m: DecodedMessage, field: string, where: string): number => {
    const v = m[field];
    if (v === undefined || v === null) throw new SoccrError('BAD_STATE', `${where}.${field} is missing`, { field: `${where}.${field}` });
    return Number(v);
  };
  const family = num(k, 'family', 'inet_sk_entry');
  if (family !== AF_INET && family !== AF_INET6) {
    throw new SoccrError('FAMILY_MISMATCH', `inet_sk_entry.family ${family} is neither AF_INET nor AF_INET6`, { family });
  }
  if (k['proto'] !== undefined && Number(k['proto']) !== IPPROTO_TCP) {
    throw new SoccrError('NOT_TCP', `inet_sk_entry.proto is ${String(k['proto'])}, not TCP`, { proto: k['proto'] });
  }
  const fam: 4 | 6 = family === AF_INET ? 4 : 6;
  const inqLen = num(t, 'inq_len', 'tcp_stream_entry');
  const outqLen = num(t, 'outq_len', 'tcp_stream_entry');
  if (f.queues.inq.length !== inqLen || f.queues.outq.length !== outqLen) {
    throw new SoccrError('BAD_STATE', `queue bytes (${f.queues.inq.length} + ${f.queues.outq.length}) do not match inq_len ${inqLen} / outq_len ${outqLen}`, {
      inqLen,
      outqLen,
      inq: f.queues.inq.length,
      outq: f.queues.outq.length,
    });
  }
  const tcpOpts = (k['tcp_opts'] ?? {}) as DecodedMessage;
  const opts = (k['opts'] ?? {}) as DecodedMessage;
  const hasWindow = t['snd_wnd'] !== undefined;
  const s: TcpConnectionState = {
    state: num(k, 'state', 'inet_sk_entry'),
    local: wordsAddr(k['src_addr'], fam, num(k, 'src_port', 'inet_sk_entry'), 'src_addr'),
    remote: wordsAddr(k['dst_addr'], fam, num(k, 'dst_port', 'inet_sk_entry'), 'dst_addr'),
    sendSeq: num(t, 'outq_seq', 'tcp_stream_entry') >>> 0,
    recvSeq: num(t, 'inq_seq', 'tcp_stream_entry') >>> 0,
    recvQueue: Buffer.from(f.queues.inq),
    sendQueue: Buffer.from(f.queues.outq),
    unsentLength: Number(t['unsq_len'] ?? 0),
    mssClamp: num(t, 'mss_clamp', 'tcp_stream_entry'),
    optionMask: num(t, 'opt_mask', 'tcp_stream_entry'),
    sndWscale: num(t, 'snd_wscale', 'tcp_stream_entry'),
    rcvWscale: Number(t['rcv_wscale'] ?? 0),
    timestamp: Number(t['timestamp'] ?? 0) >>> 0,
    ...(hasWindow
      ? {
          window: {
            sndWl1: Number(t['snd_wl1'] ?? 0) >>> 0,
            sndWnd: Number(t['snd_wnd'] ?? 0) >>> 0,
            maxWindow: Number(t['max_window'] ?? 0) >>> 0,
            rcvWnd: Number(t['rcv_wnd'] ?? 0) >>> 0,
            rcvWup: Number(t['rcv_wup'] ?? 0) >>> 0,
          },
        }
      : {}),
    // CRIU 4 keeps cork/nodelay in inet_sk_entry.tcp_opts; older images in tcp_stream_entry.
    nodelay: Boolean(tcpOpts['nodelay'] ?? t['nodelay'] ?? false),
    cork: Boolean(tcpOpts['cork'] ?? t['cork'] ?? false),
    ...(opts['reuseaddr'] !== undefined ? { reuseaddr: Boolean(opts['reuseaddr']) } : {}),
  };
  validateState(s);
  return s;
}

/** The bytes of a tcp-stream-<ino>.img file for the state. */
export function encodeTcpStreamImage(s: TcpConnectionState): Uint8Array {
  const f = toImageForm(s);
  const w = ImageWriter.inMemory(kindForName('TCP_STREAM')!);
  w.append(f.tcpStream, f.queues);
  return w.finish()!;
}

/** Reads a tcp-stream image (bytes); returns its entry and queues. */
export function decodeTcpStreamImage(bytes: Uint8Array, name = 'tcp-stream-0.img'): Pick<TcpImageForm, 'tcpStream' | 'queues'> {
  const r = ImageReader.fromBytes(bytes, name);
  const entries = [...r.entries()];
  if (entries.length !== 1) throw new SoccrError('BAD_STATE', `${name} holds ${entries.length} entries, expected 1`, { entries: entries.length });
  const e = entries[0]!;
  if (e.payload?.type !== 'tcp-queues') throw new SoccrError('BAD_STATE', `${name} has no TCP queues after its entry`, {});
  return { tcpStream: e.message, queues: { type: 'tcp-queues', inq: e.payload.inq, outq: e.payload.outq } };
}

/**
 * Handing live TCP connections from one Node process to another over a
 * stream channel (a unix socket). No fd travels: the sender saves each
 * connection and closes it in repair mode, the receiver recreates it from
 * the saved state.
 *
 * Sequence (sender S, receiver R, lock = NetworkLock of the namespace):
 *
 *   S  prepareFreeze every socket (stop reading, wait for writes to drain)
 *   S  lock all connections (one nft transaction)
 *   S  repair on + save + silent close, each
 *   S -> R   BATCH frame: every state (compact binary form) + a tag
 *   R  restore each state (repair mode), unlock the ones restored
 *      (one transaction), leave repair mode, wrap as net.Socket
 *   R -> S   RESULT frame: per connection ok or the error
 *   S  for each failure: restore its own saved state back here, unlock,
 *      resume - the connection stays alive with its old owner.
 *
 * Frames: u32 LE length of the rest, u8 type, payload.
 *   BATCH  (1): u32 count, count x { u32 tag length, tag (utf8), u32 blob length, blob }
 *   RESULT (2): u32 count, count x { u8 ok, u32 message length, message (utf8) }
 */
import net from 'node:net';
import { sock } from '@criu-ts/sys';
import { SoccrError } from './errors.js';
import { decodeState, encodeState } from './blob.js';
import { prepareFreeze, wrapRestored, type FreezeOptions, type PreparedFreeze } from './net-socket.js';
import { restore } from './repair.js';
import type { NetworkLock } from './network-lock.js';
import type { TcpConnectionState } from './tcp-state.js';

const T_BATCH = 1;
const T_RESULT = 2;
const MAX_FRAME = 1 << 30;

/** Reads length-prefixed frames from a stream. */
export class FrameReader {
  private chunks: Buffer[] = [];
  private have = 0;
  private waiters: { resolve: (f: Buffer) => void; reject: (e: Error) => void }[] = [];
  private frames: Buffer[] = [];
  private ended: Error | undefined;

  constructor(private readonly stream: net.Socket) {
    stream.on('data', (d: Buffer) => {
      this.chunks.push(d);
      this.have += d.length;
      this.pump();
    });
    const end = (e?: Error) => {
      this.ended ??= e ?? new SoccrError('HANDOFF', 'channel closed', {});
      for (const w of this.waiters.splice(0)) w.reject(this.ended);
    };
    stream.on('end', () => end());
    stream.on('close', () => end());
    stream.on('error', (e) => end(new SoccrError('HANDOFF', `channel error: ${e.message}`, {}, { cause: e })));
  }

  private pump(): void {
    for (;;) {
      if (this.have < 4) break;
      const head = this.chunks.length === 1 ? this.chunks[0]! : Buffer.concat(this.chunks);
      this.chunks = [head];
      const len = head.readUInt32LE(0);
      if (len > MAX_FRAME) {
        this.stream.destroy(new SoccrError('HANDOFF', `frame of ${len} bytes is over the ${MAX_FRAME} limit`, { len }));
        return;
      }
      if (this.have < 4 + len) break;
      this.frames.push(head.subarray(4, 4 + len));
      const rest = head.subarray(4 + len);
      this.chunks = rest.length ? [rest] : [];
      this.have = rest.length;
    }
    while (this.frames.length && this.waiters.length) this.waiters.shift()!.resolve(this.frames.shift()!);
  }

  /** The next frame (type byte + payload). */
  next(): Promise<Buffer> {
    const f = this.frames.shift();
    if (f) return Promise.resolve(f);
    if (this.ended) return Promise.reject(this.ended);
    return new Promise((resolve, reject) => this.waiters.push({ resolve, reject }));
  }
}

function frame(type: number, parts: Buffer[]): Buffer {
  const body = Buffer.concat([Buffer.from([type]), ...parts]);
  const head = Buffer.alloc(4);
  head.writeUInt32LE(body.length);
  return Buffer.concat([head, body]);
}
function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n);
  return b;
}

class Cursor {
  off = 0;
  constructor(private readonly b: Buffer) {}
  u8(): number {
    this.need(1);
    return this.b[this.off++]!;
  }
  u32(): number {
    this.need(4);
    const v = this.b.readUInt32LE(this.off);
    this.off += 4;
    return v;
  }
  bytes(n: number): Buffer {
    this.need(n);
    const v = this.b.subarray(this.off, this.off + n);
    this.off += n;
    return v;
  }
  private need(n: number): void {
    if (this.off + n > this.b.length) {
      throw new SoccrError('HANDOFF', `frame truncated: need ${n} bytes at offset ${this.off}, frame is ${this.b.length}`, { offset: this.off, need: n, length: this.b.length });
    }
  }
}

export interface HandoffResult {
  tag: string;
  /** Where the connection lives now. */
  outcome: 'handed-off' | 'kept' | 'lost';
  error?: Error;
  /** Queue sizes at save time (bytes): unread receive queue, send queue, never-sent tail of it. */
  queued?: { recv: number; send: number; unsent: number };
}

export interface SendOptions extends FreezeOptions {
  lock: NetworkLock;
  /** A label per socket that the receiver gets with it (default: its index). */
  tags?: string[];
  /** Called with each kept-back socket (re-created here after the receiver failed it). */
  onKept?: (socket: net.Socket, tag: string) => void;
  /** Stops waiting for the receiver's answer after this long (then restores everything here). Default 30 s. */
  replyTimeoutMs?: number;
}

/**
 * Hands `sockets` to the process at the other end of `channel`.
 * Resolves once the receiver has answered; failures are restored here.
 */
export async function sendSockets(channel: net.Socket, sockets: readonly net.Socket[], opts: SendOptions): Promise<HandoffResult[]> {
  const tags = sockets.map((_, i) => opts.tags?.[i] ?? String(i));
  const prepared: PreparedFreeze[] = [];
  try {
    for (const s of sockets) prepared.push(await prepareFreeze(s, opts));
  } catch (e) {
    for (const p of prepared) p.cancel();
    throw e;
  }
  try {
    await opts.lock.lock(prepared.map((p) => p.key));
  } catch (e) {
    for (const p of prepared) p.cancel();
    throw e;
  }
  const states: (TcpConnectionState | undefined)[] = [];
  const results: HandoffResult[] = [];
  for (const [i, p] of prepared.entries()) {
    try {
      const st = p.commit();
      states.push(st);
      results.push({ tag: tags[i]!, outcome: 'handed-off', queued: { recv: st.recvQueue.length, send: st.sendQueue.length, unsent: st.unsentLength } });
    } catch (e) {
      p.cancel();
      states.push(undefined);
      results.push({ tag: tags[i]!, outcome: 'kept', error: e as Error });
    }
  }
  // Connections that could not even be saved stay here: unlock them at once.
  await opts.lock.unlock(prepared.filter((_, i) => !states[i]).map((p) => p.key));
  const sent = states.map((s, i) => ({ s, i })).filter((x): x is { s: TcpConnectionState; i: number } => x.s !== undefined);
  const parts: Buffer[] = [u32(sent.length)];
  for (const { s, i } of sent) {
    const tag = Buffer.from(tags[i]!, 'utf8');
    const blob = encodeState(s);
    parts.push(u32(tag.length), tag, u32(blob.length), blob);
  }
  const reader = new FrameReader(channel);
  let verdicts: { ok: boolean; message: string }[] | undefined;
  let channelError: Error | undefined;
  try {
    channel.write(frame(T_BATCH, parts));
    const timeout = opts.replyTimeoutMs ?? 30_000;
    let timer: NodeJS.Timeout | undefined;
    const reply = await Promise.race([
      reader.next(),
      new Promise<never>((_, rej) => {
        timer = setTimeout(() => rej(new SoccrError('HANDOFF', `no answer from the receiver within ${timeout} ms`, { timeout })), timeout);
      }),
    ]).finally(() => clearTimeout(timer));
    const c = new Cursor(reply);
    if (c.u8() !== T_RESULT) throw new SoccrError('HANDOFF', 'expected a RESULT frame', { type: reply[0] });
    const n = c.u32();
    if (n !== sent.length) throw new SoccrError('HANDOFF', `receiver answered for ${n} connections, ${sent.length} were sent`, { n, sent: sent.length });
    verdicts = [];
    for (let k = 0; k < n; k++) {
      const ok = c.u8() === 1;
      verdicts.push({ ok, message: c.bytes(c.u32()).toString('utf8') });
    }
  } catch (e) {
    channelError = e as Error;
  }
  // Anything the receiver did not take (or we do not know it took) comes back here.
  const back: { s: TcpConnectionState; i: number; why: Error }[] = [];
  sent.forEach((x, k) => {
    const v = verdicts?.[k];
    if (!v?.ok) back.push({ ...x, why: v ? new SoccrError('HANDOFF', `receiver failed: ${v.message}`, { tag: tags[x.i] }) : channelError! });
  });
  const restoredFds: { fd: number; i: number }[] = [];
  for (const b of back) {
    try {
      restoredFds.push({ fd: restore(b.s), i: b.i });
      results[b.i] = { tag: tags[b.i]!, outcome: 'kept', error: b.why };
    } catch (e) {
      // The receiver may have it after all (no answer) - or it is gone.
      results[b.i] = { tag: tags[b.i]!, outcome: 'lost', error: e as Error };
    }
  }
  if (back.length) await opts.lock.unlock(back.map((b) => ({ local: b.s.local, remote: b.s.remote })));
  for (const r of restoredFds) opts.onKept?.(wrapRestored(r.fd), tags[r.i]!);
  return results;
}

export interface ReceiveOptions {
  lock: NetworkLock;
  /** Gets each connection that arrives, as a live net.Socket. */
  onSocket: (socket: net.Socket, tag: string) => void;
}

/**
 * Serves one handoff channel: restores every batch that arrives and
 * answers it, until the channel closes.
 */
export async function receiveSockets(channel: net.Socket, opts: ReceiveOptions): Promise<number> {
  const reader = new FrameReader(channel);
  let total = 0;
  for (;;) {
    let f: Buffer;
    try {
      f = await reader.next();
    } catch {
      return total; // channel closed
    }
    const c = new Cursor(f);
    if (c.u8() !== T_BATCH) throw new SoccrError('HANDOFF', 'expected a BATCH frame', { type: f[0] });
    const n = c.u32();
    const items: { tag: string; state?: TcpConnectionState; fd?: number; error?: Error }[] = [];
    for (let k = 0; k < n; k++) {
      const tag = c.bytes(c.u32()).toString('utf8');
      const blob = c.bytes(c.u32());
      try {
        const state = decodeState(blob);
        items.push({ tag, state, fd: restore(state) });
      } catch (e) {
        items.push({ tag, error: e as Error });
      }
    }
    const ok = items.filter((x) => x.fd !== undefined);
    let unlockError: Error | undefined;
    try {
      await opts.lock.unlock(ok.map((x) => ({ local: x.state!.local, remote: x.state!.remote })));
    } catch (e) {
      unlockError = e as Error;
    }
    const sockets: { s: net.Socket; tag: string }[] = [];
    const answer: Buffer[] = [u32(items.length)];
    for (const it of items) {
      let err = it.error ?? (it.fd !== undefined ? unlockError : undefined);
      if (it.fd !== undefined && !err) {
        try {
          sockets.push({ s: wrapRestored(it.fd), tag: it.tag });
          total++;
        } catch (e) {
          err = e as Error;
        }
      }
      if (err && it.fd !== undefined) {
        // Give it back: close silently (still in repair mode) so the sender can re-create it.
        try {
          sock.close(it.fd);
        } catch {
          /* nothing more to do */
        }
      }
      const msg = Buffer.from(err ? err.message : '', 'utf8');
      answer.push(Buffer.from([err ? 0 : 1]), u32(msg.length), msg);
    }
    channel.write(frame(T_RESULT, answer));
    for (const x of sockets) opts.onSocket(x.s, x.tag);
  }
}

/**
 * net.Socket helpers: freeze a live socket into a TcpConnectionState (the
 * Node object goes away, the connection does not) and thaw a state into a
 * new, connected net.Socket.
 *
 * Node reads eagerly: bytes may sit in the socket's readable buffer that the
 * application has not consumed yet; they are taken and put in front of the
 * kernel's receive queue in the saved state, so the new owner reads them
 * first. Writes the application makes while the freeze is in progress are
 * caught and appended to the never-sent part of the send queue. Writes
 * already handed to libuv must reach the kernel before the freeze; freeze
 * waits for that (bounded) before taking the network lock, because with the
 * lock on the peer's ACKs are dropped and the send buffer could never drain.
 *
 * Relies on Node internals present in Node 20 (`socket._handle.fd`,
 * `readStop`/`readStart`, `_handle.reading`); checked at run time.
 */
import net from 'node:net';
import { sock } from '@criu-ts/sys';
import { SoccrError } from './errors.js';
import { pause, resume, restore, save, assertTcpSocket } from './repair.js';
import type { ConnectionKey, NetworkLock } from './network-lock.js';
import type { TcpConnectionState } from './tcp-state.js';

interface TcpHandle {
  fd: number;
  reading?: boolean;
  readStop(): number;
  readStart(): number;
}

function handleOf(socket: net.Socket): TcpHandle {
  const h = (socket as unknown as { _handle?: TcpHandle | null })._handle;
  if (!h || typeof h.fd !== 'number' || h.fd < 0 || typeof h.readStop !== 'function') {
    throw new SoccrError('FREEZE', 'socket has no open TCP handle with an fd (destroyed, not connected, or not TCP)', {
      destroyed: socket.destroyed,
      connecting: socket.connecting,
    });
  }
  return h;
}

/** The connection key (local/remote addresses) of a connected net.Socket. */
export function connectionKeyOf(socket: net.Socket): ConnectionKey {
  const fam = (f: string | undefined): 4 | 6 => (f === 'IPv6' ? 6 : 4);
  if (!socket.localAddress || !socket.remoteAddress || !socket.localPort || !socket.remotePort) {
    throw new SoccrError('FREEZE', 'socket is not connected', {});
  }
  return {
    local: { family: fam(socket.localFamily), address: socket.localAddress, port: socket.localPort },
    remote: { family: fam(socket.remoteFamily), address: socket.remoteAddress, port: socket.remotePort },
  };
}

/** A socket being frozen: reading stopped, writes captured. */
export interface PreparedFreeze {
  socket: net.Socket;
  key: ConnectionKey;
  /** Puts the socket back in service (reading on, writes restored, captured writes re-issued). */
  cancel(): void;
  /** After the lock is taken: repair on, save, close silently. Returns the state. */
  commit(): TcpConnectionState;
}

export interface FreezeOptions {
  /** How long to wait for libuv's pending writes to reach the kernel. Default 5000 ms. */
  drainTimeoutMs?: number;
}

/**
 * First half of a freeze: stop reading, capture new writes, wait until
 * earlier writes are in the kernel. No lock is needed yet and nothing is
 * lost if `cancel()` is called.
 */
export async function prepareFreeze(socket: net.Socket, opts: FreezeOptions = {}): Promise<PreparedFreeze> {
  const h = handleOf(socket);
  assertTcpSocket(h.fd);
  const key = connectionKeyOf(socket);
  // Stop libuv reading from the kernel: from now on unread bytes stay in the receive queue.
  h.readStop();
  h.reading = false;
  const origReadStart = h.readStart;
  // Readable.read() below would restart reading through _read(); keep it off.
  h.readStart = () => 0;
  const wasFlowing = socket.readableFlowing;
  socket.pause();
  // Readable.read() emits 'data' with what it returns: the application's
  // listeners would get these bytes now *and* the new owner would get them
  // again. Take them with 'data' suppressed (they travel, they are not consumed).
  const taken: Buffer[] = [];
  const emit = socket.emit as (this: net.Socket, ev: string | symbol, ...args: unknown[]) => boolean;
  socket.emit = function (this: net.Socket, ev: string | symbol, ...args: unknown[]): boolean {
    return ev === 'data' ? false : emit.call(this, ev, ...args);
  } as typeof socket.emit;
  try {
    for (let c: Buffer | string | null; (c = socket.read() as Buffer | string | null) !== null; ) {
      taken.push(typeof c === 'string' ? Buffer.from(c) : c);
    }
  } finally {
    socket.emit = emit as typeof socket.emit;
  }
  const captured: Buffer[] = [];
  const s = socket as unknown as Record<string, unknown>;
  const origWrite = s['write'];
  const origEnd = s['end'];
  s['write'] = (chunk: unknown, enc?: unknown, cb?: unknown) => {
    const done = typeof enc === 'function' ? enc : cb;
    captured.push(typeof chunk === 'string' ? Buffer.from(chunk, typeof enc === 'string' ? (enc as BufferEncoding) : 'utf8') : Buffer.from(chunk as Uint8Array));
    if (typeof done === 'function') queueMicrotask(() => (done as () => void)());
    return true;
  };
  let restored = false;
  const undo = () => {
    if (restored) return;
    restored = true;
    s['write'] = origWrite;
    s['end'] = origEnd;
    h.readStart = origReadStart;
  };
  s['end'] = () => {
    throw new SoccrError('FREEZE', 'end() during a freeze is not supported', { key });
  };
  // Hold Node's queued writes back (a corked stream does not start its next
  // buffered write), wait only for the one write libuv may be in the middle
  // of, then take the queued chunks over as never-sent data.
  socket.cork();
  const ws = (socket as unknown as { _writableState?: { writing?: boolean } })._writableState;
  const inFlight = () => (ws && typeof ws.writing === 'boolean' ? ws.writing : socket.writableLength > 0);
  const deadline = Date.now() + (opts.drainTimeoutMs ?? 5000);
  while (inFlight()) {
    if (Date.now() > deadline || socket.destroyed) {
      undo();
      socket.uncork();
      for (const t of taken.reverse()) socket.unshift(t);
      if (wasFlowing) socket.resume();
      throw new SoccrError('FREEZE', `a write of ${socket.writableLength} pending bytes did not reach the kernel in time`, {
        key,
        pending: socket.writableLength,
        timeoutMs: opts.drainTimeoutMs ?? 5000,
      });
    }
    await new Promise((r) => setTimeout(r, 1));
  }
  const queued = ((socket as unknown as { writableBuffer?: unknown[] }).writableBuffer ?? []) as { chunk: Buffer | string; encoding?: BufferEncoding }[];
  // Still in Node's buffer too: used only by commit(), which destroys the stream with them.
  const queuedOut = queued.map((q) => (typeof q.chunk === 'string' ? Buffer.from(q.chunk, q.encoding ?? 'utf8') : Buffer.from(q.chunk)));
  return {
    socket,
    key,
    cancel() {
      undo();
      socket.uncork();
      for (const t of taken.reverse()) socket.unshift(t);
      for (const c of captured) socket.write(c);
      if (wasFlowing) socket.resume();
      else (h.readStart() as unknown);
    },
    commit() {
      const fd = h.fd;
      pause(fd);
      let state: TcpConnectionState;
      try {
        state = save(fd);
      } catch (e) {
        resume(fd);
        throw e;
      }
      undo();
      const extraIn = Buffer.concat(taken);
      const extraOut = Buffer.concat([...queuedOut, ...captured]);
      if (extraIn.length) state.recvQueue = Buffer.concat([extraIn, state.recvQueue]);
      if (extraOut.length) {
        // These bytes never had sequence numbers; they get the ones after
        // write_seq. sendSeq must move with them: restore() places the queue
        // at sendSeq - sendQueue.length, which has to stay snd_una. (Without
        // this the queue started extraOut.length bytes before snd_una, and the
        // peer discarded that many bytes of it as already received: silent loss.)
        state.sendQueue = Buffer.concat([state.sendQueue, extraOut]);
        state.unsentLength += extraOut.length;
        state.sendSeq = (state.sendSeq + extraOut.length) >>> 0;
      }
      // The fd is in repair mode: closing it drops the connection here without FIN or RST.
      socket.destroy();
      return state;
    },
  };
}

/**
 * Freezes a live net.Socket: stop it, (lock,) save, close silently.
 * With `lock`, the connection is locked before it is saved and stays locked
 * (the new owner unlocks it).
 */
export async function freezeSocket(socket: net.Socket, opts: FreezeOptions & { lock?: NetworkLock } = {}): Promise<TcpConnectionState> {
  const p = await prepareFreeze(socket, opts);
  if (opts.lock) {
    try {
      await opts.lock.lock([p.key]);
    } catch (e) {
      p.cancel();
      throw e;
    }
  }
  try {
    return p.commit();
  } catch (e) {
    p.cancel();
    if (opts.lock) await opts.lock.unlock([p.key]).catch(() => undefined);
    throw e;
  }
}

/**
 * Restores a state as a new connected net.Socket. With `lock`, unlocks the
 * connection once the socket exists and before it leaves repair mode.
 */
export async function thawSocket(state: TcpConnectionState, opts: WrapOptions & { lock?: NetworkLock } = {}): Promise<net.Socket> {
  const fd = restore(state);
  if (opts.lock) {
    try {
      await opts.lock.unlock([{ local: state.local, remote: state.remote }]);
    } catch (e) {
      sock.close(fd);
      throw e;
    }
  }
  return wrapRestored(fd, opts);
}

export interface WrapOptions {
  /**
   * Keep the writable side open when the peer's FIN arrives (default true:
   * a restored connection may already be half-closed, and Node's default of
   * answering a FIN with our own would end it behind the owner's back).
   */
  allowHalfOpen?: boolean;
}

/** Leaves repair mode on a restored fd and hands it to Node as a net.Socket. */
export function wrapRestored(fd: number, opts: WrapOptions = {}): net.Socket {
  resume(fd);
  return new net.Socket({ fd, readable: true, writable: true, allowHalfOpen: opts.allowHalfOpen ?? true });
}

// The test's side of tests/bin/inet-keeper: its peer for every TCP connection and UDP socket,
// run in the test process (outside the dumped tree) with plain non-blocking socket calls, so that
// nothing of the peer depends on the event loop while dumpSync/restoreSync block it.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { accept4, listen, sock, type Fd } from '@criu-ts/sys';
import { killAndReap, TEST_BIN } from './programs.js';
import { sleepMs, waitFor } from './restore-helpers.js';

/** Bytes each side sends on each stream connection (tests/inet-keeper.c STREAM_LEN). */
export const STREAM_LEN = 3 << 20;

/** Byte i of stream `seed`, as tests/inet-keeper.c makes it. */
export function streamBytes(seed: number, from: number, length: number): Buffer {
  const out = Buffer.allocUnsafe(length);
  for (let k = 0; k < length; k++) {
    let v = Math.imul((from + k) ^ seed, 0x9e3779b1) >>> 0;
    v ^= v >>> 15;
    v = Math.imul(v, 0x85ebca77) >>> 0;
    v ^= v >>> 13;
    out[k] = v & 0xff;
  }
  return out;
}

const EAGAIN = 'EAGAIN';
const isErr = (e: unknown, code: string) => (e as { code?: string }).code === code;

/** One stream connection seen from the peer: its fd, the two seeds, progress. */
export class PeerStream {
  sent = 0;
  received = 0;
  bad = 0;
  private expected: Buffer = Buffer.alloc(0);
  private expectedFrom = 0;
  constructor(
    readonly name: string,
    readonly fd: number,
    /** The program's stream (what this side receives) and ours. */
    readonly recvSeed: number,
    readonly sendSeed: number,
  ) {}

  /** Sends as much of the rest of our stream as the socket takes now (at most `limit` in total). */
  pumpSend(limit = STREAM_LEN): number {
    let moved = 0;
    while (this.sent < Math.min(limit, STREAM_LEN)) {
      const n = Math.min(65536, Math.min(limit, STREAM_LEN) - this.sent);
      let w: number;
      try {
        w = sock.send(this.fd, streamBytes(this.sendSeed, this.sent, n), sock.MSG_DONTWAIT | sock.MSG_NOSIGNAL);
      } catch (e) {
        if (isErr(e, EAGAIN)) break;
        throw new Error(`${this.name}: send failed after ${this.sent} bytes: ${(e as Error).message}`, { cause: e });
      }
      this.sent += w;
      moved += w;
    }
    return moved;
  }

  /** Takes what has arrived (at most up to `limit` in total) and checks it against the program's stream. */
  pumpRecv(limit = STREAM_LEN): number {
    const buf = Buffer.allocUnsafe(65536);
    let moved = 0;
    while (this.received < limit) {
      let r: number;
      try {
        r = sock.recv(this.fd, buf.subarray(0, Math.min(buf.length, limit - this.received)), sock.MSG_DONTWAIT);
      } catch (e) {
        if (isErr(e, EAGAIN)) break;
        throw new Error(`${this.name}: recv failed after ${this.received} bytes: ${(e as Error).message}`, { cause: e });
      }
      if (r === 0) break;
      if (this.expectedFrom + this.expected.length < this.received + r) {
        this.expectedFrom = this.received;
        this.expected = streamBytes(this.recvSeed, this.received, Math.max(r, 1 << 20));
      }
      const want = this.expected.subarray(this.received - this.expectedFrom, this.received - this.expectedFrom + r);
      if (!want.equals(buf.subarray(0, r))) for (let i = 0; i < r; i++) if (buf[i] !== want[i]) this.bad++;
      this.received += r;
      moved += r;
    }
    return moved;
  }

  get done(): boolean {
    return this.sent === STREAM_LEN && this.received === STREAM_LEN;
  }
}

/** A connection the program shut down behind `expected` bytes of stream `seed`: read to its end. */
export class ClosingStream {
  received = 0;
  bad = 0;
  ended = false;
  private readonly want: Buffer;
  constructor(
    readonly name: string,
    readonly fd: number,
    seed: number,
    readonly expected: number,
  ) {
    this.want = streamBytes(seed, 0, expected);
  }

  pump(): number {
    const buf = Buffer.allocUnsafe(65536);
    let moved = 0;
    while (!this.ended) {
      let r: number;
      try {
        r = sock.recv(this.fd, buf, sock.MSG_DONTWAIT);
      } catch (e) {
        if (isErr(e, EAGAIN)) break;
        throw new Error(`${this.name}: recv failed after ${this.received} bytes: ${(e as Error).message}`, { cause: e });
      }
      if (r === 0) {
        this.ended = true;
        moved++;
        break;
      }
      const want = this.want.subarray(this.received, this.received + r);
      if (want.length !== r || !want.equals(buf.subarray(0, r))) this.bad += r;
      this.received += r;
      moved += r;
    }
    return moved;
  }
}

function tcpListener(family: 4 | 6): { fd: number; port: number } {
  const fd = sock.socket(family === 4 ? sock.AF_INET : sock.AF_INET6, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, sock.IPPROTO_TCP);
  sock.bind(fd, family === 4 ? { family, address: '127.0.0.1', port: 0 } : { family, address: '::1', port: 0, flowinfo: 0, scopeId: 0 });
  listen(fd as Fd, 16);
  return { fd, port: sock.getsockname(fd).port };
}

function udpSocket(family: 4 | 6): { fd: number; port: number } {
  const fd = sock.socket(family === 4 ? sock.AF_INET : sock.AF_INET6, 2 /* SOCK_DGRAM */ | sock.SOCK_CLOEXEC, 17);
  sock.bind(fd, family === 4 ? { family, address: '127.0.0.1', port: 0 } : { family, address: '::1', port: 0, flowinfo: 0, scopeId: 0 });
  return { fd, port: sock.getsockname(fd).port };
}

function tcpConnect(to: sock.InetAddress): number {
  const fd = sock.socket(to.family === 4 ? sock.AF_INET : sock.AF_INET6, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, sock.IPPROTO_TCP);
  sock.connect(fd, to);
  return fd;
}

/** Accepts `count` connections from `listener`, by the program's local port of each. */
function acceptAll(listener: number, count: number): Map<number, number> {
  const byPort = new Map<number, number>();
  for (let i = 0; i < count; i++) {
    const fd = accept4(listener as Fd, 0o2000000 /* SOCK_CLOEXEC */) as number;
    byPort.set(sock.getpeername(fd).port, fd);
  }
  return byPort;
}

const v4 = (port: number): sock.InetAddress => ({ family: 4, address: '127.0.0.1', port });
const v6 = (port: number): sock.InetAddress => ({ family: 6, address: '::1', port, flowinfo: 0, scopeId: 0 });

/**
 * tests/bin/inet-keeper with its peer: started through `setsid -f` (own session, not a
 * child_process of ours), connected, and with both sides' streams sent as far as they fit.
 */
export class InetKeeper {
  readonly dir = mkdtempSync(join(tmpdir(), 'criu-ts-inet-'));
  readonly report = join(this.dir, 'report');
  readonly images = join(this.dir, 'images');
  readonly pid: number;
  readonly l4Port: number;
  readonly l6Port: number;
  readonly u4Port: number;
  /** C1, C6, A, M as the program names them. */
  readonly streams: PeerStream[];
  /** Our ends of the program's CLOSE_WAIT and FIN_WAIT2 connections. */
  readonly cw: number;
  readonly fw: number;
  /** The program's own ends' connection keys (for lock checks): local = program side. */
  private readonly fds: number[] = [];
  private readonly udp6: { fd: number; port: number };
  /** An extra connection to L4 the program never accepts (inFlight). */
  readonly inFlight?: number;
  /** Our ends of the program's FIN_WAIT1 (F1) and LAST_ACK (LA) connections. */
  readonly f1: number;
  readonly la: number;
  readonly closing: ClosingStream[];

  constructor(options: { refuse?: 'raw' | 'packet' | 'netlink'; inFlight?: boolean } = {}) {
    const binary = join(TEST_BIN, 'inet-keeper');
    if (!existsSync(binary)) throw new Error(`${binary} is missing: run npm run build`);
    const p4 = tcpListener(4);
    const p6 = tcpListener(6);
    this.udp6 = udpSocket(6);
    const udp4 = udpSocket(4);
    this.fds.push(p4.fd, p6.fd, this.udp6.fd, udp4.fd);
    const args = [binary, this.report, this.dir, String(p4.port), String(p6.port), String(this.udp6.port), String(udp4.port), ...(options.refuse ? [options.refuse] : [])];
    spawn('setsid', ['-f', ...args], { stdio: 'ignore' }).unref();
    waitFor('inet-keeper to listen', () => this.lines().some((l) => l.startsWith('listening') || l.startsWith('setup failed')));
    this.failIfSetupFailed();
    const [, pid, l4, l6] = this.lines().find((l) => l.startsWith('listening'))!.split(' ').map(Number);
    this.pid = pid!;
    this.l4Port = l4!;
    this.l6Port = l6!;
    const a = tcpConnect(v4(this.l4Port));
    // Over IPv4 to the dual-stack listener: the program's end is IPv4-mapped IPv6.
    const m = tcpConnect(v4(this.l6Port));
    // Shut down from here at once: the program's end goes to CLOSE_WAIT, then LAST_ACK.
    this.la = tcpConnect(v4(this.l4Port));
    sock.shutdown(this.la, sock.SHUT_WR);
    this.fds.push(a, m, this.la);
    waitFor('inet-keeper to be ready', () => this.lines().some((l) => l.startsWith('ready') || l.startsWith('setup failed')));
    this.failIfSetupFailed();
    const [, , c1Port, c6Port, cwPort, fwPort, u4Port, u6Port, f1Port, f1Bytes, laBytes] = this.lines().find((l) => l.startsWith('ready'))!.split(' ').map(Number);
    this.u4Port = u4Port!;
    const from4 = acceptAll(p4.fd, 4);
    const from6 = acceptAll(p6.fd, 1);
    const c1 = from4.get(c1Port!)!;
    this.cw = from4.get(cwPort!)!;
    this.fw = from4.get(fwPort!)!;
    const c6 = from6.get(c6Port!)!;
    this.f1 = from4.get(f1Port!)!;
    this.fds.push(c1, this.cw, this.fw, c6, this.f1);
    // What F1 and LA sent before their FIN: this side reads exactly that, then the end of the stream.
    this.closing = [new ClosingStream('F1', this.f1, 0x1005, f1Bytes!), new ClosingStream('LA', this.la, 0x1006, laBytes!)];
    if (options.inFlight) {
      this.inFlight = tcpConnect(v4(this.l4Port));
      this.fds.push(this.inFlight);
    }
    // Seeds as the program has them: it sends 0x1001.., receives 0x2001..
    this.streams = [
      new PeerStream('C1', c1, 0x1001, 0x2001),
      new PeerStream('C6', c6, 0x1002, 0x2002),
      new PeerStream('A', a, 0x1003, 0x2003),
      new PeerStream('M', m, 0x1004, 0x2004),
    ];
    for (const s of this.streams) s.pumpSend();
    sock.send(this.cw, Buffer.from('bye-from-peer'), 0);
    sock.shutdown(this.cw, sock.SHUT_WR);
    // Datagrams left waiting in the program's UDP sockets: three in U4 (one of 3000 bytes), one in U6 from its peer.
    sock.sendto(udp4.fd, Buffer.from('queued-1'), 0, v4(this.u4Port));
    sock.sendto(udp4.fd, Buffer.from(Array.from({ length: 3000 }, (_, i) => 65 + (i % 23))), 0, v4(this.u4Port));
    sock.sendto(udp4.fd, Buffer.from('queued-3'), 0, v4(this.u4Port));
    sock.sendto(this.udp6.fd, Buffer.from('six-1'), 0, v6(u6Port!));
    // The FINs and their ACKs cross loopback at once; give them a moment anyway.
    sleepMs(50);
  }

  private failIfSetupFailed(): void {
    const failed = this.lines().find((l) => l.startsWith('setup failed'));
    if (failed) throw new Error(`inet-keeper: ${failed}`);
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  /** Moves stream data both ways until each stream has `bytes` more received on our side (bounded). */
  exchange(bytes: number, timeoutMs = 30_000): void {
    const target = this.streams.map((s) => Math.min(STREAM_LEN, s.received + bytes));
    const deadline = Date.now() + timeoutMs;
    while (this.streams.some((s, i) => s.received < target[i]!) && Date.now() < deadline) {
      let moved = 0;
      for (const [i, s] of this.streams.entries()) moved += s.pumpRecv(target[i]) + s.pumpSend();
      if (moved === 0) sleepMs(2);
    }
  }

  /**
   * The final check: new connections to both listeners and a datagram to U4, SIGUSR1, every
   * stream to its end both ways, the half-closed connections finished; returns the program's
   * report and what this side saw.
   */
  check(): { failures: string[]; checks: string[]; peer: string[] } {
    const peer: string[] = [];
    const n4 = tcpConnect(v4(this.l4Port));
    const n6 = tcpConnect(v6(this.l6Port));
    this.fds.push(n4, n6);
    sock.send(n4, Buffer.from('hello4\n'), 0);
    sock.send(n6, Buffer.from('hello6\n'), 0);
    const u4 = udpSocket(4);
    this.fds.push(u4.fd);
    sock.sendto(u4.fd, Buffer.from('udp4 ping'), 0, v4(this.u4Port));
    const before = this.lines().length;
    process.kill(this.pid, 'SIGUSR1');
    const deadline = Date.now() + 90_000;
    while ((this.streams.some((s) => !s.done) || this.closing.some((c) => !c.ended)) && Date.now() < deadline) {
      let moved = 0;
      for (const s of this.streams) moved += s.pumpRecv() + s.pumpSend();
      for (const c of this.closing) moved += c.pump();
      if (moved === 0) sleepMs(2);
    }
    for (const s of this.streams) peer.push(`${s.name}: sent ${s.sent}, received ${s.received}, ${s.bad} bad bytes`);
    for (const c of this.closing) peer.push(`${c.name}: ${c.received === c.expected ? 'all' : `${c.received} of ${c.expected}`} bytes, ${c.bad} bad, ${c.ended ? 'then the end of the stream' : 'no end'}`);
    // A stalled stream: what the kernel says of every connection (ss -tni) goes to the report.
    if (this.streams.some((s) => !s.done)) peer.push(spawnSync('ss', ['-tanieom'], { encoding: 'utf8' }).stdout ?? 'ss failed');
    const fin = Buffer.alloc(64);
    let got = this.recvWithin(this.fw, fin, 5000);
    peer.push(`FW: ${fin.subarray(0, got).toString()}`);
    try {
      sock.send(this.fw, Buffer.from('late-from-peer'), 0);
      sock.shutdown(this.fw, sock.SHUT_WR);
    } catch (e) {
      peer.push(`FW: cannot send: ${(e as Error).message}`);
    }
    waitFor('inet-keeper to report', () => this.lines().slice(before).some((l) => l.startsWith('done')), 60_000);
    got = this.recvWithin(this.cw, fin, 2000);
    peer.push(`CW: ${fin.subarray(0, got).toString()}`);
    got = this.recvWithin(u4.fd, fin, 2000);
    peer.push(`U4: ${fin.subarray(0, got).toString()}`);
    got = this.recvWithin(this.udp6.fd, fin, 2000);
    peer.push(`U6: ${fin.subarray(0, got).toString()}`);
    const lines = this.lines().slice(before);
    return { failures: lines.filter((l) => l.startsWith('FAIL')), checks: lines.filter((l) => l.startsWith('ok')), peer };
  }

  private recvWithin(fd: number, buf: Buffer, ms: number): number {
    const deadline = Date.now() + ms;
    let got = 0;
    while (Date.now() < deadline && got < buf.length) {
      try {
        const n = sock.recv(fd, buf.subarray(got), sock.MSG_DONTWAIT);
        if (n === 0) break;
        got += n;
      } catch (e) {
        if (!isErr(e, EAGAIN)) break;
        if (got > 0) break;
        sleepMs(2);
      }
    }
    return got;
  }

  cleanup(): void {
    killAndReap(this.pid, this.dir);
    for (const fd of this.fds.splice(0)) {
      try {
        sock.close(fd);
      } catch {
        /* gone */
      }
    }
  }
}

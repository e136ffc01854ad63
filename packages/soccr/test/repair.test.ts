// In-process save/restore through the public API: every supported state
// (ESTABLISHED and the half-closed ones) on loopback, IPv4 and IPv6, and
// the refusals (bad input) with the original connection left intact.
import { expect } from 'chai';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { sock, listen, accept4, asFd } from '@criu-ts/sys';
import {
  NetworkLock,
  SoccrError,
  TcpState,
  decodeState,
  encodeState,
  decodeTcpStreamImage,
  encodeTcpStreamImage,
  fromImageForm,
  toImageForm,
  pause,
  resume,
  restore,
  save,
  sendCraftedSegment,
  tcpStateName,
  TH_ACK,
  TH_FIN,
  type ConnectionKey,
  type TcpConnectionState,
} from '@criu-ts/soccr';
import { isRoot } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Polls `f` until true, at most `ms` (bounded loop). */
async function until(what: string, f: () => boolean, ms = 3000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(2);
  }
}

interface Pair {
  /** Raw server-side fd (not owned by Node, so Node never closes it behind our back). */
  fd: number;
  client: net.Socket;
  clientGot: Buffer[];
  clientErrors: Error[];
  clientEnded: () => boolean;
  key: ConnectionKey;
  listenFd: number;
}

async function makePair(family: 4 | 6): Promise<Pair> {
  const host = family === 4 ? '127.0.0.1' : '::1';
  const lfd = sock.socket(family === 4 ? sock.AF_INET : sock.AF_INET6, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, 0);
  sock.setsockoptInt(lfd, sock.SOL_SOCKET, sock.SO_REUSEADDR, 1);
  sock.bind(lfd, { family, address: host, port: 0 });
  listen(asFd(lfd), 4);
  const port = sock.getsockname(lfd).port;
  const client = net.connect({ host, port, allowHalfOpen: true });
  await new Promise((r) => client.once('connect', r));
  const fd = accept4(asFd(lfd)) as number;
  const got: Buffer[] = [];
  const errors: Error[] = [];
  let ended = false;
  client.pause();
  client.on('data', (d: Buffer) => got.push(d));
  client.on('error', (e) => errors.push(e));
  client.on('end', () => (ended = true));
  const local = sock.getsockname(fd);
  const remote = sock.getpeername(fd);
  return { fd, client, clientGot: got, clientErrors: errors, clientEnded: () => ended, key: { local, remote }, listenFd: lfd };
}

/** Sends from the raw fd until the kernel takes no more (or `max` bytes); returns what was queued. */
function fillFromServer(fd: number, max: number): Buffer {
  const parts: Buffer[] = [];
  let total = 0;
  for (let i = 0; i < 10_000 && total < max; i++) {
    const b = createHash('sha256').update(`s${i}`).digest();
    const chunk = Buffer.concat(Array.from({ length: 512 }, () => b)).subarray(0, Math.min(16384, max - total));
    try {
      const n = sock.send(fd, chunk, sock.MSG_DONTWAIT | sock.MSG_NOSIGNAL);
      parts.push(chunk.subarray(0, n));
      total += n;
    } catch {
      break; // EAGAIN: send buffer full
    }
  }
  return Buffer.concat(parts);
}

/** Reads from the raw fd until EOF or `want` bytes (bounded in time). */
async function drainServer(fd: number, want: number, ms = 5000): Promise<{ data: Buffer; eof: boolean }> {
  const parts: Buffer[] = [];
  let total = 0;
  const end = Date.now() + ms;
  const buf = Buffer.alloc(1 << 16);
  while (Date.now() < end) {
    let n: number;
    try {
      n = sock.recv(fd, buf, sock.MSG_DONTWAIT);
    } catch {
      if (total >= want) return { data: Buffer.concat(parts), eof: false };
      await sleep(2);
      continue;
    }
    if (n === 0) return { data: Buffer.concat(parts), eof: true };
    parts.push(Buffer.from(buf.subarray(0, n)));
    total += n;
  }
  return { data: Buffer.concat(parts), eof: false };
}

const state = (fd: number) => sock.getTcpInfo(fd).state;

/** Pause + save + silent close + blob round trip + restore + unlock + resume. */
async function moveConnection(fd: number, lock: NetworkLock, key: ConnectionKey, via: 'blob' | 'image' = 'blob'): Promise<{ fd: number; saved: TcpConnectionState }> {
  await lock.lock([key]);
  pause(fd);
  const saved = save(fd);
  sock.close(fd); // repair mode: no FIN, no RST
  const again =
    via === 'blob'
      ? decodeState(encodeState(saved))
      : fromImageForm({ ...decodeTcpStreamImage(encodeTcpStreamImage(saved)), inetSk: toImageForm(saved).inetSk });
  const nfd = restore(again);
  await lock.unlock([key]);
  resume(nfd);
  return { fd: nfd, saved };
}

describe('soccr repair in one process', function () {
  this.timeout(60_000);
  let lock: NetworkLock;
  before(async function () {
    if (!isRoot) this.skip(); // TCP_REPAIR needs CAP_NET_ADMIN; CI runs as root
    lock = await NetworkLock.open();
  });
  after(async () => {
    await lock?.close();
  });

  for (const family of [4, 6] as const) {
    describe(`IPv${family}`, () => {
      let p: Pair;
      beforeEach(async () => {
        p = await makePair(family);
      });
      afterEach(async () => {
        p.client.destroy();
        for (const fd of [p.fd, p.listenFd]) {
          try {
            sock.close(fd);
          } catch {
            /* already closed by the test */
          }
        }
        await lock.unlock([p.key]);
      });

      for (const via of ['blob', 'image'] as const)
      it(`ESTABLISHED with data in both queues (through the ${via === 'blob' ? 'compact form' : 'CRIU image form'})`, async () => {
        const fromClient = createHash('sha512').update('c').digest();
        const toSend = Buffer.concat(Array.from({ length: 4096 }, () => fromClient)); // 256 KiB
        p.client.write(toSend);
        await sleep(20);
        const queued = fillFromServer(p.fd, 4 << 20);
        const { fd, saved } = await moveConnection(p.fd, lock, p.key, via);
        p.fd = fd;
        expect(saved.state).to.equal(TcpState.ESTABLISHED);
        expect(saved.recvQueue.length).to.be.greaterThan(0);
        expect(saved.sendQueue.length).to.be.greaterThan(0);
        expect(state(fd)).to.equal(TcpState.ESTABLISHED);
        p.client.resume();
        const got = await drainServer(fd, toSend.length);
        expect(got.data.equals(toSend)).to.equal(true);
        await until('client to get every byte', () => Buffer.concat(p.clientGot).length >= queued.length);
        expect(Buffer.concat(p.clientGot).equals(queued)).to.equal(true);
        expect(p.clientErrors).to.deep.equal([]);
      });

      it('CLOSE_WAIT (peer closed, data still queued)', async () => {
        p.client.end(Buffer.from('last words'));
        await until('CLOSE_WAIT', () => state(p.fd) === TcpState.CLOSE_WAIT);
        const queued = fillFromServer(p.fd, 1 << 20);
        const { fd, saved } = await moveConnection(p.fd, lock, p.key);
        p.fd = fd;
        expect(tcpStateName(saved.state)).to.equal('CLOSE_WAIT');
        expect(tcpStateName(state(fd))).to.equal('CLOSE_WAIT');
        const got = await drainServer(fd, 10);
        expect(got.data.toString()).to.equal('last words');
        expect(got.eof, 'EOF after the data').to.equal(true);
        p.client.resume();
        sock.shutdown(fd, sock.SHUT_WR);
        await until('client end', () => p.clientEnded());
        expect(Buffer.concat(p.clientGot).equals(queued)).to.equal(true);
        expect(p.clientErrors).to.deep.equal([]);
      });

      it('FIN_WAIT2 (we closed, peer acknowledged, peer still sends)', async () => {
        p.client.resume();
        sock.send(p.fd, Buffer.from('bye'), 0);
        sock.shutdown(p.fd, sock.SHUT_WR);
        await until('FIN_WAIT2', () => state(p.fd) === TcpState.FIN_WAIT2);
        await until('client end', () => p.clientEnded());
        p.client.write(Buffer.from('still talking'));
        await sleep(20);
        const { fd, saved } = await moveConnection(p.fd, lock, p.key);
        p.fd = fd;
        expect(tcpStateName(saved.state)).to.equal('FIN_WAIT2');
        expect(tcpStateName(state(fd))).to.equal('FIN_WAIT2');
        p.client.end(Buffer.from(' and done'));
        const got = await drainServer(fd, 1 << 20);
        expect(got.data.toString()).to.equal('still talking and done');
        expect(got.eof).to.equal(true);
        expect(Buffer.concat(p.clientGot).toString()).to.equal('bye');
        expect(p.clientErrors).to.deep.equal([]);
      });

      it('FIN_WAIT1 (our FIN not yet acknowledged)', async () => {
        p.client.resume();
        await lock.lock([p.key]); // drops the peer's ACK of our FIN
        sock.shutdown(p.fd, sock.SHUT_WR);
        await sleep(20);
        expect(tcpStateName(state(p.fd))).to.equal('FIN_WAIT1');
        const { fd, saved } = await moveConnection(p.fd, lock, p.key);
        p.fd = fd;
        expect(tcpStateName(saved.state)).to.equal('FIN_WAIT1');
        // Unlocked and resumed: the FIN is retransmitted and acknowledged.
        await until('FIN_WAIT2', () => state(fd) === TcpState.FIN_WAIT2, 5000);
        await until('client end', () => p.clientEnded());
        p.client.end(Buffer.from('ok'));
        const got = await drainServer(fd, 1 << 20);
        expect(got.data.toString()).to.equal('ok');
        expect(p.clientErrors).to.deep.equal([]);
      });

      it('LAST_ACK (both closed, our FIN unacknowledged)', async () => {
        p.client.resume();
        p.client.end();
        await until('CLOSE_WAIT', () => state(p.fd) === TcpState.CLOSE_WAIT);
        await lock.lock([p.key]);
        sock.send(p.fd, Buffer.from('tail'), 0);
        sock.shutdown(p.fd, sock.SHUT_WR);
        await sleep(20);
        expect(tcpStateName(state(p.fd))).to.equal('LAST_ACK');
        const { fd, saved } = await moveConnection(p.fd, lock, p.key);
        p.fd = fd;
        expect(tcpStateName(saved.state)).to.equal('LAST_ACK');
        await until('CLOSE', () => state(fd) === TcpState.CLOSE, 5000);
        await until('client end', () => p.clientEnded());
        expect(Buffer.concat(p.clientGot).toString()).to.equal('tail');
        expect(p.clientErrors).to.deep.equal([]);
      });

      it('CLOSING (FINs crossed, ours unacknowledged)', async () => {
        p.client.resume();
        await lock.lock([p.key]);
        sock.shutdown(p.fd, sock.SHUT_WR); // FIN_WAIT1: the client's ACK is dropped
        await until('client end', () => p.clientEnded());
        p.client.end(); // the client's FIN is dropped too...
        await sleep(10);
        // ...so deliver it by hand, acknowledging only up to before our FIN: CLOSING.
        pause(p.fd);
        const s = save(p.fd);
        resume(p.fd);
        const sndUna = (s.sendSeq - 1 - s.sendQueue.length) >>> 0;
        sendCraftedSegment({ from: p.key.remote, to: p.key.local, seq: s.recvSeq, ack: sndUna, flags: TH_FIN | TH_ACK, window: 65535 });
        await until('CLOSING', () => state(p.fd) === TcpState.CLOSING);
        const { fd, saved } = await moveConnection(p.fd, lock, p.key);
        p.fd = fd;
        expect(tcpStateName(saved.state)).to.equal('CLOSING');
        await until('TIME_WAIT or CLOSE', () => [TcpState.TIME_WAIT, TcpState.CLOSE].includes(state(fd) as 6 | 7), 5000);
        await until('client closed', () => p.client.closed, 5000);
        expect(p.clientErrors).to.deep.equal([]);
      });

      it('refuses to restore while the connection still exists (ADDRESS_IN_USE), original intact', async () => {
        pause(p.fd);
        const s = save(p.fd);
        resume(p.fd);
        expect(() => restore(s)).to.throw(SoccrError).with.property('code', 'ADDRESS_IN_USE');
        sock.send(p.fd, Buffer.from('alive'), 0);
        p.client.resume();
        await until('client data', () => Buffer.concat(p.clientGot).toString() === 'alive');
        expect(state(p.fd)).to.equal(TcpState.ESTABLISHED);
      });

      it('refuses a state onto a socket of the other family (FAMILY_MISMATCH)', async () => {
        pause(p.fd);
        const s = save(p.fd);
        resume(p.fd);
        const { restoreOnto } = await import('@criu-ts/soccr');
        const other = sock.socket(family === 4 ? sock.AF_INET6 : sock.AF_INET, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, 0);
        try {
          expect(() => restoreOnto(other, s)).to.throw(SoccrError).with.property('code', 'FAMILY_MISMATCH');
        } finally {
          sock.close(other);
        }
        expect(state(p.fd)).to.equal(TcpState.ESTABLISHED);
      });
    });
  }

  it('refuses a socket that is not TCP (NOT_TCP) and a listening socket (UNSUPPORTED_STATE)', () => {
    const udp = sock.socket(sock.AF_INET, 2 /* SOCK_DGRAM */ | sock.SOCK_CLOEXEC, 0);
    try {
      expect(() => pause(udp)).to.throw(SoccrError).with.property('code', 'NOT_TCP');
    } finally {
      sock.close(udp);
    }
    expect(() => pause(1_000_000)).to.throw(SoccrError).with.property('code', 'NOT_TCP');
    const l = sock.socket(sock.AF_INET, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, 0);
    try {
      sock.bind(l, { family: 4, address: '127.0.0.1', port: 0 });
      listen(asFd(l));
      const err = (() => {
        try {
          pause(l);
        } catch (e) {
          return e as SoccrError;
        }
        return undefined;
      })();
      expect(err?.code).to.equal('UNSUPPORTED_STATE');
      expect(err?.evidence['stateName']).to.equal('LISTEN');
    } finally {
      sock.close(l);
    }
  });
});

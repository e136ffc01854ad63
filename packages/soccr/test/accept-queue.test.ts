// requeueConnection in one process: a client connects to our listener and sends; we accept the
// connection, save it (repair mode), drop it silently, put it back into the listener's accept
// queue, accept it again and check that every byte is there and the connection carries on both
// ways, the client none the wiser (no reset, same sequence numbers). IPv4 and IPv6, a receive
// queue as big as the loopback windows let the client send, a client that shut its side
// (CLOSE_WAIT), and what is refused.
import { expect } from 'chai';
import { accept4, listen, pollOne, POLL, sock, type Fd } from '@criu-ts/sys';
import { acceptQueueRefillUnsupported, pause, requeueConnection, save, SoccrError, TcpState, type TcpConnectionState } from '@criu-ts/soccr';
import { isRoot } from './helpers.js';

const MSG_DONTWAIT = 0x40;

function pattern(length: number, seed: number): Buffer {
  const b = Buffer.alloc(length);
  for (let i = 0; i < length; i++) b[i] = (i * 31 + seed + (i >> 8)) & 0xff;
  return b;
}

/** Reads what `fd` has within `ms` (up to `max` bytes). */
function drain(fd: number, max: number, ms: number): Buffer {
  const out: Buffer[] = [];
  let total = 0;
  const deadline = Date.now() + ms;
  const buf = Buffer.alloc(1 << 16);
  while (total < max && Date.now() < deadline) {
    if ((pollOne(fd as Fd, POLL.IN, 20) & (POLL.IN | POLL.HUP)) === 0) continue;
    let n: number;
    try {
      n = sock.recv(fd, buf, MSG_DONTWAIT);
    } catch {
      continue;
    }
    if (n === 0) break;
    out.push(Buffer.from(buf.subarray(0, n)));
    total += n;
  }
  return Buffer.concat(out);
}

const seedOf = (family: 4 | 6 | 'mapped') => (family === 'mapped' ? 46 : family);

interface Pair {
  listener: number;
  client: number;
  /** What the client had queued (sent, or kept in its send buffer). */
  sent: number;
  saved: TcpConnectionState;
}

/** A connection waiting in our listener with `length` bytes sent by the client, accepted, saved and dropped silently. */
function queuedConnection(family: 4 | 6 | 'mapped', length: number, shutClient = false): Pair {
  const af = family === 4 ? sock.AF_INET : sock.AF_INET6;
  const listener = sock.socket(af, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, sock.IPPROTO_TCP);
  // 'mapped': a dual-stack listener on [::] with an IPv4 client (IPv4-mapped addresses on its side).
  if (family === 'mapped') sock.setsockoptInt(listener, 41 /* IPPROTO_IPV6 */, 26 /* IPV6_V6ONLY */, 0);
  sock.bind(listener, family === 4 ? { family, address: '127.0.0.1', port: 0 } : { family: 6, address: family === 6 ? '::1' : '::', port: 0, flowinfo: 0, scopeId: 0 });
  listen(listener as Fd, 4);
  const client = sock.socket(family === 6 ? sock.AF_INET6 : sock.AF_INET, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, sock.IPPROTO_TCP);
  sock.connect(client, family === 'mapped' ? { family: 4, address: '127.0.0.1', port: sock.getsockname(listener).port } : sock.getsockname(listener));
  const data = pattern(length, seedOf(family));
  let sent = 0;
  try {
    while (sent < length) sent += sock.send(client, data.subarray(sent), MSG_DONTWAIT);
  } catch {
    /* the windows are full: the rest waits on the client's side */
  }
  if (shutClient) sock.shutdown(client, sock.SHUT_WR);
  pollOne(listener as Fd, POLL.IN, 1000);
  const conn = accept4(listener as Fd) as number;
  // Whatever is still in flight on loopback lands before the save.
  for (let i = 0; i < 50 && sock.siocInq(conn) < Math.min(sent, 1); i++) pollOne(conn as Fd, POLL.IN, 10);
  pause(conn);
  const saved = save(conn);
  sock.close(conn); // repair mode: gone without a packet
  return { listener, client, sent, saved };
}

describe('soccr requeueConnection: a saved connection back into an accept queue', function () {
  this.timeout(30_000);
  const open: number[] = [];
  before(function () {
    if (!isRoot) throw new Error('TCP repair and BPF need root (CI runs as root)');
    const unsupported = acceptQueueRefillUnsupported();
    if (unsupported) throw new Error(`requeueConnection cannot work on this kernel: ${unsupported}`);
  });
  afterEach(function () {
    for (const fd of open.splice(0)) sock.close(fd);
  });

  for (const family of [4, 6, 'mapped'] as const) {
    for (const length of [0, 20_000, 4 << 20]) {
      it(`${family === 'mapped' ? 'IPv4 client of a dual-stack listener' : `IPv${family}`}, client sent ${length} bytes before the accept: all of them, then traffic both ways`, function () {
        const p = queuedConnection(family, length);
        open.push(p.listener, p.client);
        expect(p.saved.state).to.equal(TcpState.ESTABLISHED);
        requeueConnection(p.listener, p.saved);
        expect(pollOne(p.listener as Fd, POLL.IN, 1000) & POLL.IN, 'the listener has a connection to accept').to.not.equal(0);
        const conn = accept4(p.listener as Fd) as number;
        open.push(conn);
        expect(sock.getpeername(conn)).to.deep.include({ port: sock.getsockname(p.client).port });
        if (length > 1 << 20) expect(p.saved.recvQueue.length, 'a receive queue as full as loopback lets it be').to.be.above(100_000);
        // What the client still held in its send buffer follows once the server reads (its window opens).
        const got = drain(conn, p.sent, 10_000);
        expect(got.length).to.equal(p.sent);
        expect(got.equals(pattern(length, seedOf(family)).subarray(0, p.sent)), 'the bytes, in order').to.equal(true);
        sock.send(conn, Buffer.from('from-server'), 0);
        expect(drain(p.client, 11, 2000).toString()).to.equal('from-server');
        sock.send(p.client, Buffer.from('from-client'), 0);
        expect(drain(conn, 11, 2000).toString()).to.equal('from-client');
      });
    }
    it(`${family === 'mapped' ? 'IPv4 client of a dual-stack listener' : `IPv${family}`}: a client that had shut its side (CLOSE_WAIT) comes back with its bytes then EOF`, function () {
      const p = queuedConnection(family, 5000, true);
      open.push(p.listener, p.client);
      expect(p.saved.state).to.equal(TcpState.CLOSE_WAIT);
      requeueConnection(p.listener, p.saved);
      pollOne(p.listener as Fd, POLL.IN, 1000);
      const conn = accept4(p.listener as Fd) as number;
      open.push(conn);
      expect(sock.getTcpInfo(conn).state).to.equal(TcpState.CLOSE_WAIT);
      const got = drain(conn, 1 << 20, 2000);
      expect(got.equals(pattern(5000, seedOf(family)))).to.equal(true);
      sock.send(conn, Buffer.from('bye'), 0);
      expect(drain(p.client, 3, 2000).toString()).to.equal('bye');
    });
  }

  it('refuses a connection that has sent data (it cannot be waiting in a queue) and one in a state other than ESTABLISHED/CLOSE_WAIT', function () {
    const p = queuedConnection(4, 10);
    open.push(p.listener, p.client);
    const withSendQueue = { ...p.saved, sendQueue: Buffer.from('x'), sendSeq: (p.saved.sendSeq + 1) >>> 0 };
    expect(() => requeueConnection(p.listener, withSendQueue)).to.throw(SoccrError, /has sent nothing, this one has 1 bytes queued/);
    expect(() => requeueConnection(p.listener, { ...p.saved, state: TcpState.FIN_WAIT2 })).to.throw(SoccrError, /state FIN_WAIT2 cannot wait in an accept queue/);
    expect(pollOne(p.listener as Fd, POLL.IN, 0), 'nothing queued by the refusals').to.equal(0);
  });
});

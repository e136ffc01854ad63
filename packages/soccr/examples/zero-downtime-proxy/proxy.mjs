// A TCP proxy that can be replaced by a new process without dropping a
// single client connection or byte.
//
//   node proxy.mjs --listen HOST:PORT --upstream HOST:PORT --control PATH [--takeover]
//
// Each client connection is a pair of TCP connections (client <-> proxy,
// proxy <-> upstream) copied into each other. With --takeover, the new
// process connects to the old one's control socket; the old one stops
// accepting, hands *both* connections of every pair over with
// @criu-ts/soccr (saved in repair mode, closed silently, recreated here;
// the network lock keeps the peers' packets away meanwhile) and exits. The
// clients and the upstream never notice: no reset, no handshake, every
// byte in flight (kernel queues and the proxy's own buffers) carried over.
//
// The listening socket uses SO_REUSEPORT so the new process listens before
// the old one stops: new clients are accepted by one or the other.
import net from 'node:net';
import { existsSync, unlinkSync } from 'node:fs';
import { parseArgs } from 'node:util';
import { NetworkLock, receiveSockets, sendSockets } from '@criu-ts/soccr';
import { sock, listen, asFd } from '@criu-ts/sys';

const { values: opt } = parseArgs({
  options: {
    listen: { type: 'string' },
    upstream: { type: 'string' },
    control: { type: 'string' },
    takeover: { type: 'boolean', default: false },
  },
});
const split = (hp) => {
  const i = hp.lastIndexOf(':');
  return { host: hp.slice(0, i).replace(/^\[|\]$/g, ''), port: Number(hp.slice(i + 1)) };
};
const listenAt = split(opt.listen);
const upstream = split(opt.upstream);
const log = (m) => console.error(`[proxy ${process.pid}] ${m}`);

const lock = await NetworkLock.open();
const pairs = new Map(); // id -> { client, up }
let nextId = 1;

function join(id, client, up) {
  pairs.set(id, { client, up });
  const forward = (from, to) => {
    from.on('data', (d) => to.write(d));
    from.on('end', () => to.end());
    from.on('error', (e) => log(`pair ${id}: ${e.message}`));
    from.on('close', () => {
      pairs.delete(id);
      to.destroy();
    });
  };
  forward(client, up);
  forward(up, client);
}

// Listener with SO_REUSEPORT (15), made with @criu-ts/sys and given to Node.
const fam = net.isIPv6(listenAt.host) ? 6 : 4;
const lfd = sock.socket(fam === 4 ? sock.AF_INET : sock.AF_INET6, sock.SOCK_STREAM | sock.SOCK_CLOEXEC | sock.SOCK_NONBLOCK, 0);
sock.setsockoptInt(lfd, sock.SOL_SOCKET, 15 /* SO_REUSEPORT */, 1);
sock.setsockoptInt(lfd, sock.SOL_SOCKET, sock.SO_REUSEADDR, 1);
sock.bind(lfd, { family: fam, address: listenAt.host, port: listenAt.port });
listen(asFd(lfd), 511);
const server = net.createServer({ allowHalfOpen: true, pauseOnConnect: true }, (client) => {
  const up = net.connect({ ...upstream, allowHalfOpen: true });
  const id = `${process.pid}-${nextId++}`;
  up.once('connect', () => {
    join(id, client, up);
    client.resume();
  });
  up.once('error', (e) => {
    log(`upstream: ${e.message}`);
    client.destroy();
  });
});
await new Promise((r) => server.listen({ fd: lfd }, r));

async function takeOver() {
  const ch = net.connect(opt.control);
  await new Promise((res, rej) => {
    ch.once('connect', res);
    ch.once('error', rej);
  });
  ch.write('TAKEOVER\n');
  const got = new Map();
  await receiveSockets(ch, {
    lock,
    onSocket: (s, tag) => {
      const [id, side] = tag.split('/');
      const p = got.get(id) ?? {};
      p[side] = s;
      got.set(id, p);
      if (p.client && p.up) join(id, p.client, p.up);
    },
  });
  log(`took over ${got.size} pair(s)`);
}

function serveControl() {
  if (existsSync(opt.control)) unlinkSync(opt.control);
  const ctl = net.createServer((ch) => {
    ch.once('data', async (d) => {
      if (!String(d).startsWith('TAKEOVER')) return ch.destroy();
      // Stop accepting: the successor is already listening on the same port.
      server.close();
      ctl.close();
      const list = [...pairs.entries()];
      const sockets = list.flatMap(([, p]) => [p.client, p.up]);
      const tags = list.flatMap(([id]) => [`${id}/client`, `${id}/up`]);
      for (const [, p] of list) for (const s of [p.client, p.up]) s.removeAllListeners('close');
      const t0 = performance.now();
      const res = await sendSockets(ch, sockets, { lock, tags });
      const bad = res.filter((r) => r.outcome !== 'handed-off');
      log(`handed over ${res.length - bad.length} connection(s) in ${(performance.now() - t0).toFixed(1)} ms${bad.length ? `, ${bad.length} kept/lost` : ''}`);
      ch.end();
      await lock.close();
      if (bad.length === 0) process.exit(0);
    });
  });
  ctl.listen(opt.control, () => console.log(JSON.stringify({ ready: true, pid: process.pid, port: server.address().port })));
}

if (opt.takeover) await takeOver();
serveControl();

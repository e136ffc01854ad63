#!/usr/bin/env node
// Benchmark: how long a connection is without an owner during a handoff,
// i.e. from "lock in place" to "unlock in place", for 1 and for 100
// connections moved as one batch. Each round: lock, repair on + save +
// silent close, encode + decode the compact form, restore, unlock, resume.
// Loopback, in one process, with traffic paused. Prints the medians.
//   [SOCCR_LOCK_BACKEND=nft|iptables] node packages/soccr/scripts/bench-ownerless.mjs [rounds=30]
import net from 'node:net';
import { NetworkLock, pause, save, restore, resume, encodeState, decodeState, connectionKeyOf, wrapRestored } from '@criu-ts/soccr';
import { sock } from '@criu-ts/sys';

const rounds = Number(process.argv[2] ?? 30);
const median = (xs) => [...xs].sort((a, b) => a - b)[xs.length >> 1];

async function pairs(n) {
  const srv = net.createServer();
  await new Promise((r) => srv.listen(0, '127.0.0.1', r));
  const accepted = [];
  srv.on('connection', (s) => accepted.push(s));
  const clients = [];
  for (let i = 0; i < n; i++) {
    const c = net.connect(srv.address().port, '127.0.0.1');
    c.on('data', () => {});
    await new Promise((r) => c.once('connect', r));
    clients.push(c);
  }
  for (let i = 0; i < 200 && accepted.length < n; i++) await new Promise((r) => setTimeout(r, 5));
  srv.close();
  // Keep only fds: the benchmark moves raw fds around.
  const fds = accepted.map((s) => {
    s.pause();
    const key = connectionKeyOf(s);
    const fd = s._handle.fd;
    return { fd, key, node: s };
  });
  return { fds, clients };
}

async function bench(n, lock) {
  const { fds, clients } = await pairs(n);
  const times = [];
  for (let r = 0; r < rounds; r++) {
    const keys = fds.map((f) => f.key);
    await lock.lock(keys);
    const t0 = performance.now();
    const blobs = fds.map((f) => {
      pause(f.fd);
      const st = save(f.fd);
      if (f.node) {
        f.node.destroy(); // closes the fd in repair mode: silent
        f.node = undefined;
      } else sock.close(f.fd);
      return encodeState(st);
    });
    const newFds = blobs.map((b) => restore(decodeState(b)));
    await lock.unlock(keys);
    times.push(performance.now() - t0);
    newFds.forEach((fd, i) => {
      resume(fd);
      fds[i].fd = fd;
    });
    // A little traffic between rounds so each round moves a live connection.
    for (const c of clients) c.write('x');
    await new Promise((r) => setTimeout(r, 5));
  }
  for (const f of fds) wrapRestored(f.fd).destroy();
  for (const c of clients) c.destroy();
  await lock.settle();
  return times;
}

const lock = await NetworkLock.open({ backend: process.env.SOCCR_LOCK_BACKEND ?? 'auto' });
try {
  for (const n of [1, 100]) {
    const t = await bench(n, lock);
    console.log(`${String(n).padStart(3)} connection(s): ownerless median ${median(t).toFixed(2)} ms, min ${Math.min(...t).toFixed(2)} ms, max ${Math.max(...t).toFixed(2)} ms over ${t.length} rounds (backend ${lock.backend})`);
  }
} finally {
  await lock.close();
}

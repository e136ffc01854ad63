// The network lock on both backends: idempotent lock/unlock, listing with
// the owner, and removal of a killed owner's leftovers.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { cleanupNetworkLocks, NetworkLock, type ConnectionKey, type LockBackend } from '@criu-ts/soccr';
import { isRoot } from './helpers.js';

const key = (port: number, family: 4 | 6 = 4): ConnectionKey =>
  family === 4
    ? { local: { family, address: '127.0.0.1', port }, remote: { family, address: '127.0.0.2', port: port + 1 } }
    : { local: { family, address: '::1', port }, remote: { family, address: '::1', port: port + 1 } };

const same = (a: ConnectionKey, b: ConnectionKey) =>
  a.local.address === b.local.address && a.local.port === b.local.port && a.remote.address === b.remote.address && a.remote.port === b.remote.port;

describe('soccr network lock', function () {
  this.timeout(60_000);
  before(function () {
    if (!isRoot) this.skip(); // netfilter changes need CAP_NET_ADMIN; CI runs as root
  });

  for (const backend of ['nft', 'iptables'] as LockBackend[]) {
    it(`${backend}: lock and unlock are idempotent, list shows the owner`, async () => {
      const lock = await NetworkLock.open({ backend });
      const k4 = key(41001);
      const k6 = key(41003, 6);
      try {
        await lock.lock([k4, k6]);
        await lock.lock([k4]);
        const listed = (await lock.list()).filter((l) => same(l, k4) || same(l, k6));
        expect(listed).to.have.length(2);
        expect(listed.every((l) => l.owner === process.pid)).to.equal(true);
        await lock.unlock([k4, k6]);
        await lock.unlock([k4]);
        await lock.settle();
        expect((await lock.list()).filter((l) => same(l, k4) || same(l, k6))).to.deep.equal([]);
      } finally {
        await lock.unlock([k4, k6]).catch(() => undefined);
        await lock.close();
      }
    });

    it(`${backend}: cleanup removes the locks of a killed owner`, async () => {
      const k = key(42001);
      const script = `
        import('@criu-ts/soccr').then(async (m) => {
          const l = await m.NetworkLock.open({ backend: '${backend}' });
          await l.lock([${JSON.stringify(k)}]);
          console.log('locked');
          setInterval(() => {}, 1000);
        });`;
      const child = spawn(process.execPath, ['--input-type=module', '-e', script], { stdio: ['ignore', 'pipe', 'inherit'], cwd: process.cwd() });
      try {
        await new Promise<void>((res, rej) => {
          const t = setTimeout(() => rej(new Error('child never locked')), 20_000);
          child.stdout!.on('data', (d) => {
            if (String(d).includes('locked')) {
              clearTimeout(t);
              res();
            }
          });
        });
        child.kill('SIGKILL');
        await new Promise((r) => child.once('exit', r));
        const lock = await NetworkLock.open({ backend });
        try {
          const before = (await lock.list()).filter((l) => same(l, k));
          expect(before, 'leftover present').to.have.length(1);
          const removed = await cleanupNetworkLocks();
          expect(removed.some((r) => same(r, k))).to.equal(true);
          expect((await lock.list()).filter((l) => same(l, k))).to.deep.equal([]);
        } finally {
          await lock.close();
        }
      } finally {
        child.kill('SIGKILL');
      }
    });
  }
});

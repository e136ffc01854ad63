// When the receiving process refuses a connection or disappears, the sender
// re-creates it from its own saved state: the client keeps its connection.
import { expect } from 'chai';
import net from 'node:net';
import { NetworkLock, sendSockets, FrameReader } from '@criu-ts/soccr';
import { isRoot } from './helpers.js';

async function echoPair(): Promise<{ server: net.Socket; client: net.Socket; got: () => string; errors: string[]; close: () => void }> {
  const srv = net.createServer();
  await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
  const client = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
  const server = await new Promise<net.Socket>((r) => srv.once('connection', r));
  srv.close();
  let text = '';
  const errors: string[] = [];
  client.on('data', (d) => (text += d));
  client.on('error', (e) => errors.push(e.message));
  return { server, client, got: () => text, errors, close: () => client.destroy() };
}

async function until(f: () => boolean, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error('timed out');
    await new Promise((r) => setTimeout(r, 5));
  }
}

describe('soccr handoff fallback', function () {
  this.timeout(30_000);
  let lock: NetworkLock;
  before(async function () {
    if (!isRoot) this.skip(); // TCP_REPAIR and netfilter need root; CI runs as root
    lock = await NetworkLock.open();
  });
  after(async () => lock?.close());

  for (const mode of ['refuses', 'vanishes'] as const) {
    it(`keeps the connection when the receiver ${mode}`, async () => {
      const p = await echoPair();
      const [a, b] = await new Promise<[net.Socket, net.Socket]>((resolve) => {
        const srv = net.createServer((s) => {
          srv.close();
          resolve([c, s]);
        });
        let c: net.Socket;
        srv.listen(0, '127.0.0.1', () => (c = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1')));
      });
      // A fake receiver: reads the batch, then answers "failed" or just hangs up.
      const reader = new FrameReader(b);
      void reader.next().then((f) => {
        if (mode === 'vanishes') return b.destroy();
        const n = f.readUInt32LE(1);
        const parts = [Buffer.from([2]), Buffer.alloc(4)];
        parts[1]!.writeUInt32LE(n);
        for (let i = 0; i < n; i++) {
          const msg = Buffer.from('no room here');
          const len = Buffer.alloc(4);
          len.writeUInt32LE(msg.length);
          parts.push(Buffer.from([0]), len, msg);
        }
        const body = Buffer.concat(parts);
        const head = Buffer.alloc(4);
        head.writeUInt32LE(body.length);
        b.write(Buffer.concat([head, body]));
      });
      let kept: net.Socket | undefined;
      const res = await sendSockets(a, [p.server], { lock, onKept: (s) => (kept = s), replyTimeoutMs: 5000 });
      expect(res[0]!.outcome).to.equal('kept');
      expect(res[0]!.error?.message).to.match(mode === 'refuses' ? /no room here/ : /channel/);
      expect(kept, 'the re-created socket').to.not.equal(undefined);
      kept!.write('still here');
      await until(() => p.got() === 'still here');
      expect(p.errors).to.deep.equal([]);
      kept!.destroy();
      p.close();
      a.destroy();
      b.destroy();
      await lock.settle();
      expect((await lock.list()).filter((l) => l.local.port === p.client.remotePort)).to.deep.equal([]);
    });
  }
});

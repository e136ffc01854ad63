// freezeSocket/thawSocket in one process: what Node itself holds at the
// moment of a freeze (bytes read from the kernel but not consumed, writes not
// yet handed to the kernel) moves to the new socket exactly once, in order.
import { expect } from 'chai';
import net from 'node:net';
import { NetworkLock, freezeSocket, thawSocket } from '@criu-ts/soccr';
import { isRoot } from './helpers.js';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** Waits (bounded) until `f()` is true. */
async function until(f: () => boolean, what: string, ms = 5000): Promise<void> {
  const end = Date.now() + ms;
  while (!f()) {
    if (Date.now() > end) throw new Error(`timed out waiting for ${what}`);
    await sleep(5);
  }
}

describe('soccr freeze/thaw of a net.Socket', function () {
  this.timeout(30_000);
  let lock: NetworkLock;
  let srv: net.Server;
  const open: net.Socket[] = [];
  before(async function () {
    if (!isRoot) this.skip(); // TCP_REPAIR and netfilter need root; CI runs as root
    lock = await NetworkLock.open();
  });
  after(async () => {
    await lock?.close();
  });
  afterEach(() => {
    for (const s of open.splice(0)) s.destroy();
    srv?.close();
  });

  async function pair(): Promise<{ client: net.Socket; server: net.Socket }> {
    srv = net.createServer();
    await new Promise<void>((r) => srv.listen(0, '127.0.0.1', r));
    const client = net.connect((srv.address() as net.AddressInfo).port, '127.0.0.1');
    const server = await new Promise<net.Socket>((r) => srv.once('connection', r));
    open.push(client, server);
    return { client, server };
  }

  it('writes still buffered in Node (corked) reach the peer after the thaw, in order', async () => {
    const { client, server } = await pair();
    let got = '';
    client.on('data', (d) => (got += d));
    server.write('first|');
    await until(() => got === 'first|', 'first write');
    server.cork();
    server.write('buffered-in-node|');
    const st = await freezeSocket(server, { lock });
    expect(st.unsentLength).to.equal('buffered-in-node|'.length);
    const again = await thawSocket(st, { lock });
    open.push(again);
    again.write('after|');
    await until(() => got.length >= 'first|buffered-in-node|after|'.length, 'the rest', 5000).catch(() => undefined);
    // Before the fix the buffered bytes were given sequence numbers the peer
    // had already acknowledged, and it dropped them as old.
    expect(got).to.equal('first|buffered-in-node|after|');
  });

  it("bytes Node read but the application had not consumed go to the new owner only (no 'data' on the old one)", async () => {
    const { client, server } = await pair();
    let old = '';
    server.on('data', (d) => (old += d));
    client.write('one|');
    await until(() => old === 'one|', 'first message');
    server.pause();
    client.write('two|');
    await until(() => server.readableLength > 0, 'paused bytes in Node');
    const st = await freezeSocket(server, { lock });
    const again = await thawSocket(st, { lock });
    open.push(again);
    let now = '';
    again.on('data', (d) => (now += d));
    client.write('three|');
    await until(() => now === 'two|three|', 'bytes at the new owner').catch(() => undefined);
    expect(now).to.equal('two|three|');
    expect(old, 'old owner').to.equal('one|');
  });
});

// Handoff between processes in a network namespace, with the client in
// another namespace across a veth pair (the test's own addresses, inside
// its own namespaces only). Both namespaces are removed afterwards, also
// when the test fails.
import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { startChild, isRoot, sh } from './helpers.js';
import { streamSha, SERVER_SEED, CLIENT_SEED } from './fixtures/stream-data.js';

const TOTAL = 10 * 1024 * 1024;
const NS_S = `soccr-s-${process.pid}`;
const NS_C = `soccr-c-${process.pid}`;
const NET = 231;
const SUB = 1 + (process.pid % 250);

function ns(name: string, ...args: string[]): string {
  return sh('ip', ['netns', 'exec', name, ...args]);
}

describe('soccr handoff across network namespaces (veth)', function () {
  this.timeout(120_000);
  before(function () {
    if (!isRoot) this.skip(); // ip netns, TCP_REPAIR and netfilter need root; CI runs as root
    for (const n of [NS_S, NS_C]) sh('ip', ['netns', 'add', n]);
    sh('ip', ['link', 'add', `vs${SUB}`, 'netns', NS_S, 'type', 'veth', 'peer', 'name', `vc${SUB}`, 'netns', NS_C]);
    ns(NS_S, 'ip', 'addr', 'add', `10.${NET}.${SUB}.1/24`, 'dev', `vs${SUB}`);
    ns(NS_C, 'ip', 'addr', 'add', `10.${NET}.${SUB}.2/24`, 'dev', `vc${SUB}`);
    ns(NS_S, 'ip', '-6', 'addr', 'add', `fd00:${NET}:${SUB}::1/64`, 'dev', `vs${SUB}`, 'nodad');
    ns(NS_C, 'ip', '-6', 'addr', 'add', `fd00:${NET}:${SUB}::2/64`, 'dev', `vc${SUB}`, 'nodad');
    for (const [n, d] of [[NS_S, `vs${SUB}`], [NS_C, `vc${SUB}`]] as const) {
      ns(n, 'ip', 'link', 'set', 'lo', 'up');
      ns(n, 'ip', 'link', 'set', d, 'up');
    }
  });
  after(() => {
    // Removing a namespace removes its veth end, its addresses and its nft table.
    for (const n of [NS_S, NS_C]) {
      try {
        sh('ip', ['netns', 'del', n]);
      } catch {
        /* was never created */
      }
    }
  });

  for (const [fam, host] of [[4, `10.${NET}.${SUB}.1`], [6, `fd00:${NET}:${SUB}::1`]] as const) {
    it(`IPv${fam}: 10 MiB each way across veth, server handed over mid-stream`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'soccr-netns-'));
      const unixPath = join(dir, 'handoff.sock');
      const outFile = join(dir, 'server-received.bin');
      const b = startChild('stream-server.js', ['receive', unixPath, outFile, String(TOTAL)], NS_S);
      const a = startChild('stream-server.js', ['serve', host, unixPath, outFile, String(TOTAL), String(4 * 1024 * 1024)], NS_S);
      let c: ReturnType<typeof startChild> | undefined;
      try {
        await b.line();
        const { port } = await a.line();
        c = startChild('stream-client.js', [host, String(port), String(TOTAL)], NS_C);
        const handoff = await a.line(60_000);
        const report = await c.line(90_000);
        await b.line(60_000);
        const r = handoff.results[0];
        expect(r.outcome, JSON.stringify(handoff)).to.equal('handed-off');
        expect(r.queued.recv + r.queued.send, 'bytes carried in the queues').to.be.greaterThan(0);
        expect(report.error, 'client error').to.equal(undefined);
        expect(report.received).to.equal(TOTAL);
        expect(report.sha).to.equal(streamSha(SERVER_SEED, TOTAL));
        const got = readFileSync(outFile);
        expect(createHash('sha256').update(got).digest('hex')).to.equal(streamSha(CLIENT_SEED, TOTAL));
        console.log(`      queues at save: recv ${r.queued.recv} B, send ${r.queued.send} B (unsent ${r.queued.unsent}); handoff ${handoff.ms.toFixed(1)} ms`);
        const left = ns(NS_S, 'nft', 'list', 'set', 'inet', 'criu_ts_soccr', `locked${fam}`);
        expect(left).to.not.include('elements');
      } finally {
        for (const ch of [a, b, c]) ch?.proc.kill();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});

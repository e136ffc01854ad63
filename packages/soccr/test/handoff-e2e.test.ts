// End-to-end: a client streams N bytes each way through a connection whose
// server side is handed from one process to another mid-stream.
import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetworkLock } from '@criu-ts/soccr';
import { startChild, isRoot } from './helpers.js';
import { runClient } from './fixtures/stream-client.js';
import { streamSha, SERVER_SEED, CLIENT_SEED } from './fixtures/stream-data.js';

const TOTAL = 10 * 1024 * 1024;
const HANDOFF_AFTER = 4 * 1024 * 1024;
// The server sends exactly this much before the handoff; the client stops reading there.
const HOLD_AT = 2 * 1024 * 1024;

describe('soccr handoff between processes (loopback)', function () {
  this.timeout(120_000);
  before(function () {
    if (!isRoot) this.skip(); // needs CAP_NET_ADMIN for TCP_REPAIR and netfilter; CI runs as root
  });

  for (const [fam, host] of [[4, '127.0.0.1'], [6, '::1']] as const) {
    it(`IPv${fam}: 10 MiB each way, server handed over mid-stream, SHA-256 match both ways`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'soccr-e2e-'));
      const unixPath = join(dir, 'handoff.sock');
      const outFile = join(dir, 'server-received.bin');
      const b = startChild('stream-server.js', ['receive', unixPath, outFile, String(TOTAL)]);
      const a = startChild('stream-server.js', ['serve', host, unixPath, outFile, String(TOTAL), String(HANDOFF_AFTER), String(HOLD_AT)]);
      let client: ReturnType<typeof runClient> | undefined;
      try {
        await b.line();
        const { port } = await a.line();
        // The client stops reading at HOLD_AT bytes, and the server hands over
        // only once both kernel queues hold bytes (stream-server fillQueues):
        // the save point carries both queues by construction, not by timing.
        client = runClient(host, port, TOTAL, { holdAt: HOLD_AT });
        const handoff = await a.line(60_000);
        client.release();
        const report = await client;
        await b.line(60_000);
        if (handoff.error) expect.fail(`server could not set up the save point: ${handoff.error}`);
        const r = handoff.results[0];
        expect(r.outcome, JSON.stringify(handoff)).to.equal('handed-off');
        // The point of the test: the handoff carried bytes in both queues.
        expect(r.queued.recv, 'receive queue bytes at save').to.be.greaterThan(0);
        expect(r.queued.send, 'send queue bytes at save').to.be.greaterThan(0);
        expect(report.error, 'client saw an error').to.equal(undefined);
        expect(report.sent, 'bytes the client wrote').to.equal(TOTAL);
        expect(report.received).to.equal(TOTAL);
        expect(report.sha).to.equal(streamSha(SERVER_SEED, TOTAL));
        const got = readFileSync(outFile);
        expect(got.length).to.equal(TOTAL);
        expect(createHash('sha256').update(got).digest('hex')).to.equal(streamSha(CLIENT_SEED, TOTAL));
        console.log(`      queues at save: recv ${r.queued.recv} B, send ${r.queued.send} B (unsent ${r.queued.unsent}); handoff ${handoff.ms.toFixed(1)} ms; save point locked after ${handoff.before?.tries} tries`);
      } finally {
        client?.release();
        a.proc.kill();
        b.proc.kill();
        rmSync(dir, { recursive: true, force: true });
      }
      const lock = await NetworkLock.open();
      try {
        expect(await lock.list(), 'lock elements left').to.deep.equal([]);
      } finally {
        await lock.close();
      }
    });
  }
});

// End-to-end, half-closed: the server side of a connection with one
// direction already shut is handed from one process to another mid-stream,
// with bytes queued in the open direction (fixtures/half-closed-server).
//   CLOSE_WAIT: the client shut its write side at once; the server streams
//     TOTAL bytes to it, handed over with its send queue full.
//   FIN_WAIT2: the server sent SERVER_BYTES and shut its write side; the
//     client streams TOTAL bytes to it, handed over with its receive queue full.
// Checked: SHA-256 of the open direction on both ends, the closed direction
// stays closed (EOF once, no byte more), the saved/restored state, no lock left.
import { expect } from 'chai';
import { mkdtempSync, readFileSync, rmSync, existsSync } from 'node:fs';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { NetworkLock } from '@criu-ts/soccr';
import { startChild, isRoot } from './helpers.js';
import { runClient } from './fixtures/stream-client.js';
import { streamSha, SERVER_SEED, CLIENT_SEED } from './fixtures/stream-data.js';

const TOTAL = 10 * 1024 * 1024;
// CLOSE_WAIT: the server sends exactly this much before the handoff; the client stops reading there.
const HOLD_AT = 2 * 1024 * 1024;
// FIN_WAIT2: the server stops reading after this much (its receive queue then fills).
const HANDOFF_AFTER = 4 * 1024 * 1024;
// FIN_WAIT2: everything the server ever sends, before its FIN.
const SERVER_BYTES = 1024 * 1024;

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('soccr half-closed handoff between processes (loopback)', function () {
  this.timeout(120_000);
  before(function () {
    if (!isRoot) this.skip(); // needs CAP_NET_ADMIN for TCP_REPAIR and netfilter; CI runs as root
  });

  for (const [fam, host] of [[4, '127.0.0.1'], [6, '::1']] as const) {
    it(`IPv${fam} CLOSE_WAIT: client shut its write side, server streams 10 MiB, handed over mid-stream`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'soccr-hc-e2e-'));
      const unixPath = join(dir, 'handoff.sock');
      const outFile = join(dir, 'server-received.bin');
      const b = startChild('half-closed-server.js', ['receive', 'close-wait', unixPath, outFile, String(TOTAL)]);
      const a = startChild('half-closed-server.js', ['serve', 'close-wait', host, unixPath, outFile, String(TOTAL), '0', String(HOLD_AT)]);
      let client: ReturnType<typeof runClient> | undefined;
      try {
        await b.line();
        const { port } = await a.line();
        // total 0: the client ends its write side right after connecting.
        client = runClient(host, port, 0, { holdAt: HOLD_AT });
        const handoff = await a.line(60_000);
        client.release();
        const report = await client;
        const fin = await b.line(60_000);
        if (handoff.error) expect.fail(`server could not set up the save point: ${handoff.error}`);
        const r = handoff.results[0];
        expect(r.outcome, JSON.stringify(handoff)).to.equal('handed-off');
        expect(handoff.a.state, 'state at save').to.equal('CLOSE_WAIT');
        expect(fin.b.state, 'state after restore').to.equal('CLOSE_WAIT');
        expect(r.queued.send, 'send queue bytes at save').to.be.greaterThan(0);
        expect(r.queued.recv, 'receive queue bytes at save').to.equal(0);
        // Open direction, server -> client.
        expect(report.error, 'client saw an error').to.equal(undefined);
        expect(report.received).to.equal(TOTAL);
        expect(report.sha).to.equal(streamSha(SERVER_SEED, TOTAL));
        expect(report.ends, "client 'end' events").to.equal(1);
        // Closed direction, client -> server: nothing ever arrived, the new
        // owner sees the FIN exactly once.
        expect(report.sent, 'bytes the client wrote').to.equal(0);
        expect(handoff.a.closedBytes, 'bytes the old owner got').to.equal(0);
        expect(fin.b.closedBytes, 'bytes the new owner got').to.equal(0);
        expect(fin.b.ends, "new owner's 'end' events").to.equal(1);
        expect(fin.b.error, 'new owner saw an error').to.equal(undefined);
        expect(existsSync(outFile) ? readFileSync(outFile).length : 0).to.equal(0);
        console.log(`      queues at save: send ${r.queued.send} B (unsent ${r.queued.unsent}); old owner saw 'end' ${handoff.a.ends}x; handoff ${handoff.ms.toFixed(1)} ms; locked after ${handoff.before?.tries} tries`);
      } finally {
        client?.release();
        a.proc.kill();
        b.proc.kill();
        rmSync(dir, { recursive: true, force: true });
      }
      await noLocksLeft();
    });

    it(`IPv${fam} FIN_WAIT2: server shut its write side, client streams 10 MiB, handed over mid-stream`, async () => {
      const dir = mkdtempSync(join(tmpdir(), 'soccr-hc-e2e-'));
      const unixPath = join(dir, 'handoff.sock');
      const outFile = join(dir, 'server-received.bin');
      const b = startChild('half-closed-server.js', ['receive', 'fin-wait2', unixPath, outFile, String(TOTAL)]);
      const a = startChild('half-closed-server.js', ['serve', 'fin-wait2', host, unixPath, outFile, String(TOTAL), String(HANDOFF_AFTER), String(SERVER_BYTES)]);
      let client: ReturnType<typeof runClient> | undefined;
      try {
        await b.line();
        const { port } = await a.line();
        client = runClient(host, port, TOTAL);
        const handoff = await a.line(60_000);
        const report = await client;
        const fin = await b.line(60_000);
        if (handoff.error) expect.fail(`server could not set up the save point: ${handoff.error}`);
        const r = handoff.results[0];
        expect(r.outcome, JSON.stringify(handoff)).to.equal('handed-off');
        expect(handoff.a.state, 'state at save').to.equal('FIN_WAIT2');
        expect(fin.b.state, 'state after restore').to.equal('FIN_WAIT2');
        expect(r.queued.recv, 'receive queue bytes at save').to.be.greaterThan(0);
        expect(r.queued.send, 'send queue bytes at save').to.equal(0);
        // Open direction, client -> server.
        expect(report.error, 'client saw an error').to.equal(undefined);
        expect(report.sent, 'bytes the client wrote').to.equal(TOTAL);
        const got = readFileSync(outFile);
        expect(got.length).to.equal(TOTAL);
        expect(sha(got)).to.equal(streamSha(CLIENT_SEED, TOTAL));
        expect(fin.b.received + handoff.a.received, 'bytes read by old + new owner').to.equal(TOTAL);
        expect(fin.b.ends, "new owner's 'end' events").to.equal(1);
        expect(fin.b.error, 'new owner saw an error').to.equal(undefined);
        expect(handoff.a.ends, "old owner's 'end' events").to.equal(0);
        // Closed direction, server -> client: exactly what was sent before
        // the FIN, and the FIN exactly once.
        expect(handoff.a.sent).to.equal(SERVER_BYTES);
        expect(report.received).to.equal(SERVER_BYTES);
        expect(report.sha).to.equal(streamSha(SERVER_SEED, SERVER_BYTES));
        expect(report.ends, "client 'end' events").to.equal(1);
        console.log(`      queues at save: recv ${r.queued.recv} B; handoff ${handoff.ms.toFixed(1)} ms; locked after ${handoff.before?.tries} tries`);
      } finally {
        a.proc.kill();
        b.proc.kill();
        rmSync(dir, { recursive: true, force: true });
      }
      await noLocksLeft();
    });
  }
});

async function noLocksLeft(): Promise<void> {
  const lock = await NetworkLock.open();
  try {
    expect(await lock.list(), 'lock elements left').to.deep.equal([]);
  } finally {
    await lock.close();
  }
}

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
const HANDOFF_AFTER = 4 * 1024 * 1024;
// The server sends exactly this much before the handoff; the client stops reading there.
const HOLD_AT = 2 * 1024 * 1024;
const NS_S = `soccr-s-${process.pid}`;
const NS_C = `soccr-c-${process.pid}`;
const NET = 231;
const SUB = 1 + (process.pid % 250);

function ns(name: string, ...args: string[]): string {
  return sh('ip', ['netns', 'exec', name, ...args]);
}

/** What a failure report needs: both ends' sockets, the lock table, the children's stderr. */
function diagnostics(children: (ReturnType<typeof startChild> | undefined)[]): string {
  const out: string[] = [];
  const tryRun = (label: string, f: () => string) => {
    try {
      out.push(`--- ${label}\n${f()}`);
    } catch (e) {
      out.push(`--- ${label}: ${(e as Error).message}`);
    }
  };
  tryRun(`ss ${NS_S}`, () => ns(NS_S, 'ss', '-tnoie'));
  tryRun(`ss ${NS_C}`, () => ns(NS_C, 'ss', '-tnoie'));
  tryRun(`nft ${NS_S}`, () => ns(NS_S, 'nft', 'list', 'table', 'inet', 'criu_ts_soccr'));
  children.forEach((ch, i) => ch && out.push(`--- stderr of ${['serve', 'receive', 'client'][i]}\n${ch.stderr().slice(-2000)}`));
  return out.join('\n');
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
      const a = startChild('stream-server.js', ['serve', host, unixPath, outFile, String(TOTAL), String(HANDOFF_AFTER), String(HOLD_AT)], NS_S);
      let c: ReturnType<typeof startChild> | undefined;
      // Stage timeouts add up to less than mocha's: a stall fails with evidence.
      let stage = 'start';
      let handoff: Record<string, any> = {};
      let report: Record<string, any> = {};
      try {
        try {
          await b.line();
          const { port } = await a.line();
          // Held at HOLD_AT until SIGUSR2 (`ip netns exec` execs node: same pid);
          // the server hands over once both kernel queues hold bytes.
          c = startChild('stream-client.js', [host, String(port), String(TOTAL), String(HOLD_AT)], NS_C);
          stage = 'handoff';
          handoff = await a.line(40_000);
          c.proc.kill('SIGUSR2');
          if (handoff.error) expect.fail(`server could not set up the save point: ${handoff.error}`);
          stage = 'client report';
          report = await c.line(50_000);
          stage = 'new owner done';
          await b.line(20_000);
        } catch (e) {
          (e as Error).message += `\n  stage: ${stage}\n${diagnostics([a, b, c])}`;
          throw e;
        }
        const r = handoff.results[0];
        expect(r.outcome, JSON.stringify(handoff)).to.equal('handed-off');
        expect(r.queued.recv, 'receive queue bytes at save').to.be.greaterThan(0);
        expect(r.queued.send, 'send queue bytes at save').to.be.greaterThan(0);
        expect(report.error, 'client error').to.equal(undefined);
        expect(report.sent, 'bytes the client wrote').to.equal(TOTAL);
        expect(report.received).to.equal(TOTAL);
        expect(report.sha).to.equal(streamSha(SERVER_SEED, TOTAL));
        const got = readFileSync(outFile);
        expect(got.length).to.equal(TOTAL);
        expect(createHash('sha256').update(got).digest('hex')).to.equal(streamSha(CLIENT_SEED, TOTAL));
        console.log(`      queues at save: recv ${r.queued.recv} B, send ${r.queued.send} B (unsent ${r.queued.unsent}); handoff ${handoff.ms.toFixed(1)} ms; save point locked after ${handoff.before?.tries} tries`);
        const left = ns(NS_S, 'nft', 'list', 'set', 'inet', 'criu_ts_soccr', `locked${fam}`);
        expect(left).to.not.include('elements');
      } finally {
        for (const ch of [a, b, c]) ch?.proc.kill();
        rmSync(dir, { recursive: true, force: true });
      }
    });
  }
});

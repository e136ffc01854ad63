// A Node.js HTTP server with in-memory state (a Map of counters) under load from a client in
// this process over keep-alive connections on loopback, checkpointed with its live connections
// (tcpEstablished): once left running, then killed and restored, twice. Requests in flight at the
// dump (in either direction's queues) and a 4 MiB download in progress must complete after the
// restore; every increment must be counted exactly once (the client sees each key's values
// 1..n with no gap or repeat, and the server's state agrees), the download's hash must match,
// and no connection may be reset.
//
// The client's event loop does not run while dumpSync/restoreSync block it: requests already
// written wait in the kernel's queues (or behind the network lock), which is the point.
import { expect } from 'chai';
import { createHash } from 'node:crypto';
import http from 'node:http';
import { join } from 'node:path';
import { restoreSync } from '@criu-ts/core';
import { listLocksSync } from '@criu-ts/soccr';
import { alive, sleepMs } from './restore-helpers.js';
import { TEST_BIN, rootWithSubreaper } from './programs.js';
import { CountingProgram } from './counting-program.js';

const BIG = 4 << 20;

const SERVER = String.raw`
'use strict';
const fs = require('fs');
const http = require('http');
const [reportPath] = process.argv.slice(2);
const report = fs.openSync(reportPath, 'a');
const say = (line) => fs.writeSync(report, line + '\n');
const counts = new Map();
let total = 0;
function bigBody(n) {
  const b = Buffer.alloc(n);
  let x = 12345;
  for (let i = 0; i < n; i++) { x = (Math.imul(x, 1103515245) + 12345) >>> 0; b[i] = x >>> 16; }
  return b;
}
const big = bigBody(${BIG});
const server = http.createServer((req, res) => {
  const url = new URL(req.url, 'http://localhost');
  let body;
  if (url.pathname === '/hit') {
    const key = url.searchParams.get('key');
    const n = (counts.get(key) || 0) + 1;
    counts.set(key, n);
    total++;
    body = Buffer.from(JSON.stringify({ key, n, total, pid: process.pid }));
  } else if (url.pathname === '/state') {
    body = Buffer.from(JSON.stringify({ total, counts: Object.fromEntries(counts), pid: process.pid }));
  } else if (url.pathname === '/big') {
    body = big;
  } else {
    res.writeHead(404).end();
    return;
  }
  res.writeHead(200, { 'content-type': 'application/octet-stream', 'content-length': body.length });
  res.end(body);
});
// The restored process's clocks ran on while it was dumped: no idle timeout may close the
// client's connections meanwhile.
server.keepAliveTimeout = 600000;
server.headersTimeout = 600000;
server.requestTimeout = 0;
server.listen(0, '127.0.0.1', () => say('ready ' + process.pid + ' ' + server.address().port));
process.on('SIGUSR1', () => say('done 0 ' + total));
`;

/** The client: keep-alive connections, sequential requests per worker, everything it saw. */
class Load {
  readonly agent = new http.Agent({ keepAlive: true, maxSockets: 4 });
  readonly seen = new Map<string, number[]>();
  readonly errors: string[] = [];
  readonly sockets = new Set<unknown>();
  private running = true;
  private readonly workers: Promise<void>[] = [];
  done = 0;

  constructor(readonly port: number) {
    for (let w = 0; w < 4; w++) this.workers.push(this.worker(w));
  }

  get(path: string): Promise<Buffer> {
    return new Promise((resolve, reject) => {
      const req = http.get({ host: '127.0.0.1', port: this.port, path, agent: this.agent }, (res) => {
        this.sockets.add(res.socket);
        const chunks: Buffer[] = [];
        res.on('data', (c: Buffer) => chunks.push(c));
        res.on('end', () => resolve(Buffer.concat(chunks)));
        res.on('error', reject);
      });
      req.on('error', reject);
    });
  }

  private async worker(w: number): Promise<void> {
    let i = 0;
    while (this.running) {
      const key = `k${(w * 7 + i++) % 10}`;
      try {
        const r = JSON.parse((await this.get(`/hit?key=${key}`)).toString()) as { key: string; n: number };
        if (r.key !== key) this.errors.push(`asked for ${key}, got ${r.key}`);
        this.seen.set(key, [...(this.seen.get(key) ?? []), r.n]);
        this.done++;
      } catch (e) {
        this.errors.push(`${key}: ${(e as Error).message}`);
        await new Promise((r) => setTimeout(r, 10));
      }
    }
  }

  /** Waits (event loop running) until `n` more requests are done. */
  async more(n: number, timeoutMs = 30_000): Promise<void> {
    const target = this.done + n;
    const deadline = Date.now() + timeoutMs;
    while (this.done < target) {
      if (Date.now() > deadline) throw new Error(`load stalled at ${this.done} of ${target} requests; errors: ${this.errors.slice(0, 5).join('; ')}`);
      await new Promise((r) => setTimeout(r, 5));
    }
  }

  async stop(): Promise<void> {
    this.running = false;
    await Promise.all(this.workers);
  }
}

function expectedBig(): Buffer {
  const b = Buffer.alloc(BIG);
  let x = 12345;
  for (let i = 0; i < BIG; i++) {
    x = (Math.imul(x, 1103515245) + 12345) >>> 0;
    b[i] = x >>> 16;
  }
  return b;
}

const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');

describe('core: a Node.js HTTP server with live client connections (tcpEstablished)', function () {
  this.timeout(180_000);
  let server: CountingProgram | undefined;
  let load: Load | undefined;

  rootWithSubreaper();
  afterEach(async () => {
    await load?.stop();
    load?.agent.destroy();
    load = undefined;
    server?.cleanup();
    server = undefined;
    expect(listLocksSync().filter((l) => l.holder !== undefined), 'no network lock left').to.deep.equal([]);
  });

  it('keeps serving through a dump left running, then a dump and restore twice: same state, no request lost or repeated', async function () {
    server = new CountingProgram('node http server', [join(TEST_BIN, 'run-clean'), process.execPath], 'server.js', SERVER);
    const port = Number(server.lines().find((l) => l.startsWith('ready'))!.split(' ')[2]);
    load = new Load(port);
    await load.more(200);

    // Left running: the server does not notice, the clients neither.
    server.dump({ leave: 'running', tcpEstablished: true });
    await load.more(200);

    const wantBig = sha(expectedBig());
    for (let round = 0; round < 2; round++) {
      // A download in progress across the dump: most of it waits in the queues.
      const download = load.get('/big');
      await new Promise((r) => setTimeout(r, 5));
      const before = load.done;
      server.dump({ tcpEstablished: true });
      expect(alive(server.pid)).to.equal(false);
      const r = restoreSync({ imagesDir: server.images, detached: true, tcpEstablished: true });
      expect(r.pid).to.equal(server.pid);
      expect(sha(await download), `round ${round}: download intact`).to.equal(wantBig);
      await load.more(200);
      expect(load.done).to.be.greaterThan(before + 199);
    }
    await load.stop();
    const state = JSON.parse((await load.get('/state')).toString()) as { total: number; counts: Record<string, number>; pid: number };
    expect(state.pid).to.equal(server.pid);
    expect(load.errors, 'no request failed, no connection was reset').to.deep.equal([]);
    // Every increment the server made, the client saw exactly once, in order per key.
    let total = 0;
    for (const [key, values] of load.seen) {
      const sorted = [...values].sort((a, b) => a - b);
      expect(sorted, `values of ${key}`).to.deep.equal(Array.from({ length: values.length }, (_, i) => i + 1));
      expect(state.counts[key], `server's count of ${key}`).to.equal(values.length);
      total += values.length;
    }
    expect(state.total).to.equal(total);
    expect(load.sockets.size, 'the same keep-alive connections all along').to.be.at.most(5);
    sleepMs(1);
  });
});

// A real Node.js process checkpointed: a script that counts on a setInterval timer, holds state
// (an object graph, a Map of 1000 entries, a 1 MiB Buffer of pseudo-random bytes) and appends
// each count to a progress file is dumped with dumpSync() and restored with restoreSync(). Node
// brings the kinds of descriptors libuv lives on (epoll instances, eventfds waking the loop from
// the thread pool, the signal pipe) and about ten threads (V8 platform workers, the libuv pool).
// After the restore it must count on without a gap or a repeat and, asked with SIGUSR1 (handled
// through libuv's signal pipe), check its data and read a file through the thread pool (async
// fs: the pool's threads and the eventfd that wakes the loop must work).
//
// Started through tests/bin/run-clean (no leaked descriptor above 2) and `setsid -f` (own
// session, not a child_process of ours).
import { expect } from 'chai';
import { readdirSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { restoreSync } from '@criu-ts/core';
import { alive, ourStubs, sleepMs } from './restore-helpers.js';
import { TEST_BIN, rootWithSubreaper } from './programs.js';
import { CountingProgram, expectConsecutive } from './counting-program.js';

const PROGRAM = String.raw`
'use strict';
const fs = require('fs');
const [reportPath, progressPath] = process.argv.slice(2);
const PID = process.pid;
function pseudoRandom(n, seed) {
  const b = Buffer.alloc(n);
  let x = seed >>> 0;
  for (let i = 0; i < n; i++) { x = (Math.imul(x, 1664525) + 1013904223) >>> 0; b[i] = x >>> 24; }
  return b;
}
const SEED = 20261201;
const big = pseudoRandom(1 << 20, SEED);
const state = { name: 'criu-ts', items: Array.from({ length: 100 }, (_, i) => i), nested: { pi: Math.PI, word: 'checkpoint' }, last: 0 };
const squares = new Map();
for (let i = 0; i < 1000; i++) squares.set('k' + i, i * i);
let counter = 0;
const progress = fs.openSync(progressPath, 'a');
const report = fs.openSync(reportPath, 'a');
const say = (line) => fs.writeSync(report, line + '\n');

async function check() {
  const text = await fs.promises.readFile(progressPath, 'utf8');
  const results = [
    ['pid', process.pid === PID],
    ['counter matches state', state.last === counter],
    ['object graph', JSON.stringify(state.items) === JSON.stringify(Array.from({ length: 100 }, (_, i) => i)) && state.nested.pi === Math.PI && state.nested.word === 'checkpoint' && state.name === 'criu-ts'],
    ['map', squares.size === 1000 && [...squares].every(([k, v]) => v === Number(k.slice(1)) ** 2)],
    ['buffer 1 MiB', big.equals(pseudoRandom(1 << 20, SEED))],
    ['async fs read through the thread pool', text.split('\n').filter(Boolean).length >= counter - 1],
    ['timers and clock', performance.now() > 0 && Date.now() > 1.7e12],
    ['cwd', process.cwd() === require('path').dirname(reportPath)],
  ];
  let failures = 0;
  for (const [what, good] of results) { say((good ? 'ok ' : 'FAIL ') + what); if (!good) failures++; }
  say('done ' + failures + ' ' + counter);
}

process.on('SIGUSR1', () => { check().catch((e) => say('FAIL check threw ' + e.message)); });
process.chdir(require('path').dirname(reportPath));
say('ready ' + PID);
const timer = setInterval(() => {
  counter++;
  state.last = counter;
  fs.writeSync(progress, counter + '\n');
  if (counter >= 60000) { clearInterval(timer); process.exit(3); }
}, 5);
`;

describe('core: a Node.js process dumped and restored (library API)', function () {
  this.timeout(120_000);
  let counter: CountingProgram | undefined;
  const start = () => new CountingProgram('node', [join(TEST_BIN, 'run-clean'), process.execPath], 'counter.js', PROGRAM);

  rootWithSubreaper();
  afterEach(() => {
    counter?.cleanup();
    counter = undefined;
  });

  it('comes back with the same PID, threads and descriptors and counts on from where it stopped', function () {
    counter = start();
    const pid = counter.pid;
    const threads = readdirSync(`/proc/${pid}/task`).length;
    expect(threads, 'node runs several threads').to.be.greaterThan(4);
    const links = (p: number) => readdirSync(`/proc/${p}/fd`).map((fd) => readlinkKind(p, fd)).sort();
    const fdsBefore = links(pid);
    expect(fdsBefore.some((l) => l.includes('eventpoll')) && fdsBefore.some((l) => l.includes('eventfd')) && fdsBefore.some((l) => l.includes(' pipe:'))).to.equal(true);
    counter.countsTo(20);

    const atDump = counter.dump();
    sleepMs(100);
    expect(counter.last(), 'nothing counts while dumped').to.equal(atDump);
    const r = restoreSync({ imagesDir: counter.images, detached: true });
    expect(r.pid).to.equal(pid);
    expect(ourStubs()).to.deep.equal([]);
    expect(readdirSync(`/proc/${pid}/task`)).to.have.length(threads);
    expect(links(pid)).to.deep.equal(fdsBefore);
    counter.countsTo(atDump + 40);
    expect(alive(pid)).to.equal(true);

    const { failures, checks, done } = counter.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(8);
    expect(Number(done.split(' ')[2])).to.be.at.least(atDump + 40);
    expectConsecutive(counter.progress());
  });

  it('leave-running, then kill, restore, dump again, restore again: still counting, still intact', function () {
    counter = start();
    counter.countsTo(10);
    const whileRunning = counter.dump({ leave: 'running' });
    counter.countsTo(whileRunning + 10); // it ran on through its dump
    let atDump = 0;
    for (let round = 0; round < 2; round++) {
      atDump = counter.dump();
      const r = restoreSync({ imagesDir: counter.images, detached: true });
      expect(r.pid, `round ${round}`).to.equal(counter.pid);
      counter.countsTo(atDump + 10);
    }
    const { failures } = counter.check();
    expect(failures).to.deep.equal([]);
    expectConsecutive(counter.progress());
  });
});

function readlinkKind(pid: number, fd: string): string {
  return `${fd} ${readlinkSync(`/proc/${pid}/fd/${fd}`).replace(/\[\d+\]$/, '')}`;
}

// Every fault point of dump and of restore, on a small C program (tests/bin/state-keeper: memory
// patterns, AVX state, signals, timers, a file deleted while open...) and on a Node.js process.
// A dump fault must leave the target running untraced with its maps, fds and state as before and
// no images directory that looks complete; a restore fault must leave no restored process (every
// PID and TID free again), no stub and no temporary file; a restore without a fault then works.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { DUMP_FAULT_POINTS, DumpError, dumpSync, RESTORE_FAULT_POINTS, RestoreError, restoreSync } from '@criu-ts/core';
import { alive, ourStubs } from './restore-helpers.js';
import { StateKeeper, TEST_BIN, rootWithSubreaper } from './programs.js';
import { CountingProgram, expectConsecutive } from './counting-program.js';
import {
  dumpedIds, expectIdsFree, expectNoGhostLeftovers, expectRunningUntouched, fdLinksOf, mapsOf,
} from './reliability-helpers.js';

const CLI = new URL('../../../cli/dist/criu-ts.cjs', import.meta.url).pathname;

/** A Node.js program that counts every 5 ms (see e2e-node.test.ts for the bigger one). */
const NODE_PROGRAM = String.raw`
'use strict';
const fs = require('fs');
const [reportPath, progressPath] = process.argv.slice(2);
const data = Buffer.alloc(1 << 20);
for (let i = 0; i < data.length; i++) data[i] = (i * 7 + 3) & 0xff;
let counter = 0;
const progress = fs.openSync(progressPath, 'a');
const report = fs.openSync(reportPath, 'a');
const say = (line) => fs.writeSync(report, line + '\n');
process.on('SIGUSR1', () => {
  let good = true;
  for (let i = 0; i < data.length; i++) if (data[i] !== ((i * 7 + 3) & 0xff)) { good = false; break; }
  say((good ? 'ok' : 'FAIL') + ' buffer');
  say('done ' + (good ? 0 : 1) + ' ' + counter);
});
say('ready ' + process.pid);
setInterval(() => { counter++; fs.writeSync(progress, counter + '\n'); if (counter >= 60000) process.exit(3); }, 5);
`;

function expectFault<E extends Error>(kind: new (...a: never[]) => E, point: string, fn: () => unknown): E {
  try {
    fn();
  } catch (error) {
    expect(error, `${point}: ${String(error)}`).to.be.instanceOf(kind);
    expect((error as Error).message).to.contain(`fault injected at ${point}`);
    return error as E;
  }
  throw new Error(`${point}: no fault`);
}

describe('reliability: every fault point of dump and restore', function () {
  this.timeout(240_000);
  rootWithSubreaper();

  it('criu-ts check --faults lists every dump and restore point', function () {
    const out = spawnSync(process.execPath, [CLI, 'check', '--faults'], { encoding: 'utf8' }).stdout.split('\n').filter(Boolean);
    expect(out).to.deep.equal([...DUMP_FAULT_POINTS.map((p) => `dump:${p}`), ...RESTORE_FAULT_POINTS.map((p) => `restore:${p}`)]);
  });

  describe('a C program (state-keeper)', function () {
    let keeper: StateKeeper | undefined;
    afterEach(() => {
      keeper?.cleanup();
      keeper = undefined;
    });

    it('dump: every fault leaves it running, untraced, with maps, fds and state as before, and no complete images', function () {
      keeper = new StateKeeper();
      const pid = keeper.pid;
      const before = { maps: mapsOf(pid), fds: fdLinksOf(pid) };
      for (const leave of ['kill', 'running'] as const) {
        for (const point of DUMP_FAULT_POINTS) {
          const what = `${point} (leave ${leave})`;
          const e = expectFault(DumpError, point, () => dumpSync({ pid, imagesDir: keeper!.images, leave, faultAt: point }));
          expect(e.pid).to.equal(pid);
          expect(existsSync(keeper.images), `${what}: the images directory it made is removed`).to.equal(false);
          expectRunningUntouched(pid, what, before);
        }
      }
      // Through the environment and the command line, as an operator would.
      const cli = spawnSync(process.execPath, [CLI, 'dump', '-t', String(pid), '-D', keeper.images], {
        encoding: 'utf8', env: { ...process.env, CRIU_TS_FAULT: 'dump:after-parasite' }, timeout: 60_000,
      });
      expect(cli.status, cli.stderr).to.equal(1);
      expect(cli.stderr + cli.stdout).to.match(/Error.*fault injected at after-parasite/);
      expectRunningUntouched(pid, 'CRIU_TS_FAULT=dump:after-parasite', before);
      const { failures, checks } = keeper.check();
      expect(failures).to.deep.equal([]);
      expect(checks.length).to.be.greaterThan(15);
    });

    it('restore: every fault leaves no process, the PIDs free, no stub and no ghost file; then it restores', function () {
      keeper = new StateKeeper();
      keeper.dump();
      const { pids, tids } = dumpedIds(keeper.images);
      for (const detached of [true, false]) {
        for (const point of RESTORE_FAULT_POINTS) {
          const what = `${point} (${detached ? 'detached' : 'attached'})`;
          const e = expectFault(RestoreError, point, () => restoreSync({ imagesDir: keeper!.images, detached, faultAt: point }));
          expect(e.evidence.fault).to.equal(point);
          expectIdsFree([...pids, ...tids], what);
          expect(ourStubs(), `${what}: stubs`).to.deep.equal([]);
          // gone.txt was deleted while open: restore recreates it for a moment (a ghost file).
          expectNoGhostLeftovers(keeper.dir, ['gone.txt'], what);
        }
      }
      const cli = spawnSync(process.execPath, [CLI, 'restore', '-D', keeper.images, '-d'], {
        encoding: 'utf8', env: { ...process.env, CRIU_TS_FAULT: 'restore:after-files' }, timeout: 60_000,
      });
      expect(cli.status, cli.stderr).to.equal(1);
      expect(cli.stderr + cli.stdout).to.match(/Error.*fault injected at after-files/);
      expectIdsFree([...pids, ...tids], 'CRIU_TS_FAULT=restore:after-files');
      expectNoGhostLeftovers(keeper.dir, ['gone.txt'], 'CRIU_TS_FAULT=restore:after-files');

      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      expect(alive(r.pid)).to.equal(true);
      const { failures, checks } = keeper.check();
      expect(failures).to.deep.equal([]);
      expect(checks.length).to.be.greaterThan(15);
    });
  });

  describe('a Node.js process', function () {
    let counter: CountingProgram | undefined;
    const start = () => new CountingProgram('node', [join(TEST_BIN, 'run-clean'), process.execPath], 'counter.js', NODE_PROGRAM);
    afterEach(() => {
      counter?.cleanup();
      counter = undefined;
    });

    it('dump: every fault leaves it counting, untraced, with maps and fds as before', function () {
      counter = start();
      const pid = counter.pid;
      counter.countsTo(5);
      const before = { maps: mapsOf(pid), fds: fdLinksOf(pid) };
      for (const point of DUMP_FAULT_POINTS) {
        expectFault(DumpError, point, () => dumpSync({ pid, imagesDir: counter!.images, faultAt: point }));
        expect(existsSync(counter.images), `${point}: images`).to.equal(false);
        expectRunningUntouched(pid, point, before);
        counter.countsTo(counter.last() + 5);
      }
      const { failures, done } = counter.check();
      expect(failures).to.deep.equal([]);
      expect(done).to.match(/^done 0 /);
      expectConsecutive(counter.progress());
    });

    it('restore: every fault leaves no process and the PIDs free; then it restores and counts on', function () {
      counter = start();
      counter.countsTo(5);
      const atDump = counter.dump();
      const { pids, tids } = dumpedIds(counter.images);
      expect(tids.length, 'node runs threads').to.be.greaterThan(3);
      for (const point of RESTORE_FAULT_POINTS) {
        expectFault(RestoreError, point, () => restoreSync({ imagesDir: counter!.images, detached: true, faultAt: point }));
        expectIdsFree([...pids, ...tids], point);
        expect(ourStubs(), `${point}: stubs`).to.deep.equal([]);
        expect(counter.last(), `${point}: nothing counted`).to.equal(atDump);
      }
      const r = restoreSync({ imagesDir: counter.images, detached: true });
      expect(r.pid).to.equal(counter.pid);
      counter.countsTo(atDump + 10);
      expect(counter.check().failures).to.deep.equal([]);
      expectConsecutive(counter.progress());
    });
  });
});

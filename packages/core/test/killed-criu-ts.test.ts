// `criu-ts dump` and `criu-ts restore` SIGKILLed at 50 random moments each, on a program with
// 256 MiB of memory and 8 threads besides its main one (tests/bin/memhog).
//
// Restore: whatever the moment, no task with a restored PID or TID survives unless the restore
// had completed (released: --pidfile is written right after), and the PIDs are free again; a
// completed one runs intact.
// Dump (-R): the target runs on, untraced, with its maps, fds, threads, signal masks and memory
// checksum as before, whatever the moment: every thread criu-ts runs code in returns to its own
// state through its return chain, which also removes what was made of the parasite so far, and
// the parasite daemon cures itself (compel's injection.ts and native/parasite.c).
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { dumpSync } from '@criu-ts/core';
import { asPid, wait4, WNOHANG } from '@criu-ts/sys';
import { isRoot, procState, waitFor } from './restore-helpers.js';
import { becomeSubreaper, reapIfOurs, TEST_BIN } from './programs.js';
import { blockedMasksOf, dumpedIds, expectIdsFree, expectRunningUntouched, fdLinksOf, mapsOf, tracerOf } from './reliability-helpers.js';

const CLI = new URL('../../../cli/dist/criu-ts.cjs', import.meta.url).pathname;
const MIB = 256;
const THREADS = 8;
const ROUNDS = 50;
/** The whole of each half (restore, dump) must end within this. */
const BUDGET_MS = 200_000;

/** A running memhog (256 MiB, 8 waiting threads), started through `setsid -f`. */
class MemHog {
  readonly report: string;
  readonly pid: number;
  readonly checksum: string;

  constructor(readonly dir: string) {
    this.report = join(dir, `report-${Date.now()}-${Math.floor(Math.random() * 1e6)}`);
    spawn('setsid', ['-f', join(TEST_BIN, 'memhog'), String(MIB), this.report, String(THREADS)], { stdio: 'ignore' }).unref();
    waitFor('memhog to be ready', () => this.lines().some((l) => l.startsWith('ready')), 30_000);
    const [, pid, checksum] = this.lines().find((l) => l.startsWith('ready'))!.split(' ');
    this.pid = Number(pid);
    this.checksum = checksum!;
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  /** SIGUSR1: its memory checksum again and every thread's presence. */
  check(): { checksum: string; threads: string[] } {
    const before = this.lines().length;
    process.kill(this.pid, 'SIGUSR1');
    waitFor('memhog to check', () => this.lines().slice(before).filter((l) => l.startsWith('thread')).length === THREADS, 20_000);
    const lines = this.lines().slice(before);
    return { checksum: lines.find((l) => l.startsWith('check'))!.split(' ')[1]!, threads: lines.filter((l) => l.startsWith('thread')) };
  }

  kill(): void {
    try { process.kill(this.pid, 'SIGKILL'); } catch { /* gone */ }
    expectIdsFree([this.pid], 'memhog killed');
  }
}

/** What differs in `pid`'s maps and fds from `before` ("map LINE" / "fd LINE", added or changed lines). */
function leftoversOf(pid: number, before: { maps: string[]; fds: string[] }): string[] {
  const maps = mapsOf(pid).filter((l) => !before.maps.includes(l)).map((l) => `map ${l}`);
  const fds = fdLinksOf(pid).filter((l) => !before.fds.includes(l)).map((l) => `fd ${l}`);
  return [...maps, ...fds];
}

/** Runs the CLI; resolves with its exit code or signal once it is gone (bounded). */
function runCli(args: string[]): { child: ChildProcess; exited: Promise<{ code: number | null; signal: string | null }> } {
  const child = spawn(process.execPath, [CLI, ...args], { stdio: 'ignore' });
  const exited = new Promise<{ code: number | null; signal: string | null }>((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`criu-ts ${args[0]} did not end within 120 s`)), 120_000);
    child.on('exit', (code, signal) => {
      clearTimeout(timer);
      resolve({ code, signal });
    });
  });
  return { child, exited };
}

/** Zombie children of ours named `comm` (re-parented to us, the subreaper): reaped, by PID. */
function reapZombieChildren(comm: string): void {
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const after = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
      if (stat.includes(`(${comm})`) && after[0] === 'Z' && Number(after[1]) === process.pid) reapIfOurs(Number(name));
    } catch { /* gone */ }
  }
}

/**
 * Live (not zombie) restore stubs that are ours: children of the killed criu-ts are re-parented
 * to us, the subreaper. (Other sessions on this machine may run their own restores.)
 */
function liveStubs(): number[] {
  return readdirSync('/proc').filter((n) => /^\d+$/.test(n)).filter((n) => {
    try {
      const stat = readFileSync(`/proc/${n}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      return stat.includes('(restore-stub)') && !/\) [ZX] /.test(stat) && ppid === process.pid;
    } catch {
      return false;
    }
  }).map(Number);
}

/**
 * Deterministic moments in [minMs, maxMs] (a small LCG, so that a failing round can be run
 * again). The lower bound skips most of Node's own start-up, where a kill proves nothing.
 */
function moments(seed: number, n: number, minMs: number, maxMs: number): number[] {
  let x = seed >>> 0;
  return Array.from({ length: n }, () => {
    x = (Math.imul(x, 1664525) + 1013904223) >>> 0;
    return Math.round(minMs + (x / 2 ** 32) * (maxMs - minMs));
  });
}

describe('reliability: criu-ts SIGKILLed during restore and during dump (256 MiB, 9 threads)', function () {
  this.timeout(BUDGET_MS + 60_000);
  let dir: string;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace, clone3 set_tid and PR_SET_MM_MAP need root
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
    becomeSubreaper();
  });
  after(() => {
    if (isRoot()) becomeSubreaper(false);
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-kill-'));
  });
  afterEach(() => {
    rmSync(dir, { recursive: true, force: true });
  });

  it('restore killed at 50 moments: no restored task survives an unfinished restore, the PIDs are free again', async function () {
    const started = Date.now();
    const hog = new MemHog(dir);
    const images = join(dir, 'images');
    dumpSync({ pid: hog.pid, imagesDir: images });
    const { pids, tids } = dumpedIds(images);
    expect(tids).to.have.length(THREADS);
    const ids = [...pids, ...tids];
    expectIdsFree(ids, 'the dumped memhog');

    // Whole restores, timed (the fastest of three: the first reads a cold page cache), and
    // checked: the moments are spread over that length.
    const pidfile = join(dir, 'pidfile');
    let fullMs = Infinity;
    for (let i = 0; i < 3; i++) {
      const t0 = Date.now();
      const full = runCli(['restore', '-D', images, '-d', '--pidfile', pidfile]);
      expect((await full.exited).code).to.equal(0);
      fullMs = Math.min(fullMs, Date.now() - t0);
      expect(hog.check().checksum).to.equal(hog.checksum);
      hog.kill();
      expectIdsFree(ids, 'after a timed restore');
    }

    let interrupted = 0;
    let completed = 0;
    const delays = moments(20261201, ROUNDS, Math.round(fullMs * 0.2), Math.round(fullMs * 1.05));
    for (const [round, delay] of delays.entries()) {
      // Bounded in time too (a loaded machine): at least half the rounds must fit.
      if (Date.now() - started > BUDGET_MS) break;
      rmSync(pidfile, { force: true });
      // Odd rounds attached: the restored root is then criu-ts's own child.
      const run = runCli(['restore', '-D', images, '--pidfile', pidfile, ...(round % 2 === 0 ? ['-d'] : [])]);
      await sleep(delay);
      run.child.kill('SIGKILL');
      await run.exited;
      const what = `round ${round} (killed after ${delay} ms of ${fullMs}, ${round % 2 === 0 ? 'detached' : 'attached'})`;
      // The restore is over once the tasks are released: PTRACE_DETACH, or the kernel's own detach
      // when criu-ts dies after the last registers were set. Until then every task carries a
      // parent-death SIGKILL; after it the tree lives on by design. A kill between the release and
      // the pidfile leaves a finished restore without its pidfile: every task alive and untraced
      // a moment later (tasks of an unfinished one are dead by then).
      await sleep(300);
      const released = ids.every((id) => {
        try {
          return procState(id) !== undefined && procState(id) !== 'Z' && tracerOf(id) === 0;
        } catch {
          return false; // gone meanwhile
        }
      });
      if (existsSync(pidfile) || released) {
        // The restore had finished: the process runs, intact.
        completed++;
        expect(hog.check().checksum, what).to.equal(hog.checksum);
        hog.kill();
      } else {
        interrupted++;
      }
      expectIdsFree(ids, what, 5000);
      reapZombieChildren('restore-stub');
      expect(liveStubs(), `${what}: stubs left`).to.deep.equal([]);
    }
    console.log(`      restore kills: ${interrupted} interrupted a restore, ${completed} came after it (a full CLI restore: ${fullMs} ms)`);
    expect(interrupted + completed, 'rounds within the time bound').to.be.at.least(ROUNDS / 2);
    expect(interrupted, 'kills that landed inside a restore').to.be.greaterThan((interrupted + completed) / 3);
  });

  it('dump -R killed at 50 moments: the target runs on untraced and intact, with nothing of the parasite left', async function () {
    const started = Date.now();
    const hog = new MemHog(dir);
    const before = { maps: mapsOf(hog.pid), fds: fdLinksOf(hog.pid), masks: blockedMasksOf(hog.pid) };
    const images = join(dir, 'images');
    let fullMs = Infinity;
    for (let i = 0; i < 2; i++) {
      rmSync(images, { recursive: true, force: true });
      const t0 = Date.now();
      const full = runCli(['dump', '-t', String(hog.pid), '-D', images, '-R']);
      expect((await full.exited).code).to.equal(0);
      fullMs = Math.min(fullMs, Date.now() - t0);
      expectRunningUntouched(hog.pid, 'after a whole dump', before);
    }

    let untouched = 0;
    let completed = 0;
    const delays = moments(4242, ROUNDS, Math.round(fullMs * 0.2), Math.round(fullMs * 1.05));
    for (const [round, delay] of delays.entries()) {
      // Bounded in time too (a loaded machine): at least half the rounds must fit.
      if (Date.now() - started > BUDGET_MS) break;
      rmSync(images, { recursive: true, force: true });
      const run = runCli(['dump', '-t', String(hog.pid), '-D', images, '-R']);
      await sleep(delay);
      run.child.kill('SIGKILL');
      await run.exited;
      const what = `round ${round} (killed after ${delay} ms of ${fullMs})`;
      if (existsSync(join(images, 'inventory.img'))) completed++;
      // Untraced within a moment (the kernel detaches every tracee of a dead tracer).
      waitFor(`${what}: untraced`, () => procState(hog.pid) === undefined || procState(hog.pid) === 'Z' || tracerOf(hog.pid) === 0, 5000);
      // Every thread we ran code in returns through its return chain (compel's injection.ts),
      // which also removes what was made of the parasite so far and puts its signal mask back
      // (rt_sigreturn); the daemon cures itself. A trap, a leftover or a mask still ours would
      // show here. A thread killed in a remote call is untraced at once but runs its chain only
      // when it is next scheduled: a moment (bounded) for threads still on their way back.
      const settled = () => leftoversOf(hog.pid, before).length === 0 && JSON.stringify(blockedMasksOf(hog.pid)) === JSON.stringify(before.masks);
      for (let i = 0; i < 200 && !settled(); i++) await sleep(5);
      const st = wait4(asPid(hog.pid), WNOHANG);
      expect(st.kind, `${what}: the target died (${JSON.stringify(st)})`).to.equal('none');
      expect(leftoversOf(hog.pid, before), `${what}: leftovers`).to.deep.equal([]);
      expectRunningUntouched(hog.pid, what, before);
      untouched++;
      if (round % 10 === 9) {
        const { checksum, threads } = hog.check();
        expect(checksum, `${what}: memory checksum`).to.equal(hog.checksum);
        expect(threads.filter((l) => !l.endsWith(' ok')), `${what}: threads`).to.deep.equal([]);
      }
    }
    const { checksum, threads } = hog.check();
    expect(checksum).to.equal(hog.checksum);
    expect(threads.filter((l) => !l.endsWith(' ok'))).to.deep.equal([]);
    hog.kill();
    console.log(`      dump kills: ${untouched} left the target running untouched (${completed} after the dump had completed); a full CLI dump: ${fullMs} ms`);
    const rounds = untouched;
    expect(rounds, 'rounds within the time bound').to.be.at.least(ROUNDS / 2);
    expect(rounds - completed, 'kills that landed inside a dump').to.be.greaterThan(rounds / 3);
  });
});

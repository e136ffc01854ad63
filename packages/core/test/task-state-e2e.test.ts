// Per-task state end to end: POSIX timers, seccomp (filters per thread, TSYNC, strict mode in a
// tree) and credentials per thread with the prctl-level process state. Each program is dumped
// and restored twice in a row, once by the library and once by the CLI, and checks itself after
// each restore (tests/posix-timer-keeper.c, seccomp-keeper.c, creds-keeper.c).
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { ImageReader, ImageWriter, kindForName } from '@criu-ts/images';
import { dumpSync, restoreSync, RestoreError } from '@criu-ts/core';
import { isRoot, ourStubs, sleepMs, waitFor } from './restore-helpers.js';
import { becomeSubreaper, reapIfOurs, StateKeeper, TEST_BIN, imageEntries as entries } from './programs.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const CLI = resolve(TEST_BIN, '..', '..', 'packages', 'cli', 'dist', 'criu-ts.cjs');


function rewrite(path: string, kind: string, messages: Msg[]): void {
  const w = ImageWriter.create(path, kindForName(kind)!);
  for (const m of messages) w.append(m);
  w.finish();
}

function criuTs(...args: string[]) {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  expect(r.status, `criu-ts ${args.join(' ')}: ${r.stderr}`).to.equal(0);
  return r;
}

/** Waits until none of `pids` exists (reaping those that end up as our zombies). */
function waitGone(pids: readonly number[]): void {
  waitFor(`${pids.join(', ')} to be gone`, () => {
    for (const p of pids) reapIfOurs(p);
    return pids.every((p) => !existsSync(`/proc/${p}`));
  });
}

/**
 * Round 0 by the library, round 1 by the CLI: dump (the tree is killed), restore detached, and
 * the program's own checks. `inspect` looks at the images of round 0 before they are restored.
 */
function twiceInARow(keeper: StateKeeper, pids: readonly number[], inspect: (images: string) => void = () => {}): void {
  for (let round = 0; round < 2; round++) {
    rmSync(keeper.images, { recursive: true, force: true });
    if (round === 0) dumpSync({ pid: keeper.pid, imagesDir: keeper.images });
    else criuTs('dump', '-t', String(keeper.pid), '-D', keeper.images);
    waitGone(pids);
    if (round === 0) {
      inspect(keeper.images);
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      expect(r.warnings, `round ${round}`).to.deep.equal([]);
    } else {
      criuTs('restore', '-d', '-D', keeper.images);
    }
    expect(ourStubs()).to.deep.equal([]);
    sleepMs(30);
    const { failures, checks } = keeper.check();
    expect(failures, `round ${round}`).to.deep.equal([]);
    expect(checks.length, `round ${round}`).to.be.greaterThan(0);
  }
}

describe('core: POSIX timers, seccomp and credentials end to end', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace, clone3 set_tid and seccomp suspension need root
    for (const p of ['posix-timer-keeper', 'seccomp-keeper', 'creds-keeper']) {
      if (!existsSync(join(TEST_BIN, p))) throw new Error(`tests/bin/${p} is missing: run npm run build`);
    }
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
    becomeSubreaper();
  });
  after(() => {
    if (isRoot()) becomeSubreaper(false);
  });
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('POSIX timers come back with their ids (a hole included), clocks, signals, values, SIGEV_THREAD_ID target and remaining time', function () {
    keeper = new StateKeeper('posix-timer-keeper');
    const worker = Number(keeper.lines().find((l) => l.startsWith('ready'))!.split(' ')[2]);
    expect(keeper.check().failures, 'before any dump').to.deep.equal([]);
    twiceInARow(keeper, [keeper.pid], (images) => {
      const posix = entries(join(images, `core-${keeper!.pid}.img`))[0]!.tc.timers.posix as Msg[];
      expect(posix.map((t) => t.it_id)).to.deep.equal([0, 2, 3, 4, 5]);
      const d = posix.find((t) => t.it_sigev_notify === 4)!;
      expect(d.notify_thread_id).to.equal(worker);
      expect(d.clock_id).to.equal(7 /* CLOCK_BOOTTIME */);
      expect(BigInt(d.sival_ptr)).to.equal(0xd00dn);
      const b = posix.find((t) => t.it_id === 2)!;
      expect(Number(b.vsec)).to.be.within(3000, 3600);
      expect(posix.find((t) => t.it_id === 4)!.it_sigev_notify).to.equal(1 /* SIGEV_NONE */);
    });
  });

  it('seccomp filters per thread: the main thread has two, the other thread one, in their order; a filtered syscall still fails or kills', function () {
    keeper = new StateKeeper('seccomp-keeper', ['split']);
    const tid = Number(keeper.lines().find((l) => l.startsWith('ready'))!.split(' ')[2]);
    expect(keeper.check().failures, 'before any dump').to.deep.equal([]);
    twiceInARow(keeper, [keeper.pid], (images) => {
      // CRIU 4.2's layout: threads by TID, each chain newest first, seccomp_filter = the oldest.
      const filters = entries(join(images, 'seccomp.img'))[0]!.seccomp_filters as Msg[];
      expect(filters.length).to.equal(3);
      expect(filters.map((f) => f.prev)).to.deep.equal([undefined, 0, undefined]);
      expect(filters.map((f) => f.flags)).to.deep.equal([0, 0, 0]);
      const main = entries(join(images, `core-${keeper!.pid}.img`))[0]!.thread_core;
      const thread = entries(join(images, `core-${tid}.img`))[0]!.thread_core;
      expect([main.seccomp_mode, main.seccomp_filter]).to.deep.equal([2, 1]);
      expect([thread.seccomp_mode, thread.seccomp_filter]).to.deep.equal([2, 2]);
      expect(Buffer.from(filters[1]!.filter).equals(Buffer.from(filters[2]!.filter)), 'both threads hold F1').to.equal(true);
    });
  });

  it('seccomp filters shared by every thread (TSYNC) are written once, flagged TSYNC, and come back on every thread', function () {
    keeper = new StateKeeper('seccomp-keeper', ['tsync']);
    const tid = Number(keeper.lines().find((l) => l.startsWith('ready'))!.split(' ')[2]);
    twiceInARow(keeper, [keeper.pid], (images) => {
      const filters = entries(join(images, 'seccomp.img'))[0]!.seccomp_filters as Msg[];
      expect(filters.map((f) => f.flags)).to.deep.equal([1, 1]);
      expect(entries(join(images, `core-${keeper!.pid}.img`))[0]!.thread_core.seccomp_filter).to.equal(1);
      expect(entries(join(images, `core-${tid}.img`))[0]!.thread_core.seccomp_mode, 'propagated by TSYNC').to.equal(undefined);
    });
  });

  it('seccomp strict mode in child processes: still answers over pipes, still killed by any other syscall', function () {
    keeper = new StateKeeper('seccomp-keeper', ['strict']);
    const children = keeper.lines().find((l) => l.startsWith('ready'))!.split(' ').slice(2).map(Number);
    let alive = children;
    for (let round = 0; round < 2; round++) {
      rmSync(keeper.images, { recursive: true, force: true });
      if (round === 0) dumpSync({ pid: keeper.pid, imagesDir: keeper.images });
      else criuTs('dump', '-t', String(keeper.pid), '-D', keeper.images);
      waitGone([keeper.pid, ...alive]);
      for (const c of alive) expect(entries(join(keeper.images, `core-${c}.img`))[0]!.thread_core.seccomp_mode, `child ${c}`).to.equal(1);
      if (round === 0) expect(restoreSync({ imagesDir: keeper.images, detached: true }).warnings).to.deep.equal([]);
      else criuTs('restore', '-d', '-D', keeper.images);
      const { failures, checks } = keeper.check();
      expect(failures, `round ${round}`).to.deep.equal([]);
      // Every child left answers a ping, and one of them dies of SIGKILL.
      expect(checks.length, `round ${round}`).to.equal(alive.length * 2 + 2);
      alive = alive.slice(1);
    }
    for (const c of alive) process.kill(c, 'SIGKILL');
    keeper.cleanup();
    keeper = undefined;
    waitGone(children);
  });

  it('credentials per thread (a thread that changed its own uids), capabilities incl. ambient and bounding, securebits, no_new_privs, scheduling, and the prctl-level process state', function () {
    keeper = new StateKeeper('creds-keeper');
    const [, , t1] = keeper.lines().find((l) => l.startsWith('ready'))!.split(' ').map(Number);
    expect(keeper.check().failures, 'before any dump').to.deep.equal([]);
    twiceInARow(keeper, [keeper.pid], (images) => {
      const creds = entries(join(images, `core-${t1}.img`))[0]!.thread_core.creds;
      expect([creds.uid, creds.euid, creds.suid, creds.fsuid, creds.gid, creds.egid, creds.sgid, creds.fsgid]).to.deep.equal([1000, 1001, 1002, 1000, 2000, 2001, 2002, 2003]);
      expect(creds.groups).to.deep.equal([1001, 1002, 1003]);
      const main = entries(join(images, `core-${keeper!.pid}.img`))[0]!;
      expect(main.thread_core.creds.secbits).to.equal(0x50);
      expect(main.thread_core.creds.cap_amb).to.deep.equal([1 << 13, 0]);
      expect(main.tc.child_subreaper).to.equal(true);
      expect(main.tc.oom_score_adj).to.equal(500);
      expect(entries(join(images, `mm-${keeper!.pid}.img`))[0]!.thp_disabled).to.equal(true);
    });
  });

  it('refuses a seccomp filter index outside seccomp.img and a timer aimed at a thread the process does not have, before making anything', function () {
    keeper = new StateKeeper('seccomp-keeper', ['split']);
    keeper.dump();
    const corePath = join(keeper.images, `core-${keeper.pid}.img`);
    const core = entries(corePath)[0]!;
    core.thread_core.seccomp_filter = 7;
    rewrite(corePath, 'CORE', [core]);
    expect(() => restoreSync({ imagesDir: keeper!.images, detached: true })).to.throw(RestoreError, /seccomp filter index 7 is not in seccomp.img \(3 filters\)/);
    core.thread_core.seccomp_filter = 1;
    core.tc.timers.posix = [{ it_id: 0, clock_id: 1, si_signo: 10, it_sigev_notify: 4, sival_ptr: 0n, overrun: 0, isec: 0n, insec: 0n, vsec: 1n, vnsec: 0n, notify_thread_id: 1 }];
    rewrite(corePath, 'CORE', [core]);
    expect(() => restoreSync({ imagesDir: keeper!.images, detached: true })).to.throw(RestoreError, /POSIX timer 0: its signal goes to thread 1, which is not a thread of the process/);
    expect(existsSync(`/proc/${keeper.pid}`)).to.equal(false);
    expect(ourStubs()).to.deep.equal([]);
  });
});

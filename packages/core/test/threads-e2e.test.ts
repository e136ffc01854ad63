// Multi-threaded processes: tests/bin/thread-keeper (16 threads, each in a different blocking
// call or spinning, each with its own TLS, sigaltstack, mask, name, robust list, rseq,
// clear_child_tid and pending signals) dumped, and restored with every thread's exact TID.
import { expect } from 'chai';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageReader, ImageWriter, kindForName } from '@criu-ts/images';
import { spawn, execFileSync } from 'node:child_process';
import { tmpdir } from 'node:os';
import { dumpSync, DumpError, restoreSync, RestoreError } from '@criu-ts/core';
import { alive, isRoot, killQuietly, ourStubs, sleepMs, waitFor } from './restore-helpers.js';
import { becomeSubreaper, reapIfOurs, TEST_BIN, imageEntries as entries } from './programs.js';
import { ThreadKeeper } from './thread-keeper.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any


const bit = (sig: number) => 1n << BigInt(sig - 1);
const SIGUSR1 = 10;
const SIGUSR2 = 12;
const SIGWINCH = 28;

describe('core: multi-threaded processes', function () {
  this.timeout(120_000);
  let keeper: ThreadKeeper | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace and clone3 set_tid need root
    if (!existsSync(join(TEST_BIN, 'thread-keeper'))) throw new Error('tests/bin/thread-keeper is missing: run npm run build');
    becomeSubreaper();
  });
  after(() => {
    if (isRoot()) becomeSubreaper(false);
  });
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('dump writes core-TID.img for every thread with its own state, and the task runs on intact', function () {
    keeper = new ThreadKeeper();
    const { pid, tids } = keeper;
    keeper.dump({ leave: 'running' });
    const [tree] = entries(join(keeper.images, 'pstree.img'));
    expect(tree!.threads.map(Number)).to.deep.equal([pid, ...tids]);
    const leader = entries(join(keeper.images, `core-${pid}.img`))[0]!;
    expect(leader.tc).to.not.equal(undefined);
    expect(BigInt(leader.tc.blk_sigset)).to.equal(bit(SIGUSR1) | bit(SIGUSR2) | bit(SIGWINCH));
    const fsBases = new Set<bigint>();
    for (const [i, tid] of tids.entries()) {
      const core = entries(join(keeper.images, `core-${tid}.img`))[0]!;
      const thc = core.thread_core;
      expect(core.tc, `T${i} has no task-wide part`).to.equal(undefined);
      expect(thc.comm).to.equal(`thr-${String(i).padStart(2, '0')}`);
      const mask = bit(SIGUSR1) | bit(SIGUSR2) | bit(35 + i) | ([6, 7, 11].includes(i) ? 0n : bit(SIGWINCH));
      expect(BigInt(thc.blk_sigset), `T${i} mask`).to.equal(mask);
      if (i % 3 === 2) expect(Number(thc.sas.ss_flags), `T${i} has no sigaltstack`).to.equal(2 /* SS_DISABLE */);
      else expect(BigInt(thc.sas.ss_size), `T${i} sigaltstack`).to.equal(BigInt(65536 - 64 * i));
      const pending = (thc.signals_p?.signals ?? []) as Msg[];
      expect(pending.map((s) => Buffer.from(s.siginfo).readInt32LE(0)), `T${i} pending`).to.deep.equal(i === 4 || i === 15 ? [SIGUSR2] : []);
      expect(BigInt(core.thread_info.clear_tid_addr), `T${i} clear_child_tid`).to.not.equal(0n);
      expect(BigInt(thc.futex_rla), `T${i} robust list`).to.not.equal(0n);
      expect(thc.rseq_entry, `T${i} rseq`).to.not.equal(undefined);
      fsBases.add(BigInt(core.thread_info.gpregs.fs_base));
    }
    expect(fsBases.size, 'every thread has its own TLS block').to.equal(16);
    expect(keeper.threadsNow()).to.deep.equal([pid, ...tids]);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(16 * 15);
  });

  it('dump, restore, dump again, restore again: every thread back with its TID, each checks its own state', function () {
    keeper = new ThreadKeeper();
    const { pid, tids } = keeper;
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid, `round ${round}`).to.equal(pid);
      expect(r.warnings, `round ${round}`).to.deep.equal([]);
      expect(ourStubs()).to.deep.equal([]);
      expect(keeper.threadsNow(), `round ${round}`).to.deep.equal([pid, ...tids]);
      for (const [i, tid] of tids.entries()) {
        expect(readFileSync(`/proc/${pid}/task/${tid}/comm`, 'utf8').trim(), `round ${round} T${i}`).to.equal(`thr-${String(i).padStart(2, '0')}`);
      }
      sleepMs(50); // let every thread get back into its call before the next freeze
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    // 16 threads x 16 checks, and the main thread's 4.
    expect(checks.length).to.equal(16 * 16 + 4);
  });

  it('a failure while restoring a thread kills the leader and every thread already made', function () {
    keeper = new ThreadKeeper();
    const { pid, tids } = keeper;
    keeper.dump();
    // Thread 9 gets a pending siginfo that is too short: a valid image that only the threads
    // stage rejects, after the leader and threads 0..8 exist.
    const path = join(keeper.images, `core-${tids[9]}.img`);
    const core = entries(path)[0]!;
    core.thread_core.signals_p = { signals: [{ siginfo: new Uint8Array(16) }] };
    const w = ImageWriter.create(path, kindForName('CORE')!);
    w.append(core);
    w.finish();
    let thrown: unknown;
    try {
      restoreSync({ imagesDir: keeper.images, detached: true });
    } catch (err) {
      thrown = err;
    }
    expect(thrown).to.be.instanceOf(RestoreError);
    expect((thrown as RestoreError).stage).to.equal('threads');
    expect((thrown as RestoreError).message).to.include(`thread ${tids[9]}`);
    waitFor('the half-restored process to be gone', () => !alive(pid));
    for (const tid of [pid, ...tids]) expect(existsSync(`/proc/${tid}`), `task ${tid}`).to.equal(false);
    expect(ourStubs()).to.deep.equal([]);
  });

  it('refuses a process whose leader has exited while other threads run on, and leaves it as it was', function () {
    const child = spawn('setsid', ['-f', join(TEST_BIN, 'dead-leader')], { stdio: 'ignore' });
    child.unref();
    let pid = 0;
    waitFor('dead-leader to start', () => {
      try {
        pid = Number(execFileSync('pgrep', ['-n', '-x', 'dead-leader'], { encoding: 'utf8' }).trim());
      } catch {
        return false; // pgrep exits 1 while there is none yet
      }
      return pid > 0 && existsSync(`/proc/${pid}/task`) && readdirSync(`/proc/${pid}/task`).length === 2 && readFileSync(`/proc/${pid}/stat`, 'utf8').includes(') Z');
    });
    try {
      expect(() => dumpSync({ pid, imagesDir: join(tmpdir(), `criu-ts-dl-${pid}`) }))
        .to.throw(DumpError, /leader .* has exited while 1 other thread\(s\) run on.*not supported yet/);
      expect(readdirSync(`/proc/${pid}/task`).length).to.equal(2);
    } finally {
      killQuietly(pid);
      waitFor('dead-leader to be gone', () => {
        reapIfOurs(pid);
        return !existsSync(`/proc/${pid}`);
      });
    }
  });
});

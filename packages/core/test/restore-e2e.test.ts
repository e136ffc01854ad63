// dump() then restore() of tests/bin/state-keeper: the process comes back with the same PID and
// memory layout, and its own checks (memory patterns, AVX register, signals, timers, files,
// cwd/umask, rlimits, environment, vDSO) pass after the restore.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dumpSync, restore, restoreSync } from '@criu-ts/core';
import { asPid, prctl, wait4, WNOHANG } from '@criu-ts/sys';
import { alive, isRoot, killQuietly, ourStubs, procState, sleepMs, waitFor } from './restore-helpers.js';

const PR_SET_CHILD_SUBREAPER = 36;

/** Reaps `pid` if it is a zombie child of ours (orphans come to us: we are a subreaper). */
function reapIfOurs(pid: number): void {
  try { wait4(asPid(pid), WNOHANG); } catch { /* not ours */ }
}

const here = dirname(fileURLToPath(import.meta.url));
const KEEPER = resolve(here, '..', '..', '..', '..', 'tests', 'bin', 'state-keeper');

/**
 * A running state-keeper in its own session (a dump without --shell-job needs that), started
 * through `setsid -f` so that it is not a child_process of ours: Node would otherwise keep a
 * handle for its PID and reap the restored process (same PID, our child) behind our back.
 */
class Keeper {
  readonly dir = mkdtempSync(join(tmpdir(), 'criu-ts-rsk-'));
  readonly report = join(this.dir, 'report');
  readonly images = join(this.dir, 'images');
  readonly pid: number;

  constructor() {
    const child = spawn('setsid', ['-f', KEEPER, this.report, this.dir], { stdio: 'ignore', env: { ...process.env, STATE_KEEPER_ENV: 'kept' } });
    child.unref();
    waitFor('state-keeper to be ready', () => this.lines().some((l) => l.startsWith('ready')));
    this.pid = Number(this.lines().find((l) => l.startsWith('ready'))!.split(' ')[1]);
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  /** SIGUSR1, then the program's report lines. */
  check(): { failures: string[]; checks: string[] } {
    const before = this.lines().length;
    process.kill(this.pid, 'SIGUSR1');
    waitFor('state-keeper to report', () => this.lines().slice(before).some((l) => l.startsWith('done')));
    const lines = this.lines().slice(before);
    return { failures: lines.filter((l) => l.startsWith('FAIL')), checks: lines.filter((l) => l.startsWith('ok')) };
  }

  dump(): void {
    rmSync(this.images, { recursive: true, force: true });
    dumpSync({ pid: this.pid, imagesDir: this.images });
    waitFor('the dumped task to be gone', () => {
      reapIfOurs(this.pid);
      return !existsSync(`/proc/${this.pid}`);
    });
  }

  cleanup(): void {
    killQuietly(this.pid);
    for (let i = 0; i < 200 && procState(this.pid) !== undefined; i++) {
      reapIfOurs(this.pid);
      sleepMs(5);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** /proc/PID/maps without the inode/dev columns' spacing differences: range perms offset dev inode name. */
function maps(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').filter(Boolean).map((l) => l.split(/\s+/).join(' '));
}

describe('core restore: end to end with dump()', function () {
  this.timeout(120_000);
  let keeper: Keeper | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace, clone3 set_tid and PR_SET_MM_MAP need root
    if (!existsSync(KEEPER)) throw new Error(`${KEEPER} is missing: run npm run build`);
    // Detached restored processes are re-parented to the nearest subreaper: us, so that the
    // tests can reap them (this machine's init does not).
    prctl(PR_SET_CHILD_SUBREAPER, 1);
  });
  after(() => {
    if (isRoot()) prctl(PR_SET_CHILD_SUBREAPER, 0);
  });
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('restores detached: same PID, same /proc/PID/maps, every check of the program passes', function () {
    keeper = new Keeper();
    const before = maps(keeper.pid);
    const cmdline = readFileSync(`/proc/${keeper.pid}/cmdline`);
    keeper.dump();
    const r = restoreSync({ imagesDir: keeper.images, detached: true });
    expect(r.pid).to.equal(keeper.pid);
    expect(r.warnings).to.deep.equal([]);
    expect(alive(r.pid)).to.equal(true);
    expect(ourStubs()).to.deep.equal([]);
    expect(maps(r.pid)).to.deep.equal(before);
    expect(readFileSync(`/proc/${r.pid}/cmdline`).equals(cmdline)).to.equal(true);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(15);
  });

  it('restores attached: the caller waits and gets the exit status of the restored process', async function () {
    keeper = new Keeper();
    keeper.dump();
    const k = keeper;
    const result = await restore({
      imagesDir: k.images,
      // state-keeper exits with its number of failed checks after SIGUSR1.
      onRunning: (pid) => setTimeout(() => process.kill(pid, 'SIGUSR1'), 100),
    });
    expect(result.detached).to.equal(false);
    expect(k.lines().filter((l) => l.startsWith('FAIL'))).to.deep.equal([]);
    expect(k.lines()).to.include('done 0');
    expect(result.exit).to.deep.equal({ code: 0, signal: null });
  });

  it('dump, restore, dump again, restore again: still the same process', function () {
    keeper = new Keeper();
    const before = maps(keeper.pid);
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      restoreSync({ imagesDir: keeper.images, detached: true });
      sleepMs(20);
      expect(maps(keeper.pid), `round ${round}`).to.deep.equal(before);
    }
    const { failures } = keeper.check();
    expect(failures).to.deep.equal([]);
  });
});

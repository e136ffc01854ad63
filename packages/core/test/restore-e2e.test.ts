// dump() then restore() of tests/bin/state-keeper: the process comes back with the same PID and
// memory layout, and its own checks (memory patterns, AVX register, signals, timers, files,
// cwd/umask, rlimits, environment, vDSO) pass after the restore.
import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { restore, restoreSync } from '@criu-ts/core';
import { alive, isRoot, ourStubs, sleepMs } from './restore-helpers.js';
import { becomeSubreaper, StateKeeper, TEST_BIN } from './programs.js';

/** /proc/PID/maps without the inode/dev columns' spacing differences: range perms offset dev inode name. */
function maps(pid: number): string[] {
  return readFileSync(`/proc/${pid}/maps`, 'utf8')
    .split('\n')
    .filter(Boolean)
    .map((l) => l.split(/\s+/).join(' '))
    // Shared anonymous memory comes back as a new shmem object: same range, offset and
    // protection, another inode number.
    .map((l) => (l.endsWith('/dev/zero (deleted)') ? l.replace(/ \d+ \/dev\/zero/, ' SHMEM /dev/zero') : l));
}

describe('core restore: end to end with dump()', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace, clone3 set_tid and PR_SET_MM_MAP need root
    if (!existsSync(join(TEST_BIN, 'state-keeper'))) throw new Error('tests/bin/state-keeper is missing: run npm run build');
    // Detached restored processes are re-parented to the nearest subreaper: us, so that the
    // tests can reap them (this machine's init does not).
    becomeSubreaper();
  });
  after(() => {
    if (isRoot()) becomeSubreaper(false);
  });
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('restores detached: same PID, same /proc/PID/maps, every check of the program passes', function () {
    keeper = new StateKeeper();
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
    keeper = new StateKeeper();
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
    keeper = new StateKeeper();
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

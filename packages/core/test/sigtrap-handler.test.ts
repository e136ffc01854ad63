// Dump and restore end every remote call with a trap (single-step or int3), a signal the kernel
// forces: when SIGTRAP is blocked or ignored, forcing it resets the process's SIGTRAP handler to
// SIG_DFL and unblocks it in the thread. A program's own SIGTRAP handler and masks must survive
// a dump (-R: the program runs on), be in the images, and come back with a restore.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dumpSync, restoreSync } from '@criu-ts/core';
import { waitFor } from './restore-helpers.js';
import { TEST_BIN, rootWithSubreaper } from './programs.js';
import { blockedMasksOf, expectIdsFree } from './reliability-helpers.js';

const SIGTRAP_BIT = 1n << 4n;

function caught(pid: number): bigint {
  return BigInt(`0x${/^SigCgt:\s*([0-9a-f]+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]}`);
}

describe('reliability: a SIGTRAP handler survives dump and restore', function () {
  this.timeout(60_000);
  let dir: string;
  let pid = 0;
  rootWithSubreaper();
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-trap-'));
  });
  afterEach(() => {
    if (pid) {
      try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
      expectIdsFree([pid], 'sigtrap-keeper');
    }
    rmSync(dir, { recursive: true, force: true });
  });

  it('dump -R leaves handler and masks as they were; the images and the restored process have them', function () {
    const report = join(dir, 'report');
    const lines = () => (existsSync(report) ? readFileSync(report, 'utf8').split('\n').filter(Boolean) : []);
    spawn('setsid', ['-f', join(TEST_BIN, 'sigtrap-keeper'), report], { stdio: 'ignore' }).unref();
    waitFor('sigtrap-keeper to be ready', () => lines().some((l) => l.startsWith('ready')));
    pid = Number(lines()[0]!.split(' ')[1]);
    const masks = blockedMasksOf(pid);
    expect(caught(pid) & SIGTRAP_BIT).to.equal(SIGTRAP_BIT);
    const trapCheck = (what: string, expected: string) => {
      const before = lines().length;
      process.kill(pid, 'SIGUSR1');
      waitFor(`${what}: the trap report`, () => lines().length > before);
      expect(lines().at(-1), what).to.equal(expected);
    };

    const images = join(dir, 'images');
    dumpSync({ pid, imagesDir: images, leave: 'running' });
    expect(caught(pid) & SIGTRAP_BIT, 'handler after the dump').to.equal(SIGTRAP_BIT);
    expect(blockedMasksOf(pid), 'masks after the dump').to.deep.equal(masks);
    trapCheck('after the dump', 'trap 1 1');

    process.kill(pid, 'SIGKILL');
    expectIdsFree([pid], 'the dumped program');
    const r = restoreSync({ imagesDir: images, detached: true });
    expect(r.pid).to.equal(pid);
    expect(caught(pid) & SIGTRAP_BIT, 'handler after the restore').to.equal(SIGTRAP_BIT);
    expect(blockedMasksOf(pid), 'masks after the restore').to.deep.equal(masks);
    // The count was 0 when dumped (the dump came before the first raise).
    trapCheck('after the restore', 'trap 1 1');
  });
});

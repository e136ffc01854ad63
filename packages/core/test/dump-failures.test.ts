// Dumps that go wrong from outside: the target dies mid-dump, the dumper is SIGKILLed mid-dump.
// Either way the target (if alive) must end up running as before, untraced, with no parasite
// mapping, and the images directory must never look complete when it is not.
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { dumpSync, DumpError } from '@criu-ts/core';
import { alive, sleepMs, waitFor, thrownBy } from './restore-helpers.js';
import { reapIfOurs, StateKeeper, rootWithSubreaper } from './programs.js';

function status(pid: number): string {
  return readFileSync(`/proc/${pid}/status`, 'utf8');
}

describe('core: dump failures from outside', function () {
  this.timeout(180_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  for (const [kind, link] of [
    ['io_uring', 'anon_inode:[io_uring]'], ['userfaultfd', 'anon_inode:[userfaultfd]'], ['perf_event', 'anon_inode:[perf_event]'],
['socket', 'socket:'], ['pidfd', 'anon_inode:[pidfd]'],
  ] as const) {
    it(`refuses a ${kind} descriptor up front, by fd and kind, and the program runs on untouched`, function () {
      keeper = new StateKeeper('odd-fd', [kind]);
      const fd = Number(keeper.lines().find((l) => l.startsWith('ready'))!.split(' ')[2]);
      const error = thrownBy(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images }));
      expect(error).to.be.instanceOf(DumpError);
      const message = (error as Error).message;
      expect(message).to.contain(`fd ${fd} (${link}`);
      expect(message).to.contain(kind === 'socket' ? 'family 40 socket (SOCK_STREAM, protocol 0)): sockets of this kind cannot be dumped yet' : `${kind} descriptors cannot be dumped`);
      expect((error as DumpError).stage).to.equal('check-options');
      expect(existsSync(join(keeper.images, 'inventory.img'))).to.equal(false);
      expect(status(keeper.pid)).to.match(/^TracerPid:\s+0$/m);
      const { failures } = keeper.check();
      expect(failures).to.deep.equal([]);
      expect(keeper.lines()).to.include('done 0');
    });
  }

  it('a target killed at random moments of its dump: the dump fails cleanly or completes, never hangs', function () {
    let failed = 0;
    let completed = 0;
    for (let round = 0; round < 8; round++) {
      keeper = new StateKeeper();
      const pid = keeper.pid;
      // The killer runs outside our event loop (dumpSync blocks it): a shell that waits then kills.
      const delay = (round * 0.004).toFixed(3);
      spawn('sh', ['-c', `sleep ${delay}; kill -9 ${pid}`], { stdio: 'ignore' }).unref();
      const started = Date.now();
      try {
        dumpSync({ pid, imagesDir: keeper.images, leave: 'running' });
        completed++;
        expect(existsSync(join(keeper.images, 'inventory.img'))).to.equal(true);
      } catch (error) {
        expect(error, String(error)).to.be.instanceOf(DumpError);
        failed++;
        // Nothing that looks like a dump is left behind.
        expect(existsSync(join(keeper.images, 'inventory.img')), `round ${round}: inventory after a failed dump`).to.equal(false);
      }
      expect(Date.now() - started, 'dump time with a dying target (ms)').to.be.below(30_000);
      waitFor('the target to die', () => {
        reapIfOurs(pid);
        return !alive(pid);
      });
      keeper.cleanup();
      keeper = undefined;
    }
    expect(failed + completed).to.equal(8);
  });
});

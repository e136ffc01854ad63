// The dumper SIGKILLed mid-dump.
// Either way the target (if alive) must end up running as before, untraced, with no parasite
// mapping, and the images directory must never look complete when it is not.
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { join } from 'node:path';
import { isParasiteMapping } from '@criu-ts/compel';
import { dumpSync, DumpError } from '@criu-ts/core';
import { alive, sleepMs, waitFor } from './restore-helpers.js';
import { reapIfOurs, StateKeeper, rootWithSubreaper } from './programs.js';

function status(pid: number): string {
  return readFileSync(`/proc/${pid}/status`, 'utf8');
}

describe('core: dumper killed mid-dump', function () {
  this.timeout(180_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  // The moments start with the freeze: remote syscalls that load the parasite, the parasite's
  // calls in the task's thread, pages, images, cure. Wherever it is killed, the task goes back
  // by itself: through its return chain (undoing what was loaded so far) or the daemon's self-cure.
  it('the dumper SIGKILLed at moments from the freeze on: the target runs on untraced, intact, without parasite', function () {
    keeper = new StateKeeper();
    const pid = keeper.pid;
    // The dumper runs as `node -e` from the workspace, where @criu-ts/core resolves (a script
    // file under /tmp would resolve bare imports from /tmp).
    const dumperCode =
      `import { writeFileSync } from 'node:fs';\n` +
      `import { dumpSync } from '@criu-ts/core';\n` +
      `dumpSync({ pid: ${pid}, imagesDir: process.argv[1], leave: 'running',\n` +
      `  onStage: (stage) => { if (stage === 'freeze') writeFileSync(process.argv[2], 'start'); } });\n`;
    const cwd = new URL('../../../../', import.meta.url).pathname;
    let killedMidway = 0;
    for (let round = 0; round < 15; round++) {
      const images = join(keeper.dir, `images-${round}`);
      const marker = join(keeper.dir, `started-${round}`);
      const child = spawn(process.execPath, ['--input-type=module', '-e', dumperCode, images, marker], { cwd, stdio: 'ignore' });
      // Wait for the dumper to have loaded, then kill it a few milliseconds into its work.
      waitFor(`round ${round}: the dumper to start`, () => existsSync(marker), 20_000);
      sleepMs(round * 2);
      child.kill('SIGKILL');
      spawnSync('sleep', ['0.2']);
      if (!existsSync(join(images, "inventory.img"))) killedMidway++;
      // Whatever the moment: the target is alive, not traced, not stopped, no parasite left.
      waitFor(`round ${round}: the target to be free`, () => /TracerPid:\s+0\b/.test(status(pid)));
      expect(alive(pid), `round ${round}: alive`).to.equal(true);
      expect(status(pid), `round ${round}: running`).to.not.match(/State:\s+[Tt]/);
      waitFor(`round ${round}: no parasite mapping`, () => !readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n').some(isParasiteMapping));
      expect(readdirSync(`/proc/${pid}/fd`).map((fd) => readlinkSync(`/proc/${pid}/fd/${fd}`)).filter((l) => l.includes('criu-ts-parasite')), `round ${round}: parasite memfd`).to.deep.equal([]);
    }
    expect(killedMidway, 'dumps actually interrupted').to.be.greaterThan(0);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(15);
  });
});

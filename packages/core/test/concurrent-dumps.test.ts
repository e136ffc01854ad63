// Two dumps of the same process at once: the second fails at once with a clear error and
// touches nothing, the first completes. And restore's warning about images others can write.
import { expect } from 'chai';
import { spawn, type ChildProcess } from 'node:child_process';
import { chmodSync, existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DumpError, dumpSync, restoreSync } from '@criu-ts/core';
import { alive, waitFor, thrownBy } from './restore-helpers.js';
import { StateKeeper, rootWithSubreaper } from './programs.js';
import { expectIdsFree, expectRunningUntouched, fdLinksOf, mapsOf } from './reliability-helpers.js';

const WORKSPACE = new URL('../../../../', import.meta.url).pathname;

/** A dumper in another process (-R); `holdAtMemoryMs`: it sleeps that long when its memory stage starts, with the target frozen. */
function startDumper(pid: number, images: string, marker: string, holdAtMemoryMs: number): ChildProcess {
  const code =
    `import { writeFileSync } from 'node:fs';\n` +
    `import { dumpSync } from '@criu-ts/core';\n` +
    `const cell = new Int32Array(new SharedArrayBuffer(4));\n` +
    `try {\n` +
    `  dumpSync({ pid: ${pid}, imagesDir: process.argv[1], leave: 'running', onStage: (stage) => {\n` +
    `    if (stage === 'memory') { writeFileSync(process.argv[2], 'frozen'); Atomics.wait(cell, 0, 0, ${holdAtMemoryMs}); } } });\n` +
    `  writeFileSync(process.argv[2], 'done');\n` +
    `} catch (e) { writeFileSync(process.argv[2], 'failed ' + e.message); process.exit(1); }\n`;
  return spawn(process.execPath, ['--input-type=module', '-e', code, images, marker], { cwd: WORKSPACE, stdio: 'ignore' });
}

/** The exit code of `child` (the event loop must run: this waits asynchronously, bounded). */
function exitOf(child: ChildProcess): Promise<number | null> {
  return new Promise((resolve, reject) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve(child.exitCode);
    const timer = setTimeout(() => reject(new Error(`dumper ${child.pid} did not exit within 60 s`)), 60_000);
    child.on('exit', (code) => {
      clearTimeout(timer);
      resolve(code);
    });
  });
}

describe('reliability: concurrent dumps, image permissions', function () {
  this.timeout(180_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('a second dump while the first holds the process fails cleanly, naming the first; the first completes and restores', async function () {
    keeper = new StateKeeper();
    const pid = keeper.pid;
    const first = join(keeper.dir, 'first');
    const second = join(keeper.dir, 'second');
    const marker = join(keeper.dir, 'marker');
    const dumper = startDumper(pid, first, marker, 1500);
    const exited = exitOf(dumper);
    waitFor('the first dump to freeze the process', () => existsSync(marker), 30_000);
    const error = thrownBy(() => dumpSync({ pid, imagesDir: second, leave: 'running' }));
    expect(error).to.be.instanceOf(DumpError);
    expect((error as DumpError).stage).to.equal('check-options');
    expect((error as Error).message).to.contain(`already traced by process ${dumper.pid}`);
    expect((error as Error).message).to.match(/another dump of it is in progress/);
    expect(existsSync(second), 'the second dump made no directory').to.equal(false);
    await exited;
    expect(dumper.exitCode, readFileSync(marker, 'utf8')).to.equal(0);
    expect(readFileSync(marker, 'utf8')).to.equal('done');
    expect(existsSync(join(first, 'inventory.img'))).to.equal(true);
    expectRunningUntouched(pid, 'after both dumps');
    expect(keeper.check().failures).to.deep.equal([]);
    // The first dump is complete: the process comes back from it.
    process.kill(pid, 'SIGKILL');
    expectIdsFree([pid], 'the process killed after its dumps');
    expect(restoreSync({ imagesDir: first, detached: true }).pid).to.equal(pid);
    expect(keeper.check().failures).to.deep.equal([]);
  });

  it('two dumps started at the same moment, five times: at least one completes, a loser fails cleanly, the process is intact', async function () {
    keeper = new StateKeeper();
    const pid = keeper.pid;
    const before = { maps: mapsOf(pid), fds: fdLinksOf(pid) };
    let completed = 0;
    let refused = 0;
    for (let round = 0; round < 5; round++) {
      const markers = [0, 1].map((i) => join(keeper!.dir, `marker-${round}-${i}`));
      const dumpers = [0, 1].map((i) => startDumper(pid, join(keeper!.dir, `images-${round}-${i}`), markers[i]!, 0));
      const codes = await Promise.all(dumpers.map(exitOf));
      for (const [i, code] of codes.entries()) {
        const outcome = readFileSync(markers[i]!, 'utf8');
        if (code === 0) {
          completed++;
          expect(existsSync(join(keeper.dir, `images-${round}-${i}`, 'inventory.img'))).to.equal(true);
        } else {
          refused++;
          expect(outcome, `round ${round}`).to.match(/^failed dump of \d+ failed at (check-options|freeze): .*traced by process \d+/);
          expect(existsSync(join(keeper.dir, `images-${round}-${i}`, 'inventory.img'))).to.equal(false);
        }
      }
      expect(codes.filter((c) => c === 0).length, `round ${round}: completed dumps`).to.be.at.least(1);
      expectRunningUntouched(pid, `round ${round}`, before);
    }
    expect(completed + refused).to.equal(10);
    expect(keeper.check().failures).to.deep.equal([]);
  });

  it('restore warns about image files and directories a group or other users can write', function () {
    keeper = new StateKeeper();
    keeper.dump();
    chmodSync(join(keeper.images, 'pstree.img'), 0o666);
    chmodSync(join(keeper.images, `core-${keeper.pid}.img`), 0o620);
    const r = restoreSync({ imagesDir: keeper.images, detached: true });
    expect(alive(r.pid)).to.equal(true);
    expect(r.warnings).to.have.length(2);
    expect(r.warnings[0]).to.match(new RegExp(`core-${keeper.pid}\\.img is writable by its group \\(mode 0620\\)`));
    expect(r.warnings[1]).to.match(/pstree\.img is writable by its group and other users \(mode 0666\)/);
    expect(keeper.check().failures).to.deep.equal([]);
  });
});


// A real multi-process program: a bash pipeline (a counting loop that forks `sleep` on every
// line | cat | a reading loop appending to a progress file) is dumped as a tree and restored. The
// pipes cross processes, so each must come back as one pipe whose ends are in the right
// processes: if any process got a pipe of its own, the count would stop or lose lines. After the
// restore the progress file must go on 1, 2, 3... without a gap or a repeat, twice in a row.
import { expect } from 'chai';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { restoreSync } from '@criu-ts/core';
import { ourStubs } from './restore-helpers.js';
import { TEST_BIN, rootWithSubreaper } from './programs.js';
import { CountingProgram, expectConsecutive } from './counting-program.js';

const PIPELINE = String.raw`
echo "ready $$" >> "$1"
i=0
while [ $i -lt 60000 ]; do i=$((i+1)); echo $i; sleep 0.005; done | cat | while read -r line; do echo "$line" >> "$2"; done
`;

/** The processes of the tree under `root` (pid and command), from /proc. */
function tree(root: number): string[] {
  const out: string[] = [];
  const walk = (pid: number) => {
    out.push(`${pid} ${readFileSync(`/proc/${pid}/comm`, 'utf8').trim()}`);
    for (const t of readdirSync(`/proc/${pid}/task`)) {
      for (const child of readFileSync(`/proc/${pid}/task/${t}/children`, 'utf8').split(' ').filter(Boolean)) walk(Number(child));
    }
  };
  walk(root);
  return out;
}

describe('core: a bash pipeline dumped and restored as a tree', function () {
  this.timeout(120_000);
  let pipeline: CountingProgram | undefined;

  rootWithSubreaper();
  afterEach(() => {
    if (pipeline) for (const p of tree(pipeline.pid).map((l) => Number(l.split(' ')[0])).reverse()) try { process.kill(p, 'SIGKILL'); } catch { /* gone */ }
    pipeline?.cleanup();
    pipeline = undefined;
  });

  it('the pipes between the commands come back whole: the count goes on without a gap, twice in a row', function () {
    pipeline = new CountingProgram('bash pipeline', [join(TEST_BIN, 'run-clean'), 'bash'], 'pipeline.sh', PIPELINE);
    pipeline.countsTo(20);
    const commands = tree(pipeline.pid).map((l) => l.split(' ')[1]);
    expect(commands.filter((c) => c === 'bash').length, `bash, its two loop subshells (${commands.join(', ')})`).to.be.at.least(3);
    expect(commands).to.include('cat');
    for (let round = 0; round < 2; round++) {
      const atDump = pipeline.dump();
      const r = restoreSync({ imagesDir: pipeline.images, detached: true });
      expect(r.pid, `round ${round}`).to.equal(pipeline.pid);
      expect(ourStubs()).to.deep.equal([]);
      pipeline.countsTo(atDump + 30);
    }
    expectConsecutive(pipeline.progress());
  });
});

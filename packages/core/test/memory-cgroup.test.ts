// Memory cgroup room (proc/memory-cgroup.ts), and the prefill of pages files staying within it
// (dump/pages-prefill.ts): a cgroup with a 64 MiB limit is made for the test, in whichever
// memory hierarchy the machine has (v1 on the reference VMs, v2 elsewhere).
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, readFileSync, rmdirSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { memoryHeadroom } from '../src/proc/memory-cgroup.js';
import { waitFor } from './restore-helpers.js';

const here = dirname(fileURLToPath(import.meta.url));
const LIMIT = 64 << 20;

/** A new memory cgroup to put processes in, with its limit file, or a reason why none can be made. */
function makeLimitedGroup(name: string): { dir: string; limitFile: string; procs: string } | string {
  if (process.getuid?.() !== 0) return 'making a cgroup needs root; CI runs as root';
  const mounts = readFileSync('/proc/self/mountinfo', 'utf8').split('\n').map((l) => l.split(' - '));
  const v1 = mounts.find(([, right]) => right?.startsWith('cgroup ') && right.split(' ')[2]?.split(',').includes('memory'));
  if (v1) {
    const dir = join(v1[0]!.split(' ')[4]!, name);
    mkdirSync(dir);
    return { dir, limitFile: join(dir, 'memory.limit_in_bytes'), procs: join(dir, 'cgroup.procs') };
  }
  const v2 = mounts.find(([, right]) => right?.startsWith('cgroup2 '));
  if (v2) {
    const root = v2[0]!.split(' ')[4]!;
    if (!readFileSync(join(root, 'cgroup.subtree_control'), 'utf8').split(' ').map((c) => c.trim()).includes('memory')) return 'the cgroup v2 root does not delegate the memory controller';
    const dir = join(root, name);
    mkdirSync(dir);
    return { dir, limitFile: join(dir, 'memory.max'), procs: join(dir, 'cgroup.procs') };
  }
  return 'no memory cgroup hierarchy is mounted';
}

describe('core: memory cgroup room, and the pages prefill within it', function () {
  this.timeout(60_000);
  let group: ReturnType<typeof makeLimitedGroup> | undefined;
  let sleeper: number | undefined;

  afterEach(() => {
    if (sleeper !== undefined) {
      try { process.kill(sleeper, 'SIGKILL'); } catch { /* gone */ }
      spawnSync('sh', ['-c', `while kill -0 ${sleeper} 2>/dev/null; do sleep 0.01; done`], { timeout: 5000 });
      sleeper = undefined;
    }
    if (group && typeof group !== 'string' && existsSync(group.dir)) {
      for (let i = 0; i < 100; i++) {
        try {
          rmdirSync(group.dir);
          break;
        } catch {
          spawnSync('sleep', ['0.02']);
        }
      }
    }
    group = undefined;
  });

  it('a process in a group limited to 64 MiB has less than 64 MiB of room; ours, in no limited group, has no bound', function () {
    group = makeLimitedGroup(`criu-ts-test-${process.pid}-room`);
    if (typeof group === 'string') this.skip(); // stated reason: see makeLimitedGroup's message
    writeFileSync(group.limitFile, String(LIMIT));
    const child = spawn('sh', ['-c', `echo $$ > ${group.procs} && exec sleep 60`], { stdio: 'ignore', detached: true });
    sleeper = child.pid!;
    child.unref();
    const procs = group.procs;
    waitFor('the sleeper in its group', () => readFileSync(procs, 'utf8').split('\n').includes(String(sleeper)) && readFileSync(`/proc/${sleeper}/comm`, 'utf8').trim() === 'sleep');
    const room = memoryHeadroom(sleeper);
    expect(room).to.be.greaterThan(0);
    expect(room).to.be.at.most(LIMIT);
    expect(memoryHeadroom('self')).to.equal(Infinity);
  });

  it('criu-ts in a group limited to 64 MiB prefills at most half the room it has left', function () {
    group = makeLimitedGroup(`criu-ts-test-${process.pid}-budget`);
    if (typeof group === 'string') this.skip(); // stated reason: see makeLimitedGroup's message
    writeFileSync(group.limitFile, String(LIMIT));
    const prefill = resolve(here, '..', 'src', 'dump', 'pages-prefill.js');
    const cgroupModule = resolve(here, '..', 'src', 'proc', 'memory-cgroup.js');
    // The room moves while the child runs (its own allocations are charged to the group): it is
    // read just before and just after the budget, and the budget must fit the larger of the two.
    const script = `Promise.all([import(${JSON.stringify(prefill)}), import(${JSON.stringify(cgroupModule)})]).then(([p, c]) => { const before = c.memoryHeadroom('self'); const budget = p.dirtyBudget(); console.log(budget, before, c.memoryHeadroom('self')); })`;
    const r = spawnSync('sh', ['-c', `echo $$ > ${group.procs} && exec "$0" -e "$1"`, process.execPath, script], { encoding: 'utf8', timeout: 30_000 });
    expect(r.status, r.stderr).to.equal(0);
    const [budget, before, after] = r.stdout.trim().split(' ').map(Number);
    for (const room of [before, after]) expect(room, 'room inside the group').to.be.within(1, LIMIT);
    expect(budget, 'prefill budget').to.be.at.most(Math.max(before!, after!) / 2);
  });
});

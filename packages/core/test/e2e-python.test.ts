// A real interpreter checkpointed: python3 running a loop that holds state (a counter, a dict,
// a 1 MiB bytearray of pseudo-random bytes) and appends each count to a progress file is dumped
// with dumpSync() and restored with restoreSync(). After the restore it must count on from where
// it stopped (the progress file holds 1, 2, 3... without a gap or a repeat) and, asked with
// SIGUSR1, find its own data intact.
//
// How python3 is started, so that it holds only state criu-ts supports today: through
// `setsid -f` (own session and group, not a child_process of Node's, whose libuv would reap
// ptrace stops and the restored process), stdin/stdout/stderr on /dev/null, `-I -S -u`
// (isolated: no environment variables, no user site, no `site` import, unbuffered), so it has
// one thread, no pipes and no sockets (the program closes every descriptor above 2 it
// inherited: test runners leak some, e.g. a pipe at fd 251 here); the pyenv shim, if python3 is one, is bypassed by
// running sys.executable.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { readFileSync, readdirSync } from 'node:fs';
import { restoreSync } from '@criu-ts/core';
import { alive, isRoot, ourStubs, sleepMs } from './restore-helpers.js';
import { becomeSubreaper } from './programs.js';
import { CountingProgram, expectConsecutive } from './counting-program.js';

// The program: writes "ready <pid>" to REPORT, then counts every 5 ms, appending "<n>\n" to
// PROGRESS (one unbuffered write per count, on a descriptor kept open). On SIGUSR1 it checks its
// state and appends "ok ..."/"FAIL ..." lines and "done <failures> <count>" to REPORT.
// It gives up by itself after about five minutes, so a test that dies cannot leave it behind.
const PROGRAM = String.raw`
import os, random, signal, sys, time

# Exactly the descriptors opened here, whatever the launcher leaked to us (pipes are not
# supported by dump yet, and test runners do leak them).
os.closerange(3, 1 << 20)
report_path, progress_path = sys.argv[1], sys.argv[2]
SEED = 20260526
PID = os.getpid()
buf = bytearray(random.Random(SEED).randbytes(1 << 20))
state = {'name': 'criu-ts', 'items': list(range(100)), 'nested': {'pi': 3.141592653589793, 'word': 'checkpoint'}, 'last': 0}
counter = 0
check_requested = False

def on_usr1(sig, frame):
    global check_requested
    check_requested = True

signal.signal(signal.SIGUSR1, on_usr1)
progress = os.open(progress_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
report = os.open(report_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)

def say(line):
    os.write(report, (line + '\n').encode())

def check():
    results = [
        ('pid', os.getpid() == PID),
        ('counter matches dict', state['last'] == counter),
        ('dict items', state['items'] == list(range(100))),
        ('dict nested', state['nested'] == {'pi': 3.141592653589793, 'word': 'checkpoint'}),
        ('dict name', state['name'] == 'criu-ts'),
        ('bytearray 1 MiB', len(buf) == 1 << 20 and buf == random.Random(SEED).randbytes(1 << 20)),
        ('monotonic clock', time.monotonic() > 0),
        ('cwd', os.getcwd() == os.path.dirname(report_path)),
    ]
    failures = 0
    for what, good in results:
        say(('ok ' if good else 'FAIL ') + what)
        failures += 0 if good else 1
    say('done %d %d' % (failures, counter))

os.chdir(os.path.dirname(report_path))
say('ready %d' % PID)
while counter < 60000:
    counter += 1
    state['last'] = counter
    os.write(progress, b'%d\n' % counter)
    time.sleep(0.005)
    if check_requested:
        check_requested = False
        check()
sys.exit(3)
`;

/** The interpreter itself (not a pyenv-style shim script), or undefined without python3. */
function python3(): string | undefined {
  const r = spawnSync('python3', ['-c', 'import sys; print(sys.executable)'], { encoding: 'utf8' });
  return r.status === 0 && r.stdout.trim() ? r.stdout.trim() : undefined;
}

describe('core: python3 dumped and restored (library API)', function () {
  this.timeout(120_000);
  let python: string | undefined;
  let counter: CountingProgram | undefined;

  before(function () {
    // Stated reasons: ptrace, clone3 with set_tid and PR_SET_MM_MAP need root; the program is python3.
    if (!isRoot()) this.skip();
    python = python3();
    if (!python) this.skip();
    becomeSubreaper();
  });
  after(() => {
    if (isRoot()) becomeSubreaper(false);
  });
  afterEach(() => {
    counter?.cleanup();
    counter = undefined;
  });

  it('comes back with the same PID and counts on from where it stopped, its dict and bytearray intact', function () {
    counter = new CountingProgram('python3', [python!, '-I', '-S', '-u'], 'counter.py', PROGRAM);
    expect(readdirSync(`/proc/${counter.pid}/task`), 'python3 runs one thread').to.have.length(1);
    const cmdline = readFileSync(`/proc/${counter.pid}/cmdline`);
    counter.countsTo(20);

    const atDump = counter.dump();
    expect(atDump).to.be.at.least(20);
    sleepMs(100);
    expect(counter.last(), 'nothing counts while dumped').to.equal(atDump);

    const r = restoreSync({ imagesDir: counter.images, detached: true });
    expect(r.pid).to.equal(counter.pid);
    expect(r.warnings).to.deep.equal([]);
    expect(ourStubs()).to.deep.equal([]);
    expect(readFileSync(`/proc/${r.pid}/cmdline`).equals(cmdline)).to.equal(true);
    counter.countsTo(atDump + 20);
    expect(alive(r.pid)).to.equal(true);

    const { failures, checks, done } = counter.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(8);
    expect(Number(done.split(' ')[2])).to.be.at.least(atDump + 20);
    expectConsecutive(counter.progress());
  });

  it('dump, restore, dump again, restore again: still counting, still intact', function () {
    counter = new CountingProgram('python3', [python!, '-I', '-S', '-u'], 'counter.py', PROGRAM);
    counter.countsTo(10);
    let atDump = 0;
    for (let round = 0; round < 2; round++) {
      atDump = counter.dump();
      const r = restoreSync({ imagesDir: counter.images, detached: true });
      expect(r.pid, `round ${round}`).to.equal(counter.pid);
      counter.countsTo(atDump + 10);
    }
    const { failures } = counter.check();
    expect(failures).to.deep.equal([]);
    expectConsecutive(counter.progress());
    expect(counter.last()).to.be.greaterThan(atDump);
  });
});

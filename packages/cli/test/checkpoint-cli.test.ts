// criu-ts dump / restore / check / demo as commands, on real processes (root, as in CI).
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
// The test programs of @criu-ts/core (tests/bin/state-keeper and its helpers), shared by the packages' tests.
import { StateKeeper, TEST_BIN, TreeKeeper, reapIfOurs, rootWithSubreaper } from '@criu-ts/core/testing';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = resolve(here, '..', '..', 'dist', 'criu-ts.cjs');
const isRoot = () => process.getuid?.() === 0;

/**
 * SIGKILLs every process whose command line contains `text` (a test's own temporary directory),
 * and reaps those that were re-parented to us (we are a subreaper), waiting at most a second.
 */
function killProcessesNaming(text: string): void {
  const killed: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      if (!readFileSync(`/proc/${name}/cmdline`, 'utf8').includes(text)) continue;
      process.kill(Number(name), 'SIGKILL');
      killed.push(Number(name));
    } catch {
      /* gone meanwhile */
    }
  }
  for (let i = 0; i < 100 && killed.some((pid) => existsSync(`/proc/${pid}`)); i++) {
    for (const pid of killed) reapIfOurs(pid);
    spawnSync('sleep', ['0.01']);
  }
}

function criuTs(...args: string[]) {
  return spawnSync(process.execPath, [BIN, ...args], { encoding: 'utf8', timeout: 60_000 });
}

describe('cli: dump, restore, check, demo', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('dump -t PID -D DIR -o dump.log -v4, then restore -d --pidfile: same PID, the program passes its checks', function () {
    keeper = new StateKeeper();
    const pid = keeper.pid;
    const d = criuTs('dump', '-t', String(pid), '-D', keeper.images, '-o', 'dump.log', '-v4');
    expect(d.status, d.stderr).to.equal(0);
    expect(readFileSync(join(keeper.images, 'dump.log'), 'utf8')).to.match(/Dumping finished successfully/);
    for (let i = 0; i < 400 && existsSync(`/proc/${pid}`); i++) {
      reapIfOurs(pid);
      spawnSync('sleep', ['0.01']);
    }
    expect(existsSync(`/proc/${pid}`), 'the dumped task is gone').to.equal(false);
    const r = criuTs('restore', '-d', '-D', keeper.images, '--pidfile', 'restored.pid');
    expect(r.status, r.stderr).to.equal(0);
    expect(readFileSync(join(keeper.images, 'restored.pid'), 'utf8').trim()).to.equal(String(pid));
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(15);
  });

  it('on a terminal, dump and restore draw a progress bar (pages and throughput) that reaches 100%', function () {
    const ptyRun = join(TEST_BIN, 'pty-run');
    const dir = mkdtempSync(join(tmpdir(), 'criu-ts-progress-'));
    try {
      keeper = new StateKeeper();
      const pid = keeper.pid;
      const onTerminal = (name: string, ...args: string[]) => {
        // pty-run --wait returns with the command's status once the terminal has no writer left.
        const r = spawnSync(ptyRun, ['--wait', join(dir, name), process.execPath, BIN, ...args], { stdio: 'ignore', timeout: 60_000 });
        expect(r.status, readFileSync(join(dir, name), 'utf8')).to.equal(0);
        return readFileSync(join(dir, name), 'utf8');
      };
      const dumped = onTerminal('dump-terminal', 'dump', '-t', String(pid), '-D', keeper.images);
      expect(dumped).to.match(/dump \[#+\] 100% [\d.]+ MiB \d+ MiB\/s/);
      for (let i = 0; i < 400 && existsSync(`/proc/${pid}`); i++) {
        reapIfOurs(pid);
        spawnSync('sleep', ['0.01']);
      }
      const restored = onTerminal('restore-terminal', 'restore', '-D', keeper.images, '-d');
      expect(restored).to.match(/restore \[#+\] 100% [\d.]+ MiB \d+ MiB\/s/);
      expect(keeper.check().failures).to.deep.equal([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('a shell job on a terminal: dump -j, restore -j -d from another terminal, and it uses that one', function () {
    // tests/bin/pty-run plays an interactive shell: tty-keeper is its foreground job on a pty.
    const ptyRun = join(TEST_BIN, 'pty-run');
    const dir = mkdtempSync(join(tmpdir(), 'criu-ts-tty-'));
    try {
      keeper = new StateKeeper('tty-keeper', [], [ptyRun, join(dir, 'first-terminal')]);
      const pid = keeper.pid;
      const refused = criuTs('dump', '-t', String(pid), '-D', keeper.images);
      expect(refused.status).to.equal(1);
      expect(refused.stderr).to.match(/Error: .*(--shell-job|shell-job)/);
      const d = criuTs('dump', '-t', String(pid), '-D', keeper.images, '--shell-job');
      expect(d.status, d.stderr).to.equal(0);
      const info = criuTs('decode', '-i', join(keeper.images, 'tty-info.img'));
      expect(info.status, info.stderr).to.equal(0);
      const ttyInfo = JSON.parse(info.stdout).entries[0];
      expect(ttyInfo.type).to.equal('PTY');
      expect(ttyInfo.winsize.ws_col).to.equal(80);
      for (let i = 0; i < 400 && existsSync(`/proc/${pid}`); i++) {
        reapIfOurs(pid);
        spawnSync('sleep', ['0.01']);
      }
      // Restored from a command run on a second terminal: the job joins that terminal's session.
      spawnSync('setsid', ['-f', ptyRun, join(dir, 'second-terminal'), process.execPath, BIN, 'restore', '-D', keeper.images, '-j', '-d', '-o', 'restore.log', '--pidfile', 'restored.pid'], { stdio: 'ignore' });
      // The pidfile is written once the task runs (the PID exists earlier, while it is rebuilt).
      const pidfile = join(keeper.images, 'restored.pid');
      for (let i = 0; i < 1000 && !existsSync(pidfile); i++) spawnSync('sleep', ['0.01']);
      const log = join(keeper.images, 'restore.log');
      expect(existsSync(pidfile), `restored (${existsSync(log) ? readFileSync(log, 'utf8') : 'no log'})`).to.equal(true);
      expect(readFileSync(pidfile, 'utf8').trim()).to.equal(String(pid));
      const { failures, checks } = keeper.check();
      expect(failures).to.deep.equal([]);
      expect(checks).to.have.length(6);
      for (let i = 0; i < 200 && !readFileSync(join(dir, 'second-terminal'), 'utf8').includes('tty-keeper says 42'); i++) spawnSync('sleep', ['0.01']);
      expect(readFileSync(join(dir, 'second-terminal'), 'utf8')).to.contain('tty-keeper says 42');
      expect(readFileSync(join(dir, 'first-terminal'), 'utf8')).to.contain(`tty-keeper ${pid} started`);
    } finally {
      // The two pty-run "shells" (one per terminal) would otherwise live on for their 10 minutes.
      killProcessesNaming(dir);
      rmSync(dir, { recursive: true, force: true });
    }
  });

  it('dump -t ROOT of a process tree, restore -D DIR -d: the whole tree back, zombie included, its checks pass', function () {
    const tree = new TreeKeeper();
    try {
      const before = tree.layout();
      const d = criuTs('dump', '-t', String(tree.root), '-D', tree.images);
      expect(d.status, d.stderr).to.equal(0);
      tree.waitGone();
      const r = criuTs('restore', '-D', tree.images, '-d');
      expect(r.status, r.stderr).to.equal(0);
      const after = tree.layout();
      expect(after.map((l) => [l.pid, l.ppid, l.pgid, l.sid, l.state === 'Z'])).to.deep.equal(before.map((l) => [l.pid, l.ppid, l.pgid, l.sid, l.state === 'Z']));
      const { failures, checks } = tree.check();
      expect(failures).to.deep.equal([]);
      expect(checks.length).to.equal(91);
    } finally {
      tree.cleanup();
    }
  });

  it('dump -R leaves the task running; errors go to stderr with Error lines and exit 1', function () {
    keeper = new StateKeeper();
    const ok = criuTs('dump', '--tree', String(keeper.pid), '--images-dir', keeper.images, '--leave-running');
    expect(ok.status, ok.stderr).to.equal(0);
    expect(keeper.check().failures).to.deep.equal([]);
    const missing = criuTs('dump', '-t', '99999999', '-D', join(keeper.dir, 'x'));
    expect(missing.status).to.equal(1);
    expect(missing.stderr).to.match(/Error: dump of 99999999 failed at check-options: no process/);
    const noImages = criuTs('restore', '-D', join(keeper.dir, 'nothing-here'));
    expect(noImages.status).to.equal(1);
    expect(noImages.stderr).to.match(/Error/);
    const unsupported = criuTs('dump', '-t', String(keeper.pid), '--track-mem');
    expect(unsupported.status).to.equal(2);
    expect(unsupported.stderr).to.match(/--track-mem is not supported yet/);
    // --join-ns: the network namespace only (the restore e2e of a move between namespaces is core's netns-move test).
    const otherNamespace = criuTs('restore', '-D', keeper.images, '--join-ns', 'ipc:1');
    expect(otherNamespace.status).to.equal(2);
    expect(otherNamespace.stderr).to.match(/--join-ns ipc: is not supported yet/);
    const noNamespace = criuTs('restore', '-D', keeper.images, '-J', `net:${join(keeper.dir, 'no-such-netns')}`);
    expect(noNamespace.status).to.equal(1);
    expect(noNamespace.stderr).to.match(/Error.*cannot open the network namespace .*no-such-netns/);
  });

  it('signals to criu-ts do not fail a dump: 10 dumps -R under a CPU profiler (SIGPROF every 10 us interrupts its waits)', function () {
    keeper = new StateKeeper();
    const profiles = join(keeper.dir, 'profiles');
    for (let round = 1; round <= 10; round++) {
      const r = spawnSync(process.execPath, ['--cpu-prof', '--cpu-prof-dir', profiles, '--cpu-prof-interval', '10', BIN, 'dump', '-t', String(keeper.pid), '-D', join(keeper.dir, `images-${round}`), '-R'], { encoding: 'utf8', timeout: 60_000 });
      expect(r.status, `round ${round}: ${r.stderr}`).to.equal(0);
    }
    expect(readdirSync(profiles).length, 'one profile per dump: the profiler ran').to.equal(10);
    expect(keeper.check().failures).to.deep.equal([]);
  });

  it('check lists every feature; --feature exits 0 or 1', function () {
    const all = criuTs('check');
    expect(all.stdout).to.match(/^ok\s+ptrace/m);
    expect(all.stdout).to.match(/mm_map/);
    expect(criuTs('check', '--feature', 'memfd').status).to.equal(0);
    // Every feature the tests here rely on is reported present, one line each.
    for (const name of ['pidfd_getfd', 'pty_peer', 'fanotify', 'vmsplice', 'tcp_repair', 'packet_rings']) expect(all.stdout, name).to.match(new RegExp(`^ok\\s+${name}\\s`, 'm'));
    expect(criuTs('check', '--feature', 'no-such-thing').status).to.equal(2);
    expect(criuTs('check', '--faults').stdout).to.match(/dump:after-parasite/);
  });

  it('demo: the counting program comes back with the same PID and counts on', function () {
    const dir = mkdtempSync(join(tmpdir(), 'criu-ts-demo-test-'));
    try {
      const demo = spawnSync(process.execPath, [BIN, 'demo'], { encoding: 'utf8', timeout: 90_000, env: { ...process.env, TMPDIR: dir } });
      expect(demo.status, demo.stdout + demo.stderr).to.equal(0);
      expect(demo.stdout).to.match(/it counted on from \d+ with the same pid and intact memory/);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});

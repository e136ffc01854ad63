// dump() then restore() of tests/bin/fd-keeper: pipes (with buffered bytes, capacity, an fd above
// 1024), eventfd (counter, semaphore mode), epoll (targets and their data, a target moved to
// another fd number), signalfd (mask, queued signal), timerfd (armed, expired with a tick), a
// FIFO with bytes in it, inotify (watches and their wd numbers), memfd (contents with a hole,
// size, seals, offset, name); and file locks. The programs check each one themselves after the
// restore.
import { expect } from 'chai';
import { execFileSync, spawn, spawnSync } from 'node:child_process';
import { constants, existsSync, mkdtempSync, openSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { DumpError, dumpSync, RestoreError, restoreSync } from '@criu-ts/core';
import { readImageSet } from '../src/restore/image-set.js';
import { ImageReader, imageFromCritJson, imageToCritJson } from '@criu-ts/images';
import { alive, ourStubs, sleepMs, waitFor } from './restore-helpers.js';
import { killAndReap, reapIfOurs, StateKeeper, waitDumpedGone, TEST_BIN, rootWithSubreaper, imageEntries as entries } from './programs.js';

const CLI = join(TEST_BIN, '..', '..', 'packages', 'cli', 'dist', 'criu-ts.cjs');

function fdKinds(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`)
    .map(Number)
    .sort((a, b) => a - b)
    .map((fd) => `${fd} ${readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').match(/^flags:\s*(\d+)/m)![1]} ${kindOf(pid, fd)}`);
}

function kindOf(pid: number, fd: number): string {
  const link = execFileSync('readlink', [`/proc/${pid}/fd/${fd}`], { encoding: 'utf8' }).trim();
  // A deleted file whose path another file took meanwhile is recreated (and deleted again) under
  // a temporary name beside it: the one difference /proc shows.
  return link.replace(/\[\d+\]$/, '[N]').replace(/\/\.([^/]+)\.criu-ts-ghost\.\d+\.\d+ \(deleted\)$/, '/$1 (deleted)');
}

/** crit's JSON of one image, as decode gives it (bigints and all). */
function imageToCritJsonRaw(path: string): unknown {
  const reader = ImageReader.open(path);
  try {
    return imageToCritJson(reader);
  } finally {
    reader.close();
  }
}


describe('core: pipes, FIFOs, eventfd, epoll, signalfd, timerfd, inotify and memfd end to end', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('writes the images CRIU writes for them', function () {
    keeper = new StateKeeper('fd-keeper');
    keeper.dump({ leave: 'running' });
    const files = entries(join(keeper.images, 'files.img'));
    const types = files.map((f) => f.type);
    for (const t of [2, 3, 6, 7, 9, 17]) expect(types, `fd type ${t}`).to.include(t);
    const epoll = files.find((f) => f.type === 7)!.epfd;
    expect(epoll.tfd.map((t: Record<string, any>) => t.data)).to.have.members([0x1234567890abcdefn, 7n]);
    const eventfds = files.filter((f) => f.type === 6).map((f) => f.efd.counter);
    expect(eventfds).to.have.members([42n, 3n, 5n]);
    const timer = files.find((f) => f.type === 17 && f.tfd.isec === 0n && f.tfd.insec === 200_000_000n);
    expect(timer, 'periodic timerfd').to.not.equal(undefined);
    const data = entries(join(keeper.images, 'pipes-data.img'));
    expect(data.map((d) => d.bytes)).to.include(21); // "bytes left in a pipe\0"
    expect(entries(join(keeper.images, 'fifo-data.img'))[0]!.bytes).to.equal(21);
    // Byte-identical through crit's JSON and back; Debian's crit (where installed: CI) reads them.
    const crit = !spawnSync('crit', ['-h']).error;
    if (!crit && process.env.CI) throw new Error('crit missing in CI');
    for (const name of readdirSync(keeper.images).filter((n) => !n.startsWith('pages-'))) {
      const path = join(keeper.images, name);
      expect(Buffer.from(imageFromCritJson(imageToCritJsonRaw(path), path)).equals(readFileSync(path)), `${name} re-encodes byte-identically`).to.equal(true);
      if (crit) {
        const r = spawnSync('crit', ['decode', '-i', path]);
        expect(r.status, `crit decode ${name}: ${r.stderr}`).to.equal(0);
      }
    }
    // What restore reads back validates, and the running program is unharmed by the dump.
    expect(readImageSet(keeper.images).fds.length).to.be.greaterThan(10);
    const { failures } = keeper.check();
    expect(failures).to.deep.equal([]);
  });

  it('restores every kind so that it behaves as before, twice in a row', function () {
    keeper = new StateKeeper('fd-keeper');
    const before = fdKinds(keeper.pid);
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      expect(alive(r.pid)).to.equal(true);
      expect(ourStubs()).to.deep.equal([]);
      sleepMs(10);
      expect(fdKinds(r.pid), `round ${round}: fd numbers, flags and kinds`).to.deep.equal(before);
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(15);
  });
});

describe('core: file locks (--file-locks) end to end', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('refuses a task holding locks without fileLocks, and the task runs on with its locks', function () {
    keeper = new StateKeeper('lock-keeper');
    expect(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images })).to.throw(DumpError, /holds a file lock.*--file-locks/);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(5);
  });

  it('flock, POSIX and OFD locks are taken again and still exclude another process, twice in a row', function () {
    keeper = new StateKeeper('lock-keeper');
    for (let round = 0; round < 2; round++) {
      keeper.dump({ fileLocks: true });
      const locks = entries(join(keeper.images, 'filelocks.img'));
      expect(locks.map((l) => [l.flag, l.type, Number(l.start), Number(l.len)]), `round ${round}`).to.have.deep.members([[2, 1, 0, 0], [1, 1, 10, 20], [4, 0, 0, 0]]);
      if (!spawnSync('crit', ['-h']).error) expect(spawnSync('crit', ['decode', '-i', join(keeper.images, 'filelocks.img')]).status).to.equal(0);
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(5);
  });
});

describe('core: file leases (--file-locks) end to end', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('a read lease and a write lease are taken again by the task and still break, twice in a row', function () {
    keeper = new StateKeeper('lease-keeper');
    expect(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images })).to.throw(DumpError, /holds a file lock.*--file-locks/);
    for (let round = 0; round < 2; round++) {
      keeper.dump({ fileLocks: true });
      const path = join(keeper.images, 'filelocks.img');
      const locks = entries(path);
      // CRIU's FL_LEASE is 8; the type is the lease's, F_RDLCK 0 or F_WRLCK 1; the range is the whole file.
      expect(locks.map((l) => [l.flag, l.type, Number(l.start), Number(l.len), l.pid]), `round ${round}`).to.have.deep.members([[8, 0, 0, 0, keeper.pid], [8, 1, 0, 0, keeper.pid]]);
      expect(Buffer.from(imageFromCritJson(imageToCritJsonRaw(path), path)).equals(readFileSync(path)), 'filelocks.img re-encodes byte-identically').to.equal(true);
      if (!spawnSync('crit', ['-h']).error) {
        const crit = spawnSync('crit', ['decode', '-i', path], { encoding: 'utf8' });
        expect(crit.status, crit.stderr).to.equal(0);
        expect(JSON.parse(crit.stdout).entries.map((e: { flag: number; type: number }) => [e.flag, e.type])).to.have.deep.members([[8, 0], [8, 1]]);
      }
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      const fdinfo = readdirSync(`/proc/${keeper.pid}/fd`).map((fd) => readFileSync(`/proc/${keeper!.pid}/fdinfo/${fd}`, 'utf8')).join('');
      expect(fdinfo.match(/LEASE\s+ACTIVE\s+(READ|WRITE)/g)?.map((l) => l.split(/\s+/)[2]).sort(), `round ${round}`).to.deep.equal(['READ', 'WRITE']);
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(12);
    // A lease being broken (LEASE_BREAKING, 4) goes down to read (0) or none (2); anything else is refused, naming the fd.
    const path = join(keeper.images, 'filelocks.img');
    const json = imageToCritJsonRaw(path) as { entries: Array<{ type: number; fd: number }> };
    json.entries[0]!.type = 4 | 1;
    writeFileSync(path, imageFromCritJson(json, path));
    expect(() => readImageSet(keeper!.images)).to.throw(RestoreError, new RegExp(`the lease on fd ${json.entries[0]!.fd} is being broken to type 1, neither read \\(0\\) nor none \\(2\\)`));
  });

  it('a lease being broken is dumped as CRIU does (LEASE_BREAKING) and broken again by the restore: the task is signalled again', function () {
    keeper = new StateKeeper('lease-keeper', ['breaking']);
    // Start breaking the read lease from here (a non-blocking open for writing), as another
    // process would: the lease sits in BREAKING until the task answers or lease-break-time ends.
    expect(() => openSync(join(keeper!.dir, 'read-leased'), constants.O_WRONLY | constants.O_NONBLOCK)).to.throw(/EWOULDBLOCK|EAGAIN/);
    keeper.dump({ fileLocks: true });
    const locks = entries(join(keeper.images, 'filelocks.img'));
    // type 6: LEASE_BREAKING (4) | F_UNLCK (2), the type the read lease goes down to.
    expect(locks.map((l) => [l.flag, l.type])).to.have.deep.members([[8, 6], [8, 1]]);
    if (!spawnSync('crit', ['-h']).error) expect(spawnSync('crit', ['decode', '-i', join(keeper.images, 'filelocks.img')]).status).to.equal(0);
    restoreSync({ imagesDir: keeper.images, detached: true });
    const fdinfo = readdirSync(`/proc/${keeper.pid}/fd`).map((fd) => readFileSync(`/proc/${keeper!.pid}/fdinfo/${fd}`, 'utf8')).join('');
    expect(fdinfo).to.match(/LEASE\s+BREAKING\s+UNLCK/);
    expect(fdinfo).to.match(/LEASE\s+ACTIVE\s+WRITE/);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(9);
  });
});

describe('core: files unlinked while open, with --link-remap', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  const linkRemaps = (dir: string) => readdirSync(dir).filter((n) => n.startsWith('link_remap.'));

  it('without it, refuses an unlinked file that still has another link, naming the fd, and the task runs on', function () {
    keeper = new StateKeeper('link-keeper');
    expect(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images })).to.throw(DumpError, /fd \d+ \(.*\/linked \(deleted\)\): file cannot be dumped: its name was removed but the file has 1 other link\(s\); dump with --link-remap/);
    expect(alive(keeper.pid)).to.equal(true);
    expect(linkRemaps(keeper.dir)).to.deep.equal([]);
  });

  it('links an O_TMPFILE file and a file with another link, open and mapped (LINKED remaps), keeps a ghost where no link is possible, and restore opens the same inodes', function () {
    keeper = new StateKeeper('link-keeper');
    // The dump by the CLI: --link-remap is criu's option.
    const cli = spawnSync(process.execPath, [CLI, 'dump', '-t', String(keeper.pid), '-D', keeper.images, '--link-remap'], { encoding: 'utf8', timeout: 60_000 });
    expect(cli.status, cli.stderr).to.equal(0);
    waitDumpedGone(keeper.pid);

    const files = entries(join(keeper.images, 'files.img'));
    const remaps = entries(join(keeper.images, 'remap-fpath.img'));
    const byId = new Map(files.map((f) => [Number(f.id), f]));
    const linked = remaps.filter((r) => Number(r.remap_type ?? 0) === 0);
    const ghosts = remaps.filter((r) => Number(r.remap_type) === 1);
    expect(linked.map((r) => String(byId.get(Number(r.orig_id))!.reg.name).replace(keeper!.dir, 'DIR').replace(/#\d+$/, '#INO')).sort()).to.deep.equal(['DIR/#INO', 'DIR/linked', 'DIR/linked']);
    for (const r of linked) {
      const link = byId.get(Number(r.remap_id))!.reg;
      expect(link.name).to.equal(join(keeper.dir, `link_remap.${r.remap_id}`));
      expect(existsSync(String(link.name)), `${link.name} made by the dump`).to.equal(true);
    }
    expect(ghosts.map((r) => String(byId.get(Number(r.orig_id))!.reg.name))).to.deep.equal([join(keeper.dir, 'gone')]);
    expect(readdirSync(keeper.images).filter((n) => n.startsWith('ghost-file-'))).to.deep.equal([`ghost-file-${Number(ghosts[0]!.remap_id).toString(16)}.img`]);
    expect(linkRemaps(keeper.dir), 'one link per file entry: the fds and the shared mapping').to.have.length(3);
    for (const name of ['files.img', 'remap-fpath.img']) {
      const path = join(keeper.images, name);
      expect(Buffer.from(imageFromCritJson(imageToCritJsonRaw(path), path)).equals(readFileSync(path)), `${name} re-encodes byte-identically`).to.equal(true);
      if (!spawnSync('crit', ['-h']).error) {
        const crit = spawnSync('crit', ['decode', '-i', path], { encoding: 'utf8' });
        expect(crit.status, `crit decode ${name}: ${crit.stderr}`).to.equal(0);
        if (name === 'remap-fpath.img') {
          expect(JSON.parse(crit.stdout).entries.map((e: { remap_type: string }) => e.remap_type).sort()).to.deep.equal(['GHOST', 'LINKED', 'LINKED', 'LINKED']);
        }
      }
    }

    const r = restoreSync({ imagesDir: keeper.images, detached: true });
    expect(r.pid).to.equal(keeper.pid);
    expect(linkRemaps(keeper.dir), 'link remaps removed by the restore').to.deep.equal([]);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(11);
  });

  it('a failed dump removes the links it made', function () {
    keeper = new StateKeeper('link-keeper');
    expect(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images, linkRemap: true, faultAt: 'before-inventory' })).to.throw(DumpError);
    expect(alive(keeper.pid)).to.equal(true);
    expect(linkRemaps(keeper.dir)).to.deep.equal([]);
  });
});

describe('core: a datagram socket connected outside the dump (--ext-unix-sk)', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  let sink: number | undefined;
  let sinkDir: string | undefined;
  rootWithSubreaper();
  afterEach(() => {
    if (sink !== undefined) killAndReap(sink, sinkDir!);
    sink = undefined;
    keeper?.cleanup();
    keeper = undefined;
  });

  it('is refused without the option, then saved and connected to the same name again, twice in a row', function () {
    // The sink plays /dev/log: a named datagram socket in a process outside the dumped one.
    const dir = (sinkDir = mkdtempSync(join(tmpdir(), 'criu-ts-sink-')));
    const received = join(dir, 'received');
    spawn('setsid', ['-f', join(TEST_BIN, 'log-client'), 'sink', join(dir, 'sink'), received], { stdio: 'ignore' }).unref();
    waitFor('the sink to bind', () => existsSync(join(dir, 'sink')));
    sink = Number(execFileSync('pgrep', ['-f', `log-client sink ${join(dir, 'sink')}`], { encoding: 'utf8' }).trim().split('\n')[0]);
    keeper = new StateKeeper('log-client', [join(dir, 'sink')]);
    const pid = keeper.pid;
    waitFor('the first datagram', () => existsSync(received) && readFileSync(received, 'utf8').includes(`before ${pid}`));
    expect(() => dumpSync({ pid, imagesDir: keeper!.images })).to.throw(DumpError, /outside the dumped process; dump with --ext-unix-sk/);
    for (let round = 0; round < 2; round++) {
      keeper.dump({ extUnixSk: true });
      const external = entries(join(keeper.images, 'files.img')).filter((f) => f.type === 5 && (f.usk.uflags & 1));
      expect(external, `round ${round}: the sink recorded as an external socket`).to.have.length(1);
      expect(Buffer.from(external[0]!.usk.name).toString().replace(/\0+$/, ''), 'its name, NUL-terminated as CRIU writes it').to.equal(join(dir, 'sink'));
      restoreSync({ imagesDir: keeper.images, detached: true });
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(2);
    waitFor('the datagram sent after the restore', () => readFileSync(received, 'utf8').includes(`after ${pid}`));
  });
});

describe('core: files whose directories changed after they were opened, and ghost files of a killed restore', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('a deleted file whose directories were removed, and a file whose directory was renamed, twice in a row', function () {
    keeper = new StateKeeper('orphan-file-keeper');
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      // The deleted file is a ghost under its old path, whose directories restore has to make.
      const ghosts = readdirSync(keeper.images).filter((n) => n.startsWith('ghost-file-'));
      expect(ghosts, `round ${round}`).to.have.length(1);
      const names = entries(join(keeper.images, 'files.img')).map((f) => (f.reg as { name?: string } | undefined)?.name).filter(Boolean);
      expect(names, `round ${round}`).to.include.members([join(keeper.dir, 'gone', 'deeper', 'file'), join(keeper.dir, 'new', 'kept')]);
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      // The directories made for the ghost's name are gone again once the task holds the file.
      expect(existsSync(join(keeper.dir, 'gone')), `round ${round}: made directories left`).to.equal(false);
      const { failures, checks } = keeper.check();
      expect(failures, `round ${round}`).to.deep.equal([]);
      expect(checks, `round ${round}`).to.have.length(10);
    }
  });

  it('a restore SIGKILLed while it holds a ghost file leaves it only until the next restore, which removes it and succeeds', function () {
    keeper = new StateKeeper();
    keeper.dump();
    const ghost = join(keeper.dir, 'gone.txt'); // state-keeper's file deleted while open, recreated at its own name
    // criu-ts killed right after the first process got its memory: its ghost files are on disk.
    const killed = spawnSync(process.execPath, [CLI, 'restore', '-D', keeper.images, '-d'], {
      env: { ...process.env, CRIU_TS_KILL_AT: 'restore:after-memory' }, encoding: 'utf8', timeout: 60_000,
    });
    expect(killed.signal, killed.stderr).to.equal('SIGKILL');
    waitFor('the half-restored process to be gone', () => {
      reapIfOurs(keeper!.pid);
      return !existsSync(`/proc/${keeper!.pid}`);
    });
    expect(existsSync(ghost), 'the killed restore left its ghost file (nothing ran its cleanup)').to.equal(true);

    const r = restoreSync({ imagesDir: keeper.images, detached: true });
    expect(r.pid).to.equal(keeper.pid);
    expect(r.warnings.some((w) => w.includes(ghost) && /killed/.test(w)), r.warnings.join('; ')).to.equal(true);
    expect(existsSync(ghost), 'ghost file after the second restore').to.equal(false);
    const { failures } = keeper.check();
    expect(failures).to.deep.equal([]);
  });
});

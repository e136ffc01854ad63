// dump() then restore() of tests/bin/pty-keeper (ptys of the tree: indexes, termios, window size,
// queued bytes both ways, packet/exclusive/locked modes, a child's controlling terminal and
// foreground group) and tests/bin/fanotify-keeper (a fanotify group with a mount mark, an inode
// mark with an ignore mask, an inode mark elsewhere). The programs check each one themselves
// after the restore; the images are checked against what CRIU 4.2 writes. Without privileges:
// CRIU 4.2's own pty00/fanotify00 records read back, and a pty's queued bytes taken out and put
// back byte for byte.
import { expect } from 'chai';
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DumpError, dumpSync, RESTORE_FAULT_POINTS, RestoreError, restoreSync } from '@criu-ts/core';
import { ImageReader, imageFromCritJson, imageToCritJson } from '@criu-ts/images';
import { alive, ourStubs, waitFor } from './restore-helpers.js';
import { termiosEntry } from '../src/dump/files/terminals.js';
import { readPtyInfo } from '../src/restore/ptys.js';
import { readFanotify } from '../src/restore/fanotify.js';
import { drainPtyInput, drainTty, refillPty } from '../src/pty-queues.js';
import { close, O, open, tcgets, tiocgptpeer, tiocsptlck } from '@criu-ts/sys';
import { StateKeeper, rootWithSubreaper, imageEntries as entries, dumpedPids, dumpAndWait, reapIfOurs } from './programs.js';

/** Every image re-encodes byte-identically through crit's JSON, and Debian's crit (where installed: CI) decodes it. */
function expectImagesRoundTrip(images: string): void {
  const crit = !spawnSync('crit', ['-h']).error;
  if (!crit && process.env.CI) throw new Error('crit missing in CI');
  for (const name of readdirSync(images).filter((n) => !n.startsWith('pages-'))) {
    const path = join(images, name);
    const reader = ImageReader.open(path);
    let json: unknown;
    try {
      json = imageToCritJson(reader);
    } finally {
      reader.close();
    }
    expect(Buffer.from(imageFromCritJson(json, path)).equals(readFileSync(path)), `${name} re-encodes byte-identically`).to.equal(true);
    if (crit) {
      const r = spawnSync('crit', ['decode', '-i', path]);
      expect(r.status, `crit decode ${name}: ${r.stderr}`).to.equal(0);
    }
  }
}

/** The 19 control characters of a termios_entry as CRIU packs them (four per word). */
function controlChars(termios: Record<string, any>): number[] { // eslint-disable-line @typescript-eslint/no-explicit-any
  const bytes = Buffer.alloc(19 * 4);
  (termios.c_cc as number[]).forEach((w, i) => bytes.writeUInt32LE(Number(w) >>> 0, i * 4));
  return [...bytes.subarray(0, 19)];
}

describe('core: terminal and fanotify records of a CRIU 4.2 dump (no privileges)', function () {
  const fixtures = join('/work/shared/criu-images');
  const invalid = (message: string): never => {
    throw new Error(message);
  };

  it("reads pty00's termios as CRIU packs c_cc (four characters a word) and packs them back the same way", function () {
    const infos = entries(join(fixtures, 'pty00', 'tty-info.img'));
    const master = readPtyInfo(infos.find((i) => i.id === 1)!, 'pty00 master', invalid);
    expect(master.master).to.equal(true);
    expect(master.termios!.cc.slice(0, 4), 'VINTR ^C, VQUIT ^\\, VERASE DEL, VKILL ^U').to.deep.equal([3, 28, 127, 21]);
    // The first five words hold the 19 characters; CRIU leaves the rest as its buffer had them.
    expect((termiosEntry(master.termios!).c_cc as number[]).slice(0, 5)).to.deep.equal(infos.find((i) => i.id === 1)!.termios.c_cc.slice(0, 5));
    expect(readPtyInfo(infos.find((i) => i.id === 0)!, 'pty00 slave', invalid).master).to.equal(false);
    expect(() => readPtyInfo({ ...infos.find((i) => i.id === 1)!, id: 3 }, 'bad', invalid)).to.throw(/does not match pty 0's master/);
  });

  it("reads fanotify00's group: a mount mark with its path and an inode mark with its handle's path", function () {
    const group = entries(join(fixtures, 'fanotify00', 'files.img')).find((f) => f.type === 12)!;
    const image = readFanotify(group.id, group.ffy, 'fanotify00', invalid);
    expect([image.initFlags, image.eventFlags]).to.deep.equal([0x12, 0x8000]);
    expect(image.marks.map((m) => [m.type, m.path, m.mflags, m.mask, m.ignoredMask])).to.deep.equal([
      ['mount', '/', 0x40, 0x40000038, 0x3],
      ['inode', '/tmp/criu-src/criu/test/zdtm/static/fanotify-del-after-cr', 0, 0x3b, 0],
    ]);
  });
});

describe('core: bytes queued in a pty, taken out and put back (no privileges)', function () {
  it('puts input back literally (editing, signal and CR bytes included, the unfinished line still unfinished) and output without a second ONLCR, with no echo', function () {
    const master = open('/dev/ptmx', O.RDWR | O.NOCTTY);
    tiocsptlck(master, false);
    const slave = tiocgptpeer(master, O.RDWR | O.NOCTTY | O.CLOEXEC);
    try {
      const before = tcgets(master);
      // Default termios: ICANON, ECHO, ISIG, ICRNL on; ONLCR on output.
      const input = Buffer.from('a\x7fb\x15c\x03d\x00e\rf\nsecond line\nhalf');
      const output = Buffer.from('out\r\nmore\r\n');
      refillPty(master, slave, { input, output }, 'test pty');
      expect(tcgets(master), 'termios as before').to.deep.equal(before);
      expect(drainTty(master).toString('latin1'), 'output once, no echo of the input').to.equal(output.toString('latin1'));
      expect(drainPtyInput(master, slave).toString('latin1'), 'input byte for byte').to.equal(input.toString('latin1'));
      expect(tcgets(master), 'termios as before after reading').to.deep.equal(before);
    } finally {
      close(slave);
      close(master);
    }
  });
});

describe('core: ptys of the dumped tree end to end', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('writes the images CRIU 4.2 writes for them, queued bytes included, and leaves the tree unharmed', function () {
    keeper = new StateKeeper('pty-keeper');
    keeper.dump({ leave: 'running' });
    expect(dumpedPids(keeper.images)).to.have.length(2);
    const files = entries(join(keeper.images, 'files.img'));
    const all = files.filter((f) => f.type === 11);
    expect(all, "three masters, two slaves and the child's /dev/tty").to.have.length(6);
    for (const t of all) {
      // As CRIU 4.2: the REG entry with the path comes first in files.img, with the next id.
      const reg = files.find((f) => f.id === t.tty.regf_id)!;
      expect(reg.type).to.equal(1);
      expect(reg.id).to.equal(t.id + 1);
      expect(files.indexOf(reg)).to.equal(files.indexOf(t) - 1);
    }
    const infos = entries(join(keeper.images, 'tty-info.img'));
    const byId = new Map(infos.map((i) => [Number(i.id), i]));
    const ctty = all.filter((t) => t.tty.tty_info_id === 2012);
    expect(ctty, '/dev/tty as CRIU records it (CTTY, tty-info id 2012)').to.have.length(1);
    const ttys = all.filter((t) => t !== ctty[0]);
    for (const t of ttys) {
      const info = byId.get(t.tty.tty_info_id)!;
      const master = files.find((f) => f.id === t.tty.regf_id)!.reg.name === '/dev/ptmx';
      expect(info.id, 'tty-info ids as CRIU numbers them').to.equal(info.pty.index * 2 + (master ? 1 : 0));
    }
    const masters = infos.filter((i) => i.id % 2 === 1 && i.pty).sort((a, b) => a.pty.index - b.pty.index);
    const [a, b, c] = masters;
    expect(a!.winsize).to.deep.equal({ ws_row: 33, ws_col: 111, ws_xpixel: 7, ws_ypixel: 9 });
    expect(controlChars(a!.termios)[0], 'VINTR, packed as CRIU packs c_cc').to.equal(0x05);
    expect(controlChars(a!.termios)[2], 'VERASE').to.equal(0x08);
    expect(a!.termios_locked, 'locked termios recorded').to.not.equal(undefined);
    expect([a!.locked, b!.locked, c!.locked]).to.deep.equal([false, false, true]);
    expect([a!.packet_mode, b!.packet_mode, c!.packet_mode]).to.deep.equal([false, true, false]);
    const child = dumpedPids(keeper.images)[1]!;
    expect([b!.sid, b!.pgrp], 'pty B: the session it controls and its foreground group').to.deep.equal([child, child]);
    expect([byId.get(2012)!.type, byId.get(2012)!.sid], "/dev/tty: the child's session").to.deep.equal([4, child]);
    expect(byId.get(b!.pty.index * 2)!.exclusive, "pty B's slave is exclusive").to.equal(true);
    expect([a!.sid, c!.sid]).to.deep.equal([0, 0]);
    const data = entries(join(keeper.images, 'tty-data.img'));
    expect(data.map((d) => [d.tty_id, Buffer.from(d.data).toString()])).to.have.deep.members([
      [a!.pty.index * 2, 'typed ahead\nhalf'],
      [a!.pty.index * 2 + 1, 'printed\r\n'],
    ]);
    expectImagesRoundTrip(keeper.images);
    // The queued bytes were put back: the program still finds them, once.
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(20);
  });

  it('refuses a process holding a pty slave whose master is outside the dump, before freezing it, naming the fd; the tree runs on', function () {
    keeper = new StateKeeper('pty-keeper');
    const child = Number(readFileSync(`/proc/${keeper.pid}/task/${keeper.pid}/children`, 'utf8').trim().split(' ')[0]);
    expect(() => dumpSync({ pid: child, imagesDir: keeper!.images }))
      .to.throw(DumpError, /check-options.*fd 13 \(\/dev\/pts\/\d+\): terminal of process \d+ cannot be dumped alone: the master of pty \d+ is outside the dump/);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(28);
  });

  it('restores every pty with its index, settings, queued bytes and controlling terminal, twice in a row', function () {
    keeper = new StateKeeper('pty-keeper');
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      expect(alive(r.pid)).to.equal(true);
      expect(ourStubs()).to.deep.equal([]);
      const links = readdirSync(`/proc/${r.pid}/fd`).map((fd) => `${fd} ${execFileSync('readlink', [`/proc/${r.pid}/fd/${fd}`], { encoding: 'utf8' }).trim()}`);
      expect(links, `round ${round}`).to.include.members(['10 /dev/ptmx', '12 /dev/ptmx', '14 /dev/ptmx']);
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(28);
  });

  it('a restore failing at any point leaves no process and no pty behind, and the next one works', function () {
    keeper = new StateKeeper('pty-keeper');
    const pids = [keeper.pid, Number(readFileSync(`/proc/${keeper.pid}/task/${keeper.pid}/children`, 'utf8').trim().split(' ')[0])];
    keeper.dump();
    const indexes = entries(join(keeper.images, 'tty-info.img')).filter((i) => i.pty && i.id % 2 === 1).map((i) => Number(i.pty.index));
    expect(indexes).to.have.length(3);
    for (const point of RESTORE_FAULT_POINTS) {
      expect(() => restoreSync({ imagesDir: keeper!.images, detached: true, faultAt: point }), point).to.throw(RestoreError, /fault injected/);
      // Killed processes reparented to us (the test is their subreaper) are reaped here.
      waitFor(`${point}: the restored processes gone`, () => {
        for (const p of pids) reapIfOurs(p);
        return pids.every((p) => !existsSync(`/proc/${p}`));
      });
      expect(indexes.filter((i) => existsSync(`/dev/pts/${i}`)), `${point}: every pty closed again`).to.deep.equal([]);
      expect(ourStubs()).to.deep.equal([]);
    }
    restoreSync({ imagesDir: keeper.images, detached: true });
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(28);
  });
});

describe('core: fanotify groups end to end', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  let mount: string | undefined;
  rootWithSubreaper();
  afterEach(() => {
    // Lazily: the program may still hold marks in it until cleanup kills it.
    if (mount) spawnSync('umount', ['-l', mount]);
    mount = undefined;
    keeper?.cleanup();
    keeper = undefined;
  });

  /** fanotify-keeper with its mount mark on a tmpfs of its own (no other program's files in it). */
  function startKeeper(extra: string[] = []): StateKeeper {
    const k = new StateKeeper('fanotify-keeper', extra, ['sh', '-c', 'mkdir -p "$3/mnt" && mount -t tmpfs criu-ts-fanotify "$3/mnt" && exec "$1" "$2" "$3" "$3/mnt" ${4:+"$4"}', 'sh']);
    mount = join(k.dir, 'mnt');
    return k;
  }

  it('writes fanotify_file_entry as CRIU 4.2 does (inode and mount marks, masks, flags)', function () {
    keeper = startKeeper();
    keeper.dump({ leave: 'running' });
    const group = entries(join(keeper.images, 'files.img')).find((f) => f.type === 12)!;
    expect(group, 'a FANOTIFY file').to.not.equal(undefined);
    expect(group.ffy.faflags & 0x3, 'FAN_CLOEXEC | FAN_NONBLOCK').to.equal(0x3);
    expect(group.ffy.evflags & 0o100000, 'O_LARGEFILE in event-flags').to.equal(0o100000);
    const marks = group.ffy.mark as Array<Record<string, any>>; // eslint-disable-line @typescript-eslint/no-explicit-any
    const mountMark = marks.find((m) => m.type === 2)!;
    expect(mountMark.me.path).to.equal(mount);
    expect([mountMark.mask, mountMark.ignored_mask]).to.deep.equal([0x28, 0]);
    const quiet = marks.find((m) => m.type === 1 && m.ie.f_handle.path === join(mount!, 'quiet'))!;
    expect([quiet.mask, quiet.ignored_mask, quiet.mflags]).to.deep.equal([0, 0x28, 0x40]);
    const watched = marks.find((m) => m.type === 1 && m.ie.f_handle.path === join(keeper!.dir, 'watched'))!;
    expect([watched.mask, watched.ignored_mask]).to.deep.equal([0x0a, 0]);
    expectImagesRoundTrip(keeper.images);
    const { failures } = keeper.check();
    expect(failures).to.deep.equal([]);
  });

  it('restores the group so that marked files give events and ignored ones do not, twice in a row', function () {
    keeper = startKeeper();
    // The images go to the marked mount: restore's own reads of them must not reach the restored group.
    const images = join(mount!, 'images');
    for (let round = 0; round < 2; round++) {
      dumpAndWait(keeper.pid, images);
      const r = restoreSync({ imagesDir: images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      expect(readFileSync(`/proc/${r.pid}/fdinfo/7`, 'utf8'), `round ${round}`).to.match(/fanotify mnt_id:/);
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(8);
  });

  it('refuses a group with permission events up front, naming the fd, and the program runs on', function () {
    keeper = startKeeper(['perm']);
    expect(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images }))
      .to.throw(DumpError, /fd 7 \(anon_inode:\[fanotify\]\): fanotify group cannot be dumped: .*permission events/);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(1);
  });
});

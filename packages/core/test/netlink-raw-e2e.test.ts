// Netlink, raw IP and packet sockets dumped and restored: tests/bin/netlink-raw-keeper holds three
// NETLINK_ROUTE sockets (kernel-picked portid with groups, one past bind's 32; never bound; a
// portid of its own), raw ICMP/ICMPv6/protocol-253 sockets with filters and options, and a
// packet socket on lo with options, a promiscuous membership and a classic BPF filter; it checks
// after the restore that each is what it was and works (an RTM_GETLINK dump, pings of the
// loopback addresses, a frame sent and received on lo). Through the library and the CLI;
// Debian's crit decodes the images. What is refused: such a socket with data waiting in it.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { join } from 'node:path';
import { DumpError, dumpSync, restoreSync } from '@criu-ts/core';
import { checkImagesRoundTrip } from './image-checks.js';
import { imageEntries, rootWithSubreaper, StateKeeper, TEST_BIN, waitDumpedGone } from './programs.js';
import { alive, thrownBy } from './restore-helpers.js';

const CLI = join(TEST_BIN, '..', '..', 'packages', 'cli', 'dist', 'criu-ts.cjs');

describe('netlink, raw and packet sockets (e2e)', function () {
  this.timeout(60_000);
  let keeper: StateKeeper | undefined;
  before(function () {
    if (process.getuid?.() !== 0) throw new Error('these tests need root');
    rootWithSubreaper();
  });
  afterEach(function () {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('dump() and restore(): portids, groups, filters and options come back, and the sockets work', function () {
    keeper = new StateKeeper('netlink-raw-keeper');
    keeper.dump();
    const files = imageEntries(join(keeper.images, 'files.img'));
    const netlink = files.filter((f) => f.nlsk).map((f) => f.nlsk);
    expect(netlink.map((n) => n.protocol)).to.deep.equal([0, 0, 0]);
    expect(netlink.map((n) => n.portid)).to.include(0x7e570001);
    expect(netlink.find((n) => (n.groups ?? []).length === 2)?.groups[1], 'group 33 in the second bitmap word').to.equal(1);
    const raw = files.filter((f) => f.isk?.type === 3).map((f) => f.isk);
    expect(raw.map((r) => r.proto).sort((a, b) => a - b)).to.deep.equal([1, 58, 253]);
    const packet = files.filter((f) => f.psk).map((f) => f.psk);
    expect(packet.map((p) => [p.type, p.protocol, p.ifindex, p.version, p.aux_data, p.mclist.length, p.opts.so_filter.length])).to.deep.equal([[2, 0x88b5, 1, 1, true, 1, 2]]);
    restoreSync({ imagesDir: keeper.images, detached: true });
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(17);
  });

  it('criu-ts dump/restore: the same through the CLI; crit decodes every image', function () {
    keeper = new StateKeeper('netlink-raw-keeper');
    const dump = spawnSync(process.execPath, [CLI, 'dump', '-t', String(keeper.pid), '-D', keeper.images, '-o', join(keeper.dir, 'dump.log')], { encoding: 'utf8' });
    expect(dump.status, dump.stderr).to.equal(0);
    waitDumpedGone(keeper.pid);
    checkImagesRoundTrip(keeper.images);
    const restore = spawnSync(process.execPath, [CLI, 'restore', '-D', keeper.images, '-d', '-o', join(keeper.dir, 'restore.log')], { encoding: 'utf8' });
    expect(restore.status, restore.stderr).to.equal(0);
    const { failures } = keeper.check();
    expect(failures).to.deep.equal([]);
  });

  it('refuses a netlink socket with messages waiting in it, naming the fd; the program runs on', function () {
    keeper = new StateKeeper('netlink-raw-keeper');
    // NL1 listens to link events: a new veth pair puts one in its queue, unread while the program waits.
    const link = `crts${process.pid % 100000}`;
    const add = spawnSync('ip', ['link', 'add', link, 'type', 'veth', 'peer', 'name', `${link}p`], { encoding: 'utf8' });
    if (add.status !== 0) throw new Error(`ip link add failed: ${add.stderr}`);
    try {
      const error = thrownBy(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images }));
      expect(error).to.be.instanceOf(DumpError);
      expect((error as Error).message).to.match(/fd \d+ \(socket:\[\d+\], netlink socket\): messages are waiting in it/);
      expect(alive(keeper.pid)).to.equal(true);
    } finally {
      spawnSync('ip', ['link', 'del', link]);
    }
  });
});

// Packet sockets with memory-mapped rings (PACKET_RX_RING / PACKET_TX_RING), and a fanout group, dumped part-way
// through their rings and restored: tests/bin/packet-ring-keeper holds a TPACKET_V2 socket with
// both rings in one mapping (messages unread in its RX ring, one marked for sending in its TX
// ring) and a TPACKET_V1 receive ring read up to frame 6; after the restore it checks the rings
// are mapped where they were, the unread and unsent messages are still there, and new messages
// go through the very frames the program expects, wrapping around the rings. Through the library
// and the CLI (Debian's crit decodes the images); the dump with --leave-running leaves the rings
// working; rings a restore could not map again (a mapping without a descriptor, a split
// mapping) are refused at dump; a restore whose ring bytes are missing refuses before making
// anything.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, rmSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { DumpError, RestoreError, dumpSync, restoreSync } from '@criu-ts/core';
import { checkImagesRoundTrip } from './image-checks.js';
import { imageEntries, rootWithSubreaper, StateKeeper, TEST_BIN, waitDumpedGone } from './programs.js';
import { alive, thrownBy } from './restore-helpers.js';

const CLI = join(TEST_BIN, '..', '..', 'packages', 'cli', 'dist', 'criu-ts.cjs');
const VMA_AREA_SOCKET = 1 << 11;
/** What the program checks after a restore (see tests/packet-ring-keeper.c). */
const CHECKS = 20;

describe('packet sockets with rings (e2e)', function () {
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

  it('dump() and restore(): ring geometry, kernel positions and bytes are saved; the rings go on from the same frames', function () {
    keeper = new StateKeeper('packet-ring-keeper');
    keeper.dump();
    const files = imageEntries(join(keeper.images, 'files.img')).filter((f) => f.psk);
    const byProtocol = new Map(files.map((f) => [Number(f.psk.protocol), f.psk]));
    const a = byProtocol.get(0x88b7)!; // TPACKET_V2, both rings
    const v1 = byProtocol.get(0x88b9)!; // TPACKET_V1, a receive ring
    expect(byProtocol.get(0)?.rx_ring, 'S has no ring').to.equal(undefined);
    const fanout = files.filter((f) => Number(f.psk.protocol) === 0x88be).map((f) => Number(f.psk.fanout));
    expect(fanout, 'F1 and F2: group 0x5a5a, PACKET_FANOUT_LB, FLAG_ROLLOVER').to.deep.equal([0x5a5a | 1 << 16 | 0x10 << 24, 0x5a5a | 1 << 16 | 0x10 << 24]);
    const ring = { block_size: 8192, block_nr: 2, frame_size: 2048, frame_nr: 8 };
    expect(a.rx_ring).to.include(ring);
    expect(a.tx_ring).to.include(ring);
    expect([a.rx_ring_head, a.tx_ring_head], 'A: the kernel had filled frames 0-4 and sent frames 0-4').to.deep.equal([5, 5]);
    expect(v1.rx_ring).to.include(ring);
    expect(v1.tx_ring).to.equal(undefined);
    expect(v1.rx_ring_head).to.equal(6);
    const v3 = byProtocol.get(0x88ba)!; // TPACKET_V3, a receive ring of blocks
    expect(v3.rx_ring).to.include({ block_size: 4096, block_nr: 4, retire_tmo: 60000 });
    expect([v3.rx_ring_head, v3.rx_ring_block_offset, v3.rx_ring_block_last, v3.rx_ring_frozen], 'V3: block 1 active, holding two 1088-byte packets').to.deep.equal([1, 48 + 2 * 1088, 48 + 1088, false]);
    expect(statSync(join(keeper.images, `packet-ring-${a.id}.img`)).size).to.equal(2 * 16384);
    expect(statSync(join(keeper.images, `packet-ring-${v1.id}.img`)).size).to.equal(16384);
    const mm = imageEntries(join(keeper.images, `mm-${keeper.pid}.img`))[0]!;
    const ringVmas = (mm.vmas as Array<Record<string, any>>).filter((v) => Number(v.status) & VMA_AREA_SOCKET); // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(ringVmas.map((v) => [Number(v.shmid), Number(v.end - v.start)]).sort()).to.deep.equal([[Number(a.id), 32768], [Number(v1.id), 16384], [Number(v3.id), 16384]].sort());

    restoreSync({ imagesDir: keeper.images, detached: true });
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(CHECKS);
  });

  it('dump() with leave: running takes nothing from the rings: the program goes on in them', function () {
    keeper = new StateKeeper('packet-ring-keeper');
    dumpSync({ pid: keeper.pid, imagesDir: keeper.images, leave: 'running' });
    expect(alive(keeper.pid)).to.equal(true);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(CHECKS);
  });

  it('criu-ts dump/restore: the same through the CLI; crit decodes every image', function () {
    keeper = new StateKeeper('packet-ring-keeper');
    const dump = spawnSync(process.execPath, [CLI, 'dump', '-t', String(keeper.pid), '-D', keeper.images, '-o', join(keeper.dir, 'dump.log')], { encoding: 'utf8' });
    expect(dump.status, dump.stderr).to.equal(0);
    waitDumpedGone(keeper.pid);
    checkImagesRoundTrip(keeper.images);
    const restore = spawnSync(process.execPath, [CLI, 'restore', '-D', keeper.images, '-d', '-o', join(keeper.dir, 'restore.log')], { encoding: 'utf8' });
    expect(restore.status, restore.stderr).to.equal(0);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.have.length(CHECKS);
  });

  for (const [mode, refusal] of [
    ['closed-fd', /maps socket:\[\d+\] at 0x[0-9a-f]+-0x[0-9a-f]+ \(a packet ring\) but no descriptor of the dumped tree holds that socket/],
    ['split-mapping', /maps socket:\[\d+\] at 0x[0-9a-f]+-0x[0-9a-f]+, offset \d+: only the whole rings \(16384 bytes from offset 0\) can be mapped again/],
  ] as const) {
    it(`refuses rings it could not map again (${mode}), naming the mapping; the program runs on in its rings`, function () {
      keeper = new StateKeeper('packet-ring-keeper', [mode]);
      const error = thrownBy(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images }));
      expect(error).to.be.instanceOf(DumpError);
      expect((error as Error).message).to.match(refusal);
      expect(existsSync(join(keeper.images, 'inventory.img')), 'no image set left looking complete').to.equal(false);
      expect(alive(keeper.pid)).to.equal(true);
      const { failures, checks } = keeper.check();
      expect(failures).to.deep.equal([]);
      expect(checks).to.have.length(CHECKS);
    });
  }

  it('a restore whose ring bytes are missing refuses before making any process, naming the file', function () {
    keeper = new StateKeeper('packet-ring-keeper');
    keeper.dump();
    const a = imageEntries(join(keeper.images, 'files.img')).find((f) => f.psk && Number(f.psk.protocol) === 0x88b7)!.psk;
    const ringFile = join(keeper.images, `packet-ring-${a.id}.img`);
    rmSync(ringFile);
    const error = thrownBy(() => restoreSync({ imagesDir: keeper!.images, detached: true }));
    expect(error).to.be.instanceOf(RestoreError);
    expect((error as RestoreError).stage).to.equal('validate');
    expect((error as Error).message).to.contain(ringFile);
    expect(alive(keeper.pid), 'no process made with its PID').to.equal(false);
    expect(existsSync(join(keeper.images, 'inventory.img'))).to.equal(true);
  });
});

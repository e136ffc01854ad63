// dump() then restore() of tests/bin/sysv-keeper: SysV shared memory segments attached in a
// parent and its child (one keyed and left in the namespace, attached read-write and read-only;
// one private and marked for removal). The program checks that each comes back with its id,
// key, size, owner, mode, contents and attachments, shared between the two processes, twice in
// a row (once taking over the segment the killed tree left behind, once making it afresh).
// A segment attached outside the tree is refused at dump; an id taken by another segment, at
// restore, before anything is made.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageReader, imageFromCritJson, imageToCritJson } from '@criu-ts/images';
import { DumpError, dumpSync, RestoreError, restoreSync } from '@criu-ts/core';
import { shmRemove, shmStat, SHM } from '@criu-ts/sys';
import { alive, ourStubs, thrownBy } from './restore-helpers.js';
import { imageEntries, rootWithSubreaper, StateKeeper, TreeKeeper } from './programs.js';
import { checkImagesRoundTrip } from './image-checks.js';

const VMA_AREA_SYSVIPC = 1 << 10;
const IPC_NS_ID = 3;

function segmentsOf(keeper: TreeKeeper): [number, number] {
  const [a, b] = keeper.lines().find((l) => l.startsWith('segments '))!.split(' ').slice(1).map(Number);
  return [a!, b!];
}

function removeSegment(id: number): void {
  try {
    shmRemove(id);
  } catch {
    /* gone */
  }
}

function exists(id: number): boolean {
  try {
    shmStat(id);
    return true;
  } catch {
    return false;
  }
}

describe('core: SysV shared memory end to end', function () {
  this.timeout(120_000);
  let keeper: TreeKeeper | undefined;
  let outsider: StateKeeper | undefined;
  let segments: number[] = [];
  rootWithSubreaper();
  afterEach(() => {
    outsider?.cleanup();
    outsider = undefined;
    keeper?.cleanup();
    keeper = undefined;
    for (const id of segments) removeSegment(id);
    segments = [];
  });

  function start(): TreeKeeper {
    const k = new TreeKeeper('sysv-keeper');
    segments = segmentsOf(k);
    return k;
  }

  it('records the segments (ipcns-shm image with contents) and VMA_AREA_SYSVIPC attachments as CRIU does; -R leaves them as they were', function () {
    keeper = start();
    const [a, b] = segments as [number, number];
    keeper.dump({ leave: 'running' });
    const shm = imageEntries(join(keeper.images, `ipcns-shm-${IPC_NS_ID}.img`));
    expect(shm.map((s) => Number(s.desc.id)).sort((x, y) => x - y)).to.deep.equal([a, b].sort((x, y) => x - y));
    const entryA = shm.find((s) => Number(s.desc.id) === a)!;
    expect(Number(entryA.size)).to.equal(3 * 4096 + 100);
    expect(entryA.desc.key).to.equal((0x5e000000 | (keeper.root & 0xffffff)) >>> 0);
    expect([entryA.desc.uid, entryA.desc.gid, entryA.desc.cuid, entryA.desc.cgid, entryA.desc.mode & 0o777]).to.deep.equal([1234, 5678, 1234, 5678, 0o640]);
    const entryB = shm.find((s) => Number(s.desc.id) === b)!;
    expect(entryB.desc.key).to.equal(0);
    expect(entryB.desc.mode & SHM.DEST, 'B marked for removal').to.equal(SHM.DEST);
    const vmasOf = (pid: number) => (imageEntries(join(keeper!.images, `mm-${pid}.img`))[0]!.vmas as Array<Record<string, any>>).filter((v) => Number(v.status) & VMA_AREA_SYSVIPC); // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(vmasOf(keeper.root).map((v) => Number(v.shmid)).sort()).to.deep.equal([a, a, b].sort());
    expect(vmasOf(keeper.pids[1]!).map((v) => Number(v.shmid))).to.deep.equal([a, a]);
    for (const v of vmasOf(keeper.root)) expect(Number(v.flags) & 1, 'MAP_SHARED').to.equal(1);
    checkImagesRoundTrip(keeper.images);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.equal(15);
  });

  it('restores every segment with its id, attachments and contents, twice in a row (left behind, then made afresh)', function () {
    keeper = start();
    const [a, b] = segments as [number, number];
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      // A was never removed: it outlives the tree; B goes with its last attachment.
      expect(exists(a), `round ${round}: A left in the namespace`).to.equal(true);
      expect(exists(b), `round ${round}: B gone`).to.equal(false);
      if (round === 1) removeSegment(a); // made afresh this time
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pids).to.deep.equal(keeper.pids);
      expect(keeper.pids.every(alive)).to.equal(true);
      expect(ourStubs()).to.deep.equal([]);
      expect(shmStat(a).nattch, `round ${round}: A attached twice in the parent, twice in the child`).to.equal(4);
    }
    const { failures, checks, done } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.equal(15);
    expect(done).to.equal('done 0');
  });

  it('refuses a segment also attached outside the tree, naming it; the tree runs on', function () {
    keeper = start();
    const [a] = segments as [number, number];
    outsider = new StateKeeper('sysv-keeper', ['attach', String(a)]);
    const error = thrownBy(() => dumpSync({ pid: keeper!.root, imagesDir: keeper!.images }));
    expect(error).to.be.instanceOf(DumpError);
    expect((error as Error).message).to.match(new RegExp(`SysV shared memory segment id ${a} \\(key 0x5e[0-9a-f]+\\) attached at 0x[0-9a-f]+ in process \\d+, 12388 bytes, mode 640: 5 attachment\\(s\\), 4 of them in the dumped tree; a segment shared with processes outside the tree is not supported`));
    expect(keeper.pids.every(alive)).to.equal(true);
    // The outsider's attachment would count in the program's own check of its attachments.
    outsider.cleanup();
    outsider = undefined;
    const { failures } = keeper.check();
    expect(failures).to.deep.equal([]);
  });

  it('refuses images it cannot restore, naming the file and segment: contents in a shmem pagemap, a partial attachment', function () {
    keeper = start();
    const [a] = segments as [number, number];
    keeper.dump();
    removeSegment(a);
    const edit = (name: string, change: (json: any) => void) => { // eslint-disable-line @typescript-eslint/no-explicit-any
      const path = join(keeper!.images, name);
      const reader = ImageReader.open(path);
      let json: any; // eslint-disable-line @typescript-eslint/no-explicit-any
      try {
        json = imageToCritJson(reader);
      } finally {
        reader.close();
      }
      const before = readFileSync(path);
      change(json);
      writeFileSync(path, imageFromCritJson(json, path));
      return () => writeFileSync(path, before);
    };
    const refusal = (): string => {
      try {
        restoreSync({ imagesDir: keeper!.images, detached: true });
      } catch (e) {
        expect(e).to.be.instanceOf(RestoreError);
        return (e as Error).message;
      }
      throw new Error('restore did not refuse');
    };
    let undo = edit(`ipcns-shm-${IPC_NS_ID}.img`, (json) => {
      json.entries[0].in_pagemaps = true;
    });
    expect(refusal()).to.match(/ipcns-shm-3\.img entry 0: segment \d+ keeps its contents in a shmem pagemap \(in_pagemaps\)/);
    undo();
    undo = edit(`mm-${keeper.root}.img`, (json) => {
      const v = json.entries[0].vmas.find((x: { shmid: unknown }) => Number(x.shmid) === a);
      v.end = `0x${(BigInt(v.start) + 4096n).toString(16)}`;
    });
    expect(refusal()).to.match(new RegExp(`an attachment of SysV segment ${a} \\(12388 bytes\\) must be shared and cover it whole from offset 0`));
    undo();
    expect(exists(a), 'nothing made').to.equal(false);
    expect(keeper.pids.some(alive)).to.equal(false);
  });

  it('refuses to restore over a segment another process holds, before making anything', function () {
    keeper = start();
    const [a] = segments as [number, number];
    keeper.dump();
    outsider = new StateKeeper('sysv-keeper', ['attach', String(a)]);
    const error = thrownBy(() => restoreSync({ imagesDir: keeper!.images, detached: true }));
    expect(error).to.be.instanceOf(RestoreError);
    expect((error as Error).message).to.match(new RegExp(`SysV shared memory segment id ${a} .*: the id is taken by a segment with key 0x5e[0-9a-f]+, 12388 bytes, 1 attachment\\(s\\); remove it \\(ipcrm -m ${a}\\) to restore`));
    expect(keeper.pids.some(alive)).to.equal(false);
    expect(ourStubs()).to.deep.equal([]);
    expect(spawnSync('true').status).to.equal(0);
  });
});

// dump() then restore() of tests/bin/shmem-keeper: memfds mapped MAP_SHARED (with an fd open,
// without, sealed against new writes after mapping) and MAP_PRIVATE (a page copied on write),
// /dev/shm files mapped MAP_SHARED (one deleted while mapped), all inherited by a child that
// mirrors writes. The program checks that each comes back as one object (fd and mapping, parent
// and child), with its contents, twice in a row.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { ImageReader, imageFromCritJson, imageToCritJson } from '@criu-ts/images';
import { DumpError, dumpSync, restoreSync } from '@criu-ts/core';
import { alive, isRoot, killQuietly, ourStubs, sleepMs, waitFor } from './restore-helpers.js';
import { becomeSubreaper, reapIfOurs, StateKeeper } from './programs.js';

const VMA_FILE_SHARED = 1 << 7;
const VMA_FILE_PRIVATE = 1 << 6;
const VMA_AREA_MEMFD = 1 << 14;
const FD_TYPE_MEMFD = 18;

function entries(path: string): Array<Record<string, any>> { // eslint-disable-line @typescript-eslint/no-explicit-any
  const reader = ImageReader.open(path);
  try {
    return [...reader.entries()].map((e) => e.message as Record<string, any>); // eslint-disable-line @typescript-eslint/no-explicit-any
  } finally {
    reader.close();
  }
}

describe('core: memfd and /dev/shm mappings end to end', function () {
  this.timeout(120_000);
  const shmPath = `/dev/shm/criu-ts-shmem-keeper-${process.pid}`;
  let keeper: StateKeeper | undefined;
  let child: number | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace, clone3 set_tid and PR_SET_MM_MAP need root
    becomeSubreaper();
  });
  after(() => {
    if (isRoot()) becomeSubreaper(false);
  });
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
    killQuietly(child);
    if (child !== undefined) waitFor('the child to be gone', () => (reapIfOurs(child!), !existsSync(`/proc/${child}`)));
    child = undefined;
    rmSync(shmPath, { force: true });
    rmSync(`${shmPath}.gone`, { force: true });
  });

  function start(): StateKeeper {
    const k = new StateKeeper('shmem-keeper', [shmPath]);
    child = Number(k.lines().find((l) => l.startsWith('child '))!.split(' ')[1]);
    return k;
  }

  it('records memfd mappings as CRIU does (VMA_AREA_MEMFD, shmid = a MEMFD file, one memfd.img inode per memfd)', function () {
    keeper = start();
    keeper.dump({ leave: 'running' });
    const mm = entries(join(keeper.images, `mm-${keeper.pid}.img`))[0]!;
    const files = new Map(entries(join(keeper.images, 'files.img')).map((f) => [Number(f.id), f]));
    const inodes = entries(join(keeper.images, 'memfd.img'));
    const memfdVmas = (mm.vmas as Array<Record<string, any>>).filter((v) => Number(v.status) & VMA_AREA_MEMFD); // eslint-disable-line @typescript-eslint/no-explicit-any
    expect(memfdVmas, 'memfd VMAs: A, B, C, D').to.have.length(4);
    for (const v of memfdVmas) {
      const file = files.get(Number(v.shmid))!;
      expect(file.type, `file of the VMA at ${v.start}`).to.equal(FD_TYPE_MEMFD);
      expect(Number(v.fd)).to.equal(-1);
      const inode = inodes.find((i) => Number(i.inode_id) === Number(file.memfd.inode_id))!;
      expect(inode, `memfd.img inode ${file.memfd.inode_id}`).to.not.equal(undefined);
      expect(Number(v.status) & (VMA_FILE_SHARED | VMA_FILE_PRIVATE)).to.equal(inode.name === 'private-map' ? VMA_FILE_PRIVATE : VMA_FILE_SHARED);
    }
    expect(inodes.map((i) => i.name).sort()).to.deep.equal(['future-sealed', 'map-only', 'map-with-fd', 'private-map']);
    // The fd of A and the mapping of A name one inode.
    const fdFiles = [...files.values()].filter((f) => f.type === FD_TYPE_MEMFD);
    const inodeOfA = inodes.find((i) => i.name === 'map-with-fd')!.inode_id;
    expect(fdFiles.filter((f) => Number(f.memfd.inode_id) === Number(inodeOfA)).length, 'MEMFD files of A (fd, mapping)').to.equal(2);
    for (const i of inodes) if (i.name !== 'future-sealed') expect(existsSync(join(keeper.images, `pagemap-shmem-${i.shmid}.img`)), `contents of ${i.name}`).to.equal(true);
    // The file deleted while mapped has its contents saved as a ghost file.
    expect(entries(join(keeper.images, 'remap-fpath.img')).length).to.be.greaterThan(0);
    // Byte-identical through crit's JSON and back; Debian's crit (where installed: CI) reads them.
    const crit = !spawnSync('crit', ['-h']).error;
    if (!crit && process.env.CI) throw new Error('crit missing in CI');
    for (const name of readdirSync(keeper.images).filter((n) => !n.startsWith('pages-'))) {
      const path = join(keeper.images, name);
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
    const { failures } = keeper.check();
    expect(failures).to.deep.equal([]);
  });

  it('restores them as shared objects with their contents, in parent and child, twice in a row', function () {
    keeper = start();
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      waitFor('the child to be gone', () => (reapIfOurs(child!), !existsSync(`/proc/${child}`)));
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      expect(alive(r.pid) && alive(child!), `round ${round}: parent and child alive`).to.equal(true);
      expect(ourStubs()).to.deep.equal([]);
      sleepMs(10);
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.equal(23);
  });
});

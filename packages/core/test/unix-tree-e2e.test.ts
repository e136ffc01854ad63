// dump() then restore() of tests/bin/unix-pair-tree: stream, dgram and seqpacket socketpairs
// whose ends are in a parent and its child, with messages queued both ways (the child's dgram
// end also holds a pipe end and a deleted file in flight), and a connection the parent's listener
// accepted that the child serves (the parent keeps the client end). Both processes
// check after two dump/restore rounds that they read what was queued, in order and with its
// boundaries, and that the ends talk to each other.
import { expect } from 'chai';
import { join } from 'node:path';
import { restoreSync } from '@criu-ts/core';
import { alive, ourStubs } from './restore-helpers.js';
import { imageEntries, rootWithSubreaper, TreeKeeper } from './programs.js';
import { checkImagesRoundTrip } from './image-checks.js';

const FD_TYPE_UNIXSK = 5;

describe('core: unix socketpairs across processes end to end', function () {
  this.timeout(120_000);
  let keeper: TreeKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('records both ends, each with its own queue, and restores them connected to each other, twice in a row', function () {
    keeper = new TreeKeeper('unix-pair-tree');
    expect(keeper.pids).to.have.length(2);
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      if (round === 0) {
        const sockets = imageEntries(join(keeper.images, 'files.img')).filter((f) => f.type === FD_TYPE_UNIXSK).map((f) => f.usk);
        expect(sockets, 'three pairs, a listener, an accepted connection').to.have.length(9);
        for (const s of sockets.filter((x) => x.state !== 10)) expect(sockets.map((x) => x.ino), `peer of ${s.ino}`).to.include(s.peer);
        const queues = imageEntries(join(keeper.images, 'sk-queues.img'));
        expect(queues, "two messages each way per dgram and seqpacket pair (and the child's datagram with descriptors), one run of bytes each way per stream").to.have.length(13);
        expect(queues.filter((q) => q.scm?.length).map((q) => q.scm[0].rights.length)).to.deep.equal([2]);
        checkImagesRoundTrip(keeper.images);
      }
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pids).to.deep.equal(keeper.pids);
      expect(keeper.pids.every(alive)).to.equal(true);
      expect(ourStubs()).to.deep.equal([]);
    }
    const { failures, checks, done } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.equal(42);
    expect(done).to.equal('done 0');
  });
});

// dump() then restore() of tests/bin/scm-keeper: descriptors in flight (SCM_RIGHTS) in unix
// sockets' queues, sent and not received yet: regular files, pipe ends, a unix socket with its
// own queue, an eventfd, in a stream, a dgram and a seqpacket pair. The program receives each
// message with a buffer of exactly its length (a descriptor arriving with the wrong message
// shows) and uses each descriptor. An epoll fd in flight is refused, naming it.
import { expect } from 'chai';
import { join } from 'node:path';
import { DumpError, dumpSync, restoreSync } from '@criu-ts/core';
import { alive, ourStubs, thrownBy } from './restore-helpers.js';
import { imageEntries, rootWithSubreaper, StateKeeper } from './programs.js';
import { checkImagesRoundTrip } from './image-checks.js';

const FD_TYPE = { REG: 1, PIPE: 2, UNIXSK: 5, EVENTFD: 6 } as const;

describe('core: descriptors in flight in unix sockets (SCM_RIGHTS) end to end', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('records each descriptor in flight as a file entry named by the message (sk-queues.img scm rights), leaving the queues in place', function () {
    keeper = new StateKeeper('scm-keeper');
    keeper.dump({ leave: 'running' });
    const files = new Map(imageEntries(join(keeper.images, 'files.img')).map((f) => [Number(f.id), f]));
    const queues = imageEntries(join(keeper.images, 'sk-queues.img'));
    const carried = queues.filter((q) => q.scm?.length).map((q) => ({ length: Number(q.length), types: (q.scm[0].rights as number[]).map((id) => files.get(Number(id))?.type) }));
    // The stream pair's messages apart where descriptors start: "file", "pipe", "sock", "two".
    expect(carried, "\"plain before\" and \"file\" (a stream peek glues them: the run ends with the send that carried the file)").to.deep.include({ length: 16, types: [FD_TYPE.REG] });
    expect(carried).to.deep.include({ length: 4, types: [FD_TYPE.PIPE] });
    expect(carried).to.deep.include({ length: 4, types: [FD_TYPE.UNIXSK] });
    expect(carried).to.deep.include({ length: 3, types: [FD_TYPE.REG, FD_TYPE.EVENTFD] });
    expect(carried).to.deep.include({ length: 5, types: [FD_TYPE.PIPE] });
    expect(carried).to.deep.include({ length: 6, types: [FD_TYPE.REG] });
    expect(queues.every((q) => q.scm === undefined || q.scm.every((s: Record<string, unknown>) => s.type === 1))).to.equal(true);
    // The pipe in flight and the end the program kept are one pipe; the socket in flight has its own queue.
    const pipeIds = [...files.values()].filter((f) => f.type === FD_TYPE.PIPE).map((f) => f.pipe.pipe_id);
    expect(new Set(pipeIds).size).to.equal(2);
    const socketIds = queues.flatMap((q) => (q.scm?.[0]?.rights as number[] | undefined) ?? []).filter((id) => files.get(Number(id))?.type === FD_TYPE.UNIXSK);
    expect(socketIds).to.have.length(1);
    expect(queues.filter((q) => Number(q.id_for) === Number(socketIds[0])).length, 'queue of the socket in flight').to.equal(1);
    checkImagesRoundTrip(keeper.images);
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.equal(30);
  });

  it('restores every descriptor in flight in its message, twice in a row', function () {
    keeper = new StateKeeper('scm-keeper');
    for (let round = 0; round < 2; round++) {
      keeper.dump();
      const r = restoreSync({ imagesDir: keeper.images, detached: true });
      expect(r.pid).to.equal(keeper.pid);
      expect(alive(r.pid)).to.equal(true);
      expect(ourStubs()).to.deep.equal([]);
    }
    const { failures, checks } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.equal(30);
  });

  it('refuses an epoll fd in flight, naming the socket, the message and the descriptor; the program runs on', function () {
    keeper = new StateKeeper('scm-keeper', ['refuse']);
    const error = thrownBy(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images }));
    expect(error).to.be.instanceOf(DumpError);
    expect((error as Error).message).to.match(/descriptor 1 of queued message \d+ of fd \d+ of process \d+ \(socket:\[\d+\]\) is anon_inode:\[eventpoll\]: an eventpoll descriptor in flight \(SCM_RIGHTS\) cannot be dumped/);
    expect(alive(keeper.pid)).to.equal(true);
    // The epoll message is received as an unexpected one: only the count of checks matters here.
    const { checks } = keeper.check();
    expect(checks.length).to.be.greaterThan(5);
  });
});

// dump() then restore() of tests/bin/unix-keeper: AF_UNIX socketpairs (stream, dgram, seqpacket)
// with messages queued both ways, listeners bound to a path and to an abstract name (a client of
// the test connects to each after the restore and the program accepts it), an accepted
// connection, a half-shut-down pair, a named dgram socket with a datagram from a connected one.
// The program checks each one itself; the test checks the images (what CRIU writes, crit reads
// them, byte-identical re-encoding) and that dump refuses a peer outside the process.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync, readlinkSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { dumpSync, DumpError, restoreSync } from '@criu-ts/core';
import { AF_UNIX, bind, close, connect, listen, sendmsg, SOCK, sockaddrUn, socket, type Fd } from '@criu-ts/sys';
import { ImageReader, imageFromCritJson, imageToCritJson } from '@criu-ts/images';
import { readImageSet } from '../src/restore/image-set.js';
import { planUnixSockets, readSocketQueues, readUnixSocket, type QueuedMessage } from '../src/restore/unix-sockets.js';
import { alive, ourStubs, sleepMs, thrownBy } from './restore-helpers.js';
import { StateKeeper, rootWithSubreaper } from './programs.js';

function entries(path: string): Array<Record<string, any>> {
  const reader = ImageReader.open(path);
  try {
    return [...reader.entries()].map((e) => ({ ...(e.message as Record<string, any>), payload: e.payload }));
  } finally {
    reader.close();
  }
}

function critJson(path: string): unknown {
  const reader = ImageReader.open(path);
  try {
    return imageToCritJson(reader);
  } finally {
    reader.close();
  }
}

function fdKinds(pid: number): string[] {
  return readdirSync(`/proc/${pid}/fd`)
    .map(Number)
    .sort((a, b) => a - b)
    .map((fd) => `${fd} ${readFileSync(`/proc/${pid}/fdinfo/${fd}`, 'utf8').match(/^flags:\s*(\d+)/m)![1]} ${readlinkSync(`/proc/${pid}/fd/${fd}`).replace(/\[\d+\]$/, '[N]')}`);
}

/** What the program expects before it checks: a client on each listener that wrote a line. */
function connectClients(keeper: StateKeeper): Fd[] {
  const path = socket(AF_UNIX, SOCK.STREAM);
  connect(path, sockaddrUn(join(keeper.dir, 'listen.sock')));
  sendmsg(path, Buffer.from('hello path\n'));
  const abstract = socket(AF_UNIX, SOCK.STREAM);
  connect(abstract, sockaddrUn(`\0criu-ts-unix-keeper-${keeper.pid}`));
  sendmsg(abstract, Buffer.from('hello abstract\n'));
  return [path, abstract];
}

function checkWithClients(keeper: StateKeeper): { failures: string[]; checks: string[] } {
  const clients = connectClients(keeper);
  try {
    return keeper.check();
  } finally {
    for (const c of clients) close(c);
  }
}

const textOf = (payload: any): string => Buffer.from(payload.bytes ?? payload).toString('latin1');

describe('core: AF_UNIX sockets end to end', function () {
  this.timeout(120_000);
  let keeper: StateKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('writes the unix_sk_entry and sk-queues.img CRIU writes, leaving the queues in place', function () {
    keeper = new StateKeeper('unix-keeper');
    keeper.dump({ leave: 'running' });
    const files = entries(join(keeper.images, 'files.img'));
    const sockets = files.filter((f) => f.type === 5).map((f) => f.usk);
    expect(sockets.length).to.equal(19);
    expect(sockets.map((s) => s.type).sort()).to.deep.equal([1, 1, 1, 1, 1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2, 5, 5, 5, 5]);
    // A connection not accepted yet has its listener as peer, as CRIU records it.
    const waitingListener = sockets.find((s) => s.state === 10 && s.type === 5)!;
    expect(sockets.filter((s) => s.peer === waitingListener.ino).length).to.equal(1);
    const pathListener = sockets.find((s) => s.state === 10 && s.name[0] !== 0)!;
    expect(Buffer.from(pathListener.name).toString()).to.equal(`${join(keeper.dir, 'listen.sock')}\0`); // sun_path with its NUL, as the kernel reports it
    expect(pathListener.backlog).to.equal(7);
    expect(pathListener.file_perms.mode & 0o170000).to.equal(0o140000);
    const abstractListener = sockets.find((s) => s.state === 10 && s.type === 1 && s.name[0] === 0)!;
    expect(Buffer.from(abstractListener.name).toString()).to.equal(`\0criu-ts-unix-keeper-${keeper.pid}`);
    expect(sockets.filter((s) => s.shutdown !== undefined).map((s) => s.shutdown).sort()).to.deep.equal([1, 2, 3]); // half pair; the socket whose peer closed
    expect(sockets.filter((s) => s.type === 1 && s.state === 1 && s.peer === 0).length, 'stream socket whose peer closed').to.equal(1);
    expect(sockets.some((s) => s.opts.so_rcvbuf === 200000)).to.equal(true);
    const gone = sockets.filter((s) => s.deleted === true);
    expect(gone.map((s) => Buffer.from(s.name).toString())).to.deep.equal([`${join(keeper.dir, 'gone.sock')}\0`]);
    expect(sockets.some((s) => s.opts.so_passcred === true)).to.equal(true);
    for (const s of sockets.filter((x) => x.peer !== 0)) expect(sockets.map((x) => x.ino), `peer of ${s.ino}`).to.include(s.peer);
    expect(sockets.every((s) => s.ns_id === 2 && (s.flags === 2 || s.flags === 0o4002))).to.equal(true);

    // Queued messages by receiving socket, in queue order; datagram boundaries kept.
    const queues = new Map<number, string[]>();
    for (const q of entries(join(keeper.images, 'sk-queues.img'))) {
      expect(q.length).to.equal(textOf(q.payload).length);
      queues.set(q.id_for, [...(queues.get(q.id_for) ?? []), textOf(q.payload)]);
    }
    const messages = [...queues.values()];
    expect(messages).to.deep.include(['first second third']);
    expect(messages).to.deep.include(['answer one, answer two']);
    const dgrams = messages.find((m) => m[0] === 'd1')!;
    expect(dgrams.map((m) => m.length)).to.deep.equal([2, 3000, 14]);
    expect(messages).to.deep.include(['record A', 'record BB']);
    expect(messages).to.deep.include(['last words']);
    expect(messages).to.deep.include(['to the named one']);
    expect(messages).to.deep.include(['parting words']);

    // Byte-identical through crit's JSON and back; Debian's crit (where installed: CI) reads them.
    const crit = !spawnSync('crit', ['-h']).error;
    if (!crit && process.env.CI) throw new Error('crit missing in CI');
    for (const name of readdirSync(keeper.images).filter((n) => !n.startsWith('pages-'))) {
      const path = join(keeper.images, name);
      expect(Buffer.from(imageFromCritJson(critJson(path), path)).equals(readFileSync(path)), `${name} re-encodes byte-identically`).to.equal(true);
      if (crit) {
        const r = spawnSync('crit', ['decode', '-i', path]);
        expect(r.status, `crit decode ${name}: ${r.stderr}`).to.equal(0);
      }
    }
    expect(readImageSet(keeper.images).fds.filter((f) => f.file.kind === 'unixsk').length).to.equal(19);
    // Peeking took nothing: the running program finds every message where it was.
    const { failures, checks } = checkWithClients(keeper);
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(25);
  });

  it('restores every socket with its queued messages, names, options and shutdown state, twice in a row', function () {
    keeper = new StateKeeper('unix-keeper');
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
    const { failures, checks } = checkWithClients(keeper);
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(25);
  });

  it('refuses a socket whose peer is outside the process, naming the fd, and the program runs on', function () {
    const listenerPath = `/tmp/criu-ts-unix-external-${process.pid}.sock`;
    const listener = socket(AF_UNIX, SOCK.STREAM);
    try {
      bind(listener, sockaddrUn(listenerPath));
      listen(listener, 4);
      keeper = new StateKeeper('unix-keeper', ['external', listenerPath]);
      const error = thrownBy(() => dumpSync({ pid: keeper!.pid, imagesDir: keeper!.images }));
      expect(error).to.be.instanceOf(DumpError);
      const message = String((error as Error).message) + String(((error as Error).cause as Error | undefined)?.message ?? '');
      expect(message).to.match(/fd \d+ \(socket:\[\d+\]\): its connection waits in the accept queue of listening socket:\[\d+\] outside the dumped process/);
      expect(alive(keeper.pid)).to.equal(true);
      expect(readFileSync(`/proc/${keeper.pid}/status`, 'utf8')).to.match(/^TracerPid:\s+0$/m);
      const { failures } = checkWithClients(keeper);
      expect(failures).to.deep.equal([]);
    } finally {
      close(listener);
      spawnSync('rm', ['-f', listenerPath]);
    }
  });
});

describe('core: unix socket images that cannot be restored are refused before anything is made', () => {
  const invalid = (message: string): never => {
    throw new Error(message);
  };
  const usk = (ino: number, peer: number, more: Record<string, unknown> = {}) => ({
    ino, type: 1, state: 1, flags: 2, uflags: 0, backlog: 0, peer, opts: {}, name: new Uint8Array(0), ...more,
  });

  it('a peer missing from the image', () => {
    const s = readUnixSocket(1, usk(100, 101), [], 'fd 3', invalid);
    expect(() => planUnixSockets([s], invalid)).to.throw(/peer socket:\[101\] is not in the image/);
  });

  it('a named connection whose listener is not in the image', () => {
    const a = readUnixSocket(1, usk(100, 101, { name: Buffer.from('/tmp/x.sock\0') }), [], 'fd 3', invalid);
    const b = readUnixSocket(2, usk(101, 100), [], 'fd 4', invalid);
    expect(() => planUnixSockets([a, b], invalid)).to.throw(/no listening socket of that name/);
  });

  it('an unnamed pair is planned as a socketpair, an accepted connection through its listener', () => {
    const a = readUnixSocket(1, usk(100, 101), [], 'fd 3', invalid);
    const b = readUnixSocket(2, usk(101, 100), [], 'fd 4', invalid);
    const name = Buffer.from('\0abstract');
    const l = readUnixSocket(3, usk(102, 0, { state: 10, name }), [], 'fd 5', invalid);
    const acc = readUnixSocket(4, usk(103, 104, { name }), [], 'fd 6', invalid);
    const cli = readUnixSocket(5, usk(104, 103), [], 'fd 7', invalid);
    const plans = planUnixSockets([a, b, l, acc, cli], invalid);
    expect(plans.get(1)!.how).to.equal('pair');
    expect(plans.get(3)!.how).to.equal('alone');
    expect(plans.get(4)!.how).to.equal('accepted');
    expect(plans.get(5)!.how).to.equal('client');
    const waiting = readUnixSocket(6, usk(105, 102), [], 'fd 8', invalid);
    expect(planUnixSockets([l, waiting], invalid).get(6)!.how).to.equal('waiting');
  });

  it('bad types, states and queued file descriptors', () => {
    expect(() => readUnixSocket(1, usk(1, 0, { type: 3 }), [], 'fd 3', invalid)).to.throw(/type 3/);
    expect(() => readUnixSocket(1, usk(1, 0, { type: 2, state: 10 }), [], 'fd 3', invalid)).to.throw(/dgram socket cannot listen/);
    expect(() => readUnixSocket(1, usk(1, 0, { uflags: 1 }), [], 'fd 3', invalid)).to.throw(/external/);
    expect(() => readSocketQueues([{ message: { id_for: 1, length: 1, scm: [{ type: 2, rights: [] }] }, bytes: new Uint8Array(1) }], invalid)).to.throw(/ancillary data of type 2/);
    expect(() => readSocketQueues([{ message: { id_for: 1, length: 0, scm: [{ type: 1, rights: [3] }] }, bytes: new Uint8Array(0) }], invalid)).to.throw(/carries files but no bytes/);
    expect(readSocketQueues([{ message: { id_for: 1, length: 1, scm: [{ type: 1, rights: [3, 4] }] }, bytes: new Uint8Array(1) }], invalid).get(1)![0]!.rights).to.deep.equal([3, 4]);
    expect(() => readSocketQueues([{ message: { id_for: 1, length: 5 }, bytes: new Uint8Array(1) }], invalid)).to.throw(/length 5/);
  });
});

describe("core: CRIU 4.2's own unix socket images pass restore's checks", () => {
  const fixtures = resolve(dirname(fileURLToPath(import.meta.url)), '..', '..', '..', '..', '..', 'shared', 'criu-images');
  const invalid = (message: string): never => {
    throw new Error(message);
  };
  const socketsOf = (dir: string) => {
    const queuesPath = join(fixtures, dir, 'sk-queues.img');
    const queues = existsSync(queuesPath)
      ? readSocketQueues([...(function* () {
          const reader = ImageReader.open(queuesPath);
          try {
            for (const e of reader.entries()) yield { message: e.message as Record<string, any>, bytes: (e.payload as { bytes?: Uint8Array } | undefined)?.bytes ?? new Uint8Array(0) };
          } finally {
            reader.close();
          }
        })()], invalid)
      : new Map<number, QueuedMessage[]>();
    return entries(join(fixtures, dir, 'files.img'))
      .filter((f) => f.type === 5)
      .map((f) => readUnixSocket(f.id, f.usk, queues.get(f.id) ?? [], `files.img id ${f.id}`, invalid));
  };
  before(function () {
    if (!existsSync(fixtures)) this.skip(); // stated reason: the CRIU 4.2 fixtures (../shared/criu-images) are not beside this checkout
  });

  it('sockets00: a listener, a connection it has not accepted yet, an accepted connection', () => {
    const plans = planUnixSockets(socketsOf('sockets00'), invalid);
    expect(Object.fromEntries([...plans].map(([id, p]) => [id, p.how]))).to.deep.equal({ 8: 'alone', 9: 'waiting', 10: 'client', 11: 'accepted' });
  });

  it('sockets01: stream and dgram pairs with shutdown states and a queued datagram', () => {
    const sockets = socketsOf('sockets01');
    const plans = planUnixSockets(sockets, invalid);
    expect([...plans.values()].every((p) => p.how === 'pair')).to.equal(true);
    expect(sockets.find((s) => s.id === 17)!.queue.map((q) => Buffer.from(q.bytes).toString('latin1'))).to.deep.equal(['test-message\0']);
    expect(sockets.map((s) => s.shutdown).filter(Boolean).sort()).to.deep.equal([1, 1, 2, 2, 3, 3, 3]);
  });
});

// Connections waiting in a listener's accept queue, with data in them, dumped and restored:
// tests/bin/accept-queue-keeper accepts nothing until it is asked, after the restore; this test
// process is the clients (Node sockets, so that a client's bytes keep flowing while the program
// reads). Q1 (1 MiB sent as far as the windows allow) and Q2 (CLOSE_WAIT: "second" then its FIN)
// wait on the IPv4 listener, Q3 on the IPv6 one. Checked on both ends: every byte, the queue's
// order, the FIN, the answers, and that no lock is left. Through the library (kill, then
// --leave-running: the connections go back into the running program's queues) and through the CLI
// (images read by Debian's crit too).
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dumpSync, restoreSync } from '@criu-ts/core';
import { acceptQueueRefillUnsupported, listLocksSync } from '@criu-ts/soccr';
import { checkImagesRoundTrip } from './image-checks.js';
import { dumpAndWait, imageEntries, killAndReap, reapIfOurs, rootWithSubreaper, TEST_BIN } from './programs.js';
import { waitFor } from './restore-helpers.js';
import { dumpKilledAtStage } from './reliability-helpers.js';

const CLI = join(TEST_BIN, '..', '..', 'packages', 'cli', 'dist', 'criu-ts.cjs');
const BIG_LEN = 1 << 20;
const SMALL_LEN = 3000;
const REPLY_LEN = 256 << 10;

/** accept-queue-keeper's stream: xorshift32 of the seed, the low byte of each step. */
function stream(seed: number, length: number): Buffer {
  const out = Buffer.alloc(length);
  let x = seed >>> 0;
  for (let i = 0; i < length; i++) {
    x ^= x << 13;
    x >>>= 0;
    x ^= x >>> 17;
    x ^= x << 5;
    x >>>= 0;
    out[i] = x & 0xff;
  }
  return out;
}

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

/** A client connection: what it received, and whether the server closed it. */
class Client {
  readonly socket: net.Socket;
  readonly received: Buffer[] = [];
  ended = false;
  error: Error | undefined;
  readonly connected: Promise<void>;

  constructor(port: number, host: string) {
    this.socket = net.connect({ port, host });
    this.connected = new Promise((resolve, reject) => {
      this.socket.once('connect', resolve);
      this.socket.once('error', reject);
    });
    this.socket.on('data', (d) => this.received.push(d));
    this.socket.on('end', () => (this.ended = true));
    this.socket.on('error', (e) => (this.error = e));
  }
  bytes(): Buffer {
    return Buffer.concat(this.received);
  }
}

class AcceptQueueKeeper {
  readonly dir = mkdtempSync(join(tmpdir(), 'criu-ts-aq-'));
  readonly report = join(this.dir, 'report');
  readonly images = join(this.dir, 'images');
  readonly pid: number;
  readonly l4: number;
  readonly l6: number;
  clients: Client[] = [];

  constructor() {
    const binary = join(TEST_BIN, 'accept-queue-keeper');
    if (!existsSync(binary)) throw new Error(`${binary} is missing: run npm run build`);
    spawn('setsid', ['-f', binary, this.report], { stdio: 'ignore' }).unref();
    waitFor('accept-queue-keeper to listen', () => this.lines().some((l) => l.startsWith('listening') || l.startsWith('setup failed')));
    const failed = this.lines().find((l) => l.startsWith('setup failed'));
    if (failed) throw new Error(failed);
    const [, pid, l4, l6] = this.lines().find((l) => l.startsWith('listening'))!.split(' ').map(Number);
    this.pid = pid!;
    this.l4 = l4!;
    this.l6 = l6!;
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  /** Q1, Q2, Q3 connected in that order and their bytes on the wire (as far as the windows take them). */
  async connectClients(): Promise<void> {
    const q1 = new Client(this.l4, '127.0.0.1');
    await q1.connected;
    q1.socket.write(stream(0x51, BIG_LEN));
    const q2 = new Client(this.l4, '127.0.0.1');
    await q2.connected;
    q2.socket.end('second');
    const q3 = new Client(this.l6, '::1');
    await q3.connected;
    q3.socket.write(stream(0x53, SMALL_LEN));
    this.clients = [q1, q2, q3];
    await sleep(100); // the loopback windows fill
  }

  /** SIGUSR1; then the program accepts and checks, and the clients check what they get back. */
  async check(): Promise<{ failures: string[]; checks: string[]; replies: string[] }> {
    const before = this.lines().length;
    process.kill(this.pid, 'SIGUSR1');
    const [q1, q2, q3] = this.clients as [Client, Client, Client];
    // Q1 ends once it has the whole reply (the program then sees its EOF and finishes).
    for (let i = 0; i < 400 && q1.bytes().length < REPLY_LEN && !q1.error; i++) await sleep(25);
    q1.socket.end();
    for (let i = 0; i < 400 && !this.lines().slice(before).some((l) => l.startsWith('done')); i++) await sleep(25);
    for (let i = 0; i < 200 && !(q2.ended && q3.ended); i++) await sleep(25);
    const lines = this.lines().slice(before);
    const reply = q1.bytes();
    const replies = [
      `Q1: ${reply.length} bytes, ${reply.equals(stream(0x61, REPLY_LEN)) ? 'as sent' : 'NOT as sent'}${q1.error ? `, ${q1.error.message}` : ''}`,
      `Q2: ${JSON.stringify(q2.bytes().toString())}${q2.ended ? ', then EOF' : ''}${q2.error ? `, ${q2.error.message}` : ''}`,
      `Q3: ${JSON.stringify(q3.bytes().toString())}${q3.ended ? ', then EOF' : ''}${q3.error ? `, ${q3.error.message}` : ''}`,
    ];
    return { failures: lines.filter((l) => l.startsWith('FAIL') || (l.startsWith('done') && l !== 'done 0')), checks: lines.filter((l) => l.startsWith('ok')), replies };
  }

  /** Locks held for this program's listeners' connections. */
  heldLocks(): string[] {
    return listLocksSync()
      .filter((l) => l.key.local.port === this.l4 || l.key.local.port === this.l6 || l.key.remote.port === this.l4 || l.key.remote.port === this.l6)
      .map((l) => `${l.key.local.address}:${l.key.local.port} ${l.key.remote.address}:${l.key.remote.port}`);
  }

  cleanup(): void {
    for (const c of this.clients) c.socket.destroy();
    killAndReap(this.pid, this.dir);
  }
}

const EXPECTED_REPLIES = [`Q1: ${REPLY_LEN} bytes, as sent`, 'Q2: "bye-Q2", then EOF', 'Q3: "bye-Q3", then EOF'];

describe('connections waiting in an accept queue (e2e)', function () {
  this.timeout(60_000);
  let keeper: AcceptQueueKeeper | undefined;

  before(function () {
    if (process.getuid?.() !== 0) throw new Error('these tests need root');
    const unsupported = acceptQueueRefillUnsupported();
    if (unsupported) throw new Error(`this kernel cannot put connections back in an accept queue: ${unsupported}`);
    rootWithSubreaper();
  });
  afterEach(function () {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('dump() saves them inside their listener, restore() puts them back in order: the program accepts them and every byte arrives both ways', async function () {
    keeper = new AcceptQueueKeeper();
    await keeper.connectClients();
    dumpAndWait(keeper.pid, keeper.images, { tcpEstablished: true });
    const files = imageEntries(join(keeper.images, 'files.img'));
    const listeners = files.filter((f) => f.isk?.state === 10).map((f) => f.isk);
    expect(listeners.map((l) => (l.accept_queue ?? []).map((q: { state: number; dst_port: number }) => q.state))).to.have.deep.members([[1, 8], [1]]);
    const l4 = listeners.find((l) => l.src_port === keeper!.l4)!;
    expect(l4.accept_queue.map((q: { dst_port: number }) => q.dst_port), 'queue order: Q1 then Q2').to.deep.equal(keeper.clients.slice(0, 2).map((c) => c.socket.localPort));
    expect(keeper.heldLocks(), 'the three connections locked until the restore').to.have.length(3);
    restoreSync({ imagesDir: keeper.images, detached: true, tcpEstablished: true });
    expect(keeper.heldLocks(), 'no lock left after the restore').to.deep.equal([]);
    const { failures, checks, replies } = await keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks).to.include.members([`ok Q1: received ${BIG_LEN} of ${BIG_LEN} bytes, 0 bad`, `ok Q3: received ${SMALL_LEN} of ${SMALL_LEN} bytes, 0 bad`]);
    expect(replies).to.deep.equal(EXPECTED_REPLIES);
  });

  it('dump() with leave-running puts them back into the running program\'s queues, in order, and unlocks them', async function () {
    keeper = new AcceptQueueKeeper();
    await keeper.connectClients();
    dumpSync({ pid: keeper.pid, imagesDir: keeper.images, tcpEstablished: true, leave: 'running' });
    expect(keeper.heldLocks()).to.deep.equal([]);
    const { failures, replies } = await keeper.check();
    expect(failures).to.deep.equal([]);
    expect(replies).to.deep.equal(EXPECTED_REPLIES);
  });

  it('a restore that fails after refilling L4 (L6\'s port taken) takes Q1 and Q2 out again without a packet: the next restore brings all three back', async function () {
    keeper = new AcceptQueueKeeper();
    await keeper.connectClients();
    dumpAndWait(keeper.pid, keeper.images, { tcpEstablished: true });
    const squatter = net.createServer();
    await new Promise<void>((resolve, reject) => squatter.once('error', reject).listen({ port: keeper!.l6, host: '::1', ipv6Only: true }, resolve));
    let error: unknown;
    try {
      restoreSync({ imagesDir: keeper.images, detached: true, tcpEstablished: true });
    } catch (e) {
      error = e;
    } finally {
      await new Promise((resolve) => squatter.close(resolve));
    }
    expect((error as Error | undefined)?.message).to.match(new RegExp(`bind to \\[::1\\]:${keeper.l6} failed: .*EADDRINUSE`));
    expect(keeper.clients.map((c) => c.error?.message ?? 'no error'), 'no client was reset').to.deep.equal(['no error', 'no error', 'no error']);
    expect(keeper.heldLocks(), 'the dump\'s locks stay for the next attempt').to.have.length(3);
    waitFor('the failed restore\'s process to be gone', () => {
      reapIfOurs(keeper!.pid);
      return !existsSync(`/proc/${keeper!.pid}`);
    });
    restoreSync({ imagesDir: keeper.images, detached: true, tcpEstablished: true });
    const { failures, replies } = await keeper.check();
    expect(failures).to.deep.equal([]);
    expect(replies).to.deep.equal(EXPECTED_REPLIES);
  });

  it('a dumper SIGKILLed after taking and saving them: the dump guard puts them back into the running program\'s queues and unlocks them', async function () {
    keeper = new AcceptQueueKeeper();
    await keeper.connectClients();
    const pid = keeper.pid;
    // The memory stage follows the files stage, where the queued connections were accepted by criu-ts and saved.
    expect(dumpKilledAtStage(pid, keeper.images, 'memory')).to.equal('SIGKILL');
    // The guard runs a Node.js script: its start-up, the requeue and the lock tools.
    for (let i = 0; i < 400 && keeper.heldLocks().length > 0; i++) await sleep(25);
    expect(keeper.heldLocks(), 'the guard lifted the locks').to.deep.equal([]);
    const { failures, replies } = await keeper.check();
    expect(failures).to.deep.equal([]);
    expect(replies).to.deep.equal(EXPECTED_REPLIES);
  });

  it('criu-ts dump/restore --tcp-established: the same through the CLI; crit decodes every image', async function () {
    keeper = new AcceptQueueKeeper();
    await keeper.connectClients();
    rmSync(keeper.images, { recursive: true, force: true });
    const dump = spawnSync(process.execPath, [CLI, 'dump', '-t', String(keeper.pid), '-D', keeper.images, '--tcp-established', '-o', join(keeper.dir, 'dump.log'), '-v4'], { encoding: 'utf8' });
    expect(dump.status, dump.stderr).to.equal(0);
    waitFor('the dumped program to be gone', () => !existsSync(`/proc/${keeper!.pid}`));
    checkImagesRoundTrip(keeper.images);
    const restore = spawnSync(process.execPath, [CLI, 'restore', '-D', keeper.images, '-d', '--tcp-established', '-o', join(keeper.dir, 'restore.log')], { encoding: 'utf8' });
    expect(restore.status, restore.stderr).to.equal(0);
    const { failures, replies } = await keeper.check();
    expect(failures).to.deep.equal([]);
    expect(replies).to.deep.equal(EXPECTED_REPLIES);
    expect(keeper.heldLocks()).to.deep.equal([]);
  });
});

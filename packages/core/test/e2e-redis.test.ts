// A real server from a Debian package: redis-server (epoll, pipes, background threads, IPv4 and
// IPv6 listeners) with a client connection kept open across the checkpoint, the way a service
// and its long-lived client live. The client (in this process) sets keys and counts, the server
// is dumped with its connections (tcpEstablished) and restored, twice; the same connection then
// reads back what it wrote and counts on, and a new client sees the same data.
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dumpSync, restoreSync } from '@criu-ts/core';
import { ImageReader } from '@criu-ts/images';
import { isRoot, procState, sleepMs, waitFor } from './restore-helpers.js';
import { becomeSubreaper, killAndReap, reapIfOurs, TEST_BIN, dumpedPids } from './programs.js';

/** One RESP client on a kept-open connection: inline commands, one reply line each. */
class RedisClient {
  private buffered = '';
  private waiting: Array<(line: string) => void> = [];

  private constructor(private readonly socket: net.Socket) {
    socket.setEncoding('utf8');
    socket.on('data', (chunk: string) => {
      this.buffered += chunk;
      for (let i = this.buffered.indexOf('\r\n'); i >= 0 && this.waiting.length > 0; i = this.buffered.indexOf('\r\n')) {
        let line = this.buffered.slice(0, i);
        let rest = this.buffered.slice(i + 2);
        if (line.startsWith('$') && Number(line.slice(1)) >= 0) {
          // A bulk string: its length line, then the value line.
          const end = rest.indexOf('\r\n');
          if (end < 0) return;
          line = rest.slice(0, end);
          rest = rest.slice(end + 2);
        }
        this.buffered = rest;
        this.waiting.shift()!(line);
      }
    });
  }

  static connect(port: number): Promise<RedisClient> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, '127.0.0.1', () => resolve(new RedisClient(socket)));
      socket.once('error', reject);
    });
  }

  command(line: string): Promise<string> {
    return new Promise((resolve, reject) => {
      const timer = setTimeout(() => reject(new Error(`no reply to ${line} within 10 s`)), 10_000);
      this.waiting.push((reply) => {
        clearTimeout(timer);
        resolve(reply);
      });
      this.socket.write(`${line}\r\n`);
    });
  }

  close(): void {
    this.socket.destroy();
  }
}

function redisServer(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v redis-server'], { encoding: 'utf8' });
  return r.status === 0 ? r.stdout.trim() : undefined;
}

/** A free loopback port (bound and released at once). */
function freePort(): Promise<number> {
  return new Promise((resolve) => {
    const s = net.createServer().listen(0, '127.0.0.1', () => {
      const port = (s.address() as net.AddressInfo).port;
      s.close(() => resolve(port));
    });
  });
}


describe('core: redis-server with a client connection kept open, dumped and restored', function () {
  this.timeout(120_000);
  let dir: string | undefined;
  let pid: number | undefined;
  let client: RedisClient | undefined;
  let binary: string | undefined;

  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace, clone3 set_tid and PR_SET_MM_MAP need root
    binary = redisServer();
    if (!binary) {
      if (process.env.CI) throw new Error('redis-server missing in CI (.ci/run installs it)');
      this.skip(); // stated reason: Debian's redis-server is not installed here
    }
    becomeSubreaper();
  });
  after(() => {
    if (isRoot()) becomeSubreaper(false);
  });
  afterEach(() => {
    client?.close();
    client = undefined;
    if (pid !== undefined) killAndReap(pid, dir!);
    pid = undefined;
  });

  it('the same connection reads back its keys and counts on after two dump/restore rounds; a new client sees the data', async function () {
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-redis-'));
    const port = await freePort();
    spawn('setsid', ['-f', join(TEST_BIN, 'run-clean'), binary!, '--port', String(port), '--bind', '127.0.0.1', '--save', '', '--appendonly', 'no', '--dir', dir], {
      stdio: 'ignore', cwd: dir,
    }).unref();
    for (let i = 0; i < 200 && !client; i++) {
      try {
        client = await RedisClient.connect(port);
      } catch {
        await new Promise((r) => setTimeout(r, 25));
      }
    }
    expect(client, 'redis-server answers').to.not.equal(undefined);
    const found = spawnSync('pgrep', ['-f', `redis-server 127.0.0.1:${port}`], { encoding: 'utf8' }).stdout.trim().split('\n')[0];
    pid = Number(found);
    expect(pid, 'redis-server pid').to.be.greaterThan(0);
    expect(await client!.command('SET greeting hello-from-before')).to.equal('+OK');
    for (let i = 1; i <= 5; i++) expect(await client!.command('INCR counter')).to.equal(`:${i}`);

    for (let round = 0; round < 2; round++) {
      const images = join(dir, `images-${round}`);
      dumpSync({ pid, imagesDir: images, tcpEstablished: true });
      const pids = dumpedPids(images);
      waitFor('the dumped redis-server to be gone', () => {
        for (const p of pids) reapIfOurs(p);
        return pids.every((p) => procState(p) === undefined);
      });
      const r = restoreSync({ imagesDir: images, detached: true, tcpEstablished: true });
      expect(r.pid, `round ${round}`).to.equal(pid);
      sleepMs(10);
      expect(await client!.command('GET greeting'), `round ${round}: the kept connection reads its key`).to.equal('hello-from-before');
      expect(await client!.command('INCR counter'), `round ${round}: and counts on`).to.equal(`:${6 + round}`);
    }
    const other = await RedisClient.connect(port);
    try {
      expect(await other.command('GET counter')).to.equal('7');
      expect(await other.command('DBSIZE')).to.equal(':2');
    } finally {
      other.close();
    }
  });
});

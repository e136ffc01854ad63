// A real multi-process server from a Debian package: nginx (a root master and two workers running
// as nobody, a thread pool in each worker, epoll, eventfds, the master<->worker socketpairs,
// shared anonymous memory for its shm zones and accept mutex, reuseport listeners over IPv4 and
// IPv6 with "deferred" and "fastopen") serving two slow downloads, one with sendfile over IPv4
// and one read through the thread pool over IPv6, and holding an idle kept-alive connection.
// Mid-download the whole tree is dumped with its connections and restored, twice (once by the
// library, once by the CLI); both downloads complete with the file's SHA-256, the same PIDs come
// back in the same shape with the same listener options, the kept-alive connection serves on,
// the master still drives its workers (log reopen and graceful quit go to them over the
// socketpairs) and new connections are served.
import { expect } from 'chai';
import { spawn, spawnSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { chmodSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, readlinkSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import net from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dumpSync, restoreSync } from '@criu-ts/core';
import { getsockopt, IPV6_OPT, SO, SOL, SOL_SOCKET, TCP_OPT } from '@criu-ts/sys';
import { withSocketsOf } from '../src/proc/task-sockets.js';
import { isRoot, killQuietly, procState, sleepMs, waitFor } from './restore-helpers.js';
import { becomeSubreaper, dumpedPids, procLayout, reapIfOurs, TEST_BIN } from './programs.js';

const CLI = join(TEST_BIN, '..', '..', 'packages', 'cli', 'dist', 'criu-ts.cjs');
const FILE_SIZE = 6 << 20;
/**
 * Bytes per second per connection (nginx's limit_rate): a download takes 5 to 8 s (the thread pool
 * one, with its small output buffers, gets about 0.8 MiB/s), long enough for two rounds.
 */
const RATE = 1 << 20;
const POOL_THREADS = 4;

function nginxBinary(): string | undefined {
  const r = spawnSync('sh', ['-c', 'command -v nginx'], { encoding: 'utf8' });
  if (r.status === 0) return r.stdout.trim();
  // Debian installs it in /usr/sbin, which a PATH without the sbin directories misses.
  return existsSync('/usr/sbin/nginx') ? '/usr/sbin/nginx' : undefined;
}

/**
 * A loopback port free on both 127.0.0.1 and [::1] (nginx listens on both): bound on each and
 * released at once. A port checked on 127.0.0.1 alone was once taken on [::1] (EADDRINUSE).
 */
async function freePort(): Promise<number> {
  const listen = (port: number, host: string) => new Promise<net.Server | null>((resolve) => {
    const s = net.createServer();
    s.once('error', () => resolve(null));
    s.listen(port, host, () => resolve(s));
  });
  const close = (s: net.Server) => new Promise<void>((resolve) => s.close(() => resolve()));
  for (let attempt = 0; attempt < 20; attempt++) {
    const v4 = await listen(0, '127.0.0.1');
    if (!v4) continue;
    const port = (v4.address() as net.AddressInfo).port;
    const v6 = await listen(port, '::1');
    await close(v4);
    if (v6) {
      await close(v6);
      return port;
    }
  }
  throw new Error('no loopback port free on both 127.0.0.1 and [::1] in 20 tries');
}

function nginxConfig(dir: string, port: number): string {
  return `daemon off;
master_process on;
worker_processes 2;
pid ${dir}/nginx.pid;
lock_file ${dir}/nginx.lock;
error_log ${dir}/error.log info;
timer_resolution 100ms;
thread_pool default threads=${POOL_THREADS};
events {
  worker_connections 64;
  accept_mutex on;
}
http {
  access_log ${dir}/access.log;
  client_body_temp_path ${dir}/tmp/body;
  proxy_temp_path ${dir}/tmp/proxy;
  fastcgi_temp_path ${dir}/tmp/fastcgi;
  uwsgi_temp_path ${dir}/tmp/uwsgi;
  scgi_temp_path ${dir}/tmp/scgi;
  default_type application/octet-stream;
  limit_conn_zone $binary_remote_addr zone=perip:1m;
  open_file_cache max=16;
  server {
    listen 127.0.0.1:${port} reuseport deferred fastopen=16 so_keepalive=on backlog=100 rcvbuf=200k sndbuf=300k;
    listen [::1]:${port} reuseport ipv6only=on;
    tcp_nopush on;
    root ${dir}/www;
    limit_conn perip 16;
    limit_rate ${RATE};
    location /sendfile/ { sendfile on; }
    location /threads/ { sendfile off; aio threads; output_buffers 2 64k; }
  }
}
`;
}

interface Received {
  readonly status: string;
  readonly bytes: number;
  readonly sha256: string;
}

/**
 * A kept-alive HTTP/1.1 client connection: one GET at a time, its body (Content-Length bytes)
 * hashed as it arrives.
 */
class HttpConnection {
  /** Body bytes of the current response so far. */
  received = 0;
  private onData: ((chunk: Buffer) => void) | undefined;
  private onEnd: ((error: Error) => void) | undefined;

  private constructor(private readonly socket: net.Socket) {
    socket.on('data', (chunk: Buffer) => this.onData?.(chunk));
    socket.on('error', (e) => this.onEnd?.(e));
    socket.on('close', () => this.onEnd?.(new Error('connection closed before the response was complete')));
  }

  static open(host: string, port: number): Promise<HttpConnection> {
    return new Promise((resolve, reject) => {
      const socket = net.connect(port, host, () => resolve(new HttpConnection(socket)));
      socket.once('error', reject);
    });
  }

  get(path: string): Promise<Received> {
    const hash = createHash('sha256');
    let head: Buffer | undefined = Buffer.alloc(0);
    let status = '';
    let length = 0;
    this.received = 0;
    const done = new Promise<Received>((resolve, reject) => {
      const finish = (error?: Error) => {
        clearTimeout(timer);
        this.onData = this.onEnd = undefined;
        if (error) reject(new Error(`GET ${path}: ${error.message} (${this.received} body bytes)`));
        else resolve({ status, bytes: this.received, sha256: hash.digest('hex') });
      };
      const timer = setTimeout(() => finish(new Error('not complete within 60 s')), 60_000);
      this.onEnd = finish;
      this.onData = (chunk) => {
        if (head !== undefined) {
          head = Buffer.concat([head, chunk]);
          const end = head.indexOf('\r\n\r\n');
          if (end < 0) return;
          const lines = head.subarray(0, end).toString('latin1').split('\r\n');
          status = lines[0]!;
          length = Number(/^content-length:\s*(\d+)$/im.exec(lines.join('\n'))?.[1] ?? 0);
          chunk = head.subarray(end + 4);
          head = undefined;
        }
        hash.update(chunk);
        this.received += chunk.length;
        if (this.received >= length) finish();
      };
    });
    this.socket.write(`GET ${path} HTTP/1.1\r\nHost: localhost\r\n\r\n`);
    return done;
  }

  destroy(): void {
    this.socket.destroy();
  }
}

/** Lets the event loop run (the sync dump and restore block it) until `predicate` holds, bounded. */
async function until(what: string, predicate: () => boolean, timeoutMs = 15_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    await new Promise((r) => setTimeout(r, 10));
  }
}

/** socket(7): whether the socket listens (sys does not name it). */
const SO_ACCEPTCONN = 30;

/**
 * The options nginx's listen parameters set on its TCP listeners, per fd of `pid`, read through a
 * pidfd_getfd copy of each socket.
 */
function listenerOptions(pid: number): Record<string, Record<string, number>> {
  const out: Record<string, Record<string, number>> = {};
  withSocketsOf(pid, (fd, num) => {
    const int = (level: number, opt: number) => getsockopt(fd, level, opt).readInt32LE(0);
    const domain = int(SOL_SOCKET, SO.DOMAIN);
    if ((domain !== 2 && domain !== 10) || int(SOL_SOCKET, SO.TYPE) !== 1 || int(SOL_SOCKET, SO_ACCEPTCONN) !== 1) return;
    out[`fd ${num}`] = {
      reuseaddr: int(SOL_SOCKET, SO.REUSEADDR),
      reuseport: int(SOL_SOCKET, SO.REUSEPORT),
      keepalive: int(SOL_SOCKET, SO.KEEPALIVE),
      rcvbuf: int(SOL_SOCKET, SO.RCVBUF),
      sndbuf: int(SOL_SOCKET, SO.SNDBUF),
      deferAccept: int(SOL.TCP, TCP_OPT.DEFER_ACCEPT),
      fastopen: int(SOL.TCP, TCP_OPT.FASTOPEN),
      ...(domain === 10 ? { v6only: int(SOL.IPV6, IPV6_OPT.V6ONLY) } : {}),
    };
  });
  return out;
}

function childrenOf(pid: number): number[] {
  try {
    return readFileSync(`/proc/${pid}/task/${pid}/children`, 'utf8').trim().split(/\s+/).filter(Boolean).map(Number).sort((a, b) => a - b);
  } catch {
    return [];
  }
}

function threadCount(pid: number): number {
  return readdirSync(`/proc/${pid}/task`).length;
}

function uidOf(pid: number): number {
  return Number(/^Uid:\s+(\d+)/m.exec(readFileSync(`/proc/${pid}/status`, 'utf8'))![1]);
}

/** The tree as the checks compare it: master, its workers, their parents, users and thread counts. */
function treeShape(master: number): { master: number; workers: number[]; parents: number[]; uids: number[]; threads: number[] } {
  const workers = childrenOf(master);
  return {
    master,
    workers,
    parents: workers.map((w) => procLayout(w).ppid),
    uids: [master, ...workers].map(uidOf),
    threads: [master, ...workers].map(threadCount),
  };
}

describe('core: nginx (master + 2 workers) serving two slow downloads, dumped and restored mid-download', function () {
  this.timeout(120_000);
  let dir: string | undefined;
  let binary: string | undefined;
  let pids: number[] = [];
  let connections: HttpConnection[] = [];

  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace, clone3 set_tid and PR_SET_MM_MAP need root
    binary = nginxBinary();
    if (!binary) {
      if (process.env.CI) throw new Error('nginx missing in CI (.ci/run installs it)');
      this.skip(); // stated reason: Debian's nginx is not installed here
    }
    becomeSubreaper();
  });
  after(() => {
    if (isRoot()) becomeSubreaper(false);
  });
  afterEach(() => {
    for (const c of connections) c.destroy();
    connections = [];
    // Workers whose master dies are re-parented to us (the subreaper): every one is ours to reap.
    for (const p of pids) killQuietly(p);
    for (let i = 0; i < 200 && pids.some((p) => procState(p) !== undefined); i++) {
      for (const p of pids) reapIfOurs(p);
      sleepMs(5);
    }
    pids = [];
    if (dir) rmSync(dir, { recursive: true, force: true });
    dir = undefined;
  });

  const open = async (host: string, port: number) => {
    const c = await HttpConnection.open(host, port);
    connections.push(c);
    return c;
  };

  it('both downloads complete with the file\'s SHA-256 across a library and a CLI round; same PIDs, shape and listener options; the master still drives its workers', async function () {
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-nginx-'));
    // The workers run as nobody: they read the files and nothing else needs to be theirs.
    chmodSync(dir, 0o755);
    for (const sub of ['www/sendfile', 'www/threads', 'tmp']) mkdirSync(join(dir, sub), { recursive: true });
    const content = randomBytes(FILE_SIZE);
    const expected = createHash('sha256').update(content).digest('hex');
    const small = (sub: string) => `small file in ${sub}\n`;
    for (const sub of ['sendfile', 'threads']) {
      writeFileSync(join(dir, 'www', sub, 'big.bin'), content, { mode: 0o644 });
      writeFileSync(join(dir, 'www', sub, 'small.txt'), small(sub), { mode: 0o644 });
    }
    const smallSha = (sub: string) => createHash('sha256').update(small(sub)).digest('hex');
    const port = await freePort();
    writeFileSync(join(dir, 'nginx.conf'), nginxConfig(dir, port));
    const pidFile = join(dir, 'nginx.pid');
    spawn('setsid', ['-f', join(TEST_BIN, 'run-clean'), binary!, '-c', join(dir, 'nginx.conf'), '-p', dir, '-e', join(dir, 'error.log')], {
      stdio: 'ignore', cwd: dir,
    }).unref();
    try {
      waitFor('nginx to write its pid file', () => existsSync(pidFile) && readFileSync(pidFile, 'utf8').trim() !== '');
    } catch (error) {
      const log = join(dir, 'error.log');
      throw new Error(`${(error as Error).message}; error.log: ${existsSync(log) ? readFileSync(log, 'utf8') : '(none)'}`);
    }
    const master = Number(readFileSync(pidFile, 'utf8').trim());
    pids.push(master);
    // Each worker runs its thread pool once started.
    waitFor('nginx to start its workers and their thread pools', () => {
      const w = childrenOf(master);
      return w.length === 2 && w.every((p) => { try { return threadCount(p) === 1 + POOL_THREADS; } catch { return false; } });
    });
    pids.push(...childrenOf(master));
    const before = treeShape(master);
    expect(before.uids.slice(1), 'workers run as nobody').to.deep.equal([65534, 65534]);
    const listeners = () => [master, ...before.workers].map(listenerOptions);
    const listenersBefore = listeners();
    expect(Object.keys(listenersBefore[0]!), 'the master holds a listener per worker and family (reuseport)').to.have.length(4);
    expect(Object.values(listenersBefore[0]!).filter((o) => o.deferAccept > 0 && o.fastopen === 16), 'deferred fastopen=16 on the IPv4 ones').to.have.length(2);

    // An idle kept-alive connection, and the two downloads: sendfile over IPv4, the thread pool over IPv6.
    const kept = await open('127.0.0.1', port);
    expect(await kept.get('/threads/small.txt')).to.deep.equal({ status: 'HTTP/1.1 200 OK', bytes: small('threads').length, sha256: smallSha('threads') });
    const downloads = [await open('127.0.0.1', port), await open('::1', port)];
    const results = [downloads[0]!.get('/sendfile/big.bin'), downloads[1]!.get('/threads/big.bin')];
    let floor = 0;
    for (let round = 0; round < 2; round++) {
      // Some progress since the last round, and still in flight.
      floor += 1 << 20;
      await until(`round ${round}: both downloads past ${floor} bytes`, () => downloads.every((d) => d.received >= floor));
      for (const d of downloads) expect(d.received, `round ${round}: the download is in flight`).to.be.lessThan(FILE_SIZE);
      const images = join(dir, `images-${round}`);
      if (round === 0) {
        dumpSync({ pid: master, imagesDir: images, tcpEstablished: true });
      } else {
        const r = spawnSync(process.execPath, [CLI, 'dump', '-t', String(master), '-D', images, '--tcp-established', '-o', 'dump.log', '-v4'], { encoding: 'utf8', timeout: 60_000 });
        expect(r.status, `CLI dump: ${r.stderr}`).to.equal(0);
      }
      const dumped = dumpedPids(images);
      expect([...dumped].sort((a, b) => a - b), `round ${round}: the whole tree is dumped`).to.deep.equal([master, ...before.workers]);
      expect(readdirSync(images).filter((n) => n.startsWith('tcp-stream-')), `round ${round}: the three connections`).to.have.length(3);
      waitFor('the dumped nginx tree to be gone', () => {
        for (const p of dumped) reapIfOurs(p);
        return dumped.every((p) => procState(p) === undefined);
      });
      if (round === 0) {
        expect(restoreSync({ imagesDir: images, detached: true, tcpEstablished: true }).pid).to.equal(master);
      } else {
        const r = spawnSync(process.execPath, [CLI, 'restore', '-D', images, '--tcp-established', '-d', '-o', 'restore.log', '-v4'], { encoding: 'utf8', timeout: 60_000 });
        expect(r.status, `CLI restore: ${r.stderr}`).to.equal(0);
      }
      expect(treeShape(master), `round ${round}: same PIDs, the master parent of its workers, same users and threads`).to.deep.equal(before);
      expect(listeners(), `round ${round}: the listeners' options`).to.deep.equal(listenersBefore);
    }

    for (const [i, r] of (await Promise.all(results)).entries()) {
      expect(r, `download ${i}: what arrived`).to.deep.equal({ status: 'HTTP/1.1 200 OK', bytes: FILE_SIZE, sha256: expected });
    }
    expect(await kept.get('/sendfile/small.txt'), 'the kept-alive connection serves on').to.deep.equal({ status: 'HTTP/1.1 200 OK', bytes: small('sendfile').length, sha256: smallSha('sendfile') });

    // The master still drives its workers: SIGUSR1 reopens the logs in the master, which tells
    // each worker over its socketpair to reopen them too (the worker does it after the events of
    // its current epoll round: a request in that round still goes to the old file, so the test
    // waits for the workers' fds); new requests land in the new log.
    const accessLog = join(dir, 'access.log');
    renameSync(accessLog, `${accessLog}.0`);
    process.kill(master, 'SIGUSR1');
    const opens = (pid: number) => readdirSync(`/proc/${pid}/fd`).map((fd) => { try { return readlinkSync(`/proc/${pid}/fd/${fd}`); } catch { return ''; } });
    await until('the master and both workers to reopen access.log', () => [master, ...before.workers].every((p) => opens(p).includes(accessLog) && !opens(p).includes(`${accessLog}.0`)));
    for (const host of ['127.0.0.1', '::1']) {
      for (const sub of ['sendfile', 'threads']) {
        const c = await open(host, port);
        expect(await c.get(`/${sub}/small.txt`), `a new connection to ${host} for ${sub}`).to.deep.equal({ status: 'HTTP/1.1 200 OK', bytes: small(sub).length, sha256: smallSha(sub) });
        c.destroy();
      }
    }
    // nginx writes the log line once the response is sent: maybe just after the client has it.
    await until('the four requests in the reopened access.log', () => readFileSync(accessLog, 'utf8').split('\n').filter((l) => l.includes('small.txt')).length === 4);
    expect(readFileSync(`${accessLog}.0`, 'utf8').split('\n').filter((l) => l.includes('big.bin') && l.includes(` 200 ${FILE_SIZE} `)), 'the downloads logged complete').to.have.length(2);

    // A graceful quit goes through the same channels, and the master reaps its workers.
    process.kill(master, 'SIGQUIT');
    await until('nginx to quit', () => {
      reapIfOurs(master);
      return pids.every((p) => procState(p) === undefined);
    }, 10_000);
    expect(readFileSync(join(dir, 'error.log'), 'utf8')).to.not.match(/\[(alert|crit|emerg)\]/);
  });
});

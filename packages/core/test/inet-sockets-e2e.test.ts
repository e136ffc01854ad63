// dump() then restore() of tests/bin/inet-keeper: TCP listeners (IPv4, dual-stack IPv6), an
// accepted and a connected connection over IPv4, one over IPv6, an IPv4-mapped one, with streams
// in flight both ways, a connection in CLOSE_WAIT and one in FIN_WAIT2, UDP sockets (bound,
// connected over IPv6). The peer of every connection is this test process (outside the dumped
// tree), which checks every byte it receives against the program's stream, as the program does
// with ours. Also: what dump refuses (established connections without tcpEstablished, packet
// sockets, connections not accepted yet with tcpClose; accept-queue-e2e has them saved), --tcp-close,
// and that no network lock is left behind.
import { expect } from 'chai';
import { withSocketsOf } from '../src/proc/task-sockets.js';
import { spawnSync } from 'node:child_process';
import { existsSync, readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { DUMP_FAULT_POINTS, DumpError, dumpRunId, dumpSync, listNetworkLocks, releaseConnectionsOf, releaseNetworkLocks, restoreSync, RestoreError } from '@criu-ts/core';
import { ImageReader, imageFromCritJson, imageToCritJson } from '@criu-ts/images';
import { listLocksSync } from '@criu-ts/soccr';
import { pidfdGetfd, pidfdOpen, sock, close, type Pid } from '@criu-ts/sys';
import { alive, procState, sleepMs, waitFor, thrownBy } from './restore-helpers.js';
import { dumpAndWait, rootWithSubreaper, imageEntries as entries } from './programs.js';
import { InetKeeper, STREAM_LEN } from './inet-peer.js';
import { dumpKilledAtStage } from './reliability-helpers.js';


/**
 * Local ports of this test process's TCP sockets. Every connection of inet-keeper has this
 * process as its peer, so a lock is this file's when one end of it is one of these ports; locks
 * of other test runs on the machine (which share its nft table and iptables chains) are not.
 */
function ownPorts(): Set<number> {
  const r = spawnSync('ss', ['-Htanp'], { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`ss -Htanp failed: ${r.stderr}`);
  const ports = new Set<number>();
  for (const line of r.stdout.split('\n')) {
    if (!line.includes(`pid=${process.pid},`)) continue;
    const local = line.trim().split(/\s+/)[3] ?? '';
    ports.add(Number(local.slice(local.lastIndexOf(':') + 1)));
  }
  return ports;
}

/** Locks held for dumps' images of this file's connections, in every backend that runs here. */
function heldLocks(ports = ownPorts()): string[] {
  const out: string[] = [];
  for (const backend of ['nft', 'iptables'] as const) {
    try {
      out.push(
        ...listLocksSync(backend)
          .filter((l) => l.holder !== undefined && (ports.has(l.key.local.port) || ports.has(l.key.remote.port)))
          .map((l) => `${backend} ${l.holder} ${l.key.local.address}:${l.key.local.port}<-${l.key.remote.address}:${l.key.remote.port}`),
      );
    } catch {
      /* backend not usable here */
    }
  }
  return out;
}

/** iptables rules of criu-ts for this file's connections. */
function iptablesLeftovers(ports = ownPorts()): string[] {
  const out: string[] = [];
  for (const tool of ['iptables-save', 'ip6tables-save']) {
    const r = spawnSync(tool, ['-t', 'filter'], { encoding: 'utf8' });
    if (r.status !== 0) continue;
    out.push(...r.stdout.split('\n').filter((l) => l.includes('criu-ts-soccr') && [...l.matchAll(/--[sd]port (\d+)/g)].some((m) => ports.has(Number(m[1])))));
  }
  return out;
}

describe('core: TCP and UDP sockets end to end', function () {
  this.timeout(240_000);
  let keeper: InetKeeper | undefined;
  rootWithSubreaper();
  afterEach(() => {
    delete process.env.CRIU_TS_LOCK_BACKEND;
    const ports = ownPorts(); // before the peer's sockets close with the keeper
    keeper?.cleanup();
    keeper = undefined;
    expect(heldLocks(ports), 'no network lock left by a dump').to.deep.equal([]);
    expect(iptablesLeftovers(ports), 'no iptables rule left').to.deep.equal([]);
  });

  it('refuses established connections without tcpEstablished, naming each; the program runs on', function () {
    keeper = new InetKeeper();
    const error = thrownBy(() => dumpAndWait(keeper!.pid, keeper!.images));
    expect(error).to.be.instanceOf(DumpError);
    const message = (error as Error).message;
    expect(message).to.match(/at check-options/);
    expect(message).to.match(/fd \d+ \(socket:\[\d+\], TCP\/IPv\d [^)]* -> [^)]*, ESTABLISHED\)/);
    expect(message).to.match(/--tcp-established/);
    expect(alive(keeper.pid)).to.equal(true);
    expect(procState(keeper.pid)).to.match(/[SR]/);
    // Nothing was touched: the streams flow and every check passes without a dump.
    const { failures, checks, peer } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(checks.length).to.be.greaterThan(20);
    expect(peer.slice(0, 4)).to.deep.equal(['C1', 'C6', 'A', 'M'].map((n) => `${n}: sent ${STREAM_LEN}, received ${STREAM_LEN}, 0 bad bytes`));
  });

  // Raw and netlink sockets are dumped (netlink-raw-e2e); packet sockets are not yet.
  for (const kind of ['packet'] as const) {
    it(`refuses a ${kind} socket by fd and kind; the program runs on`, function () {
      keeper = new InetKeeper({ refuse: kind });
      const error = thrownBy(() => dumpAndWait(keeper!.pid, keeper!.images, { tcpEstablished: true }));
      expect(error).to.be.instanceOf(DumpError);
      const want = { packet: /packet socket/ }[kind];
      expect((error as Error).message).to.match(/fd \d+ \(socket:\[\d+\]/);
      expect((error as Error).message).to.match(want);
      expect(alive(keeper.pid)).to.equal(true);
      expect(procState(keeper.pid)).to.match(/[SR]/);
    });
  }

  for (const backend of ['nft', 'iptables'] as const) {
    it(`dumps and restores every socket with the streams in flight both ways, twice in a row (${backend} lock)`, function () {
      process.env.CRIU_TS_LOCK_BACKEND = backend;
      keeper = new InetKeeper();
      for (let round = 0; round < 2; round++) {
        const inFlightAtDump = keeper.streams.map((s) => s.sent);
        dumpAndWait(keeper.pid, keeper.images, { tcpEstablished: true });
        // Between dump and restore the connections stay locked for the images.
        expect(heldLocks().length, `round ${round}: connections locked while dumped`).to.equal(8);
        if (round === 0) checkImages(keeper.images);
        const r = restoreSync({ imagesDir: keeper.images, detached: true, tcpEstablished: true });
        expect(r.pid).to.equal(keeper.pid);
        expect(heldLocks(), `round ${round}: lock lifted by the restore`).to.deep.equal([]);
        // The restored connections carry data both ways: take 256 KiB of each stream, send more.
        keeper.exchange(256 << 10);
        keeper.streams.forEach((s, i) => {
          expect(s.bad, `${s.name} round ${round}`).to.equal(0);
          expect(s.received, `${s.name} round ${round}`).to.be.greaterThan(0);
          expect(s.sent, `${s.name} round ${round}`).to.be.at.least(inFlightAtDump[i]!);
        });
      }
      const { failures, checks, peer } = keeper.check();
      expect(failures).to.deep.equal([]);
      expect(checks.length).to.be.greaterThan(20);
      expect(peer).to.deep.equal([
        ...['C1', 'C6', 'A', 'M'].map((n) => `${n}: sent ${STREAM_LEN}, received ${STREAM_LEN}, 0 bad bytes`),
        'F1: all bytes, 0 bad, then the end of the stream', 'LA: all bytes, 0 bad, then the end of the stream',
      'FW: bye-from-program', 'CW: reply-cw', 'U4: udp4 pong', 'U6: udp6 hello',
      ]);
    });
  }

  it('a dump that fails after the lock, at every fault point, and a dump left running: connections back in service, unlocked', function () {
    keeper = new InetKeeper();
    for (const point of DUMP_FAULT_POINTS) {
      const error = thrownBy(() => dumpAndWait(keeper!.pid, keeper!.images, { tcpEstablished: true, faultAt: point }));
      expect(error, point).to.be.instanceOf(DumpError);
      expect(heldLocks(), `${point}: lock lifted`).to.deep.equal([]);
      expect(alive(keeper.pid), point).to.equal(true);
      keeper.exchange(64 << 10, 10_000);
    }
    dumpAndWait(keeper.pid, keeper.images, { tcpEstablished: true, leave: 'running' });
    expect(heldLocks(), 'left running: lock lifted').to.deep.equal([]);
    const { failures, peer } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(peer.slice(0, 4)).to.deep.equal(['C1', 'C6', 'A', 'M'].map((n) => `${n}: sent ${STREAM_LEN}, received ${STREAM_LEN}, 0 bad bytes`));
  });

  it('a restore that fails half-way (the UDP port taken, after every connection is made) leaves the lock for the next attempt, which works', function () {
    keeper = new InetKeeper();
    dumpAndWait(keeper.pid, keeper.images, { tcpEstablished: true });
    // U4 is the program's last socket: every TCP connection exists (in repair mode) when its bind fails.
    const squatter = sock.socket(sock.AF_INET, 2 /* SOCK_DGRAM */ | sock.SOCK_CLOEXEC, 17);
    try {
      sock.bind(squatter, { family: 4, address: '127.0.0.1', port: keeper.u4Port });
      const error = thrownBy(() => restoreSync({ imagesDir: keeper!.images, detached: true, tcpEstablished: true }));
      expect(error).to.be.instanceOf(RestoreError);
      expect((error as Error).message).to.match(new RegExp(`files: .*UDP socket id \\d+ \\(socket:\\[\\d+\\] 127\\.0\\.0\\.1:${keeper.u4Port}, CLOSE\\): bind to 127\\.0\\.0\\.1:${keeper.u4Port} failed: .*EADDRINUSE`));
      expect(alive(keeper.pid), 'no process left by the failed restore').to.equal(false);
      expect(heldLocks().length, 'the dump\'s lock stays').to.equal(8);
    } finally {
      sock.close(squatter);
    }
    restoreSync({ imagesDir: keeper.images, detached: true, tcpEstablished: true });
    const { failures, peer } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(peer.slice(0, 4)).to.deep.equal(['C1', 'C6', 'A', 'M'].map((n) => `${n}: sent ${STREAM_LEN}, received ${STREAM_LEN}, 0 bad bytes`));
  });

  it('a listener with a connection not accepted yet: refused with tcpClose (its state would be lost); with skipInFlight dumped and restored without it', function () {
    keeper = new InetKeeper({ inFlight: true });
    sleepMs(20);
    const error = thrownBy(() => dumpAndWait(keeper!.pid, keeper!.images, { tcpClose: true }));
    expect(error).to.be.instanceOf(DumpError);
    expect((error as Error).message).to.match(/fd \d+ \(socket:\[\d+\], TCP\/IPv4 127\.0\.0\.1:\d+, LISTEN\): listening socket with 1 connection\(s\) not accepted yet \(in flight\); dump with --tcp-established \(tcpEstablished\) to save them, or with --skip-in-flight/);
    expect(alive(keeper.pid)).to.equal(true);
    dumpAndWait(keeper.pid, keeper.images, { tcpEstablished: true, skipInFlight: true });
    const listener = entries(join(keeper.images, 'files.img')).find((f) => f.isk?.state === 10 && f.isk.src_port === keeper!.l4Port);
    expect(listener?.isk.accept_queue ?? [], 'skipInFlight leaves it behind').to.deep.equal([]);
    restoreSync({ imagesDir: keeper.images, detached: true, tcpEstablished: true });
    const { failures } = keeper.check();
    expect(failures).to.deep.equal([]);
  });

  it('tcpClose: dumped without state or lock, restored as closed sockets; restore without an option refuses', function () {
    keeper = new InetKeeper();
    dumpAndWait(keeper.pid, keeper.images, { tcpClose: true });
    expect(readdirSync(keeper.images).filter((n) => n.startsWith('tcp-stream-'))).to.deep.equal([]);
    expect(heldLocks()).to.deep.equal([]);
    expect(entries(join(keeper.images, 'inventory.img'))[0]!.tcp_close).to.equal(true);
    // The dump said --tcp-close: restore closes them without being told.
    const r = restoreSync({ imagesDir: keeper.images, detached: true });
    expect(r.pid).to.equal(keeper.pid);
    const states = tcpStatesOf(keeper.pid);
    expect(states.filter((s) => s === 10).length, 'listeners').to.equal(2);
    expect(states.filter((s) => s === 7).length, 'closed in place of the 8 connections').to.equal(8);
  });

  it('a dump never restored: releaseNetworkLocks (criu-ts cleanup -D DIR) removes the locks held for its images, and only those', async function () {
    keeper = new InetKeeper();
    const result = dumpSync({ pid: keeper.pid, imagesDir: keeper.images, tcpEstablished: true });
    expect(result.connections).to.have.length(8);
    const held = listNetworkLocks().filter((l) => l.holder === result.runId);
    expect(held).to.have.length(8);
    expect(dumpRunId(keeper.images)).to.equal(result.runId);
    // Without the images named (or --all), held locks stay.
    const cleaned = await releaseNetworkLocks();
    expect(cleaned.filter((k) => held.some((h) => h.key.local.port === k.local.port && h.key.remote.port === k.remote.port))).to.deep.equal([]);
    expect(heldLocks()).to.have.length(8);
    const removed = await releaseNetworkLocks({ imagesDir: keeper.images });
    expect(removed).to.have.length(8);
    expect(heldLocks()).to.deep.equal([]);
  });

  it('a dumper killed mid-dump: the program runs on, and its connections come out of repair mode and are unlocked by themselves (dump-guard); criu-ts cleanup -t PID then finds nothing left', function () {
    keeper = new InetKeeper();
    const pid = keeper.pid;
    // The dumper kills itself once every connection is paused and saved (the memory stage follows the files stage).
    expect(dumpKilledAtStage(pid, keeper.images, 'memory')).to.equal('SIGKILL');
    // The dump's guard saw it die and released everything (a Node.js start-up and the lock tools).
    waitFor('the dead dump\'s locks to be gone', () => heldLocks().length === 0, 20_000);
    expect(repairModeSocketsOf(pid), 'sockets still in repair mode').to.equal(0);
    expect(releaseConnectionsOf(pid), 'what criu-ts cleanup -t PID would still release').to.deep.equal([]);
    const { failures, peer } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(peer.slice(0, 6)).to.deep.equal([
      ...['C1', 'C6', 'A', 'M'].map((n) => `${n}: sent ${STREAM_LEN}, received ${STREAM_LEN}, 0 bad bytes`),
      'F1: all bytes, 0 bad, then the end of the stream', 'LA: all bytes, 0 bad, then the end of the stream',
    ]);
  });

  it('criu-ts dump --tcp-established killed in the middle of the pages: the guard puts the connections back by itself', function () {
    keeper = new InetKeeper();
    const pid = keeper.pid;
    const cli = new URL('../../../cli/dist/criu-ts.cjs', import.meta.url).pathname;
    const r = spawnSync(process.execPath, [cli, 'dump', '-t', String(pid), '-D', keeper.images, '--tcp-established'], {
      env: { ...process.env, CRIU_TS_KILL_AT: 'dump:in-pages' }, stdio: 'ignore',
    });
    expect(r.signal).to.equal('SIGKILL');
    waitFor('the program to be free of its dead dumper', () => /TracerPid:\s+0\b/.test(readFileSync(`/proc/${pid}/status`, 'utf8')));
    waitFor('the dead dump\'s locks to be gone', () => heldLocks().length === 0, 20_000);
    expect(repairModeSocketsOf(pid), 'sockets still in repair mode').to.equal(0);
    expect(existsSync(join(keeper.images, 'inventory.img')), 'an inventory of a killed dump').to.equal(false);
    const { failures, peer } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(peer.slice(0, 4)).to.deep.equal(['C1', 'C6', 'A', 'M'].map((n) => `${n}: sent ${STREAM_LEN}, received ${STREAM_LEN}, 0 bad bytes`));
  });

  it('restore of established connections needs tcpEstablished (or tcpClose), naming the connection', function () {
    keeper = new InetKeeper();
    dumpAndWait(keeper.pid, keeper.images, { tcpEstablished: true });
    const error = thrownBy(() => restoreSync({ imagesDir: keeper!.images, detached: true }));
    expect(error).to.be.instanceOf(RestoreError);
    expect((error as Error).message).to.match(/validate: .*established TCP connection 127\.0\.0\.1:\d+ -> 127\.0\.0\.1:\d+, ESTABLISHED; restore it with --tcp-established/);
    // The lock stays for the images: restoring them properly still works.
    expect(heldLocks().length).to.equal(8);
    restoreSync({ imagesDir: keeper.images, detached: true, tcpEstablished: true });
    const { failures, peer } = keeper.check();
    expect(failures).to.deep.equal([]);
    expect(peer.slice(0, 4)).to.deep.equal(['C1', 'C6', 'A', 'M'].map((n) => `${n}: sent ${STREAM_LEN}, received ${STREAM_LEN}, 0 bad bytes`));
  });
});

/** How many TCP sockets of `pid` are in repair mode (getsockopt TCP_REPAIR through duplicates). */
function repairModeSocketsOf(pid: number): number {
  let count = 0;
  withSocketsOf(pid, (fd) => {
    if (sock.getsockoptInt(fd, 1, 38 /* SO_PROTOCOL */) === 6 && sock.getsockoptInt(fd, 6 /* SOL_TCP */, 19 /* TCP_REPAIR */) === 1) count++;
  });
  return count;
}

/** TCP states of every TCP socket of `pid` (through duplicates of its fds). */
function tcpStatesOf(pid: number): number[] {
  const pidfd = pidfdOpen(pid as Pid);
  const states: number[] = [];
  try {
    for (const name of readdirSync(`/proc/${pid}/fd`)) {
      let dup;
      try {
        dup = pidfdGetfd(pidfd, Number(name));
      } catch {
        continue;
      }
      try {
        if (sock.getsockoptInt(dup, 1, 38 /* SO_PROTOCOL */) === 6) states.push(sock.getTcpInfo(dup).state);
      } catch {
        /* not a socket */
      } finally {
        close(dup);
      }
    }
  } finally {
    close(pidfd);
  }
  return states;
}

/** What CRIU writes for these sockets, crit-compatible and byte-identical through crit's JSON. */
function checkImages(images: string): void {
  const files = entries(join(images, 'files.img'));
  const isk = files.filter((f) => f.type === 4).map((f) => f.isk);
  expect(isk.length, 'inet sockets').to.equal(12);
  const listeners = isk.filter((s) => s.state === 10);
  expect(listeners.map((s) => [s.family, s.backlog]).sort()).to.deep.equal([[10, 3], [2, 5]]);
  expect(listeners.find((s) => s.family === 10)!.v6only).to.equal(false);
  expect(listeners.find((s) => s.family === 2)!.opts.reuseaddr).to.equal(true);
  // criu-ts's tcp_opts_entry fields (CRIU's format has none for them); crit reads past them below.
  expect(listeners.map((s) => [s.family, s.tcp_opts.defer_accept, s.tcp_opts.fastopen_qlen]).sort()).to.deep.equal([[10, 7, undefined], [2, undefined, 7]]);
  const tcp = isk.filter((s) => s.proto === 6 && s.state !== 10);
  expect(tcp.map((s) => s.state).sort((a, b) => a - b)).to.deep.equal([1, 1, 1, 1, 4, 5, 8, 9]); // ESTABLISHED x4, FIN_WAIT1, FIN_WAIT2, CLOSE_WAIT, LAST_ACK
  for (const s of tcp) {
    expect(s.tcp_opts.keepidle, 'keepalive knobs recorded').to.be.a('number');
    expect([s.tcp_opts.defer_accept, s.tcp_opts.fastopen_qlen], 'connections have no listener options').to.deep.equal([undefined, undefined]);
    expect(s.ns_id).to.equal(2);
  }
  const mapped = tcp.find((s) => s.family === 10 && s.src_addr.length === 4 && s.src_addr[2] === 0xffff0000);
  expect(mapped, 'an IPv4-mapped connection').to.not.equal(undefined);
  const udp = isk.filter((s) => s.proto === 17);
  expect(udp.map((s) => `${s.family} ${s.state}`).sort()).to.deep.equal(['10 1', '2 7']);
  const streams = readdirSync(images).filter((n) => n.startsWith('tcp-stream-'));
  expect(streams.length).to.equal(8);
  let queued = 0;
  for (const name of streams) {
    const [e] = entries(join(images, name));
    expect(isk.some((s) => name === `tcp-stream-${s.ino.toString(16)}.img`), `${name} names a socket`).to.equal(true);
    queued += e!.inq_len + e!.outq_len;
  }
  expect(queued, 'bytes in flight saved').to.be.greaterThan(1 << 20);
  // Datagrams waiting in the UDP sockets, with their sources (sk_packet_entry addr, criu-ts's).
  const udpIds = new Set(files.filter((f) => f.type === 4 && f.isk.proto === 17).map((f) => f.id));
  const datagrams = entries(join(images, 'sk-queues.img')).filter((q) => udpIds.has(q.id_for));
  expect(datagrams.map((q) => q.length)).to.deep.equal([8, 3000, 8, 5]);
  expect(datagrams.every((q) => q.addr instanceof Uint8Array && (q.addr.length === 16 || q.addr.length === 28))).to.equal(true);
  const crit = !spawnSync('crit', ['-h']).error;
  if (!crit && process.env.CI) throw new Error('crit missing in CI');
  for (const name of ['files.img', 'inventory.img', 'sk-queues.img', ...streams]) {
    const path = join(images, name);
    const reader = ImageReader.open(path);
    let json: unknown;
    try {
      json = imageToCritJson(reader);
    } finally {
      reader.close();
    }
    expect(Buffer.from(imageFromCritJson(json, path)).equals(readFileSync(path)), `${name} re-encodes byte-identically`).to.equal(true);
    if (crit) {
      const r = spawnSync('crit', ['decode', '-i', path], { maxBuffer: 256 << 20 });
      expect(r.status, `crit decode ${name}: ${r.stderr}`).to.equal(0);
    }
  }
}

// Network namespaces end to end, in namespaces this test makes (ip netns + veth, its own
// addresses only; every namespace is deleted afterwards, also when a test fails, which removes
// its devices, addresses, nft tables and iptables rules with it):
//
//   the move: tests/bin/move-server with live client connections is dumped in namespace A and
//   restored in namespace B, which has the same address (restore's `netns`), the way live
//   migration moves a service. The clients live in namespace C (sockets the test makes with its
//   main thread there), which reaches the server's address over a veth pair to A, then, once
//   the server runs in B, over one to B (a route change in C). The clients only see a pause:
//   both byte streams of every connection complete and match (bytes checked one by one on both
//   sides, FNV hash of what the server received).
//
//       C: 10.N.S.2 ---veth--- A: 10.N.S.1  (server before)
//                   ---veth--- B: 10.N.S.1  (server after)
//
//   the soak: 200 dump/restore cycles of the server with a live connection, in one namespace,
//   a mix of successful cycles and cycles failing at every dump and restore fault point, half of
//   them with the nft lock and half with iptables; at the end no element of criu-ts's nft sets
//   and no iptables rule of criu-ts is left in that namespace (nor any of these dumps' locks in
//   the test's own namespace), and the connection's streams still complete and match.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { statSync } from 'node:fs';
import { DUMP_FAULT_POINTS, dumpRunId, inNetworkNamespace, listNetworkLocks, restoreSync, RESTORE_FAULT_POINTS, type DumpOptions } from '@criu-ts/core';
import { listLocksSync } from '@criu-ts/soccr';
import { sock } from '@criu-ts/sys';
import { isRoot, procState, sleepMs, waitFor } from './restore-helpers.js';
import { becomeSubreaper, dumpAndWait, killAndReap, StateKeeper } from './programs.js';
import { PeerStream, STREAM_LEN, streamBytes } from './inet-peer.js';

const SUB = 1 + (process.pid % 250);
const NET = 233;
const SERVER = `10.${NET}.${SUB}.1`;
const CLIENT = `10.${NET}.${SUB}.2`;
const PORT = 8080;
/** The soak's client connects from the server's own address (both on the loopback device of its namespace). */
const CLIENT_OF_SOAK = SERVER;
const NS_A = `ctsmv-a-${process.pid}`;
const NS_B = `ctsmv-b-${process.pid}`;
const NS_C = `ctsmv-c-${process.pid}`;
const NS_SOAK = `ctsmv-s-${process.pid}`;
const nsFile = (name: string) => `/run/netns/${name}`;

function run(cmd: string, args: string[]): string {
  const r = spawnSync(cmd, args, { encoding: 'utf8', timeout: 10_000 });
  if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr || r.error?.message}`);
  return r.stdout;
}
const inNs = (name: string, ...args: string[]): string => run('ip', ['netns', 'exec', name, ...args]);

function deleteNamespaces(names: readonly string[]): void {
  for (const n of names) spawnSync('ip', ['netns', 'del', n], { timeout: 10_000 });
}

/** FNV-1a of `bytes`, as tests/move-server.c computes it over what it received. */
function fnv1a(bytes: Buffer): string {
  let h = 2166136261;
  for (const b of bytes) h = Math.imul(h ^ b, 16777619) >>> 0;
  return h.toString(16).padStart(8, '0');
}

/** A client connection of the move server: the server's stream is seeded with the client's port, ours with port + 1. */
function connectClient(name: string): PeerStream {
  const fd = sock.socket(sock.AF_INET, sock.SOCK_STREAM | sock.SOCK_CLOEXEC, sock.IPPROTO_TCP);
  sock.connect(fd, { family: 4, address: SERVER, port: PORT });
  const port = sock.getsockname(fd).port;
  return new PeerStream(name, fd, port, port + 1);
}

/** Moves every stream as far as `limit` each way, bounded in time; returns when all are there. */
function pumpTo(streams: readonly PeerStream[], limit: number, timeoutMs: number, what: string): void {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    let moved = 0;
    for (const s of streams) moved += s.pumpSend(limit) + s.pumpRecv(limit);
    if (streams.every((s) => s.sent >= limit && s.received >= limit)) return;
    if (Date.now() > deadline) {
      throw new Error(`${what}: streams stuck at ${streams.map((s) => `${s.name} sent ${s.sent} received ${s.received}`).join(', ')}`);
    }
    if (moved === 0) sleepMs(2);
  }
}

/** The server's verdict once every stream is through: its report lines after "ready". */
function serverVerdict(server: StateKeeper, streams: readonly PeerStream[]): void {
  waitFor('move-server to finish its streams', () => server.lines().some((l) => l.startsWith('done')), 30_000);
  const lines = server.lines();
  expect(lines.filter((l) => l.startsWith('FAIL')), 'server failures').to.deep.equal([]);
  for (const s of streams) {
    const clientPort = s.recvSeed;
    const fnv = fnv1a(streamBytes(s.sendSeed, 0, STREAM_LEN));
    expect(lines, `server's check of ${s.name}`).to.include(`ok client ${clientPort}: sent ${STREAM_LEN}, received ${STREAM_LEN}, bad 0, fnv ${fnv}`);
    expect({ sent: s.sent, received: s.received, bad: s.bad }, `client's side of ${s.name}`).to.deep.equal({ sent: STREAM_LEN, received: STREAM_LEN, bad: 0 });
  }
  expect(lines.at(-1)).to.equal('done 0');
}

/** Locks of criu-ts in the calling thread's namespace: nft elements and iptables rules, by whom they are held. */
function locksHere(): string[] {
  const out: string[] = [];
  for (const backend of ['nft', 'iptables'] as const) {
    try {
      out.push(...listLocksSync(backend).map((l) => `${backend} ${l.holder ?? l.owner} ${l.key.local.address}:${l.key.local.port}<-${l.key.remote.address}:${l.key.remote.port}`));
    } catch {
      /* backend not usable here */
    }
  }
  return out;
}

/** What `nft list ruleset` and `iptables-save`/`ip6tables-save` show of criu-ts's locks in namespace `ns`. */
function leftoversIn(ns: string): string[] {
  const out: string[] = [];
  // Elements of the lock sets print as "elements = { ... }"; the empty table and its one chain are the lock's fixed frame.
  const ruleset = inNs(ns, 'nft', 'list', 'ruleset');
  out.push(...ruleset.split('\n').filter((l) => /elements =/.test(l)).map((l) => `nft: ${l.trim()}`));
  for (const tool of ['iptables-save', 'ip6tables-save']) {
    const r = spawnSync('ip', ['netns', 'exec', ns, tool], { encoding: 'utf8', timeout: 10_000 });
    if (r.status === 0) out.push(...r.stdout.split('\n').filter((l) => /criu-ts/.test(l)).map((l) => `${tool}: ${l}`));
  }
  return out;
}

function makeNamespace(name: string): void {
  run('ip', ['netns', 'add', name]);
  inNs(name, 'ip', 'link', 'set', 'lo', 'up');
}

describe('core: a service moved between network namespaces (dump in A, restore in B)', function () {
  this.timeout(120_000);
  let server: StateKeeper | undefined;
  let clients: PeerStream[] = [];
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ip netns, ptrace, TCP_REPAIR and netfilter need root; CI runs as root
    becomeSubreaper();
    deleteNamespaces([NS_A, NS_B, NS_C]);
    for (const n of [NS_A, NS_B, NS_C]) makeNamespace(n);
    // Packets from the server arrive in C on whichever veth it is behind, whatever the route says.
    inNs(NS_C, 'sysctl', '-qw', 'net.ipv4.conf.all.rp_filter=0', 'net.ipv4.conf.default.rp_filter=0');
    for (const [side, ns] of [['a', NS_A], ['b', NS_B]] as const) {
      run('ip', ['link', 'add', `mv${side}${SUB}`, 'netns', ns, 'type', 'veth', 'peer', 'name', `mc${side}${SUB}`, 'netns', NS_C]);
      inNs(ns, 'ip', 'addr', 'add', `${SERVER}/24`, 'dev', `mv${side}${SUB}`);
      inNs(ns, 'ip', 'link', 'set', `mv${side}${SUB}`, 'up');
      inNs(NS_C, 'ip', 'addr', 'add', `${CLIENT}/32`, 'dev', `mc${side}${SUB}`);
      inNs(NS_C, 'sysctl', '-qw', `net.ipv4.conf.mc${side}${SUB}.rp_filter=0`);
      inNs(NS_C, 'ip', 'link', 'set', `mc${side}${SUB}`, 'up');
    }
    inNs(NS_C, 'ip', 'route', 'add', `${SERVER}/32`, 'dev', `mca${SUB}`, 'src', CLIENT);
  });
  after(() => {
    if (!isRoot()) return;
    for (const c of clients) sock.close(c.fd);
    if (server) killAndReap(server.pid, server.dir);
    deleteNamespaces([NS_A, NS_B, NS_C]);
    becomeSubreaper(false);
  });

  it('four clients stream 3 MiB each way through the move and only see a pause', function () {
    server = new StateKeeper('move-server', [SERVER, String(PORT), '4'], ['nsenter', `--net=${nsFile(NS_A)}`]);
    clients = inNetworkNamespace(nsFile(NS_C), () => [1, 2, 3, 4].map((i) => connectClient(`client ${i}`)));
    waitFor('move-server to accept its clients', () => server!.lines().some((l) => l.startsWith('accepted')));
    const pid = server.pid;
    expect(statSync(`/proc/${pid}/ns/net`).ino).to.equal(statSync(nsFile(NS_A)).ino);

    // A third of each stream through, then more of ours sent than the server has read: data in flight both ways.
    pumpTo(clients, STREAM_LEN / 3, 30_000, 'before the dump');
    for (const c of clients) c.pumpSend(STREAM_LEN / 2);
    const pausedAt = Date.now();

    // Dumped from here: the dump runs in the server's namespace (A) and locks its connections there.
    dumpAndWait(pid, server.images, { tcpEstablished: true });
    const holder = dumpRunId(server.images);
    expect(inNetworkNamespace(nsFile(NS_A), locksHere).filter((l) => l.includes(holder)), 'connections locked in A').to.have.length(4);
    expect(locksHere().filter((l) => l.includes(holder)), 'nothing locked in the test namespace').to.deep.equal([]);

    const restored = restoreSync({ imagesDir: server.images, detached: true, tcpEstablished: true, netns: nsFile(NS_B) });
    expect(restored.pid).to.equal(pid);
    expect(statSync(`/proc/${pid}/ns/net`).ino, 'the restored server lives in B').to.equal(statSync(nsFile(NS_B)).ino);
    expect(inNetworkNamespace(nsFile(NS_B), locksHere), 'restore lifted its locks in B').to.deep.equal([]);
    expect(inNs(NS_B, 'ss', '-Htn', 'state', 'established').trim().split('\n'), 'connections in B').to.have.length(4);

    // The clients' namespace now reaches the server's address in B. A still drops the clients'
    // packets under the dump's lock, so none of them gets a reset from A meanwhile.
    inNs(NS_C, 'ip', 'route', 'replace', `${SERVER}/32`, 'dev', `mcb${SUB}`, 'src', CLIENT);
    pumpTo(clients, STREAM_LEN / 2 + 65536, 30_000, 'after the move');
    const pauseMs = Date.now() - pausedAt;
    pumpTo(clients, STREAM_LEN, 60_000, 'to the end');
    serverVerdict(server, clients);
    console.log(`      pause seen by the clients: ${pauseMs} ms (dump in A, restore in B, route change, first bytes again)`);
    expect(pauseMs, 'the pause the clients saw').to.be.below(20_000);

    // The source keeps its lock for the images until released there (criu-ts cleanup -D on that host);
    // deleting namespace A removes it here.
    expect(inNetworkNamespace(nsFile(NS_A), locksHere).filter((l) => l.includes(holder))).to.have.length(4);
  });
});

describe('core: no network lock left after 200 dump/restore cycles, failed ones included', function () {
  this.timeout(600_000);
  const CYCLES = 200;
  let server: StateKeeper | undefined;
  let client: PeerStream | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ip netns, ptrace, TCP_REPAIR and netfilter need root; CI runs as root
    becomeSubreaper();
    deleteNamespaces([NS_SOAK]);
    makeNamespace(NS_SOAK);
    // The server's address on the namespace's loopback device: client and server both in this namespace.
    inNs(NS_SOAK, 'ip', 'addr', 'add', `${SERVER}/32`, 'dev', 'lo');
  });
  after(() => {
    if (!isRoot()) return;
    delete process.env.CRIU_TS_LOCK_BACKEND;
    if (client) sock.close(client.fd);
    if (server) killAndReap(server.pid, server.dir);
    deleteNamespaces([NS_SOAK]);
    becomeSubreaper(false);
  });

  it(`${CYCLES} cycles with nft then iptables locks, failing at every fault point in turn: no rule or element left`, function () {
    server = new StateKeeper('move-server', [SERVER, String(PORT), '1'], ['nsenter', `--net=${nsFile(NS_SOAK)}`]);
    client = inNetworkNamespace(nsFile(NS_SOAK), () => connectClient('client'));
    waitFor('move-server to accept its client', () => server!.lines().some((l) => l.startsWith('accepted')));
    const pid = server.pid;
    const started = Date.now();
    const holders = new Set<string>();
    const tally = { ok: 0, dumpFailed: 0, restoreFailed: 0 };
    // Each cycle moves a little more of both streams, so every restore has a live, moving connection to bring back.
    const step = Math.floor((STREAM_LEN * 0.9) / CYCLES);
    for (let cycle = 0; cycle < CYCLES; cycle++) {
      expect(Date.now() - started, `cycle ${cycle} reached in time`).to.be.below(480_000);
      process.env.CRIU_TS_LOCK_BACKEND = cycle < CYCLES / 2 ? 'nft' : 'iptables';
      pumpTo([client], step * (cycle + 1), 10_000, `cycle ${cycle}`);
      const kind = cycle % 4; // 0, 2: clean; 1: dump fails; 3: restore fails once, then succeeds
      const options: Partial<DumpOptions> = { tcpEstablished: true };
      if (kind === 1) {
        const point = DUMP_FAULT_POINTS[(cycle >> 2) % DUMP_FAULT_POINTS.length]!;
        expect(() => dumpAndWait(pid, server!.images, { ...options, faultAt: point }), `cycle ${cycle}: dump fault ${point}`).to.throw(/fault injected/);
        expect(procState(pid), `cycle ${cycle}: the server runs on after the failed dump`).to.match(/[SR]/);
        tally.dumpFailed++;
        continue;
      }
      dumpAndWait(pid, server.images, options);
      const holder = dumpRunId(server.images);
      holders.add(holder);
      // The lock is where the connection is, in the chosen backend (else the leftover check below would prove nothing).
      expect(inNetworkNamespace(nsFile(NS_SOAK), locksHere).filter((l) => l.includes(holder)), `cycle ${cycle}: locked while dumped`)
        .to.deep.equal([`${process.env.CRIU_TS_LOCK_BACKEND} ${holder} ${SERVER}:${PORT}<-${CLIENT_OF_SOAK}:${client.recvSeed}`]);
      const restore = (faultAt?: string) => restoreSync({ imagesDir: server!.images, detached: true, tcpEstablished: true, netns: nsFile(NS_SOAK), ...(faultAt ? { faultAt } : {}) });
      if (kind === 3) {
        const point = RESTORE_FAULT_POINTS[(cycle >> 2) % RESTORE_FAULT_POINTS.length]!;
        expect(() => restore(point), `cycle ${cycle}: restore fault ${point}`).to.throw(/fault injected/);
        waitFor(`cycle ${cycle}: pid ${pid} free again`, () => procState(pid) === undefined, 5000);
        tally.restoreFailed++;
      }
      expect(restore().pid, `cycle ${cycle}: restored`).to.equal(pid);
      tally.ok++;
    }
    delete process.env.CRIU_TS_LOCK_BACKEND;
    const seconds = (Date.now() - started) / 1000;
    console.log(`      ${CYCLES} cycles in ${seconds.toFixed(1)} s: ${tally.ok} restored (${tally.restoreFailed} after a failed restore), ${tally.dumpFailed} failed dumps`);

    expect(leftoversIn(NS_SOAK), 'nft elements or iptables rules of criu-ts left in the namespace').to.deep.equal([]);
    expect(listNetworkLocks().filter((l) => l.holder !== undefined && holders.has(l.holder)), "these dumps' locks in the test namespace").to.deep.equal([]);
    // The connection went through all of it.
    pumpTo([client], STREAM_LEN, 60_000, 'to the end');
    serverVerdict(server, [client]);
  });
});

// Network locks that dumps leave for their restore (see dump.ts, stage network-lock), seen and
// removed from outside: a dump whose images will never be restored, or a dumper killed
// mid-dump, leaves its connections locked (soccr's nft set or iptables rules, `holder=<run id>`).
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ImageReader } from '@criu-ts/images';
import { cleanupNetworkLocks, discard, listLocksSync, pause, requeueConnection, save, unlockHeldSync, wireKey, type ConnectionKey, type ListedLock } from '@criu-ts/soccr';
import { close as closeFd, sock, type Fd } from '@criu-ts/sys';
import { inNetworkNamespace } from './net-namespace.js';
import { withSocketsOf } from './proc/task-sockets.js';

export type { ConnectionKey, ListedLock };

/** Every lock in this network namespace (criu-ts's dumps' and soccr users'), from every usable backend. */
export function listNetworkLocks(): ListedLock[] {
  const out: ListedLock[] = [];
  for (const backend of ['nft', 'iptables'] as const) {
    try {
      out.push(...listLocksSync(backend));
    } catch {
      /* backend not usable here */
    }
  }
  return out;
}

/** The run id a dump wrote in its inventory (the holder of its locks). */
export function dumpRunId(imagesDir: string): string {
  const reader = ImageReader.open(join(imagesDir, 'inventory.img'));
  try {
    const [entry] = [...reader.entries()];
    const id = (entry?.message as { dump_criu_run_id?: string } | undefined)?.dump_criu_run_id;
    if (!id) throw new Error(`${join(imagesDir, 'inventory.img')} names no dump run (dump_criu_run_id)`);
    return id;
  } finally {
    reader.close();
  }
}

/**
 * Removes locks: those of soccr users that are gone (always), those held for the images in
 * `imagesDir` (their connections then meet RST from this host: restore those images no more),
 * or every lock (`all`). Returns the connections unlocked.
 */
export async function releaseNetworkLocks(options: { imagesDir?: string; all?: boolean } = {}): Promise<ConnectionKey[]> {
  const holder = options.imagesDir !== undefined ? dumpRunId(options.imagesDir) : undefined;
  return cleanupNetworkLocks({ ...(options.all ? { all: true } : {}), ...(holder ? { holder } : {}) });
}

const SOL_TCP = 6;
const TCP_REPAIR = 19;

/**
 * A process whose dumper died mid-dump runs on (it cures itself), but the dump had put its TCP
 * connections in repair mode and locked them, and nothing will undo that. This does: every TCP
 * socket of `pid` still in repair mode (getsockopt TCP_REPAIR reads it) has its connection
 * unlocked, then leaves repair mode (its window probe makes the peer answer with its window,
 * which the dump had closed). SO_REUSEADDR, which repair mode forced on, is left off: its value
 * before the dump died with the dumper. Returns the connections released.
 */
export function releaseConnectionsOf(pid: number): ConnectionKey[] {
  // The locks are in the process's network namespace (the dump made them there, net-namespace.ts).
  const nsPath = `/proc/${pid}/ns/net`;
  return existsSync(nsPath) ? inNetworkNamespace(nsPath, () => releaseConnectionsHere(pid)) : releaseConnectionsHere(pid);
}

function releaseConnectionsHere(pid: number): ConnectionKey[] {
  const repaired: Array<{ fd: Fd; key: ConnectionKey }> = [];
  try {
    withSocketsOf(pid, (fd) => {
      const kind = { domain: sock.getsockoptInt(fd, 1, 39 /* SO_DOMAIN */), protocol: sock.getsockoptInt(fd, 1, 38 /* SO_PROTOCOL */) };
      if ((kind.domain !== sock.AF_INET && kind.domain !== sock.AF_INET6) || kind.protocol !== 6 || sock.getsockoptInt(fd, SOL_TCP, TCP_REPAIR) !== 1) return false;
      repaired.push({ fd, key: wireKey({ local: sock.getsockname(fd), remote: sock.getpeername(fd) }) });
      return true;
    });
    const keys = repaired.map((r) => r.key);
    if (keys.length > 0) unlockHeldSync(keys);
    for (const r of repaired) {
      sock.setTcpRepairQueue(r.fd, sock.TCP_NO_QUEUE);
      sock.setTcpRepair(r.fd, 0);
    }
    return keys;
  } finally {
    for (const r of repaired) closeFd(r.fd);
  }
}

/**
 * What a dump killed outright leaves in the network, released (run by native/build/dump-guard,
 * see dump/network-guard.ts): the connections of `pids` out of repair mode and unlocked
 * (releaseConnectionsOf), then whatever lock the dump with run id `runId` still holds (locked
 * before its sockets went into repair mode). Nothing when `imagesDir` holds a complete dump of
 * that run: its locks wait for the restore. Best effort: a process gone, or a lock tool that
 * fails, does not stop the rest.
 */
export function releaseDeadDump(imagesDir: string, runId: string, pids: readonly number[], queued: ReadonlyArray<{ listener: number; connection: number }> = []): ConnectionKey[] {
  if (existsSync(join(imagesDir, 'inventory.img'))) {
    try {
      if (dumpRunId(imagesDir) === runId) return [];
    } catch { /* unreadable: not a complete dump of this run */ }
  }
  // Connections the dump took from accept queues, back in their queue (in order) while still
  // locked: saved (they may not have been, and this is another process), dropped without a
  // packet, queued again.
  for (const q of queued) {
    try {
      pause(q.connection);
      const saved = save(q.connection);
      discard(q.connection);
      requeueConnection(q.listener, saved);
    } catch { /* the listener is gone with its task: nothing to put back */ }
  }
  const released: ConnectionKey[] = [];
  for (const pid of pids) {
    try {
      released.push(...releaseConnectionsOf(pid));
    } catch { /* gone, or its sockets gone with it */ }
  }
  const nsOf = pids.map((pid) => `/proc/${pid}/ns/net`).find((p) => existsSync(p));
  const unlockHeld = (): ConnectionKey[] => {
    const held = listLocksSync().filter((l) => l.holder === runId).map((l) => l.key);
    if (held.length > 0) unlockHeldSync(held);
    return held;
  };
  try {
    released.push(...(nsOf ? inNetworkNamespace(nsOf, unlockHeld) : unlockHeld()));
  } catch { /* the lock tools failed: criu-ts cleanup -D can still do it */ }
  return released;
}

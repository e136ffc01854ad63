/**
 * The network lock for callers that must not yield to the event loop (criu-ts's dump and
 * restore drive ptraced tasks from one thread, synchronously): the same table, sets and rules as
 * NetworkLock (network-lock.ts), changed with one `nft -f -` (or iptables) run per call.
 *
 * A lock taken here is *held for images*, not owned by a process: a dump that kills its tasks
 * leaves its connections locked until a restore from those images lifts the lock, possibly from
 * another process much later (as CRIU does). So the nft element carries no timeout and the
 * comment `holder=<id>` (criu-ts uses the dump's run id) instead of `pid=<owner>`, and
 * `cleanupNetworkLocks()` leaves such locks alone unless asked for them (`all`, or `holder`).
 *
 *   lockHeldSync(conns, { holder })   before the state of the connections is read
 *   unlockHeldSync(conns)             once their new sockets are in place, or the old ones
 *                                     are back in service
 *   listLocksSync()                   what is locked now (by anyone)
 *
 * Costs a process start per call (~5-15 ms), which a dump or restore pays once.
 */
import { SoccrError } from './errors.js';
import {
  lockFamily, iptablesSpec, keyText, LOCK_TABLE, nftTableScript, parseIptablesLocks, parseNftLocks,
  type ConnectionKey, type ListedLock, type LockBackend,
} from './network-lock.js';

// child_process on first use, not at import: loading it (with the net and dgram modules it pulls
// in) costs the criu-ts command ~4 ms of start-up, and a plain dump never spawns anything.
const childProcess = () => process.getBuiltinModule('node:child_process');

function runsSync(cmd: string, args: string[]): boolean {
  try {
    childProcess().execFileSync(cmd, args, { stdio: 'ignore', timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

function runSync(cmd: string, args: string[], input?: string): string {
  try {
    return childProcess().execFileSync(cmd, args, { encoding: 'utf8', timeout: 10_000, maxBuffer: 64 << 20, ...(input !== undefined ? { input } : {}), stdio: ['pipe', 'pipe', 'pipe'] });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new SoccrError('LOCK', `${cmd} failed: ${(err.stderr || err.message).trim()}`, { command: cmd, args, ...(input !== undefined ? { input } : {}) }, { cause: e });
  }
}

let detected: LockBackend | undefined;

/**
 * nft if `nft list tables` works, else iptables if `iptables -L` works (remembered per process).
 * CRIU_TS_LOCK_BACKEND=nft|iptables forces one (for tests of both on one machine).
 */
export function detectLockBackendSync(): LockBackend {
  const forced = process.env.CRIU_TS_LOCK_BACKEND;
  if (forced === 'nft' || forced === 'iptables') return forced;
  if (detected) return detected;
  if (runsSync('nft', ['list', 'tables'])) return (detected = 'nft');
  if (runsSync('iptables', ['-w', '-n', '-L', 'INPUT'])) return (detected = 'iptables');
  throw new SoccrError('LOCK', 'neither nft nor iptables is usable (install nftables or iptables; root needed)', {});
}

export interface HeldLockOptions {
  /** Who the lock is held for (letters, digits, '-', '_', '.'); written in the rule's comment. */
  holder: string;
  backend?: LockBackend | 'auto';
}

function backendOf(b: LockBackend | 'auto' | undefined): LockBackend {
  return !b || b === 'auto' ? detectLockBackendSync() : b;
}

/** Drops the peers' packets of every connection, until unlockHeldSync. Idempotent. */
export function lockHeldSync(conns: readonly ConnectionKey[], opts: HeldLockOptions): LockBackend {
  if (!/^[\w.-]{1,100}$/.test(opts.holder)) throw new SoccrError('LOCK', `lock holder ${JSON.stringify(opts.holder)} is not a plain word`, { holder: opts.holder });
  const backend = backendOf(opts.backend);
  if (conns.length === 0) return backend;
  if (backend === 'nft') {
    const lines = [nftTableScript()];
    for (const c of conns) {
      const f = lockFamily(c);
      const k = keyText(c);
      // A released marker (from an earlier unlock of the same 4-tuple) would win over the lock: remove it.
      lines.push(`add element inet ${LOCK_TABLE} released${f} { ${k} }`, `delete element inet ${LOCK_TABLE} released${f} { ${k} }`);
      lines.push(`add element inet ${LOCK_TABLE} locked${f} { ${k} comment "holder=${opts.holder}" }`);
    }
    // One file: one transaction, all or nothing.
    runSync('nft', ['-f', '-'], lines.join('\n') + '\n');
    return backend;
  }
  for (const c of conns) {
    const spec = iptablesSpec(c, `holder=${opts.holder}`);
    const tool = lockFamily(c) === 4 ? 'iptables' : 'ip6tables';
    if (!runsSync(tool, ['-w', '-C', 'INPUT', ...spec])) runSync(tool, ['-w', '-I', 'INPUT', ...spec]);
  }
  return backend;
}

/** Lets the peers' packets through again, whoever locked them. Idempotent. */
export function unlockHeldSync(conns: readonly ConnectionKey[], opts: { backend?: LockBackend | 'auto' } = {}): void {
  if (conns.length === 0) return;
  const backend = backendOf(opts.backend);
  if (backend === 'nft') {
    if (!runsSync('nft', ['list', 'table', 'inet', LOCK_TABLE])) return; // no table: nothing locked
    const lines: string[] = [];
    for (const c of conns) {
      const f = lockFamily(c);
      const k = keyText(c);
      // "add" then "delete": never fails whether the element is there or not.
      lines.push(`add element inet ${LOCK_TABLE} locked${f} { ${k} }`, `delete element inet ${LOCK_TABLE} locked${f} { ${k} }`);
    }
    runSync('nft', ['-f', '-'], lines.join('\n') + '\n');
    return;
  }
  const want = new Set(conns.map((c) => `${lockFamily(c)}|${keyText(c)}`));
  for (const l of listLocksSync('iptables')) {
    if (want.has(`${l.key.local.family}|${keyText(l.key)}`) && l.rule) runSync(l.rule.tool, ['-w', '-D', 'INPUT', ...l.rule.spec]);
  }
}

/** Connections locked now in this network namespace (by anyone), with their owner or holder. */
export function listLocksSync(backend?: LockBackend): ListedLock[] {
  const b = backend ?? detectLockBackendSync();
  if (b === 'nft') {
    let json: string;
    try {
      json = childProcess().execFileSync('nft', ['-j', 'list', 'table', 'inet', LOCK_TABLE], { encoding: 'utf8', timeout: 5000, maxBuffer: 64 << 20, stdio: ['ignore', 'pipe', 'ignore'] });
    } catch {
      return [];
    }
    return parseNftLocks(json);
  }
  const texts: Array<[string, 4 | 6]> = [];
  for (const [tool, f] of [['iptables-save', 4], ['ip6tables-save', 6]] as const) {
    try {
      texts.push([childProcess().execFileSync(tool, ['-t', 'filter'], { encoding: 'utf8', timeout: 5000, stdio: ['ignore', 'pipe', 'ignore'] }), f]);
    } catch {
      continue;
    }
  }
  return parseIptablesLocks(texts);
}

/** The key under which a connection's packets arrive: an IPv4-mapped IPv6 connection talks IPv4 on the wire. */
export function wireKey(c: ConnectionKey): ConnectionKey {
  const v4 = (a: ConnectionKey['local']) => {
    const m = a.family === 6 ? /^::ffff:(\d+\.\d+\.\d+\.\d+)$/i.exec(a.address) : null;
    return m ? { family: 4 as const, address: m[1]!, port: a.port } : a;
  };
  const local = v4(c.local);
  const remote = v4(c.remote);
  return local.family === remote.family ? { local, remote } : c;
}

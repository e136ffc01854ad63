/**
 * The network lock: while a connection has no owner, the peer's packets for
 * it must not reach the TCP stack - with no socket for the 4-tuple the
 * kernel answers with RST and the peer drops the connection.
 *
 * Backends, chosen in this order: nftables (the `nft` tool) or iptables.
 *
 * nftables layout (one table per network namespace, shared by every user):
 *
 *   table inet criu_ts_soccr
 *     set locked4/locked6    {saddr . sport . daddr . dport} of locked
 *                            connections, seen from the peer (flags timeout)
 *     set released4/6        same keys, recently unlocked (flags timeout)
 *     chain input (hook input, priority raw = -300)
 *       meta mark 0xc114 accept            # our own crafted segments
 *       ... @released4 accept
 *       ... @locked4 drop
 *       (the same two for IPv6)
 *
 * Why two sets: removing anything from an nftables (or iptables) ruleset
 * costs a kernel commit that waits ~10-15 ms here (measured: `nft delete
 * element` 12-15 ms, `nft add element` 2-3 ms including process start,
 * `iptables -D` 12 ms). Unlock is on the critical path of a handoff, so it
 * only *adds* the key to `released*` (which wins over `locked*`); the
 * locked element is deleted afterwards, off the critical path, and the
 * released element expires by itself. Lock, which happens before the old
 * owner lets go, removes a leftover released element first.
 *
 * Commands go to one long-lived `nft -e -i` process (interactive mode reads
 * stdin line by line; with --echo it prints "# new generation N" once a
 * command is committed), so a lock or unlock costs no process start.
 *
 * Leftovers: every locked element carries `comment "pid=<owner>"` and a
 * timeout (default 120 s), so a killed owner's locks go away by themselves;
 * `cleanupNetworkLocks()` (and bin/soccr-cleanup.mjs) removes those of dead
 * owners at once, or all of them.
 *
 * iptables backend: one rule per connection and direction in INPUT
 * (`-m mark ! --mark 0xc114 -m comment --comment criu-ts-soccr:pid=N -j
 * DROP`), inserted after an `iptables -C` check (idempotent) and deleted on
 * unlock; `ip6tables` for IPv6.
 */
import type { ChildProcessWithoutNullStreams } from 'node:child_process';
import { promisify } from 'node:util';
import { randomInt } from 'node:crypto';
import { SoccrError } from './errors.js';
import type { InetAddress } from './tcp-state.js';
import { LOCK_BYPASS_MARK } from './raw-segment.js';

// child_process on first use, not at import: loading it (with the net and dgram modules it pulls
// in) costs the criu-ts command ~4 ms of start-up, and a plain dump never spawns anything.
const childProcess = () => process.getBuiltinModule('node:child_process');

/** execFile as a promise of its text output (promisify uses execFile's own custom form: stdout and stderr). */
function execFileP(file: string, args: readonly string[], options: { timeout: number; maxBuffer?: number }): Promise<{ stdout: string; stderr: string }> {
  return promisify(childProcess().execFile)(file, args, { ...options, encoding: 'utf8' });
}
const NFT_TIMEOUT_MS = 10_000;

export const LOCK_TABLE = 'criu_ts_soccr';
const COMMENT_PREFIX = 'criu-ts-soccr';

/** A connection as seen locally: our address and the peer's. */
export interface ConnectionKey {
  local: InetAddress;
  remote: InetAddress;
}

export type LockBackend = 'nft' | 'iptables';

export interface NetworkLockOptions {
  /** Which tool to use; default: nft when it runs, else iptables. */
  backend?: LockBackend | 'auto';
  /** Seconds after which a lock lapses on its own if never unlocked (nft only). Default 120. */
  lockTimeoutSeconds?: number;
  /** Seconds a released marker stays (nft only). Default 30. */
  releasedTimeoutSeconds?: number;
}

/** An nft set key for the connection (internal to soccr's lock backends). */
export function keyText(c: ConnectionKey): string {
  // Seen from the peer: its packets come from remote and go to local.
  return `${c.remote.address} . ${c.remote.port} . ${c.local.address} . ${c.local.port}`;
}
function keyId(c: ConnectionKey): string {
  return `${c.local.family}|${keyText(c)}`;
}
export function lockFamily(c: ConnectionKey): 4 | 6 {
  if (c.local.family !== c.remote.family) {
    throw new SoccrError('LOCK', 'connection has local and remote addresses of different families', { ...c });
  }
  return c.local.family;
}

async function runs(cmd: string, args: string[]): Promise<boolean> {
  try {
    await execFileP(cmd, args, { timeout: 5000 });
    return true;
  } catch {
    return false;
  }
}

/** Picks the backend: nft if `nft list tables` works, else iptables if `iptables -w -L -n` works. */
export async function detectLockBackend(): Promise<LockBackend> {
  if (await runs('nft', ['list', 'tables'])) return 'nft';
  if (await runs('iptables', ['-w', '-n', '-L', 'INPUT'])) return 'iptables';
  throw new SoccrError('LOCK', 'neither nft nor iptables is usable (install nftables or iptables; root needed)', {});
}

/** One `nft -e -i` child: commands in, "# new generation" or "Error:" out. */
class NftSession {
  private readonly child: ChildProcessWithoutNullStreams;
  private buf = '';
  private readonly waiting: { resolve: () => void; reject: (e: Error) => void; cmd: string }[] = [];
  dead: Error | undefined;

  constructor() {
    this.child = childProcess().spawn('nft', ['-e', '-i'], { stdio: ['pipe', 'pipe', 'pipe'] });
    this.child.stdout.setEncoding('utf8');
    this.child.stderr.setEncoding('utf8');
    this.child.stdout.on('data', (d: string) => this.onData(d));
    this.child.stderr.on('data', (d: string) => this.onData(d));
    this.child.on('error', (e) => this.fail(e));
    this.child.on('exit', (code, sig) => this.fail(new Error(`nft exited (code ${code}, signal ${sig})`)));
    this.setRef(false);
  }

  /** An idle helper must not keep its owner process alive; a busy one must (its answer is awaited). */
  private setRef(on: boolean): void {
    const m = on ? 'ref' : 'unref';
    this.child[m]();
    for (const s of [this.child.stdout, this.child.stderr, this.child.stdin]) (s as unknown as Record<string, (() => void) | undefined>)[m]?.call(s);
  }

  private settleOne(err?: Error): void {
    const w = this.waiting.shift();
    if (this.waiting.length === 0) this.setRef(false);
    if (!w) return;
    if (err) w.reject(new SoccrError('LOCK', `nft refused: ${err.message}`, { command: w.cmd, output: err.message }));
    else w.resolve();
  }

  private onData(d: string): void {
    this.buf += d;
    let nl: number;
    while ((nl = this.buf.indexOf('\n')) >= 0) {
      const line = this.buf.slice(0, nl);
      this.buf = this.buf.slice(nl + 1);
      if (line.startsWith('# new generation')) this.settleOne();
      else if (line.startsWith('Error:')) this.settleOne(new Error(line));
    }
  }

  private fail(e: Error): void {
    this.dead ??= e;
    this.setRef(false);
    for (const w of this.waiting.splice(0)) w.reject(new SoccrError('LOCK', `nft helper died: ${e.message}`, { command: w.cmd }, { cause: e }));
  }

  // Unique across processes sharing the table (a serial another process
  // added less than 5 s ago would make our add a no-op, hence no marker).
  private serial = randomInt(0, 2 ** 32);

  /**
   * Runs one command line (may hold several `;`-separated commands: one
   * transaction). nft only reports a commit that changed something, and
   * adding an element that exists changes nothing, so every line also adds
   * a fresh short-lived element to the `serial` set: each line then ends in
   * exactly one "# new generation" (or an "Error:").
   */
  run(cmd: string): Promise<void> {
    this.serial = (this.serial + 1) >>> 0;
    cmd = `${cmd}; add element inet ${LOCK_TABLE} serial { ${this.serial} timeout 5s }`;
    if (this.dead) return Promise.reject(new SoccrError('LOCK', `nft helper is gone: ${this.dead.message}`, { command: cmd }));
    return new Promise<void>((resolve, reject) => {
      // Bounded: a helper that never answers must not hang a handoff.
      const timer = setTimeout(() => {
        const i = this.waiting.findIndex((w) => w.cmd === cmd);
        if (i >= 0) this.waiting.splice(i, 1);
        if (this.waiting.length === 0) this.setRef(false);
        // Answers may now be out of step with commands: retire this helper.
        this.fail(new Error(`no answer within ${NFT_TIMEOUT_MS} ms`));
        this.close();
        reject(new SoccrError('LOCK', `nft gave no answer within ${NFT_TIMEOUT_MS} ms`, { command: cmd }));
      }, NFT_TIMEOUT_MS);
      timer.unref();
      this.waiting.push({
        resolve: () => {
          clearTimeout(timer);
          resolve();
        },
        reject: (e) => {
          clearTimeout(timer);
          reject(e);
        },
        cmd,
      });
      if (this.waiting.length === 1) this.setRef(true);
      this.child.stdin.write(cmd.replace(/\n/g, ' ') + '\n');
    });
  }

  close(): void {
    this.child.stdin.end();
    this.child.kill();
  }
}

/** A handle on the lock table of this network namespace. */
export class NetworkLock {
  private nft: NftSession | undefined;
  private pending: Promise<unknown>[] = [];
  private readonly lockTimeout: number;
  private readonly releasedTimeout: number;

  private constructor(readonly backend: LockBackend, opts: NetworkLockOptions) {
    this.lockTimeout = opts.lockTimeoutSeconds ?? 120;
    this.releasedTimeout = opts.releasedTimeoutSeconds ?? 30;
  }

  /** Prepares the backend (creates the nft table if needed; idempotent). */
  static async open(opts: NetworkLockOptions = {}): Promise<NetworkLock> {
    const backend = !opts.backend || opts.backend === 'auto' ? await detectLockBackend() : opts.backend;
    const l = new NetworkLock(backend, opts);
    if (backend === 'nft') await l.session();
    return l;
  }

  /** The nft helper, (re)started with the table in place if it is not running. */
  private async session(): Promise<NftSession> {
    if (!this.nft || this.nft.dead) {
      this.nft?.close();
      this.nft = new NftSession();
      await this.nft.run(nftTableScript());
    }
    return this.nft;
  }

  /** Drops the peer's packets of every given connection. Idempotent. */
  async lock(conns: readonly ConnectionKey[]): Promise<void> {
    if (conns.length === 0) return;
    if (this.backend === 'nft') {
      const cmds: string[] = [];
      for (const c of conns) {
        const f = lockFamily(c);
        const k = keyText(c);
        // "add" then "delete" in one transaction: removes a released marker if there is one, never fails if not.
        cmds.push(`add element inet ${LOCK_TABLE} released${f} { ${k} }`, `delete element inet ${LOCK_TABLE} released${f} { ${k} }`);
        cmds.push(`add element inet ${LOCK_TABLE} locked${f} { ${k} timeout ${this.lockTimeout}s comment "pid=${process.pid}" }`);
      }
      await (await this.session()).run(cmds.join('; '));
      return;
    }
    for (const c of conns) {
      const spec = iptablesSpec(c, process.pid);
      const tool = lockFamily(c) === 4 ? 'iptables' : 'ip6tables';
      if (!(await runs(tool, ['-w', '-C', 'INPUT', ...spec]))) await iptables(tool, ['-w', '-I', 'INPUT', ...spec]);
    }
  }

  /**
   * Lets the peer's packets through again; effective when the promise
   * resolves. (nft: the locked elements are removed a moment later;
   * `settle()` waits for that.)
   */
  async unlock(conns: readonly ConnectionKey[]): Promise<void> {
    if (conns.length === 0) return;
    if (this.backend === 'nft') {
      const add = conns.map((c) => `add element inet ${LOCK_TABLE} released${lockFamily(c)} { ${keyText(c)} timeout ${this.releasedTimeout}s }`);
      const nft = await this.session();
      await nft.run(add.join('; '));
      const del = conns.flatMap((c) => {
        const f = lockFamily(c);
        const k = keyText(c);
        return [`add element inet ${LOCK_TABLE} locked${f} { ${k} }`, `delete element inet ${LOCK_TABLE} locked${f} { ${k} }`];
      });
      const p = nft.run(del.join('; '));
      p.catch(() => {
        /* reported by settle() */
      });
      this.pending.push(p);
      return;
    }
    // The rule may carry another owner's pid (handoffs lock in one process and
    // unlock in the next): find rules by connection, whoever made them.
    const want = new Set(conns.map(keyId));
    for (const l of await listLocks('iptables')) {
      if (want.has(keyId(l.key)) && l.rule) await iptables(l.rule.tool, ['-w', '-D', 'INPUT', ...l.rule.spec]);
    }
  }

  /** Waits until deferred removals are done; throws the first that failed. */
  async settle(): Promise<void> {
    const p = this.pending.splice(0);
    await Promise.all(p);
  }

  /** Connections currently locked in this namespace (by anyone). */
  async list(): Promise<(ConnectionKey & { owner?: number })[]> {
    return (await listLocks(this.backend)).map(({ key, owner }) => ({ ...key, ...(owner !== undefined ? { owner } : {}) }));
  }

  /** settle(), then stop the helper process. Locks still held stay in place. */
  async close(): Promise<void> {
    try {
      await this.settle();
    } finally {
      this.nft?.close();
      this.nft = undefined;
    }
  }
}

/** The commands that make the lock table, its sets and its chain (idempotent; internal to soccr's lock backends). */
export function nftTableScript(): string {
  const t = `inet ${LOCK_TABLE}`;
  const lines = [`add table ${t}`, `add set ${t} serial { type mark; flags timeout; }`];
  for (const f of [4, 6] as const) {
    const a = f === 4 ? 'ipv4_addr' : 'ipv6_addr';
    const type = `${a} . inet_service . ${a} . inet_service`;
    lines.push(`add set ${t} locked${f} { type ${type}; flags timeout; }`);
    lines.push(`add set ${t} released${f} { type ${type}; flags timeout; }`);
  }
  lines.push(`add chain ${t} input { type filter hook input priority -300; policy accept; }`);
  // Rebuilding the chain's rules is idempotent; the sets (the locks) are untouched.
  lines.push(`flush chain ${t} input`);
  lines.push(`add rule ${t} input meta mark 0x${LOCK_BYPASS_MARK.toString(16)} accept`);
  for (const f of [4, 6] as const) {
    const ip = f === 4 ? 'ip' : 'ip6';
    const k = `${ip} saddr . tcp sport . ${ip} daddr . tcp dport`;
    lines.push(`add rule ${t} input ${k} @released${f} accept`);
    lines.push(`add rule ${t} input ${k} @locked${f} drop`);
  }
  return lines.join('; ');
}

/** The iptables rule of one lock; `tag` is `pid=N` (a live owner) or `holder=ID` (held for a dump's images). */
export function iptablesSpec(c: ConnectionKey, tag: number | string): string[] {
  const bits = c.local.family === 4 ? 32 : 128;
  return [
    '-p', 'tcp',
    '-s', `${c.remote.address}/${bits}`, '--sport', String(c.remote.port),
    '-d', `${c.local.address}/${bits}`, '--dport', String(c.local.port),
    '-m', 'mark', '!', '--mark', `0x${LOCK_BYPASS_MARK.toString(16)}`,
    '-m', 'comment', '--comment', `${COMMENT_PREFIX}:${typeof tag === 'number' ? `pid=${tag}` : tag}`,
    '-j', 'DROP',
  ];
}

async function iptables(tool: string, args: string[]): Promise<void> {
  try {
    await execFileP(tool, args, { timeout: 10_000 });
  } catch (e) {
    const err = e as { stderr?: string; message: string };
    throw new SoccrError('LOCK', `${tool} failed: ${(err.stderr ?? err.message).trim()}`, { tool, args }, { cause: e });
  }
}

export interface ListedLock {
  key: ConnectionKey;
  owner?: number;
  /** Held for a dump's images rather than by a live process (see network-lock-sync.ts). */
  holder?: string;
  /** How to remove it. */
  backend: LockBackend;
  rule?: { tool: string; spec: string[] };
}

async function listLocks(backend: LockBackend): Promise<ListedLock[]> {
  if (backend === 'nft') {
    let json: string;
    try {
      json = (await execFileP('nft', ['-j', 'list', 'table', 'inet', LOCK_TABLE], { timeout: 5000, maxBuffer: 64 << 20 })).stdout;
    } catch {
      return []; // no table: nothing locked
    }
    return parseNftLocks(json);
  }
  const texts: Array<[string, 4 | 6]> = [];
  for (const [tool, f] of [['iptables-save', 4], ['ip6tables-save', 6]] as const) {
    try {
      texts.push([(await execFileP(tool, ['-t', 'filter'], { timeout: 5000 })).stdout, f]);
    } catch {
      continue;
    }
  }
  return parseIptablesLocks(texts);
}

/** The locks in `nft -j list table inet criu_ts_soccr` output. */
export function parseNftLocks(json: string): ListedLock[] {
  const out: ListedLock[] = [];
  const doc = JSON.parse(json) as { nftables: Record<string, any>[] };
  for (const item of doc.nftables) {
    const set = item['set'];
    if (!set || !/^locked[46]$/.test(set.name)) continue;
    const f: 4 | 6 = set.name.endsWith('4') ? 4 : 6;
    for (const e of set.elem ?? []) {
      const el = e.elem ?? { val: e };
      const concat = el.val?.concat as [string, number, string, number] | undefined;
      if (!concat) continue;
      const m = /pid=(\d+)/.exec(el.comment ?? '');
      const h = /holder=(\S+)/.exec(el.comment ?? '');
      out.push({
        key: {
          remote: { family: f, address: concat[0], port: concat[1] },
          local: { family: f, address: concat[2], port: concat[3] },
        },
        ...(m ? { owner: Number(m[1]) } : {}),
        ...(h ? { holder: h[1]! } : {}),
        backend: 'nft',
      });
    }
  }
  return out;
}

/** The locks in iptables-save / ip6tables-save output (each text with its family). */
export function parseIptablesLocks(texts: ReadonlyArray<readonly [string, 4 | 6]>): ListedLock[] {
  const out: ListedLock[] = [];
  const backend = 'iptables' as const;
  for (const [text, f] of texts) {
    for (const line of text.split('\n')) {
      if (!line.startsWith('-A INPUT') || !line.includes(COMMENT_PREFIX)) continue;
      const g = (re: RegExp) => re.exec(line)?.[1];
      const src = g(/-s (\S+?)(?:\/\d+)? /);
      const dst = g(/-d (\S+?)(?:\/\d+)? /);
      const sport = g(/--sport (\d+)/);
      const dport = g(/--dport (\d+)/);
      const pid = g(/pid=(\d+)/);
      const holder = g(/holder=([^\s"]+)/);
      if (!src || !dst || !sport || !dport) continue;
      const key: ConnectionKey = {
        remote: { family: f, address: src, port: Number(sport) },
        local: { family: f, address: dst, port: Number(dport) },
      };
      out.push({
        key,
        ...(pid ? { owner: Number(pid) } : {}),
        ...(holder ? { holder } : {}),
        backend,
        rule: { tool: f === 4 ? 'iptables' : 'ip6tables', spec: iptablesSpec(key, holder ? `holder=${holder}` : Number(pid ?? 0)) },
      });
    }
  }
  return out;
}

function alive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === 'EPERM';
  }
}

export interface CleanupOptions {
  /** Remove every lock, also those of live owners and those held for a dump's images (default: only dead owners'). */
  all?: boolean;
  /** Also remove the locks held for the images of this dump (criu-ts's inventory dump_criu_run_id). */
  holder?: string;
  /** Also delete the nft table itself when nothing is left locked. */
  dropTable?: boolean;
}

/**
 * Removes leftover locks of this network namespace: those whose owner
 * process is gone (or all with `all`), from whichever backends are usable.
 * Returns what it removed.
 */
export async function cleanupNetworkLocks(opts: CleanupOptions = {}): Promise<ConnectionKey[]> {
  const removed: ConnectionKey[] = [];
  for (const backend of ['nft', 'iptables'] as const) {
    const tool = backend === 'nft' ? 'nft' : 'iptables';
    if (!(await runs(tool, backend === 'nft' ? ['list', 'tables'] : ['-w', '-n', '-L', 'INPUT']))) continue;
    const locks = await listLocks(backend);
    // A lock held for a dump's images has no live owner by design: it waits for the restore.
    const victims = locks.filter((l) => opts.all || (l.holder !== undefined ? l.holder === opts.holder : l.owner === undefined || !alive(l.owner)));
    if (backend === 'nft') {
      if (victims.length) {
        const cmds = victims.map((v) => `delete element inet ${LOCK_TABLE} locked${v.key.local.family} { ${keyText(v.key)} }`);
        await execFileP('nft', [cmds.join('; ')], { timeout: 10_000 }).catch((e: Error) => {
          throw new SoccrError('LOCK', `nft cleanup failed: ${e.message}`, { commands: cmds }, { cause: e });
        });
      }
      if (opts.dropTable && victims.length === locks.length) {
        await execFileP('nft', ['delete', 'table', 'inet', LOCK_TABLE], { timeout: 10_000 }).catch(() => undefined);
      }
    } else {
      for (const v of victims) if (v.rule) await iptables(v.rule.tool, ['-w', '-D', 'INPUT', ...v.rule.spec]);
    }
    removed.push(...victims.map((v) => v.key));
  }
  return removed;
}

// The criu-ts command's V8 code cache (src/code-cache.ts): used when it fits, ignored and
// rewritten when it does not, never read from where someone else could have written it.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { chmodSync, chownSync, existsSync, lstatSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { Script } from 'node:vm';
import { StateKeeper } from '@criu-ts/core/testing';
import { cacheClass, cacheKey, decodeCacheFile, defaultCacheDir, encodeCacheFile } from '../src/code-cache.js';

const here = dirname(fileURLToPath(import.meta.url));
const DIST = resolve(here, '..', '..', 'dist');
const BIN = join(DIST, 'criu-ts.cjs');
const isRoot = () => process.getuid?.() === 0;

describe('cli: code cache of the criu-ts command', function () {
  this.timeout(60_000);
  let dir: string;
  let cache: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-code-cache-'));
    cache = join(dir, 'cache');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  /** Runs the bundled command with its cache in `cache`; returns status, stdout and the cache state it reported. */
  function criuTs(args: string[], env: Record<string, string> = {}) {
    const r = spawnSync(process.execPath, [BIN, ...args], {
      encoding: 'utf8',
      env: { ...process.env, CRIU_TS_CODE_CACHE: cache, CRIU_TS_CODE_CACHE_DEBUG: '1', ...env },
    });
    const state = /criu-ts: code cache (\w+)/.exec(r.stderr)?.[1];
    return { status: r.status, stdout: r.stdout, stderr: r.stderr, state };
  }
  const helpFile = () => join(cache, 'help.v8cache');

  it('header and CRC: a file decodes only with its own key and intact data', function () {
    const data = new Uint8Array(1000).map((_, i) => (i * 7) & 0xff);
    const key = cacheKey('0123abcd', 930_000, 1_700_000_000_123.4);
    const file = encodeCacheFile(key, data);
    expect(file.indexOf(0x0a, key.length) + 1, 'data 8-byte aligned').to.satisfy((n: number) => n % 8 === 0);
    expect(decodeCacheFile(file, key)).to.deep.equal(Buffer.from(data));
    expect(decodeCacheFile(file, cacheKey('0123abce', 930_000, 1_700_000_000_123)), 'other bundle').to.equal(undefined);
    expect(decodeCacheFile(file, cacheKey('0123abcd', 930_001, 1_700_000_000_123)), 'other size').to.equal(undefined);
    expect(decodeCacheFile(file, key.replace(process.version, 'v20.0.0')), 'other Node').to.equal(undefined);
    for (const at of [file.length - 1000, file.length - 500, file.length - 1]) {
      const flipped = Buffer.from(file);
      flipped[at]! ^= 0x10;
      expect(decodeCacheFile(flipped, key), `byte ${at} flipped`).to.equal(undefined);
    }
    expect(decodeCacheFile(file.subarray(0, file.length - 8), key), 'truncated').to.equal(undefined);
    expect(decodeCacheFile(Buffer.concat([file, Buffer.from([0])]), key), 'extended').to.equal(undefined);
  });

  it('V8 alone accepts the cache of another source of the same length (why the header names the bundle)', function () {
    // Checked on Node 20. (It accepts flipped bytes too, but deserializing those in the test
    // process could crash it: the CRC test above covers them.)
    const source = '(function () { return [1, 2, 3].map((x) => x * 2).join(); })';
    const script = new Script(source);
    (script.runInThisContext() as () => string)();
    const other = new Script(source.replace('x * 2', 'x + 2'), { cachedData: script.createCachedData() });
    if (other.cachedDataRejected) this.skip(); // stated reason: this V8 checks the source itself
    expect(other.cachedDataRejected).to.equal(false);
  });

  it('classes: the command word, help for any help request, other for odd words', function () {
    expect(cacheClass([])).to.equal('help');
    expect(cacheClass(['dump', '-t', '1'])).to.equal('dump');
    expect(cacheClass(['dump', '--help'])).to.equal('help');
    expect(cacheClass(['decode', '-h'])).to.equal('help');
    expect(cacheClass(['../x'])).to.equal('other');
    expect(defaultCacheDir({}, 0)).to.equal('/run/criu-ts/code-cache');
    expect(defaultCacheDir({ XDG_RUNTIME_DIR: '/run/user/1000' }, 1000)).to.equal('/run/user/1000/criu-ts/code-cache');
    expect(defaultCacheDir({}, 1000)).to.equal(undefined);
    expect(defaultCacheDir({ CRIU_TS_CODE_CACHE: 'off' }, 0)).to.equal(undefined);
    expect(defaultCacheDir({ CRIU_TS_CODE_CACHE: '/x' }, 1000)).to.equal('/x');
  });

  it('written after a successful run (0700 directory, 0600 file), used by the next, same output as without', function () {
    const off = criuTs(['--help'], { CRIU_TS_CODE_CACHE: 'off' });
    expect(off.state).to.equal('off');
    const first = criuTs(['--help']);
    expect(first.state).to.equal('missing');
    expect(statSync(cache).mode & 0o777).to.equal(0o700);
    expect(statSync(helpFile()).mode & 0o777).to.equal(0o600);
    const second = criuTs(['--help']);
    expect(second.state).to.equal('used');
    expect([first.status, second.status, first.stdout, second.stdout]).to.deep.equal([0, 0, off.stdout, off.stdout]);
    // Another command has its own cache.
    expect(criuTs(['decode', '-i', '/nonexistent']).state).to.equal('missing');
    expect(existsSync(join(cache, 'decode.v8cache')), 'not written by a failed run').to.equal(false);
  });

  it('a writer killed before its rename leaves a temporary file: the next write removes it, not one of a live writer', function () {
    mkdirSync(cache, { recursive: true, mode: 0o700 });
    // Above the kernel's largest pid (4194304): no process has it.
    const orphan = join(cache, 'dump.v8cache.99999999.tmp');
    const live = join(cache, `dump.v8cache.${process.pid}.tmp`);
    const other = join(cache, 'notes.99999999.tmp');
    for (const f of [orphan, live, other]) writeFileSync(f, 'partial', { mode: 0o600 });
    expect(criuTs(['--help']).state).to.equal('missing');
    expect(existsSync(helpFile()), 'the cache written').to.equal(true);
    expect([existsSync(orphan), existsSync(live), existsSync(other)], 'orphan, live writer, not a cache file').to.deep.equal([false, true, true]);
  });

  it('a corrupt, truncated or foreign-version cache is ignored, the command works, and the cache is rewritten', function () {
    criuTs(['--help']);
    const good = readFileSync(helpFile());
    const damaged = {
      'flipped byte': (() => {
        const b = Buffer.from(good);
        b[b.length >> 1]! ^= 0xff;
        return b;
      })(),
      truncated: good.subarray(0, good.length >> 1),
      'other Node version': Buffer.from(good.toString('latin1').replace(process.version, 'v20.0.1'), 'latin1'),
      garbage: Buffer.from('not a cache at all'),
      empty: Buffer.alloc(0),
    };
    for (const [what, bytes] of Object.entries(damaged)) {
      writeFileSync(helpFile(), bytes, { mode: 0o600 });
      const r = criuTs(['--help']);
      expect([r.status, r.state], what).to.deep.equal([0, 'stale']);
      expect(r.stdout, what).to.match(/^usage: criu-ts COMMAND/);
      expect(criuTs(['--help']).state, `${what}: rewritten`).to.equal('used');
    }
  });

  it('data that passes the CRC but not V8 (another script): rejected by V8, the command works, the cache is rewritten', function () {
    criuTs(['--help']);
    const good = readFileSync(helpFile());
    const header = good.subarray(0, good.indexOf(0x0a, good.indexOf(0x0a) + 1) + 1).toString('latin1');
    const key = header.slice(0, header.indexOf('\n') + 1);
    const script = new Script('(function () { return 42; })');
    writeFileSync(helpFile(), encodeCacheFile(key, script.createCachedData()), { mode: 0o600 });
    const r = criuTs(['--help']);
    expect([r.status, r.state]).to.deep.equal([0, 'rejected']);
    expect(criuTs(['--help']).state).to.equal('used');
  });

  it('not read from a symlink, a file others can write, or a directory others can write', function () {
    criuTs(['--help']);
    const good = readFileSync(helpFile());
    // A symlink to a good cache: not followed, then replaced by a file.
    const elsewhere = join(dir, 'elsewhere.v8cache');
    writeFileSync(elsewhere, good, { mode: 0o600 });
    rmSync(helpFile());
    symlinkSync(elsewhere, helpFile());
    expect(criuTs(['--help']).state).to.equal('untrusted');
    expect(lstatSync(helpFile()).isSymbolicLink(), 'replaced by a file').to.equal(false);
    expect(criuTs(['--help']).state).to.equal('used');
    // Group-writable file.
    chmodSync(helpFile(), 0o620);
    expect(criuTs(['--help']).state).to.equal('untrusted');
    expect(statSync(helpFile()).mode & 0o777, 'rewritten 0600').to.equal(0o600);
    // World-writable directory: neither read nor written.
    chmodSync(cache, 0o777);
    const before = readFileSync(helpFile());
    const r = criuTs(['--help']);
    expect([r.status, r.state]).to.deep.equal([0, 'untrusted']);
    expect(readFileSync(helpFile()).equals(before)).to.equal(true);
    chmodSync(cache, 0o700);
    if (isRoot()) {
      // Owned by another user (only root can make one here).
      chownSync(helpFile(), 65534, 65534);
      expect(criuTs(['--help']).state).to.equal('untrusted');
      expect(statSync(helpFile()).uid, 'replaced by one of ours').to.equal(0);
    }
  });

  it('a cache directory that cannot be created costs nothing but the cache', function () {
    writeFileSync(join(dir, 'file'), '');
    const r = criuTs(['--help'], { CRIU_TS_CODE_CACHE: join(dir, 'file', 'cache') });
    expect([r.status, r.state]).to.deep.equal([0, 'untrusted']);
    expect(r.stdout).to.match(/^usage: criu-ts COMMAND/);
  });

  it('a dump writes a cache the next dump uses: nothing a dump does (its minor GC sets a V8 flag) may leave the flags changed, which V8 stamps on the cache', function () {
    if (!isRoot()) this.skip(); // stated reason: dumping needs root; CI runs as root
    const keeper = new StateKeeper();
    try {
      const states: Array<string | undefined> = [];
      for (const round of [1, 2]) {
        const r = criuTs(['dump', '-t', String(keeper.pid), '-D', join(keeper.dir, `images-${round}`), '-R']);
        expect(r.status, r.stderr).to.equal(0);
        states.push(r.state);
      }
      expect(states).to.deep.equal(['missing', 'used']);
    } finally {
      keeper.cleanup();
    }
  });
});


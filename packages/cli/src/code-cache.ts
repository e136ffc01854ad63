// Loads the bundled criu-ts program (dist/criu-ts-bundle.cjs) through a V8 code cache.
//
// Why: Node 20 compiles every script from source at every start (its module compile cache came in
// Node 22), and the bundle is ~0.9 MB of JavaScript. vm.Script accepts the bytecode V8 produced in
// an earlier run (`cachedData`), so a command run again deserializes the functions it needs
// instead of parsing and compiling them. The cache is taken at the end of a successful run
// (script.createCachedData() then holds every function that run compiled, not just the top
// level), one per kind of command, because `criu-ts dump` and `criu-ts decode` run different code.
//
// What V8 checks on its own is not enough to trust a file: a release build verifies the V8
// version, the V8 flags and the source *length*, but neither a checksum of the data nor the
// source text (checked on Node 20.20: flipped bytes, a truncated cache and another source of the
// same length are all accepted). So each file carries a header: the bundle's content hash (from
// the build), its size and mtime, Node's version and arch, then a CRC-32 and the length of the
// data. Anything that does not match exactly, or fails the checks, is ignored and the command
// runs from source, then writes a fresh cache.
//
// A code cache is code: whoever can write it can run anything as the user of the next criu-ts
// (root, usually). Files are only read from, and written to, a directory owned by the effective
// user and writable by nobody else (/run/criu-ts/code-cache for root, the per-user runtime
// directory otherwise), not through symlinks, and only files owned by that user with no group or
// other write bit are read. Writes go to a new file then rename(2), so a reader never sees half
// a file.
//
// File layout (text header, then the raw V8 data):
//   criu-ts code cache 1 <bundle id> <bundle size> <bundle mtime ms> <node version> <arch>\n
//   crc32 <8 hex digits> length <decimal> <spaces: header padded to a multiple of 8 bytes>\n
//   <length bytes of V8 cached data>
import { closeSync, constants, existsSync, fstatSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, renameSync, rmSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';
import { dirname, join } from 'node:path';
import { pathToFileURL } from 'node:url';
import { Script } from 'node:vm';
import { crc32 } from 'node:zlib';

/** What the bundle exports (packages/cli/src/main.ts). */
export interface BundleExports {
  run(argv: string[]): Promise<number>;
}

export interface LoadOptions {
  /** The bundle: a function expression `(exports, require, module, __filename, __dirname, importMetaUrl) => ...`. */
  bundle: string;
  /** Content hash of the bundle, written by scripts/bundle-cli.mjs when it built both files. */
  bundleId: string;
  /** Which cache this run reads and may write (see cacheClass). */
  cacheClass: string;
  /** Where caches live; undefined: no cache (the bundle is compiled from source). */
  cacheDir: string | undefined;
}

/**
 * What became of the cache in a run: 'off' (no cache directory), 'missing', 'untrusted' (the
 * directory or file could be written by someone else, or is a symlink: not read; replaced only
 * when the directory is ours),
 * 'stale' (another bundle, Node or arch, or a failed CRC), 'rejected' (passed our checks, refused
 * by V8: other V8 flags), 'used'.
 */
export type CacheState = 'off' | 'missing' | 'untrusted' | 'stale' | 'rejected' | 'used';

export interface LoadedBundle {
  exports: BundleExports;
  cache: CacheState;
  /** Writes a fresh cache if this run had none that worked; call once the run succeeded. Never throws. */
  saveIfNeeded(): void;
}

/**
 * The cache directory for this process: CRIU_TS_CODE_CACHE if set ('off' or '' disables the
 * cache), else /run/criu-ts/code-cache for root, else $XDG_RUNTIME_DIR/criu-ts/code-cache (a
 * per-user tmpfs that systemd makes 0700), else none. /run rather than a path beside the bundle:
 * an installed package is often not writable, and a tmpfs starts empty at boot anyway.
 */
export function defaultCacheDir(env: NodeJS.ProcessEnv = process.env, euid: number = process.geteuid?.() ?? -1): string | undefined {
  const forced = env.CRIU_TS_CODE_CACHE;
  if (forced !== undefined) return forced === '' || forced === 'off' ? undefined : forced;
  if (euid === 0) return '/run/criu-ts/code-cache';
  if (env.XDG_RUNTIME_DIR) return join(env.XDG_RUNTIME_DIR, 'criu-ts', 'code-cache');
  return undefined;
}

/**
 * The cache a command line reads and writes: its command word, or 'help' when the line only asks
 * for help (which runs almost none of a command's code: a cache taken then would be kept, since it
 * works, and every later run of that command would compile the rest from source).
 */
export function cacheClass(argv: readonly string[]): string {
  const command = argv[0];
  if (command === undefined || argv.includes('-h') || argv.includes('--help')) return 'help';
  return /^[a-z][a-z0-9-]{0,31}$/.test(command) ? command : 'other';
}

const MAGIC = 'criu-ts code cache 1';

/** The first header line: everything the cached data depends on besides V8's own checks. */
export function cacheKey(bundleId: string, bundleSize: number, bundleMtimeMs: number): string {
  return `${MAGIC} ${bundleId} ${bundleSize} ${Math.trunc(bundleMtimeMs)} ${process.version} ${process.arch}\n`;
}

/** A whole cache file: header (padded so the data starts 8-byte aligned) and data. */
export function encodeCacheFile(key: string, data: Uint8Array): Buffer {
  let second = `crc32 ${crc32(data).toString(16).padStart(8, '0')} length ${data.length} `;
  const unpadded = Buffer.byteLength(key) + second.length + 1;
  second += ' '.repeat((8 - (unpadded % 8)) % 8) + '\n';
  return Buffer.concat([Buffer.from(key + second), data]);
}

/** The cached data in `file` if its header matches `key` and its data its CRC; else undefined. */
export function decodeCacheFile(file: Buffer, key: string): Buffer | undefined {
  const keyBytes = Buffer.from(key);
  if (file.length < keyBytes.length || !file.subarray(0, keyBytes.length).equals(keyBytes)) return undefined;
  const end = file.indexOf(0x0a, keyBytes.length);
  if (end < 0 || end - keyBytes.length > 64) return undefined;
  const m = /^crc32 ([0-9a-f]{8}) length (\d+) *$/.exec(file.toString('latin1', keyBytes.length, end));
  if (!m) return undefined;
  const data = file.subarray(end + 1);
  if (data.length !== Number(m[2]) || crc32(data) !== Number.parseInt(m[1]!, 16)) return undefined;
  return data;
}

/** A directory we may trust with code: a real directory (not a symlink), ours, writable only by us. */
function dirTrust(dir: string, euid: number): 'trusted' | 'missing' | 'untrusted' {
  try {
    const st = lstatSync(dir);
    return st.isDirectory() && st.uid === euid && (st.mode & 0o022) === 0 ? 'trusted' : 'untrusted';
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'untrusted';
  }
}

/** The file's bytes, 'missing', or 'untrusted' (see dirTrust; O_NOFOLLOW: a symlink fails with ELOOP). */
function readTrusted(path: string, euid: number): Buffer | 'missing' | 'untrusted' {
  const dir = dirTrust(dirname(path), euid);
  if (dir !== 'trusted') return dir;
  let fd: number;
  try {
    fd = openSync(path, constants.O_RDONLY | constants.O_NOFOLLOW);
  } catch (error) {
    return (error as NodeJS.ErrnoException).code === 'ENOENT' ? 'missing' : 'untrusted';
  }
  try {
    const st = fstatSync(fd);
    if (!st.isFile() || st.uid !== euid || (st.mode & 0o022) !== 0) return 'untrusted';
    return readFileSync(fd);
  } catch {
    return 'untrusted';
  } finally {
    closeSync(fd);
  }
}

function writeAtomically(path: string, bytes: Uint8Array, euid: number): void {
  const dir = dirname(path);
  mkdirSync(dir, { recursive: true, mode: 0o700 });
  if (dirTrust(dir, euid) !== 'trusted') return;
  // rename(2) replaces the name, never writes through it: a symlink planted there is replaced too.
  const tmp = `${path}.${process.pid}.tmp`;
  try {
    const fd = openSync(tmp, constants.O_WRONLY | constants.O_CREAT | constants.O_EXCL | constants.O_NOFOLLOW, 0o600);
    try {
      for (let done = 0; done < bytes.length; ) done += writeSync(fd, bytes, done, bytes.length - done);
    } finally {
      closeSync(fd);
    }
    renameSync(tmp, path);
  } catch (error) {
    rmSync(tmp, { force: true });
    throw error;
  }
  removeOrphanedTemps(dir);
}

/**
 * The temporary files of writers killed before their rename (a command killed as it exits): each
 * is named after its writer's pid, and goes once no process has that pid. /run is a tmpfs: they
 * would stay until the next boot, up to a megabyte each.
 */
function removeOrphanedTemps(dir: string): void {
  try {
    for (const name of readdirSync(dir)) {
      const writer = /^[a-z][a-z0-9-]*\.v8cache\.(\d+)\.tmp$/.exec(name)?.[1];
      if (writer !== undefined && !existsSync(`/proc/${writer}`)) rmSync(join(dir, name), { force: true });
    }
  } catch { /* the next writer tries again */ }
}

/**
 * Compiles and runs the bundle (with the cache when one fits) and returns its exports. Cache
 * problems of any kind only cost the compile time they would have saved; they never fail the
 * command.
 */
export function loadBundle(options: LoadOptions): LoadedBundle {
  const { bundle, bundleId, cacheClass: klass, cacheDir } = options;
  const euid = process.geteuid?.() ?? -1;
  const fd = openSync(bundle, 'r');
  let source: string;
  let key: string;
  try {
    const st = fstatSync(fd);
    key = cacheKey(bundleId, st.size, st.mtimeMs);
    source = readFileSync(fd, 'utf8');
  } finally {
    closeSync(fd);
  }
  // zlib.crc32 came in Node 20.15: without it, no cache rather than an unchecked one.
  const cacheFile = cacheDir === undefined || typeof crc32 !== 'function' ? undefined : join(cacheDir, `${klass}.v8cache`);
  let cachedData: Buffer | undefined;
  let state: CacheState = 'off';
  if (cacheFile !== undefined) {
    const file = readTrusted(cacheFile, euid);
    if (typeof file === 'string') state = file;
    else {
      cachedData = decodeCacheFile(file, key);
      state = cachedData ? 'used' : 'stale';
    }
  }
  const script = new Script(source, { filename: bundle, ...(cachedData ? { cachedData } : {}) });
  if (cachedData && script.cachedDataRejected) state = 'rejected';
  const wrapper = script.runInThisContext() as (
    exports: object, require: NodeRequire, module: { exports: object }, filename: string, dirname: string, importMetaUrl: string,
  ) => void;
  const module = { exports: {} };
  wrapper.call(module.exports, module.exports, createRequire(bundle), module, bundle, dirname(bundle), pathToFileURL(bundle).href);
  let saved = false;
  return {
    exports: module.exports as BundleExports,
    cache: state,
    saveIfNeeded() {
      // Also over an untrusted file: the directory is ours (writeAtomically checks), and rename(2)
      // replaces whatever the name was.
      if (saved || cacheFile === undefined || state === 'used') return;
      saved = true;
      try {
        writeAtomically(cacheFile, encodeCacheFile(key, script.createCachedData()), euid);
      } catch { /* read-only or full: the next run compiles from source again */ }
    },
  };
}

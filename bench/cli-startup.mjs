#!/usr/bin/env node
// Benchmark of the criu-ts command's start-up (not a test): prints a markdown table of medians,
// one column per command build, beside bare `node -e 0`. Needs root (the dump row ptraces) and
// `npm run build`.
//
//   node bench/cli-startup.mjs [--runs N] [--size MIB] [--cli LABEL=PATH]...
//
// Without --cli it measures packages/cli/dist/criu-ts.cjs; several --cli options compare builds
// (e.g. a copy of an older dist/ as "before"). Rows, each run N times (default 7):
//   - `node -e 0`, and the same without NODE_EXTRA_CA_CERTS when it is set: Node 20 reads and
//     parses that file (and its whole built-in root store) at every start, before any script;
//   - `criu-ts --help` (no work: the command's own loading), `criu-ts decode --help` (image
//     commands), `criu-ts check --help` (loads the checkpoint side, koffi included);
//   - `criu-ts dump -t PID -D DIR` of a fresh tests/bin/memhog of SIZE MiB (default 64), start-up
//     included, as bench/dump-restore.mjs times it.
// Every criu-ts row executes the bin as an installed command is run (the file itself, not
// `node FILE`: its first lines drop NODE_EXTRA_CA_CERTS before Node starts).
// Each build keeps its V8 code cache (criu-ts.cjs) in its own directory, /run/criu-ts/bench-<pid>/
// LABEL, removed at the end: builds sharing the default one would replace each other's caches.
// The runs of the different builds are interleaved (run 1 of every build, then run 2, ...) so
// that a change of load on the machine lands on all columns alike. Each command runs once,
// untimed, before the timed runs: the page cache holds the files and a code cache (if the build
// keeps one) exists, as for any command run more than once on a machine.
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readdirSync, readFileSync, rmSync } from 'node:fs';
import { cpus, loadavg, release, tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { asPid, prctl, sleepSync, wait4, WNOHANG } from '@criu-ts/sys';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const hogBin = join(root, 'tests', 'bin', 'memhog');
const values = (name) => process.argv.flatMap((a, i) => (a === name ? [process.argv[i + 1]] : []));
const RUNS = Number(values('--runs')[0] ?? '7');
const SIZE = Number(values('--size')[0] ?? '64');
const clis = (values('--cli').length ? values('--cli') : [`criu-ts=${join(root, 'packages', 'cli', 'dist', 'criu-ts.cjs')}`]).map((spec) => {
  const eq = spec.indexOf('=');
  return eq < 0 ? { label: spec, path: resolve(spec) } : { label: spec.slice(0, eq), path: resolve(spec.slice(eq + 1)) };
});

if (process.getuid?.() !== 0) {
  console.error('bench/cli-startup.mjs: needs root (the dump row ptraces a memhog)');
  process.exit(1);
}
for (const f of [hogBin, ...clis.map((c) => c.path)]) {
  if (!existsSync(f)) {
    console.error(`bench/cli-startup.mjs: ${f} is missing: run npm run build`);
    process.exit(1);
  }
}

// The dumped hogs are orphans (setsid -f); as their subreaper this process can reap them.
const PR_SET_CHILD_SUBREAPER = 36;
prctl(PR_SET_CHILD_SUBREAPER, 1);
function waitFor(what, predicate, timeoutMs = 30_000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    sleepSync(2);
  }
}
const alive = (pid) => {
  try {
    wait4(asPid(pid), WNOHANG);
  } catch { /* not our child (yet) */ }
  return existsSync(`/proc/${pid}`);
};
function killAndReap(pid) {
  try {
    process.kill(pid, 'SIGKILL');
  } catch { /* gone */ }
  waitFor(`process ${pid} to be gone`, () => !alive(pid), 10_000);
}

const dir = mkdtempSync(join(tmpdir(), 'criu-ts-startup-'));
const live = new Set();
let hogs = 0;
/** A fresh memhog of SIZE MiB in its own session, ready to be dumped; returns its PID. */
function startHog() {
  const report = join(dir, `hog-${hogs++}.report`);
  spawn('setsid', ['-f', hogBin, String(SIZE), report], { stdio: 'ignore' }).unref();
  const ready = () => (existsSync(report) ? readFileSync(report, 'utf8').split('\n').find((l) => l.startsWith('ready')) : undefined);
  try {
    waitFor(`memhog ${SIZE} MiB to fill its memory`, () => ready() !== undefined, 60_000);
  } catch (error) {
    for (const pid of readdirSync('/proc').filter((n) => /^\d+$/.test(n))) {
      try {
        if (readFileSync(`/proc/${pid}/cmdline`, 'utf8').includes(report)) killAndReap(Number(pid));
      } catch { /* gone */ }
    }
    throw error;
  }
  const pid = Number(ready().split(' ')[1]);
  live.add(pid);
  return pid;
}

/** Runs argv once; returns the wall time in ms (spawn to exit), throwing on a failure. */
const cacheRoot = `/run/criu-ts/bench-${process.pid}`;
const envFor = (label) => ({ ...process.env, CRIU_TS_CODE_CACHE: join(cacheRoot, label.replace(/[^\w.-]/g, '_')) });
function timed(argv, env = process.env) {
  const t = performance.now();
  const r = spawnSync(argv[0], argv.slice(1), { stdio: ['ignore', 'ignore', 'pipe'], encoding: 'utf8', env });
  const ms = performance.now() - t;
  if (r.status !== 0) throw new Error(`${argv.join(' ')} failed (${r.status ?? r.signal}): ${r.stderr}`);
  return ms;
}
function dumpOnce(cli, env) {
  const pid = startHog();
  const images = join(dir, `images-${hogs}`);
  spawnSync('sync');
  const ms = timed([cli, 'dump', '-t', String(pid), '-D', images], env);
  waitFor('the dumped memhog to be gone', () => !alive(pid));
  live.delete(pid);
  rmSync(images, { recursive: true });
  return ms;
}

const noCa = { ...process.env };
delete noCa.NODE_EXTRA_CA_CERTS;
const rows = [
  { name: '`node -e 0`', shared: true, run: () => timed([process.execPath, '-e', '0']) },
  ...(process.env.NODE_EXTRA_CA_CERTS ? [{ name: '`node -e 0` without NODE_EXTRA_CA_CERTS', shared: true, run: () => timed([process.execPath, '-e', '0'], noCa) }] : []),
  { name: '`criu-ts --help`', run: (cli, env) => timed([cli, '--help'], env) },
  { name: '`criu-ts decode --help`', run: (cli, env) => timed([cli, 'decode', '--help'], env) },
  { name: '`criu-ts check --help`', run: (cli, env) => timed([cli, 'check', '--help'], env) },
  { name: `\`criu-ts dump\` of ${SIZE} MiB`, run: (cli, env) => dumpOnce(cli, env) },
];

const median = (xs) => {
  const s = [...xs].sort((a, b) => a - b);
  return s.length % 2 ? s[(s.length - 1) / 2] : (s[s.length / 2 - 1] + s[s.length / 2]) / 2;
};
const loadBefore = loadavg();
const samples = new Map(); // "row|cli" -> ms[]
let exitCode = 0;
try {
  for (let i = -1; i < RUNS; i++) {
    process.stderr.write(i < 0 ? 'warm-up run\n' : `run ${i + 1}/${RUNS}\n`);
    for (const row of rows) {
      for (const cli of row.shared ? [clis[0]] : clis) {
        const ms = row.run(cli.path, envFor(cli.label));
        if (i < 0) continue;
        const key = `${row.name}|${row.shared ? '' : cli.label}`;
        samples.set(key, [...(samples.get(key) ?? []), ms]);
      }
    }
  }
} catch (error) {
  console.error(`bench/cli-startup.mjs: ${error.stack ?? error}`);
  exitCode = 1;
} finally {
  for (const pid of live) {
    try {
      killAndReap(pid);
    } catch (e) {
      console.error(`cleanup: ${e.message}`);
    }
  }
  rmSync(dir, { recursive: true, force: true });
  rmSync(cacheRoot, { recursive: true, force: true });
  prctl(PR_SET_CHILD_SUBREAPER, 0);
}
if (exitCode) process.exit(exitCode);

const ms = (x) => (x === undefined ? '-' : `${x.toFixed(1)} ms`);
const cpuModel = (spawnSync('lscpu', [], { encoding: 'utf8' }).stdout.match(/^Model name:\s*(.+)$/m)?.[1] ?? cpus()[0]?.model ?? '?').trim();
console.log(`\nMachine: ${cpuModel}, ${cpus().length} cores, Linux ${release()}, Node.js ${process.version}; ` +
  `medians of ${RUNS} runs (min in parentheses); load average (1/5/15 min) ${loadBefore.map((l) => l.toFixed(2)).join('/')} before, ` +
  `${loadavg().map((l) => l.toFixed(2)).join('/')} after\n`);
console.log(`| command | ${clis.map((c) => c.label).join(' | ')} |`);
console.log(`|---|${clis.map(() => '---').join('|')}|`);
for (const row of rows) {
  const cell = (label) => {
    const xs = samples.get(`${row.name}|${label}`);
    return xs ? `${ms(median(xs))} (${ms(Math.min(...xs))})` : '-';
  };
  console.log(`| ${row.name} | ${row.shared ? clis.map(() => cell('')).join(' | ') : clis.map((c) => cell(c.label)).join(' | ')} |`);
}
for (const c of clis) console.log(`\n${c.label}: ${c.path}`);

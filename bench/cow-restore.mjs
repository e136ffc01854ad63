#!/usr/bin/env node
// Benchmark (not a test) of copy-on-write sharing across a restore: a parent and a child sharing
// MIB MiB of private memory (bench/cow-pair.c, compiled here with cc; the child rewrote one page
// in 64 after fork) are dumped and restored N times. Prints medians of the restore time
// (restoreSync, detached) and its memory stage, and of Rss/Pss (/proc/PID/smaps_rollup) of
// both processes before the dump and after the restore. Every restore is checksum-verified.
// Needs root and `npm run build`.
//
//   node bench/cow-restore.mjs [--runs N] [--mib MIB]
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { dumpSync, restoreSync } from '@criu-ts/core';
import { asPid, prctl, sleepSync, wait4, WNOHANG } from '@criu-ts/sys';

const here = dirname(fileURLToPath(import.meta.url));
const arg = (name, fallback) => {
  const i = process.argv.indexOf(name);
  return i > 0 ? process.argv[i + 1] : fallback;
};
const RUNS = Number(arg('--runs', '5'));
const MIB = Number(arg('--mib', '64'));
if (process.getuid?.() !== 0) {
  console.error('bench/cow-restore.mjs: needs root (ptrace, clone3 with set_tid, PR_SET_MM_MAP)');
  process.exit(1);
}
prctl(36 /* PR_SET_CHILD_SUBREAPER */, 1);

const dir = mkdtempSync(join(tmpdir(), 'criu-ts-cow-bench-'));
const bin = join(dir, 'cow-pair');
const cc = spawnSync('cc', ['-O2', '-o', bin, join(here, 'cow-pair.c')], { encoding: 'utf8' });
if (cc.status !== 0) throw new Error(`cc bench/cow-pair.c: ${cc.stderr}`);

const sleepMs = sleepSync;
function waitFor(what, predicate, timeoutMs = 60_000) {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    sleepMs(2);
  }
}
const gone = (pid) => {
  try {
    wait4(asPid(pid), WNOHANG);
  } catch { /* not ours */ }
  return !existsSync(`/proc/${pid}`);
};
function killAll(pids) {
  for (const pid of pids) {
    try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
  }
  waitFor('the pair to be gone', () => pids.every(gone));
}
/** Rss and Pss in MiB. */
function memoryOf(pid) {
  const text = readFileSync(`/proc/${pid}/smaps_rollup`, 'utf8');
  const kib = (field) => Number(new RegExp(`^${field}:\\s+(\\d+) kB`, 'm').exec(text)[1]);
  return { rss: kib('Rss') / 1024, pss: kib('Pss') / 1024 };
}
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const samples = { restoreMs: [], memoryMs: [], before: [], after: [] };
try {
  for (let run = 0; run < RUNS; run++) {
    const report = join(dir, `report-${run}`);
    const images = join(dir, `images-${run}`);
    spawn('setsid', ['-f', bin, String(MIB), report], { stdio: 'ignore' }).unref();
    const lines = () => (existsSync(report) ? readFileSync(report, 'utf8').split('\n').filter(Boolean) : []);
    waitFor('cow-pair to be ready', () => lines().some((l) => l.startsWith('ready')));
    const pids = lines().find((l) => l.startsWith('ready')).split(' ').slice(1).map(Number);
    const sums = () => {
      const before = lines().length;
      for (const pid of pids) process.kill(pid, 'SIGUSR1');
      waitFor('checksums', () => lines().length >= before + 2);
      return lines().slice(before).sort().join(' ');
    };
    try {
      const expected = sums();
      samples.before.push(pids.map(memoryOf));
      dumpSync({ pid: pids[0], imagesDir: images });
      waitFor('the dumped pair to be gone', () => pids.every(gone));
      const t = performance.now();
      const r = restoreSync({ imagesDir: images, detached: true });
      samples.restoreMs.push(performance.now() - t);
      samples.memoryMs.push(r.timings.memory);
      samples.after.push(pids.map(memoryOf));
      const got = sums();
      if (got !== expected) throw new Error(`run ${run}: checksums after restore '${got}', before '${expected}'`);
    } finally {
      killAll(pids);
      rmSync(images, { recursive: true, force: true });
    }
  }
} finally {
  rmSync(dir, { recursive: true, force: true });
}
const fmt = (x) => x.toFixed(1);
const mem = (list, i, k) => fmt(median(list.map((s) => s[i][k])));
console.log(`parent + child, ${MIB} MiB private, child rewrote 1 page in 64; medians of ${RUNS}`);
console.log(`restore: ${fmt(median(samples.restoreMs))} ms (memory stage ${fmt(median(samples.memoryMs))} ms)`);
for (const [name, list] of [['before dump', samples.before], ['after restore', samples.after]]) {
  console.log(`${name}: parent Rss ${mem(list, 0, 'rss')} Pss ${mem(list, 0, 'pss')} MiB, child Rss ${mem(list, 1, 'rss')} Pss ${mem(list, 1, 'pss')} MiB, Pss sum ${fmt(median(list.map((s) => s[0].pss + s[1].pss)))} MiB`);
}

#!/usr/bin/env node
// Benchmark of the image codec (not a test): prints a table of medians.
//
//   node bench/images.mjs [--runs N] [--keep DIR]
//
// 1. Decode of every CRIU 4.2 fixture (../shared/criu-images), in-process throughput, and the
//    same files through `criu-ts decode` and Debian's `crit decode` as commands (start-up included).
// 2. A generated dump with 1 GiB of pages: pagemap-1.img (one entry per 2-page run, 131072 runs)
//    and pages-1.img, plus the pstree/core/mm images `x` needs. Timed: `criu-ts decode` and
//    `crit decode` of the pagemap, `criu-ts x DIR mems` and `x DIR rss`, and a full walk of the
//    pages through PagesReader.
import { spawnSync } from 'node:child_process';
import { closeSync, ftruncateSync, mkdtempSync, openSync, readdirSync, readFileSync, rmSync, statSync, writeSync } from 'node:fs';
import { cpus, tmpdir, totalmem } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { performance } from 'node:perf_hooks';
import { ImageReader, ImageWriter, PagesReader, imageToCritJson, kindForFileName, pyJsonStringify } from '@criu-ts/images';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '..');
const bin = join(root, 'packages', 'cli', 'dist', 'criu-ts.cjs');
const fixtures = resolve(root, '..', 'shared', 'criu-images');
const argRuns = process.argv.indexOf('--runs');
const RUNS = argRuns > 0 ? Number(process.argv[argRuns + 1]) : 5;
const keepAt = process.argv.indexOf('--keep');

const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
function time(fn) {
  const samples = [];
  for (let i = 0; i < RUNS; i++) {
    const t = performance.now();
    fn();
    samples.push(performance.now() - t);
  }
  return median(samples);
}
function command(cmd, args) {
  return () => {
    const r = spawnSync(cmd, args, { stdio: ['ignore', 'ignore', 'pipe'], maxBuffer: 1 << 30 });
    if (r.status !== 0) throw new Error(`${cmd} ${args.join(' ')} failed: ${r.stderr}`);
  };
}
const haveCrit = spawnSync('crit', ['-h'], { stdio: 'ignore' }).status === 0;
const rows = [];
const row = (what, ours, crit, note = '') =>
  rows.push([what, `${ours.toFixed(1)} ms`, crit === undefined ? '-' : `${crit.toFixed(1)} ms`, crit === undefined ? '-' : `${(crit / ours).toFixed(1)}x`, note]);

// ---- 1. fixtures
const files = [];
for (const d of readdirSync(fixtures).sort()) {
  if (!statSync(join(fixtures, d)).isDirectory()) continue;
  for (const f of readdirSync(join(fixtures, d)).sort()) if (!f.startsWith('pages-')) files.push(join(fixtures, d, f));
}
const fixtureBytes = files.reduce((s, f) => s + statSync(f).size, 0);
const loaded = files.map((f) => [f, readFileSync(f)]);
const inProcess = time(() => {
  for (const [f, bytes] of loaded) pyJsonStringify(imageToCritJson(ImageReader.fromBytes(bytes, f), { pretty: true }), 4);
});
row(`decode --pretty of all ${files.length} fixtures, in-process`, inProcess, undefined, `${(fixtureBytes / 1048576 / (inProcess / 1000)).toFixed(1)} MiB/s`);
const big = join(fixtures, 'socket-tcpbuf', readdirSync(join(fixtures, 'socket-tcpbuf')).find((f) => f.startsWith('tcp-stream')));
row(`decode of ${(statSync(big).size / 1048576).toFixed(0)} MiB tcp-stream image (command)`, time(command(process.execPath, [bin, 'decode', '-i', big])), haveCrit ? time(command('crit', ['decode', '-i', big])) : undefined);
const core = join(fixtures, 'caps00', 'core-66.img');
row('decode --pretty of one core image (command, start-up dominated)', time(command(process.execPath, [bin, 'decode', '--pretty', '-i', core])), haveCrit ? time(command('crit', ['decode', '--pretty', '-i', core])) : undefined);

// ---- 2. 1 GiB of pages
const dir = keepAt > 0 ? process.argv[keepAt + 1] : mkdtempSync(join(tmpdir(), 'criu-ts-bench-'));
const PAGE = 4096;
const TOTAL_PAGES = (1 << 30) / PAGE;
const RUN_PAGES = 2;
const base = 0x7f0000000000n;
{
  const write = (name, entries) => {
    const w = ImageWriter.create(join(dir, name), kindForFileName(name));
    for (const e of entries) w.append(e);
    w.finish();
  };
  write('pstree.img', [{ pid: 1, ppid: 0, pgid: 1, sid: 1 }]);
  write('core-1.img', [{ mtype: 1, tc: { task_state: 1, exit_code: 0, personality: 0, flags: 0, blk_sigset: 0n, comm: 'bench' } }]);
  // Two-page runs with one-page holes: each run is its own VMA, the way a fragmented heap looks.
  const vmas = [];
  const runs = [];
  for (let i = 0; i < TOTAL_PAGES / RUN_PAGES; i++) {
    const start = base + BigInt(i * (RUN_PAGES + 1) * PAGE);
    vmas.push({ start, end: start + BigInt(RUN_PAGES * PAGE), pgoff: 0n, shmid: 0n, prot: 3, flags: 0x22, status: 0x201, fd: -1n });
    runs.push({ vaddr: start, compat_nr_pages: 0, flags: 4, nr_pages: BigInt(RUN_PAGES) });
  }
  write('mm-1.img', [{ mm_start_code: 0n, mm_end_code: 0n, mm_start_data: 0n, mm_end_data: 0n, mm_start_stack: 0n, mm_start_brk: 0n, mm_brk: 0n, mm_arg_start: 0n, mm_arg_end: 0n, mm_env_start: 0n, mm_env_end: 0n, exe_file_id: 1, vmas }]);
  write('pagemap-1.img', [{ pages_id: 1 }, ...runs]);
  // The pages file: 1 GiB of real (non-sparse) bytes, written in 8 MiB chunks.
  const fd = openSync(join(dir, 'pages-1.img'), 'w', 0o600);
  const chunk = Buffer.alloc(8 << 20, 0x5a);
  for (let off = 0; off < 1 << 30; off += chunk.length) writeSync(fd, chunk, 0, chunk.length, off);
  ftruncateSync(fd, 1 << 30);
  closeSync(fd);
}
const pagemap = join(dir, 'pagemap-1.img');
row(`decode of a 1 GiB dump's pagemap (${TOTAL_PAGES / RUN_PAGES} entries, command)`, time(command(process.execPath, [bin, 'decode', '-i', pagemap])), haveCrit ? time(command('crit', ['decode', '-i', pagemap])) : undefined);
row('x DIR mems on the 1 GiB dump (command)', time(command(process.execPath, [bin, 'x', dir, 'mems'])), undefined, 'crit 3.17 cannot read 4.2 pagemaps');
row('x DIR rss on the 1 GiB dump (command)', time(command(process.execPath, [bin, 'x', dir, 'rss'])), undefined);
const walk = time(() => {
  const reader = PagesReader.open(pagemap);
  const buffer = new Uint8Array(RUN_PAGES * PAGE);
  let sum = 0;
  for (const run of reader.runs()) sum += reader.read(run, buffer).length;
  reader.close();
  if (sum !== 1 << 30) throw new Error(`walked ${sum} bytes`);
});
row('PagesReader: read all 1 GiB of pages, run by run', walk, undefined, `${(1024 / (walk / 1000)).toFixed(0)} MiB/s, peak RSS ${(process.memoryUsage().rss / 1048576).toFixed(0)} MiB`);
if (keepAt < 0) rmSync(dir, { recursive: true, force: true });

// ---- table
const header = ['what', 'criu-ts', 'crit 3.17', 'speed-up', 'note'];
const widths = header.map((h, i) => Math.max(h.length, ...rows.map((r) => r[i].length)));
const line = (cells) => '| ' + cells.map((c, i) => c.padEnd(widths[i])).join(' | ') + ' |';
console.log(`machine: ${cpus()[0]?.model ?? '?'} x${cpus().length}, ${(totalmem() / 2 ** 30).toFixed(0)} GiB, node ${process.version}; medians of ${RUNS} runs`);
console.log(line(header));
console.log('|' + widths.map((w) => '-'.repeat(w + 2)).join('|') + '|');
for (const r of rows) console.log(line(r));

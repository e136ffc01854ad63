#!/usr/bin/env node
// Benchmark of @criu-ts/compel (needs root and `npm run build`):
//   - round trip of a remote syscall (ptrace: set registers, single-step a syscall instruction, wait)
//   - round trip of a syscall made by the parasite (one message each way on its unix socket)
//   - parasite vmsplice throughput: 1 GiB of a victim's memory moved into a pipe and spliced to a
//     file (the dump path: one copy, page cache of the output file)
// Prints medians over several runs.  Usage: node packages/compel/scripts/bench.mjs [MiB=1024] [runs=5]
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import { injectSync } from '@criu-ts/compel';
import { asRemoteAddress, close, ftruncate, O, open } from '@criu-ts/sys';

const mib = Number(process.argv[2] ?? 1024);
const runs = Number(process.argv[3] ?? 5);
const victimBin = fileURLToPath(new URL('../../../tests/bin/compel-victim', import.meta.url));
const median = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];

const child = spawn('/bin/sh', ['-c', 'exec 3<&0; "$0" "$@" <&3 3<&- & wait', victimBin, 'busy', String(mib)], {
  stdio: ['pipe', 'pipe', 'inherit'],
});
let pid = 0;
let data = 0n;
const dir = mkdtempSync(`${tmpdir()}/compel-bench-`);
try {
  const ready = await new Promise((resolve, reject) => {
    let out = '';
    const t = setTimeout(() => reject(new Error('victim not ready in 120 s')), 120_000);
    child.stdout.on('data', (d) => {
      out += d;
      if (out.includes('\n')) { clearTimeout(t); resolve(out); }
    });
  });
  const m = /ready pid=(\d+) data=(0x[0-9a-f]+) len=(\d+)/.exec(ready);
  pid = Number(m[1]);
  data = BigInt(m[2]);
  const len = Number(m[3]);

  const victim = injectSync(pid);
  try {
    const rtt = [];
    for (let i = 0; i < 5000; i++) {
      const t0 = process.hrtime.bigint();
      victim.syscallSync('getpid');
      rtt.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    const parasite = victim.infectSync();
    const prtt = [];
    for (let i = 0; i < 5000; i++) {
      const t0 = process.hrtime.bigint();
      parasite.syscallRaw('getpid');
      prtt.push(Number(process.hrtime.bigint() - t0) / 1000);
    }
    const rates = [];
    for (let r = 0; r < runs; r++) {
      const file = `${dir}/pages-${r}.img`;
      const fd = open(file, O.WRONLY | O.CREAT | O.TRUNC);
      const t0 = process.hrtime.bigint();
      const moved = parasite.dumpPages([{ addr: asRemoteAddress(data), len }], fd);
      const secs = Number(process.hrtime.bigint() - t0) / 1e9;
      ftruncate(fd, 0); // drop the page cache copy before the next run
      close(fd);
      rmSync(file);
      rates.push(moved / secs / 1e9);
    }
    console.log(`remote syscall (ptrace) round trip: median ${median(rtt).toFixed(1)} us over ${rtt.length}`);
    console.log(`parasite syscall round trip:        median ${median(prtt).toFixed(1)} us over ${prtt.length}`);
    console.log(`parasite vmsplice+splice of ${(len / 2 ** 20).toFixed(0)} MiB to a file: median ${median(rates).toFixed(2)} GB/s over ${runs} runs (${rates.map((x) => x.toFixed(2)).join(', ')})`);
  } finally {
    victim.cureSync();
  }
} finally {
  if (pid) try { process.kill(pid, 'SIGKILL'); } catch {}
  child.kill('SIGKILL');
  rmSync(dir, { recursive: true, force: true });
}

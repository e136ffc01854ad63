#!/usr/bin/env node
// A small command line over @criu-ts/compel (also an example of the lifecycle):
//
//   compel PID syscall NAME [ARG...]        run one syscall inside PID, print its result
//   compel PID blob FILE.c SYMBOL [ARG...]  compile FILE.c as a blob, run SYMBOL(ARG...) inside PID
//   compel PID info                         parasite view: ids, comm, sigactions, itimers, POSIX timers
//
// Arguments are integers (decimal or 0x hex). The task is cured before exit, also on error.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { injectSync, compileBlob, CompelError } from './index.js';
import { SysError, type SyscallName } from '@criu-ts/sys';

function usage(): never {
  process.stderr.write('usage: compel PID syscall NAME [ARG...] | compel PID blob FILE.c SYMBOL [ARG...] | compel PID info\n');
  process.exit(2);
}

const [pidArg, verb, ...rest] = process.argv.slice(2);
if (!pidArg || !verb || !/^\d+$/.test(pidArg)) usage();
const ints = (xs: string[]) => xs.map((x) => BigInt(x));

try {
  const victim = injectSync(Number(pidArg)); // prepare: every thread seized
  try {
    if (verb === 'syscall') {
      const [name, ...args] = rest;
      if (!name) usage();
      const nr = /^\d+$/.test(name) ? Number(name) : (name as SyscallName);
      const ret = victim.syscallRawSync(nr, ...ints(args)); // remote call
      console.log(ret < 0n && ret >= -4095n ? `${ret} (${new SysError(String(name), Number(-ret)).code})` : `${ret} (0x${ret.toString(16)})`);
    } else if (verb === 'blob') {
      const [file, symbol, ...args] = rest;
      if (!file || !symbol) usage();
      const dir = mkdtempSync(`${tmpdir()}/compel-`);
      try {
        const blob = compileBlob(file, `${dir}/blob.bin`);
        const loaded = victim.infectSync().loadBlob(blob); // infect, then load the user blob
        console.log(String(loaded.call(symbol, ...ints(args))));
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    } else if (verb === 'info') {
      const p = victim.infectSync();
      const misc = p.dumpMisc();
      console.log(JSON.stringify({
        misc,
        sigactions: p.dumpSigactions().filter((s) => s.handler !== 0n),
        itimers: p.dumpItimers(),
        posixTimers: p.dumpPosixTimers(),
      }, (_k, v) => (typeof v === 'bigint' ? v.toString() : v), 2));
    } else {
      usage();
    }
  } finally {
    victim.cureSync(); // every trace removed
  }
} catch (err) {
  if (err instanceof CompelError || err instanceof SysError) {
    process.stderr.write(`${err.message}\n`);
    process.exit(1);
  }
  throw err;
}

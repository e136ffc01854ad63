// Soak: tests/bin/invariant-keeper rewrites 128 blocks of 16 KiB without pause, keeping an
// invariant over them (at most one block in the middle of a rewrite; every other block holds
// exactly what its generation number says, and its checksum). It is dumped with leave-running as
// many times as fit in the time bound (at most 200). Every dump's pages must show the invariant
// (checked in the images themselves), the program must keep its invariant and keep rewriting
// after all those dumps, and a sample of the dumps is restored: each restored process finds the
// invariant true and rewrites on.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, readSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dumpSync, restoreSync } from '@criu-ts/core';
import { PAGE_SIZE, PagesReader } from '@criu-ts/images';
import { alive, isRoot, sleepMs, waitFor } from './restore-helpers.js';
import { becomeSubreaper, TEST_BIN } from './programs.js';
import { dumpedIds, expectIdsFree, expectRunningUntouched } from './reliability-helpers.js';

const MAX_DUMPS = 200;
const DUMP_PHASE_MS = 75_000;
const RESTORE_PHASE_MS = 30_000;
const SAMPLES = 20;

/** word(i, gen, j) of tests/invariant-keeper.c, in 32-bit arithmetic. */
function invariantWord(i: number, gen: number, j: number): number {
  let h = (Math.imul(i, 0x9e3779b1) ^ Math.imul(gen, 0x85ebca6b) ^ Math.imul(j, 0xc2b2ae35)) >>> 0;
  h = (h ^ (h >>> 16)) >>> 0;
  h = Math.imul(h, 0x7feb352d) >>> 0;
  return (h ^ (h >>> 15)) >>> 0;
}

/**
 * The invariant over `memory` (BLOCKS blocks of { gen, sum, data[] }, little-endian u32): returns
 * what is wrong (empty when it holds) and the sum of all generations (it grows as the program works).
 */
export function checkInvariant(memory: Buffer, blocks: number, blockBytes: number): { problems: string[]; generations: number; inProgress: number } {
  const problems: string[] = [];
  const words = blockBytes / 4 - 2;
  let inProgress = 0;
  let generations = 0;
  for (let i = 0; i < blocks; i++) {
    const base = i * blockBytes;
    const gen = memory.readUInt32LE(base);
    generations += gen;
    if (gen & 1) {
      inProgress++;
      continue;
    }
    let sum = 0;
    let wrong = -1;
    for (let j = 0; j < words; j++) {
      const w = memory.readUInt32LE(base + 8 + j * 4);
      if (wrong < 0 && w !== invariantWord(i, gen, j)) wrong = j;
      sum = Math.imul((sum + ((w ^ j) >>> 0)) >>> 0, 31) >>> 0;
    }
    if (wrong >= 0) problems.push(`block ${i} (gen ${gen}): word ${wrong} is not what gen ${gen} writes`);
    if (sum !== memory.readUInt32LE(base + 4)) problems.push(`block ${i} (gen ${gen}): checksum ${memory.readUInt32LE(base + 4)} != ${sum}`);
  }
  if (inProgress > 1) problems.push(`${inProgress} blocks are in the middle of a rewrite`);
  return { problems, generations, inProgress };
}

/** `length` bytes at `addr` of process `pid` as the dump in `images` holds them (every page must be there). */
function dumpedMemory(images: string, pid: number, addr: bigint, length: number): Buffer {
  const out = Buffer.alloc(length);
  const covered = new Uint8Array(length / PAGE_SIZE);
  const reader = PagesReader.open(join(images, `pagemap-${pid}.img`));
  const fd = openSync(reader.pagesFile, 'r');
  try {
    for (const run of reader.runs()) {
      if (!run.pages) continue;
      for (let p = 0; p < run.nrPages; p++) {
        const page = run.vaddr + BigInt(p * PAGE_SIZE);
        if (page < addr || page >= addr + BigInt(length)) continue;
        const at = Number(page - addr);
        readSync(fd, out, at, PAGE_SIZE, run.pages.offset + p * PAGE_SIZE);
        covered[at / PAGE_SIZE] = 1;
      }
    }
  } finally {
    closeSync(fd);
    reader.close();
  }
  const missing = covered.indexOf(0);
  if (missing >= 0) throw new Error(`${images}: page ${missing} of the blocks is not in the dump`);
  return out;
}

class InvariantKeeper {
  readonly report: string;
  readonly pid: number;
  readonly addr: bigint;
  readonly blocks: number;
  readonly blockBytes: number;

  constructor(readonly dir: string) {
    this.report = join(dir, 'report');
    spawn('setsid', ['-f', join(TEST_BIN, 'invariant-keeper'), this.report], { stdio: 'ignore' }).unref();
    waitFor('invariant-keeper to be ready', () => this.lines().some((l) => l.startsWith('ready')));
    const [, pid, addr, blocks, blockBytes] = this.lines().find((l) => l.startsWith('ready'))!.split(' ');
    this.pid = Number(pid);
    this.addr = BigInt(`0x${addr}`);
    this.blocks = Number(blocks);
    this.blockBytes = Number(blockBytes);
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  /** SIGUSR1: the program checks every block; returns [bad blocks, rewrites so far]. */
  check(): [number, number] {
    const before = this.lines().length;
    process.kill(this.pid, 'SIGUSR1');
    waitFor('invariant-keeper to check', () => this.lines().slice(before).some((l) => l.startsWith('check')));
    const [, bad, rewrites] = this.lines().slice(before).find((l) => l.startsWith('check'))!.split(' ');
    return [Number(bad), Number(rewrites)];
  }
}

describe('reliability: soak (dumps of a program that keeps an invariant over memory it rewrites)', function () {
  this.timeout(DUMP_PHASE_MS + RESTORE_PHASE_MS + 60_000);
  let dir: string;
  let keeper: InvariantKeeper | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace, clone3 set_tid and PR_SET_MM_MAP need root
    becomeSubreaper();
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-soak-'));
  });
  after(() => {
    if (keeper) {
      try { process.kill(keeper.pid, 'SIGKILL'); } catch { /* gone */ }
      expectIdsFree([keeper.pid], 'invariant-keeper at the end');
    }
    rmSync(dir, { recursive: true, force: true });
    if (isRoot()) becomeSubreaper(false);
  });

  it(`up to ${MAX_DUMPS} dumps with leave-running: each shows the invariant, and restored samples keep it`, function () {
    keeper = new InvariantKeeper(dir);
    const k = keeper;
    const started = Date.now();
    const kept: string[] = [];
    let dumps = 0;
    let lastGenerations = -1;
    let midRewrite = 0;
    const growth: number[] = [];
    while (dumps < MAX_DUMPS && Date.now() - started < DUMP_PHASE_MS) {
      const images = join(dir, `dump-${dumps}`);
      dumpSync({ pid: k.pid, imagesDir: images, leave: 'running' });
      const { problems, generations, inProgress } = checkInvariant(dumpedMemory(images, k.pid, k.addr, k.blocks * k.blockBytes), k.blocks, k.blockBytes);
      expect(problems, `dump ${dumps}`).to.deep.equal([]);
      if (inProgress > 0) midRewrite++;
      if (lastGenerations >= 0) growth.push(generations - lastGenerations);
      lastGenerations = generations;
      // Keep every 10th dump for the restore phase, drop the others.
      if (dumps % 10 === 0 && kept.length < SAMPLES) kept.push(images);
      else rmSync(images, { recursive: true, force: true });
      dumps++;
    }
    const dumpPhaseMs = Date.now() - started;
    expect(dumps, 'dumps in the time bound').to.be.at.least(20);
    // It rewrote blocks between dumps (it ran on through them), and still keeps its invariant.
    expect(growth.filter((g) => g > 0).length, 'dumps after which the program had rewritten blocks').to.be.greaterThan(growth.length * 0.9);
    expectRunningUntouched(k.pid, `after ${dumps} dumps`);
    const [bad, rewrites] = k.check();
    expect(bad, 'bad blocks in the running program').to.equal(0);
    expect(rewrites).to.be.greaterThan(dumps);

    // Restore phase: the original goes, each kept dump comes back in turn.
    process.kill(k.pid, 'SIGKILL');
    const { pids } = dumpedIds(kept[0]!);
    expectIdsFree(pids, 'the original');
    const restoreStart = Date.now();
    let restored = 0;
    for (const images of kept) {
      if (Date.now() - restoreStart > RESTORE_PHASE_MS) break;
      const r = restoreSync({ imagesDir: images, detached: true });
      expect(r.pid).to.equal(k.pid);
      const [bad1, rewrites1] = k.check();
      sleepMs(20);
      const [bad2, rewrites2] = k.check();
      expect([bad1, bad2], `${images}: bad blocks after restore`).to.deep.equal([0, 0]);
      expect(rewrites2, `${images}: rewriting on after restore`).to.be.greaterThan(rewrites1);
      expect(alive(k.pid)).to.equal(true);
      process.kill(k.pid, 'SIGKILL');
      expectIdsFree(pids, `${images}: after the restored process was killed`);
      restored++;
    }
    expect(restored, 'restored samples').to.be.at.least(Math.min(kept.length, 4));
    console.log(`      soak: ${dumps} dumps in ${dumpPhaseMs} ms, invariant held in each (${midRewrite} caught a block mid-rewrite); ${restored} of them restored, invariant held and rewriting on`);
  });
});

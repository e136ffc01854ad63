// A program in an interpreter (python3, node) that counts and holds state, for end-to-end tests:
// it writes "ready <pid>" to REPORT, then counts, appending "<n>\n" to PROGRESS (one write per
// count). On SIGUSR1 it checks its state and appends "ok ..."/"FAIL ..." lines and
// "done <failures> <count>" to REPORT.
import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { dumpSync, type DumpOptions } from '@criu-ts/core';
import { ImageReader } from '@criu-ts/images';
import { killQuietly, procState, sleepMs, waitFor } from './restore-helpers.js';
import { reapIfOurs, dumpedPids } from './programs.js';


export class CountingProgram {
  readonly dir = mkdtempSync(join(tmpdir(), 'criu-ts-counter-'));
  readonly report = join(this.dir, 'report');
  readonly progressFile = join(this.dir, 'progress');
  readonly images = join(this.dir, 'images');
  readonly pid: number;

  /**
   * Writes `program` to `scriptName` in a fresh directory and starts `[...command, script,
   * REPORT, PROGRESS]` through `setsid -f`, stdio on /dev/null.
   */
  constructor(
    readonly name: string,
    command: readonly string[],
    scriptName: string,
    program: string,
  ) {
    const script = join(this.dir, scriptName);
    writeFileSync(script, program);
    spawn('setsid', ['-f', ...command, script, this.report, this.progressFile], { stdio: 'ignore', cwd: this.dir }).unref();
    waitFor(`${name} to be ready`, () => this.lines().some((l) => l.startsWith('ready')), 20_000);
    this.pid = Number(this.lines().find((l) => l.startsWith('ready'))!.split(' ')[1]);
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  progress(): number[] {
    return existsSync(this.progressFile) ? readFileSync(this.progressFile, 'utf8').split('\n').filter(Boolean).map(Number) : [];
  }

  last(): number {
    return this.progress().at(-1) ?? 0;
  }

  /** Waits (bounded) until the count passes `n`. */
  countsTo(n: number): void {
    waitFor(`${this.name} to count to ${n} (at ${this.last()})`, () => this.last() >= n, 20_000);
  }

  /** Dumps (the task is killed, as by default) and waits until its PID is free; returns the count reached. */
  dump(options: Partial<DumpOptions> = {}): number {
    rmSync(this.images, { recursive: true, force: true });
    dumpSync({ pid: this.pid, imagesDir: this.images, ...options });
    if ((options.leave ?? 'kill') !== 'kill') return this.last();
    // Every process the dump took (a tree: children too) must be gone before its PID is reused.
    const pids = dumpedPids(this.images);
    waitFor(`the dumped ${this.name} to be gone`, () => {
      for (const pid of pids) reapIfOurs(pid);
      return pids.every((pid) => procState(pid) === undefined);
    });
    return this.last();
  }

  /** SIGUSR1, then the program's report lines. */
  check(): { failures: string[]; checks: string[]; done: string } {
    const before = this.lines().length;
    process.kill(this.pid, 'SIGUSR1');
    waitFor(`${this.name} to report`, () => this.lines().slice(before).some((l) => l.startsWith('done')), 20_000);
    const lines = this.lines().slice(before);
    return { failures: lines.filter((l) => l.startsWith('FAIL')), checks: lines.filter((l) => l.startsWith('ok')), done: lines.find((l) => l.startsWith('done'))! };
  }

  cleanup(): void {
    killQuietly(this.pid);
    for (let i = 0; i < 400 && procState(this.pid) !== undefined; i++) {
      reapIfOurs(this.pid);
      sleepMs(5);
    }
    rmSync(this.dir, { recursive: true, force: true });
  }
}

/** 1, 2, 3, ... n: what the progress file holds when no count was lost or repeated. */
export function expectConsecutive(counts: number[]): void {
  const bad = counts.findIndex((n, i) => n !== i + 1);
  expect(bad, `progress ${bad >= 0 ? `breaks at line ${bad + 1}: ${counts.slice(Math.max(0, bad - 2), bad + 3).join(',')}` : ''}`).to.equal(-1);
}


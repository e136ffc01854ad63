// tests/bin/thread-keeper for the end-to-end tests: 16 threads in 16 different blocking calls.
import { spawn } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, readdirSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import type { DumpOptions } from '@criu-ts/core';
import { waitFor } from './restore-helpers.js';
import { dumpAndWait, killAndReap, TEST_BIN } from './programs.js';

const PROGRAM = join(TEST_BIN, 'thread-keeper');

/**
 * A running thread-keeper in its own session, started through `setsid -f` (not a child_process
 * of ours: Node would reap ptrace stops meant for compel, see StateKeeper).
 */
export class ThreadKeeper {
  readonly dir = mkdtempSync(join(tmpdir(), 'criu-ts-tk-'));
  readonly report = join(this.dir, 'report');
  readonly images = join(this.dir, 'images');
  readonly pid: number;
  /** TIDs of threads 0..15 as the program reported them (the main thread's is the pid). */
  readonly tids: number[];

  constructor() {
    if (!existsSync(PROGRAM)) throw new Error(`${PROGRAM} is missing: run npm run build`);
    spawn('setsid', ['-f', PROGRAM, this.report], { stdio: 'ignore' }).unref();
    waitFor('thread-keeper to be ready', () => this.lines().some((l) => l.startsWith('ready')));
    const ready = this.lines().find((l) => l.startsWith('ready'))!.split(' ').slice(1).map(Number);
    this.pid = ready[0]!;
    this.tids = ready.slice(1);
  }

  lines(): string[] {
    return existsSync(this.report) ? readFileSync(this.report, 'utf8').split('\n').filter(Boolean) : [];
  }

  /** The thread list /proc shows now, sorted. */
  threadsNow(): number[] {
    return readdirSync(`/proc/${this.pid}/task`).map(Number).sort((a, b) => a - b);
  }

  /** SIGUSR1: the main thread wakes every thread, each checks itself; returns the report lines. */
  check(): { failures: string[]; checks: string[] } {
    const before = this.lines().length;
    process.kill(this.pid, 'SIGUSR1');
    waitFor('thread-keeper to report', () => this.lines().slice(before).some((l) => l.startsWith('done')), 20_000);
    const lines = this.lines().slice(before);
    return { failures: lines.filter((l) => !l.startsWith('ok') && !l.startsWith('done')), checks: lines.filter((l) => l.startsWith('ok')) };
  }

  dump(options: Partial<DumpOptions> = {}): void {
    dumpAndWait(this.pid, this.images, options);
  }

  cleanup(): void {
    killAndReap(this.pid, this.dir);
  }
}

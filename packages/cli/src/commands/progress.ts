// A one-line progress bar on a terminal (standard error), silent otherwise: pages written and
// throughput while a dump moves memory. Redrawn at most every 100 ms.
import { performance } from 'node:perf_hooks';
import type { CommandIo } from './command-io.js';

const WIDTH = 30;

export class ProgressBar {
  private readonly start = performance.now();
  private lastDraw = 0;
  private drawn = false;
  /**
   * Decided once, when the bar is made (before the dump freezes anything): updates come while
   * the tasks are frozen, and a first look at process.stderr there cost 1.8 ms of their frozen
   * time (Node builds the stream on first use).
   */
  readonly enabled: boolean;

  constructor(
    private readonly io: CommandIo,
    private readonly label: string,
  ) {
    this.enabled = io.isTty?.() === true;
  }

  update(done: number, total: number, unitBytes: number): void {
    if (!this.enabled) return;
    const now = performance.now();
    if (done < total && now - this.lastDraw < 100) return;
    this.lastDraw = now;
    const fraction = total > 0 ? Math.min(1, done / total) : 1;
    const filled = Math.round(fraction * WIDTH);
    const mib = (done * unitBytes) / 1048576;
    const seconds = (now - this.start) / 1000;
    const rate = seconds > 0 ? mib / seconds : 0;
    this.io.errorRaw?.(`\r${this.label} [${'#'.repeat(filled)}${' '.repeat(WIDTH - filled)}] ${(fraction * 100).toFixed(0).padStart(3)}% ${mib.toFixed(1)} MiB ${rate.toFixed(0)} MiB/s`);
    this.drawn = true;
  }

  finish(): void {
    if (this.drawn) this.io.errorRaw?.("\n");
    this.drawn = false;
  }
}

// criu-like logging: `(SS.uuuuuu) Error: ...` lines with the time since start, filtered by
// verbosity (0 silent, 1 errors, 2 warnings, 3 info, 4 debug). With -o the lines go to that file
// (relative to the work directory); errors always reach standard error too, so a failure is
// never silent and tools grepping for "Error" keep working.
import { closeSync, openSync, writeSync } from 'node:fs';
import { isAbsolute, join } from 'node:path';
import { performance } from 'node:perf_hooks';
import type { CommandIo } from './command-io.js';

export const LOG_ERROR = 1;
export const LOG_WARN = 2;
export const LOG_INFO = 3;
export const LOG_DEBUG = 4;

export class Log {
  private readonly start = performance.now();
  private fd: number | undefined;

  constructor(
    private readonly io: CommandIo,
    private readonly verbosity: number,
    logFile?: string,
    workDir?: string,
  ) {
    if (logFile !== undefined && logFile !== '-') {
      const path = isAbsolute(logFile) || workDir === undefined ? logFile : join(workDir, logFile);
      this.fd = openSync(path, 'a', 0o600);
    }
  }

  private line(level: number, label: string, message: string): void {
    const seconds = (performance.now() - this.start) / 1000;
    const stamp = `(${seconds.toFixed(6).padStart(9, '0')})`;
    const text = `${stamp} ${label ? `${label}: ` : ''}${message}\n`;
    if (level <= this.verbosity && this.fd !== undefined) writeSync(this.fd, text);
    if (this.fd === undefined ? level <= this.verbosity : level === LOG_ERROR) this.io.error(text.trimEnd());
  }

  error(message: string): void {
    this.line(LOG_ERROR, 'Error', message);
  }
  warn(message: string): void {
    this.line(LOG_WARN, 'Warn', message);
  }
  info(message: string): void {
    this.line(LOG_INFO, '', message);
  }
  debug(message: string): void {
    this.line(LOG_DEBUG, '', message);
  }

  close(): void {
    if (this.fd !== undefined) closeSync(this.fd);
    this.fd = undefined;
  }
}

// The process-facing side of a command (output streams, stdin), kept apart so commands can be
// run in-process by tests and by library users.
import { readFileSync, writeSync } from 'node:fs';
import { createRequire } from 'node:module';

export interface CommandIo {
  /** Text to standard output. */
  write(text: string): void;
  /** Bytes to standard output. */
  writeBytes(bytes: Uint8Array): void;
  /** A line to standard output (help texts). */
  print(text: string): void;
  /** A line to standard error. */
  error(text: string): void;
  readStdin(): Uint8Array;
  /** Whether standard error is a terminal (progress and summaries only go to terminals). */
  isTty?(): boolean;
  /** Text to standard error as it is (no newline added): progress bars. */
  errorRaw?(text: string): void;
}

/** A wrong command line: reported with the command's usage, exit status 2 like argparse. */
export class UsageError extends Error {
  constructor(
    message: string,
    readonly usage: string,
  ) {
    super(message);
    this.name = 'UsageError';
  }
}

function writeAll(fd: number, bytes: Uint8Array): void {
  for (let done = 0; done < bytes.length; ) {
    try {
      done += writeSync(fd, bytes, done, bytes.length - done);
    } catch (error) {
      const code = (error as NodeJS.ErrnoException).code;
      // The reader went away (`criu-ts show ... | head`): nothing more to say, as for any filter.
      if (code === 'EPIPE') process.exit(0);
      // A non-blocking pipe that is full: wait for the reader instead of failing.
      if (code !== 'EAGAIN') throw error;
    }
  }
}

export const processIo: CommandIo = {
  write: (text) => writeAll(1, Buffer.from(text)),
  writeBytes: (bytes) => writeAll(1, bytes),
  print: (text) => writeAll(1, Buffer.from(text.endsWith('\n') ? text : text + '\n')),
  error: (text) => writeAll(2, Buffer.from(text.endsWith('\n') ? text : text + '\n')),
  readStdin: () => readFileSync(0),
  // isatty(2) rather than process.stderr.isTTY, which builds the stderr stream to answer; node:tty
  // is loaded on first use (3 ms at start-up for every command otherwise).
  isTty: () => (createRequire(import.meta.url)('node:tty') as typeof import('node:tty')).isatty(2),
  errorRaw: (text) => writeAll(2, Buffer.from(text)),
};

// Random-access byte sources the image reader pulls from. A file is read through a small
// window with positional reads, so an image of any size is walked entry by entry without being
// loaded whole; in-memory bytes (stdin, tests) use the same interface.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

export interface ByteSource {
  /** Name used in error messages: the file path, or `<stdin>`. */
  readonly name: string;
  readonly size: number;
  /** Bytes [offset, offset+length); fewer only at the end of the source. The result may be a view that the next read reuses. */
  read(offset: number, length: number): Uint8Array;
  /** The open file descriptor, when the source is a file (for zero-copy readers such as splice). */
  readonly fd?: number;
  close(): void;
}

const WINDOW = 256 * 1024;

export class FileSource implements ByteSource {
  readonly size: number;
  readonly fd: number;
  private window = Buffer.alloc(0);
  private windowStart = 0;

  constructor(readonly name: string) {
    this.fd = openSync(name, 'r');
    this.size = fstatSync(this.fd).size;
  }

  read(offset: number, length: number): Uint8Array {
    const wanted = Math.max(0, Math.min(length, this.size - offset));
    if (offset >= this.windowStart && offset + wanted <= this.windowStart + this.window.length) {
      return this.window.subarray(offset - this.windowStart, offset - this.windowStart + wanted);
    }
    if (wanted > WINDOW) {
      // Large payloads get their own buffer; its size is bounded by the file size checked above.
      const big = Buffer.allocUnsafe(wanted);
      this.readFully(big, offset);
      return big;
    }
    if (this.window.length < WINDOW) this.window = Buffer.allocUnsafe(WINDOW);
    const got = this.readFully(this.window.subarray(0, Math.min(WINDOW, this.size - offset)), offset);
    this.window = this.window.subarray(0, got);
    this.windowStart = offset;
    return this.window.subarray(0, wanted);
  }

  private readFully(into: Buffer, offset: number): number {
    let done = 0;
    while (done < into.length) {
      const n = readSync(this.fd, into, done, into.length - done, offset + done);
      if (n === 0) break;
      done += n;
    }
    return done;
  }

  close(): void {
    closeSync(this.fd);
  }
}

export class MemorySource implements ByteSource {
  readonly size: number;
  constructor(private readonly bytes: Uint8Array, readonly name: string) {
    this.size = bytes.length;
  }
  read(offset: number, length: number): Uint8Array {
    return this.bytes.subarray(offset, Math.min(this.size, offset + length));
  }
  close(): void {}
}

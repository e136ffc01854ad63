// Random-access byte sources the image reader pulls from. A file is read through a small
// window with positional reads, so an image of any size is walked entry by entry without being
// loaded whole; in-memory bytes (stdin, tests) use the same interface.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';

export interface ByteSource {
  /** Name used in error messages: the file path, or `<stdin>`. */
  readonly name: string;
  readonly size: number;
  /**
   * Bytes [offset, offset+length); fewer only at the end of the source. The result may be a view
   * into a shared buffer, but that buffer is never overwritten: views stay valid.
   */
  read(offset: number, length: number): Uint8Array;
  /** Like read, but as (buffer, position in it): lets a decoder keep one reader per buffer. */
  locate(offset: number, length: number): { readonly buffer: Uint8Array; readonly at: number };
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
    const { buffer, at } = this.locate(offset, length);
    return buffer.subarray(at, at + Math.max(0, Math.min(length, this.size - offset)));
  }

  locate(offset: number, length: number): { buffer: Uint8Array; at: number } {
    const wanted = Math.max(0, Math.min(length, this.size - offset));
    if (offset >= this.windowStart && offset + wanted <= this.windowStart + this.window.length) {
      return { buffer: this.window, at: offset - this.windowStart };
    }
    if (wanted > WINDOW) {
      // Large payloads get their own buffer; its size is bounded by the file size checked above.
      const big = Buffer.allocUnsafe(wanted);
      this.readFully(big, offset);
      return { buffer: big, at: 0 };
    }
    // A fresh buffer each time: decoded messages keep views into the old one.
    const window = Buffer.allocUnsafe(Math.min(WINDOW, this.size - offset));
    this.window = window.subarray(0, this.readFully(window, offset));
    this.windowStart = offset;
    return { buffer: this.window, at: 0 };
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
  locate(offset: number): { buffer: Uint8Array; at: number } {
    return { buffer: this.bytes, at: offset };
  }
  close(): void {}
}

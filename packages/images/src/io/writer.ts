// Streaming image writer: the magic words, then entries appended one at a time (length prefix,
// message, payload), buffered and written with positional writes. Files are created 0600 by
// default: images decide what a restore runs, so they are not for other users to change.
import { closeSync, fsyncSync, openSync, writeSync } from 'node:fs';
import { entryMessageName, type ImageKind } from '../image-kinds.js';
import { messageSchema, type DecodedMessage } from '../json/message-json.js';
import { encodePayload, type EntryPayload } from './payload.js';

interface ByteSink {
  write(bytes: Uint8Array): void;
  close(sync: boolean): void;
}

const FLUSH_AT = 1 << 20;

class FileSink implements ByteSink {
  private readonly fd: number;
  private pending: Uint8Array[] = [];
  private pendingBytes = 0;
  constructor(path: string, mode: number) {
    this.fd = openSync(path, 'w', mode);
  }
  write(bytes: Uint8Array): void {
    if (bytes.length >= FLUSH_AT) {
      this.flush();
      this.writeAll(bytes);
      return;
    }
    this.pending.push(bytes);
    this.pendingBytes += bytes.length;
    if (this.pendingBytes >= FLUSH_AT) this.flush();
  }
  private flush(): void {
    if (this.pendingBytes === 0) return;
    this.writeAll(Buffer.concat(this.pending, this.pendingBytes));
    this.pending = [];
    this.pendingBytes = 0;
  }
  private writeAll(bytes: Uint8Array): void {
    for (let done = 0; done < bytes.length; ) done += writeSync(this.fd, bytes, done, bytes.length - done);
  }
  close(sync: boolean): void {
    try {
      this.flush();
      if (sync) fsyncSync(this.fd);
    } finally {
      closeSync(this.fd);
    }
  }
}

class MemorySink implements ByteSink {
  readonly chunks: Uint8Array[] = [];
  write(bytes: Uint8Array): void {
    this.chunks.push(bytes);
  }
  close(): void {}
}

export interface CreateOptions {
  /** File mode for a new image (default 0o600). */
  readonly mode?: number;
}

function u32le(value: number): Uint8Array {
  const bytes = new Uint8Array(4);
  new DataView(bytes.buffer).setUint32(0, value >>> 0, true);
  return bytes;
}

export class ImageWriter {
  private index = 0;
  private ghostChunks = false;
  private closed = false;

  private constructor(
    readonly kind: ImageKind,
    private readonly sink: ByteSink,
  ) {
    if (kind.entries.type === 'raw') throw new Error(`${kind.name} images hold raw bytes, not entries`);
    if (kind.leadingMagic !== undefined) sink.write(u32le(kind.leadingMagic));
    sink.write(u32le(kind.magic));
  }

  static create(path: string, kind: ImageKind, options: CreateOptions = {}): ImageWriter {
    return new ImageWriter(kind, new FileSink(path, options.mode ?? 0o600));
  }

  /** A writer that collects the image in memory; `finish()` returns its bytes. */
  static inMemory(kind: ImageKind): ImageWriter {
    return new ImageWriter(kind, new MemorySink());
  }

  /** Appends one entry: the message of the type this position holds, and its raw payload if the kind has one. */
  append(message: DecodedMessage, payload?: EntryPayload): void {
    const name = entryMessageName(this.kind, this.index, this.ghostChunks);
    const body = messageSchema(name).codec.encode(message).finish();
    this.sink.write(u32le(body.length));
    this.sink.write(body);
    if (this.kind.entries.type === 'ghost-file') {
      if (this.index === 0) this.ghostChunks = message.chunks === true;
      if (payload?.type === 'bytes') this.sink.write(payload.bytes);
    } else if (payload && this.kind.payload.type !== 'none') {
      for (const part of encodePayload(this.kind.payload, message, payload)) this.sink.write(part);
    }
    this.index++;
  }

  /** Flushes and closes; with `sync`, the data is on disk when this returns. Returns the bytes for in-memory writers. */
  finish(options: { sync?: boolean } = {}): Uint8Array | undefined {
    if (this.closed) return undefined;
    this.closed = true;
    this.sink.close(options.sync === true);
    if (this.sink instanceof MemorySink) return Buffer.concat(this.sink.chunks);
    return undefined;
  }
}


// Streaming image reader: identifies the kind (file name first, then magic), then yields the
// entries one at a time with their raw payloads. Every failure is an ImageFormatError naming the
// file, the entry index and the byte offset; no buffer is ever sized from a length the file
// cannot back (a length prefix or payload size is checked against the bytes left first).
import { BinaryReader } from '@bufbuild/protobuf/wire';
import { ImageFormatError, type ImageFormatReason } from '../errors.js';
import { entryMessageName, IMG_COMMON_MAGIC, IMG_SERVICE_MAGIC, kindForFileName, kindsForMagic, type ImageKind } from '../image-kinds.js';
import { findMissingRequired, messageSchema, type DecodedMessage } from '../json/message-json.js';
import { FileSource, MemorySource, type ByteSource } from './byte-source.js';
import { readPayload, type EntryPayload } from './payload.js';

export interface ImageEntry {
  readonly index: number;
  /** Byte offset of the entry's length prefix in the file. */
  readonly offset: number;
  readonly messageName: string;
  readonly message: DecodedMessage;
  readonly payload?: EntryPayload;
}

export interface OpenOptions {
  /** Force the kind instead of deducing it from the file name and magic. */
  readonly kind?: ImageKind;
}

function u32(bytes: Uint8Array, at = 0): number {
  return (bytes[at]! | (bytes[at + 1]! << 8) | (bytes[at + 2]! << 16) | (bytes[at + 3]! << 24)) >>> 0;
}

export class ImageReader {
  /** Offset of the first entry (after the magic words). */
  readonly dataOffset: number;

  private constructor(
    private readonly source: ByteSource,
    readonly kind: ImageKind,
    dataOffset: number,
  ) {
    this.dataOffset = dataOffset;
  }

  get file(): string {
    return this.source.name;
  }

  static open(path: string, options: OpenOptions = {}): ImageReader {
    let source: FileSource;
    try {
      source = new FileSource(path);
    } catch (error) {
      throw error;
    }
    try {
      return ImageReader.from(source, options, path);
    } catch (error) {
      source.close();
      throw error;
    }
  }

  /** Reads from bytes already in memory; `name` is used for the kind (if it looks like a file name) and in errors. */
  static fromBytes(bytes: Uint8Array, name = '<stdin>', options: OpenOptions = {}): ImageReader {
    return ImageReader.from(new MemorySource(bytes, name), options, name);
  }

  private static from(source: ByteSource, options: OpenOptions, name: string): ImageReader {
    const fail = (reason: ImageFormatReason, detail: string, value?: string): never => {
      throw new ImageFormatError({ file: source.name, reason, offset: 0, detail, ...(value ? { value } : {}) });
    };
    const byName = options.kind ?? kindForFileName(name);
    if (byName?.entries.type === 'raw') return new ImageReader(source, byName, 0);
    if (source.size < 4) fail('truncated', `${source.size} bytes is too short for an image magic`);
    const head = source.read(0, Math.min(8, source.size)).slice();
    const first = u32(head);
    let magic = first;
    let dataOffset = 4;
    let leading: number | undefined;
    if (first === IMG_COMMON_MAGIC || first === IMG_SERVICE_MAGIC) {
      if (source.size < 8) fail('truncated', 'the file ends after the first magic word');
      leading = first;
      magic = u32(head, 4);
      dataOffset = 8;
    }
    const hex = `0x${magic.toString(16).padStart(8, '0')}`;
    if (byName) {
      if (byName.magic !== magic || byName.leadingMagic !== leading) {
        fail('magic-mismatch', `the name says ${byName.name} (magic 0x${byName.magic.toString(16)}) but the file has magic ${hex}`, hex);
      }
      return new ImageReader(source, byName, dataOffset);
    }
    const candidates = kindsForMagic(magic).filter((k) => k.leadingMagic === leading);
    if (candidates.length === 0) {
      fail('unknown-magic', `${hex} is no CRIU image magic (raw images such as pages-N.img have no magic)`, hex);
    }
    return new ImageReader(source, candidates[0]!, dataOffset);
  }

  close(): void {
    this.source.close();
  }

  /** Yields every entry in file order. */
  *entries(): Generator<ImageEntry> {
    if (this.kind.entries.type === 'raw') {
      throw new ImageFormatError({ file: this.file, reason: 'bad-value', detail: `${this.kind.name} images hold raw bytes, not entries` });
    }
    const size = this.source.size;
    let offset = this.dataOffset;
    let index = 0;
    let ghostChunks = false;
    let protobufBuffer: Uint8Array | undefined;
    let protobufReader: BinaryReader | undefined;
    while (offset < size) {
      const entryOffset = offset;
      const fail = (reason: ImageFormatReason, detail: string, extra: { field?: string; value?: string; offset?: number } = {}): never => {
        throw new ImageFormatError({ file: this.file, reason, entryIndex: index, offset: entryOffset, detail, ...extra });
      };
      if (size - offset < 4) fail('truncated', `${size - offset} stray bytes where a 4-byte length prefix should be`);
      const prefix = this.source.locate(offset, 4);
      const length = u32(prefix.buffer, prefix.at);
      offset += 4;
      if (length > size - offset) {
        fail('length-beyond-end', `length prefix says ${length} bytes but only ${size - offset} remain`, { value: String(length) });
      }
      const messageName = entryMessageName(this.kind, index, ghostChunks);
      // One protobuf reader per source buffer, positioned at each entry in turn: a reader per
      // entry costs more than decoding a small entry. Decoded bytes fields are views into the
      // buffer, which the source never overwrites.
      const { buffer, at } = this.source.locate(offset, length);
      if (buffer !== protobufBuffer) {
        protobufBuffer = buffer;
        protobufReader = new BinaryReader(buffer);
      }
      protobufReader!.pos = at;
      offset += length;
      let message: DecodedMessage;
      try {
        message = messageSchema(messageName).codec.decode(protobufReader!, length) as DecodedMessage;
        if (protobufReader!.pos !== at + length) throw new Error('the message does not end where its length prefix says');
      } catch (error) {
        return fail('bad-protobuf', `not a valid ${messageName}: ${(error as Error).message}`);
      }
      const missing = findMissingRequired(messageName, message);
      if (missing) fail('missing-required-field', `${messageName} lacks required field ${missing}`, { field: missing });

      let payload: EntryPayload | undefined;
      if (this.kind.entries.type === 'ghost-file') {
        if (index === 0) {
          ghostChunks = message.chunks === true;
          if (!ghostChunks) {
            // Unchunked ghost file: its contents run to the end of the image.
            payload = { type: 'bytes', bytes: this.source.read(offset, size - offset) };
            offset = size;
          }
        } else {
          const len = Number(message.len ?? 0);
          if (len > size - offset) fail('length-beyond-end', `ghost chunk of ${len} bytes but only ${size - offset} remain`, { field: 'len', value: String(len) });
          payload = { type: 'bytes', bytes: this.source.read(offset, len) };
          offset += len;
        }
      } else if (this.kind.payload.type !== 'none') {
        const read = readPayload(this.kind.payload, message, this.source, offset, (field, detail, value) =>
          fail('length-beyond-end', detail, { field, value, offset }),
        );
        payload = read.payload;
        offset = read.end;
      }
      yield { index, offset: entryOffset, messageName, message, ...(payload ? { payload } : {}) };
      index++;
    }
  }

  /** Number of entries, without decoding them (crit info's `count`; the pagemap head is not counted). */
  countEntries(): number {
    let count = 0;
    for (const _ of this.entries()) count++;
    return this.kind.entries.type === 'head-then' ? count - 1 : count;
  }
}

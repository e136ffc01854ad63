// The closed set of ways an image (or its JSON form) can be wrong. Every error carries the
// evidence a user needs to find the bad byte: the file, the entry index, the byte offset of
// the entry (or of the bad field) and, for structured problems, the field path.

export type ImageFormatReason =
  /** The file ends inside a magic, a length prefix, an entry or an entry's raw payload. */
  | 'truncated'
  /** The first words are no known image magic. */
  | 'unknown-magic'
  /** The magic belongs to another kind of image than the file name says. */
  | 'magic-mismatch'
  /** A length prefix (or a payload size taken from an entry) points past the end of the file. */
  | 'length-beyond-end'
  /** The entry bytes are not a valid protobuf message of the expected type. */
  | 'bad-protobuf'
  /** A `required` field of the schema is absent. */
  | 'missing-required-field'
  /** A field holds a value outside what the image format allows. */
  | 'bad-value'
  /** JSON input does not have the shape of an image. */
  | 'bad-json'
  /** The file name matches no image kind and there is no magic to go by. */
  | 'unknown-image-kind';

export interface ImageFormatEvidence {
  /** Path (or name) of the image file, `<stdin>` for standard input. */
  readonly file: string;
  readonly reason: ImageFormatReason;
  /** Index of the entry in the file, 0-based, when the problem is inside one. */
  readonly entryIndex?: number;
  /** Byte offset in the file where the bad part starts. */
  readonly offset?: number;
  /** Dotted path of the bad field (`vmas[3].start`), for field-level problems. */
  readonly field?: string;
  /** The offending value, as text. */
  readonly value?: string;
  /** A sentence saying what is wrong. */
  readonly detail: string;
}

export class ImageFormatError extends Error implements ImageFormatEvidence {
  readonly file: string;
  readonly reason: ImageFormatReason;
  readonly entryIndex?: number;
  readonly offset?: number;
  readonly field?: string;
  readonly value?: string;
  readonly detail: string;

  constructor(evidence: ImageFormatEvidence) {
    super(ImageFormatError.describe(evidence));
    this.name = 'ImageFormatError';
    this.file = evidence.file;
    this.reason = evidence.reason;
    this.detail = evidence.detail;
    if (evidence.entryIndex !== undefined) this.entryIndex = evidence.entryIndex;
    if (evidence.offset !== undefined) this.offset = evidence.offset;
    if (evidence.field !== undefined) this.field = evidence.field;
    if (evidence.value !== undefined) this.value = evidence.value;
  }

  static describe(e: ImageFormatEvidence): string {
    const where = [e.file];
    if (e.entryIndex !== undefined) where.push(`entry ${e.entryIndex}`);
    if (e.offset !== undefined) where.push(`offset ${e.offset}`);
    if (e.field !== undefined) where.push(`field ${e.field}`);
    return `${where.join(', ')}: ${e.reason}: ${e.detail}`;
  }
}

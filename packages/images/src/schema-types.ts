// Shapes of the generated field tables (src/gen/schema.ts). The tables are produced from the
// .proto schemas by scripts/generate.mjs; the JSON layer and the validation walk them.
import type { BinaryReader, BinaryWriter } from '@bufbuild/protobuf/wire';

export type ScalarType =
  | 'double' | 'float' | 'int64' | 'uint64' | 'int32' | 'fixed64' | 'fixed32' | 'bool' | 'string'
  | 'bytes' | 'uint32' | 'sfixed32' | 'sfixed64' | 'sint32' | 'sint64';

export type FieldType = ScalarType | 'message' | 'enum' | 'group';

/** One field of a schema message, with CRIU's `(criu)` formatting options as crit reads them. */
export interface FieldSchema {
  readonly name: string;
  readonly number: number;
  readonly type: FieldType;
  readonly label: 'optional' | 'required' | 'repeated';
  /** Full name of the message or enum type, for `message` and `enum` fields. */
  readonly typeName?: string;
  readonly defaultValue?: string;
  readonly packed?: boolean;
  /** `(criu).hex`: shown as `0x…` by crit --pretty (and, inherited, every field below it). */
  readonly hex?: boolean;
  /** `(criu).ipadd`: a repeated u32 holding an IPv4 or IPv6 address in network order. */
  readonly ipadd?: boolean;
  /** `(criu).flags`: name of the flag table used to show the value as `A | B`. */
  readonly flags?: string;
  /** `(criu).dev`: a kernel-encoded dev_t (`major << 20 | minor`), shown as `major:minor`. */
  readonly dev?: boolean;
  /** `(criu).odev`: a dev_t in the old glibc encoding (with `dev`). */
  readonly odev?: boolean;
  /** `(criu).dict`: name of the value-to-name table (for example socket families). */
  readonly dict?: string;
  /** `(criu).conv`: a custom bytes conversion (`unix_name`: quoted-printable). */
  readonly conv?: string;
}

/** The encode/decode pair ts-proto generates for every message. */
export interface MessageCodec<T = unknown> {
  encode(message: T, writer?: BinaryWriter): BinaryWriter;
  decode(input: BinaryReader | Uint8Array, length?: number): T;
}

export interface MessageSchema {
  readonly name: string;
  readonly codec: MessageCodec<any>;
  readonly fields: readonly FieldSchema[];
}

export interface EnumSchema {
  readonly values: ReadonlyMap<number, string>;
}

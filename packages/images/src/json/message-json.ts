// Messages to and from crit's JSON form, driven by the generated field tables.
//
// To JSON (crit's pb2dict): only present fields, in field-number order; enums by name; bytes as
// MIME base64 (or quoted-printable for `(criu).conv = "unix_name"`). With pretty, integer fields
// are shown by their `(criu)` option: hex (inherited by everything below a hex field), dev_t as
// major:minor, flag names, dictionary names; repeated `ipadd` words as one address string.
//
// From JSON (crit's dict2pb): the same forms are accepted back, plus plain numbers and any
// Python int literal for integer fields. Input is checked with zod schemas built from the same
// tables, so a wrong field is reported by its path (`vmas[2].prot`).
//
// zod is loaded on first use: decoding (the dump and restore paths) never needs it, and its
// start-up cost would land on every `criu-ts` command.
import { createRequire } from 'node:module';
import type { z as Zod } from 'zod';
import { ENUMS, MESSAGES } from '../gen/schema.js';
import type { FieldSchema, MessageSchema } from '../schema-types.js';
import { base64LinesJsonLiteral, decodeBase64Lines, decodeQuotedPrintable, encodeBase64Lines, encodeQuotedPrintable } from './byte-text.js';
import {
  dictionaryName, dictionaryValue, formatDev, formatFlags, formatIpAddress, hasFlagTable, parseDev,
  parseFlags, parseIpAddress, parsePyInt, pyHex,
} from './crit-format.js';
import { pyString, type PyJson } from './python-json.js';

export type DecodedMessage = Record<string, unknown>;

let zodModule: typeof Zod | undefined;
function zod(): typeof Zod {
  zodModule ??= (createRequire(import.meta.url)('zod') as { z: typeof Zod }).z;
  return zodModule;
}

export function messageSchema(name: string): MessageSchema {
  const schema = MESSAGES[name];
  if (!schema) throw new Error(`no schema for message ${name}`);
  return schema;
}

const fieldsByNumberCache = new Map<string, readonly FieldSchema[]>();
function fieldsInNumberOrder(schema: MessageSchema): readonly FieldSchema[] {
  let fields = fieldsByNumberCache.get(schema.name);
  if (!fields) {
    fields = [...schema.fields].sort((a, b) => a.number - b.number);
    fieldsByNumberCache.set(schema.name, fields);
  }
  return fields;
}

const INTEGER_TYPES = new Set([
  'int64', 'uint64', 'int32', 'uint32', 'fixed64', 'fixed32', 'sfixed32', 'sfixed64', 'sint32', 'sint64',
]);
const WIDE_TYPES = new Set(['int64', 'uint64', 'fixed64', 'sfixed64', 'sint64']);

// ---------------------------------------------------------------- message -> JSON

export function messageToCritJson(schemaName: string, message: DecodedMessage, pretty: boolean, inheritedHex = false): { [key: string]: PyJson } {
  const schema = messageSchema(schemaName);
  const out: { [key: string]: PyJson } = {};
  for (const field of fieldsInNumberOrder(schema)) {
    const value = message[field.name];
    if (value === undefined) continue;
    if (field.label === 'repeated') {
      const values = value as unknown[];
      if (values.length === 0) continue;
      if (pretty && field.ipadd) {
        out[field.name] = [formatIpAddress(values as number[])];
      } else {
        out[field.name] = values.map((v) => valueToCritJson(field, v, pretty, inheritedHex));
      }
    } else {
      out[field.name] = valueToCritJson(field, value, pretty, inheritedHex);
    }
  }
  return out;
}

/**
 * The `"key": value` members of a message's crit JSON, already as text at nesting `depth`: the
 * same text pyJsonStringify would print for messageToCritJson's result, without building it.
 * Large images (a pagemap of 100k entries) decode several times faster this way.
 */
export function messageMembersText(schemaName: string, message: DecodedMessage, pretty: boolean, indent: number | undefined, depth: number, inheritedHex = false): string[] {
  const schema = messageSchema(schemaName);
  const members: string[] = [];
  // A list value stands at depth + 1 (as the member does); its items at depth + 2.
  const item = indent === undefined ? '' : '\n' + ' '.repeat(indent * (depth + 2));
  const close = indent === undefined ? '' : '\n' + ' '.repeat(indent * (depth + 1));
  const comma = indent === undefined ? ', ' : ',';
  for (const field of fieldsInNumberOrder(schema)) {
    const value = message[field.name];
    if (value === undefined) continue;
    let text: string;
    if (field.label === 'repeated') {
      const values = value as unknown[];
      if (values.length === 0) continue;
      if (pretty && field.ipadd) {
        text = '[' + item + pyString(formatIpAddress(values as number[])) + close + ']';
      } else {
        text = '[';
        for (let i = 0; i < values.length; i++) text += (i > 0 ? comma : '') + item + valueText(field, values[i], pretty, inheritedHex, indent, depth + 1);
        text += close + ']';
      }
    } else {
      text = valueText(field, value, pretty, inheritedHex, indent, depth);
    }
    members.push(pyString(field.name) + ': ' + text);
  }
  return members;
}

/** Members as a JSON object at nesting `depth`. */
export function objectText(members: readonly string[], indent: number | undefined, depth: number): string {
  if (members.length === 0) return '{}';
  if (indent === undefined) return '{' + members.join(', ') + '}';
  const inner = '\n' + ' '.repeat(indent * (depth + 1));
  return '{' + inner + members.join(',' + inner) + '\n' + ' '.repeat(indent * depth) + '}';
}

function valueText(field: FieldSchema, value: unknown, pretty: boolean, inheritedHex: boolean, indent: number | undefined, depth: number): string {
  if (field.type === 'message') {
    const hex = inheritedHex || field.hex === true;
    return objectText(messageMembersText(field.typeName!, value as DecodedMessage, pretty, indent, depth + 1, hex), indent, depth + 1);
  }
  if (field.type === 'bytes' && field.conv !== 'unix_name') return base64LinesJsonLiteral(value as Uint8Array);
  const json = valueToCritJson(field, value, pretty, inheritedHex);
  switch (typeof json) {
    case 'string':
      return pyString(json);
    case 'boolean':
      return json ? 'true' : 'false';
    default:
      return String(json);
  }
}

function valueToCritJson(field: FieldSchema, value: unknown, pretty: boolean, inheritedHex: boolean): PyJson {
  const hex = inheritedHex || field.hex === true;
  switch (field.type) {
    case 'message':
      return messageToCritJson(field.typeName!, value as DecodedMessage, pretty, hex);
    case 'bytes':
      return field.conv === 'unix_name' ? encodeQuotedPrintable(value as Uint8Array) : encodeBase64Lines(value as Uint8Array);
    case 'enum':
      return ENUMS[field.typeName!]?.values.get(value as number) ?? (value as number);
    case 'bool':
      return value as boolean;
    case 'string':
      return value as string;
    case 'double':
    case 'float':
      return value as number;
    default: {
      const integer = value as number | bigint;
      if (!pretty) return integer;
      const wide = BigInt(integer);
      if (hex) return pyHex(wide);
      if (field.dev) return formatDev(wide, field.odev === true);
      if (field.flags) return formatFlags(field.flags, wide);
      if (field.dict) return dictionaryName(field.dict, field.name, wide) ?? integer;
      return integer;
    }
  }
}

// ---------------------------------------------------------------- JSON -> message

const RANGES: Record<string, readonly [bigint, bigint]> = {
  int32: [-(2n ** 31n), 2n ** 31n - 1n],
  sint32: [-(2n ** 31n), 2n ** 31n - 1n],
  sfixed32: [-(2n ** 31n), 2n ** 31n - 1n],
  uint32: [0n, 2n ** 32n - 1n],
  fixed32: [0n, 2n ** 32n - 1n],
  int64: [-(2n ** 63n), 2n ** 63n - 1n],
  sint64: [-(2n ** 63n), 2n ** 63n - 1n],
  sfixed64: [-(2n ** 63n), 2n ** 63n - 1n],
  uint64: [0n, 2n ** 64n - 1n],
  fixed64: [0n, 2n ** 64n - 1n],
};

function integerFromJson(field: FieldSchema, input: unknown, ctx: Zod.RefinementCtx): number | bigint {
  let value: bigint | undefined;
  if (typeof input === 'bigint') value = input;
  else if (typeof input === 'number') value = Number.isInteger(input) ? BigInt(input) : undefined;
  else if (typeof input === 'boolean') value = input ? 1n : 0n;
  else if (typeof input === 'string') {
    if (field.dev) value = parseDev(input, field.odev === true);
    else if (field.flags && hasFlagTable(field.flags)) value = parseFlags(field.flags, input);
    else if (field.dict) value = dictionaryValue(field.dict, field.name, input) ?? parsePyInt(input);
    else value = parsePyInt(input);
  }
  if (value === undefined) {
    ctx.addIssue({ code: 'custom', message: `expected an integer (${field.type}) but got ${describe(input)}` });
    return zod().NEVER;
  }
  const [min, max] = RANGES[field.type]!;
  if (value < min || value > max) {
    ctx.addIssue({ code: 'custom', message: `${value} is out of range for ${field.type}` });
    return zod().NEVER;
  }
  return WIDE_TYPES.has(field.type) ? value : Number(value);
}

function describe(input: unknown): string {
  const text = typeof input === 'string' ? JSON.stringify(input) : String(input);
  return text.length > 60 ? text.slice(0, 57) + '...' : text;
}

const zodCache = new Map<string, Zod.ZodType>();

/** The zod schema that checks and converts crit JSON of one message into a codec object. */
export function messageZod(schemaName: string): Zod.ZodType {
  const cached = zodCache.get(schemaName);
  if (cached) return cached;
  const schema = messageSchema(schemaName);
  // Sub-message fields refer back through z.lazy, so recursive message types terminate.
  const shape: Record<string, Zod.ZodType> = {};
  for (const field of schema.fields) shape[field.name] = fieldZod(field).optional();
  const object = zod().strictObject(shape);
  zodCache.set(schemaName, object);
  return object;
}

function fieldZod(field: FieldSchema): Zod.ZodType {
  const single = singleValueZod(field);
  if (field.label !== 'repeated') return single;
  if (field.ipadd) {
    return zod().array(zod().unknown()).transform((items, ctx) => {
      if (items.length > 0 && typeof items[0] === 'string') {
        const words = parseIpAddress(items[0]);
        if (!words) {
          ctx.addIssue({ code: 'custom', message: `not an IP address: ${describe(items[0])}` });
          return zod().NEVER;
        }
        return words;
      }
      const parsed = zod().array(single).safeParse(items);
      if (!parsed.success) {
        for (const issue of parsed.error.issues) ctx.addIssue({ code: 'custom', message: issue.message, path: issue.path as PropertyKey[] });
        return zod().NEVER;
      }
      return parsed.data;
    });
  }
  return zod().array(single);
}

function singleValueZod(field: FieldSchema): Zod.ZodType {
  if (INTEGER_TYPES.has(field.type)) {
    return zod().unknown().transform((input, ctx) => integerFromJson(field, input, ctx));
  }
  switch (field.type) {
    case 'bool':
      return zod().boolean();
    case 'string':
      return zod().string();
    case 'double':
    case 'float':
      return zod().number();
    case 'bytes':
      return zod().string().transform((text, ctx) => {
        if (field.conv === 'unix_name') return decodeQuotedPrintable(text);
        const bytes = decodeBase64Lines(text);
        if (!bytes) {
          ctx.addIssue({ code: 'custom', message: `not base64: ${describe(text)}` });
          return zod().NEVER;
        }
        return bytes;
      });
    case 'enum':
      return zod().union([zod().string(), zod().number().int()]).transform((input, ctx) => {
        const values = ENUMS[field.typeName!]?.values;
        if (typeof input === 'number') {
          if (values?.has(input)) return input;
        } else if (values) {
          for (const [number, name] of values) if (name === input) return number;
        }
        const known = values ? [...values.values()].join(', ') : '';
        ctx.addIssue({ code: 'custom', message: `${describe(input)} is not a value of ${field.typeName} (${known})` });
        return zod().NEVER;
      });
    case 'message':
      return zod().lazy(() => messageZod(field.typeName!));
    default:
      return zod().never();
  }
}

// ---------------------------------------------------------------- presence checks

/** Path of the first `required` field missing in a decoded message (or its sub-messages), if any. */
export function findMissingRequired(schemaName: string, message: DecodedMessage, path = ''): string | undefined {
  const schema = messageSchema(schemaName);
  for (const field of schema.fields) {
    const value = message[field.name];
    const here = path ? `${path}.${field.name}` : field.name;
    if (value === undefined) {
      if (field.label === 'required') return here;
      continue;
    }
    if (field.type !== 'message') continue;
    if (field.label === 'repeated') {
      const items = value as DecodedMessage[];
      for (let i = 0; i < items.length; i++) {
        const missing = findMissingRequired(field.typeName!, items[i]!, `${here}[${i}]`);
        if (missing) return missing;
      }
    } else {
      const missing = findMissingRequired(field.typeName!, value as DecodedMessage, here);
      if (missing) return missing;
    }
  }
  return undefined;
}

// Whole images to and from crit's JSON form: { "magic": "CORE", "entries": [ ... ] }, each entry
// the message's fields plus "extra" for its raw payload.
import { createRequire } from 'node:module';
import type { z as Zod } from 'zod';
import { ImageFormatError } from '../errors.js';
import { entryMessageName, kindForFileName, kindForName, type ImageKind } from '../image-kinds.js';
import { payloadFromCritJson, payloadToCritJson, payloadToCritJsonText, type EntryPayload } from '../io/payload.js';
import type { ImageEntry, ImageReader } from '../io/reader.js';
import { ImageWriter } from '../io/writer.js';
import { findMissingRequired, messageMembersText, messageToCritJson, messageZod, objectText, type DecodedMessage } from './message-json.js';
import { pyJsonStringify, pyString, type PyJson } from './python-json.js';

export interface DecodeOptions {
  /** crit --pretty: hex, flag names, devices and addresses formatted. */
  readonly pretty?: boolean;
  /** crit show --nopl: payloads replaced by their size (`... <64KB>`). */
  readonly noPayload?: boolean;
}

/** Python crit's human-readable size for --nopl. */
function humanSize(bytes: number): string {
  let n = bytes;
  for (const unit of ['', 'K', 'M', 'G', 'T', 'P', 'E', 'Z']) {
    if (n < 1024) return Number.isInteger(n) ? `${Math.trunc(n)}${unit}B` : `${n.toFixed(1)}${unit}B`;
    n /= 1024;
  }
  return `${n.toFixed(1)}YB`;
}

function payloadSize(payload: EntryPayload): number {
  switch (payload.type) {
    case 'bytes':
      return payload.bytes.length;
    case 'tcp-queues':
      return payload.inq.length + payload.outq.length;
    case 'semaphores':
      return payload.values.length * 2;
    case 'messages':
      return payload.messages.reduce((sum, m) => sum + m.text.length, 0);
  }
}

function entryToCritJson(entry: ImageEntry, ghost: boolean, options: DecodeOptions): { [key: string]: PyJson } {
  const json: { [key: string]: PyJson } = messageToCritJson(entry.messageName, entry.message, options.pretty === true);
  if (entry.payload) {
    if (!options.noPayload) json.extra = payloadToCritJson(entry.payload);
    else if (!ghost) json.extra = `... <${humanSize(payloadSize(entry.payload))}>`;
  }
  return json;
}

/** The crit JSON of a whole image, as a value. */
export function imageToCritJson(reader: ImageReader, options: DecodeOptions = {}): { magic: string; entries: PyJson[] } {
  const ghost = reader.kind.entries.type === 'ghost-file';
  const entries: PyJson[] = [];
  for (const entry of reader.entries()) entries.push(entryToCritJson(entry, ghost, options));
  return { magic: reader.kind.name, entries };
}

/**
 * The crit JSON text of a whole image, produced entry by entry: the same text as
 * pyJsonStringify(imageToCritJson(...)) without holding every entry of a large image at once.
 */
export function* imageToCritJsonText(reader: ImageReader, options: DecodeOptions = {}): Generator<string> {
  const indent = options.pretty === true ? 4 : undefined;
  const newline = (depth: number): string => (indent === undefined ? '' : '\n' + ' '.repeat(indent * depth));
  const comma = indent === undefined ? ', ' : ',';
  const ghost = reader.kind.entries.type === 'ghost-file';
  yield '{' + newline(1) + '"magic": ' + pyString(reader.kind.name) + comma + newline(1) + '"entries": ';
  let count = 0;
  for (const entry of reader.entries()) {
    const members = messageMembersText(entry.messageName, entry.message, options.pretty === true, indent, 2);
    if (entry.payload) {
      if (!options.noPayload) members.push('"extra": ' + payloadToCritJsonText(entry.payload, indent, 3));
      else if (!ghost) members.push('"extra": ' + pyString(`... <${humanSize(payloadSize(entry.payload))}>`));
    }
    yield (count === 0 ? '[' : comma) + newline(2) + objectText(members, indent, 2);
    count++;
  }
  yield (count === 0 ? '[]' : newline(1) + ']') + newline(0) + '}';
}

let imageShapeSchema: Zod.ZodType<{ magic: string; entries: Array<Record<string, unknown>> }> | undefined;
/** The outer shape of image JSON; zod is loaded only when JSON is encoded. */
function imageShape() {
  if (!imageShapeSchema) {
    const { z } = createRequire(import.meta.url)('zod') as { z: typeof Zod };
    imageShapeSchema = z.object({ magic: z.string(), entries: z.array(z.record(z.string(), z.unknown())) });
  }
  return imageShapeSchema;
}

function issuePath(path: ReadonlyArray<PropertyKey>): string {
  return path.map((p, i) => (typeof p === 'number' ? `[${p}]` : i === 0 ? String(p) : `.${String(p)}`)).join('');
}

/**
 * Encodes crit JSON (already parsed) into image bytes. `file` names the input in errors;
 * `outputName`, when it is an image file name, picks the kind among those sharing a magic.
 */
export function imageFromCritJson(json: unknown, file: string, outputName?: string): Uint8Array {
  const bad = (detail: string, extra: { entryIndex?: number; field?: string; value?: string } = {}): never => {
    throw new ImageFormatError({ file, reason: 'bad-json', detail, ...extra });
  };
  const top = imageShape().safeParse(json);
  if (!top.success) {
    const issue = top.error.issues[0]!;
    return bad(`${issue.message} at ${issuePath(issue.path) || 'top level'}`, { field: issuePath(issue.path) || undefined });
  }
  const named = outputName ? kindForFileName(outputName) : undefined;
  const kind: ImageKind | undefined = named && named.name === top.data.magic ? named : kindForName(top.data.magic);
  if (!kind) return bad(`unknown image magic name ${JSON.stringify(top.data.magic)}`, { field: 'magic', value: top.data.magic });

  const writer = ImageWriter.inMemory(kind);
  let ghostChunks = false;
  top.data.entries.forEach((rawEntry, index) => {
    const { extra, ...fields } = rawEntry;
    const messageName = entryMessageName(kind, index, ghostChunks);
    const parse = (name: string, value: unknown, path: string): DecodedMessage => {
      const parsed = messageZod(name).safeParse(value);
      if (!parsed.success) {
        const issue = parsed.error.issues[0]!;
        const field = [path, issuePath(issue.path)].filter(Boolean).join('.');
        return bad(`${name}: ${issue.message}${field ? ` at ${field}` : ''}`, { entryIndex: index, field });
      }
      return parsed.data as DecodedMessage;
    };
    const message = parse(messageName, fields, '');
    const missing = findMissingRequired(messageName, message);
    if (missing) bad(`${messageName} lacks required field ${missing}`, { entryIndex: index, field: missing });
    if (kind.entries.type === 'ghost-file' && index === 0) ghostChunks = message.chunks === true;

    let payload: EntryPayload | undefined;
    // crit writes a payload only when "extra" is present and non-empty.
    if (extra !== undefined && extra !== '' && extra !== null) {
      const rule = kind.entries.type === 'ghost-file' ? ({ type: 'sized', sizeField: 'len' } as const) : kind.payload;
      const parsed = payloadFromCritJson(rule, extra, (value, path) => parse('ipc_msg', value, path));
      if (typeof parsed === 'string') bad(parsed, { entryIndex: index, field: 'extra' });
      else payload = parsed;
    }
    writer.append(message, payload);
  });
  return writer.finish()!;
}

// Raw bytes that follow an entry's message, per image kind (see PayloadRule), and their crit
// JSON form ("extra"): base64 text for byte runs, {inq, outq} for TCP queues, a number list for
// semaphores, and [message, base64, message, base64, ...] for SysV message queues.
import type { PayloadRule } from '../image-kinds.js';
import { base64LinesJsonLiteral, decodeBase64Lines, encodeBase64Lines } from '../json/byte-text.js';
import { findMissingRequired, messageSchema, messageToCritJson, type DecodedMessage } from '../json/message-json.js';
import { pyJsonStringify, type PyJson } from '../json/python-json.js';
import type { ByteSource } from './byte-source.js';

export type EntryPayload =
  | { readonly type: 'bytes'; readonly bytes: Uint8Array }
  | { readonly type: 'tcp-queues'; readonly inq: Uint8Array; readonly outq: Uint8Array }
  | { readonly type: 'semaphores'; readonly values: readonly number[] }
  | { readonly type: 'messages'; readonly messages: ReadonlyArray<{ readonly message: DecodedMessage; readonly text: Uint8Array }> };

const roundUp = (n: number, to: number): number => Math.ceil(n / to) * to;

type Overrun = (field: string, detail: string, value: string) => never;

/** Reads the payload of one entry starting at `offset`; `overrun` reports sizes the file cannot back. */
export function readPayload(
  rule: PayloadRule,
  message: DecodedMessage,
  source: ByteSource,
  offset: number,
  overrun: Overrun,
): { payload: EntryPayload; end: number } {
  const left = () => source.size - offset;
  const take = (length: number, field: string): Uint8Array => {
    if (length > left()) overrun(field, `${field} says ${length} payload bytes but only ${left()} remain`, String(length));
    const bytes = source.read(offset, length);
    offset += length;
    return bytes;
  };
  const num = (field: string): number => Number(message[field] ?? 0);
  switch (rule.type) {
    case 'none':
      throw new Error('readPayload called for a kind without payload');
    case 'sized':
      return { payload: { type: 'bytes', bytes: take(num(rule.sizeField), rule.sizeField) }, end: offset };
    case 'tcp-queues': {
      const inq = take(num('inq_len'), 'inq_len');
      const outq = take(num('outq_len'), 'outq_len');
      return { payload: { type: 'tcp-queues', inq, outq }, end: offset };
    }
    case 'bpf-map':
      return { payload: { type: 'bytes', bytes: take(num('keys_bytes') + num('values_bytes'), 'keys_bytes') }, end: offset };
    case 'ipc-shm': {
      const size = num('size');
      const bytes = take(size, 'size');
      take(roundUp(size, 4) - size, 'size');
      return { payload: { type: 'bytes', bytes }, end: offset };
    }
    case 'ipc-sem': {
      const count = num('nsems');
      const raw = take(count * 2, 'nsems');
      take(roundUp(count * 2, 8) - count * 2, 'nsems');
      const view = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
      const values = Array.from({ length: count }, (_, i) => view.getUint16(i * 2, true));
      return { payload: { type: 'semaphores', values }, end: offset };
    }
    case 'ipc-msg': {
      const messages: Array<{ message: DecodedMessage; text: Uint8Array }> = [];
      const count = num('qnum');
      for (let i = 0; i < count && left() > 0; i++) {
        if (left() < 4) overrun('qnum', `message ${i} of the queue: no room for its length prefix`, String(count));
        const lengthBytes = take(4, 'qnum');
        const length = new DataView(lengthBytes.buffer).getUint32(0, true);
        const body = take(length, 'qnum');
        let decoded: DecodedMessage;
        try {
          decoded = messageSchema('ipc_msg').codec.decode(body) as DecodedMessage;
        } catch (error) {
          return overrun('qnum', `message ${i} of the queue is not a valid ipc_msg: ${(error as Error).message}`, String(count));
        }
        const missing = findMissingRequired('ipc_msg', decoded);
        if (missing) overrun(`qnum`, `message ${i} of the queue lacks ${missing}`, String(count));
        const size = Number(decoded.msize ?? 0);
        const text = take(size, 'msize');
        take(roundUp(size, 8) - size, 'msize');
        messages.push({ message: decoded, text });
      }
      return { payload: { type: 'messages', messages }, end: offset };
    }
  }
}

/** crit's "extra" as JSON text at nesting `depth` (the fast path for large payloads). */
export function payloadToCritJsonText(payload: EntryPayload, indent: number | undefined, depth: number): string {
  switch (payload.type) {
    case 'bytes':
      return base64LinesJsonLiteral(payload.bytes);
    case 'tcp-queues': {
      if (indent === undefined) return `{"inq": ${base64LinesJsonLiteral(payload.inq)}, "outq": ${base64LinesJsonLiteral(payload.outq)}}`;
      const inner = '\n' + ' '.repeat(indent * (depth + 1));
      return `{${inner}"inq": ${base64LinesJsonLiteral(payload.inq)},${inner}"outq": ${base64LinesJsonLiteral(payload.outq)}\n${' '.repeat(indent * depth)}}`;
    }
    default:
      return pyJsonStringify(payloadToCritJson(payload), indent, depth);
  }
}

/** crit's "extra" value for a payload. */
export function payloadToCritJson(payload: EntryPayload): PyJson {
  switch (payload.type) {
    case 'bytes':
      return encodeBase64Lines(payload.bytes);
    case 'tcp-queues':
      return { inq: encodeBase64Lines(payload.inq), outq: encodeBase64Lines(payload.outq) };
    case 'semaphores':
      return [...payload.values];
    case 'messages':
      return payload.messages.flatMap(({ message, text }) => [messageToCritJson('ipc_msg', message, false), encodeBase64Lines(text)]);
  }
}

/** Bytes that follow the encoded entry in the file, for a payload. */
export function encodePayload(rule: PayloadRule, message: DecodedMessage, payload: EntryPayload): Uint8Array[] {
  const pad = (n: number) => new Uint8Array(n);
  switch (payload.type) {
    case 'bytes': {
      if (rule.type === 'ipc-shm') {
        const size = Number(message.size ?? 0);
        const data = payload.bytes.subarray(0, size);
        return [data, pad(roundUp(size, 4) - data.length)];
      }
      return [payload.bytes];
    }
    case 'tcp-queues':
      return [payload.inq, payload.outq];
    case 'semaphores': {
      const raw = new Uint8Array(roundUp(payload.values.length * 2, 8));
      const view = new DataView(raw.buffer);
      payload.values.forEach((v, i) => view.setUint16(i * 2, v, true));
      return [raw];
    }
    case 'messages': {
      const parts: Uint8Array[] = [];
      for (const { message: msg, text } of payload.messages) {
        const body = messageSchema('ipc_msg').codec.encode(msg).finish();
        const prefix = new Uint8Array(4);
        new DataView(prefix.buffer).setUint32(0, body.length, true);
        const size = Number(msg.msize ?? 0);
        const data = text.subarray(0, size);
        parts.push(prefix, body, data, pad(roundUp(size, 8) - data.length));
      }
      return parts;
    }
  }
}

/** Parses crit's "extra" back into a payload; returns a message describing the problem instead when it has the wrong shape. */
export function payloadFromCritJson(rule: PayloadRule, extra: unknown, parseMessage: (json: unknown, path: string) => DecodedMessage): EntryPayload | string {
  const bytes = (value: unknown, what: string): Uint8Array | string => {
    if (typeof value !== 'string') return `${what} must be base64 text`;
    return decodeBase64Lines(value) ?? `${what} is not base64`;
  };
  switch (rule.type) {
    case 'none':
      return 'this kind of image has no payload';
    case 'sized':
    case 'bpf-map':
    case 'ipc-shm': {
      const b = bytes(extra, 'extra');
      return typeof b === 'string' ? b : { type: 'bytes', bytes: b };
    }
    case 'tcp-queues': {
      if (typeof extra !== 'object' || extra === null) return 'extra must be an object {inq, outq}';
      const { inq, outq } = extra as Record<string, unknown>;
      const i = bytes(inq, 'extra.inq');
      if (typeof i === 'string') return i;
      const o = bytes(outq, 'extra.outq');
      if (typeof o === 'string') return o;
      return { type: 'tcp-queues', inq: i, outq: o };
    }
    case 'ipc-sem': {
      if (!Array.isArray(extra) || extra.some((v) => !Number.isInteger(v) || v < 0 || v > 0xffff)) return 'extra must be a list of u16 semaphore values';
      return { type: 'semaphores', values: extra as number[] };
    }
    case 'ipc-msg': {
      if (!Array.isArray(extra) || extra.length % 2 !== 0) return 'extra must be a list of [message, base64 text] pairs';
      const messages: Array<{ message: DecodedMessage; text: Uint8Array }> = [];
      for (let i = 0; i < extra.length; i += 2) {
        const text = bytes(extra[i + 1], `extra[${i + 1}]`);
        if (typeof text === 'string') return text;
        messages.push({ message: parseMessage(extra[i], `extra[${i}]`), text });
      }
      return { type: 'messages', messages };
    }
  }
}

// The two ways crit writes bytes in JSON:
// - base64 in MIME line form (Python's base64.encodebytes): a "\n" after every 76 characters and
//   at the end, "" for no bytes. Used for bytes fields and for raw payloads ("extra").
// - quoted-printable (Python's quopri.encodestring, i.e. binascii.b2a_qp with istext=True) for
//   fields marked `(criu).conv = "unix_name"`, so that unix socket paths stay readable.

const MIME_LINE = 76;

export function encodeBase64Lines(bytes: Uint8Array): string {
  return base64Lines(bytes, '\n');
}

/**
 * The JSON string literal of encodeBase64Lines(bytes) (quotes and "\\n" escapes included),
 * assembled as bytes: for payloads of many MiB this is far cheaper than building the text and
 * escaping it afterwards.
 */
export function base64LinesJsonLiteral(bytes: Uint8Array): string {
  return '"' + base64Lines(bytes, '\\n') + '"';
}

function base64Lines(bytes: Uint8Array, lineEnd: string): string {
  if (bytes.length === 0) return '';
  const flat = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.byteLength).toString('base64');
  if (flat.length <= MIME_LINE) return flat + lineEnd;
  const flatBytes = Buffer.from(flat, 'latin1');
  const end = Buffer.from(lineEnd, 'latin1');
  const lines = Math.ceil(flat.length / MIME_LINE);
  const out = Buffer.allocUnsafe(flat.length + lines * end.length);
  let at = 0;
  for (let i = 0; i < flat.length; i += MIME_LINE) {
    at += flatBytes.copy(out, at, i, Math.min(i + MIME_LINE, flat.length));
    at += end.copy(out, at);
  }
  return out.toString('latin1', 0, at);
}

const BASE64_TEXT = /^[A-Za-z0-9+/=\s]*$/;

/** Decodes base64 as Python's base64.decodebytes does (line breaks allowed). Returns undefined for text that is not base64. */
export function decodeBase64Lines(text: string): Uint8Array | undefined {
  if (!BASE64_TEXT.test(text)) return undefined;
  const compact = text.replace(/\s+/g, '');
  if (compact.length % 4 !== 0) return undefined;
  return new Uint8Array(Buffer.from(compact, 'base64'));
}

const QP_LINE = 76;
const HEX = '0123456789ABCDEF';

export function encodeQuotedPrintable(data: Uint8Array): string {
  let out = '';
  let lineLength = 0;
  const at = (i: number): number => (i < data.length ? data[i]! : -1);
  for (let i = 0; i < data.length; i++) {
    const c = data[i]!;
    const next = at(i + 1);
    const endOfLineFollows = next === -1 || next === 0x0a || next === 0x0d;
    if (c === 0x0a) {
      out += '\n';
      lineLength = 0;
      continue;
    }
    if (c === 0x0d && next === 0x0a) {
      out += '\r\n';
      lineLength = 0;
      i++;
      continue;
    }
    const mustEncode =
      c > 126 ||
      c === 0x3d /* = */ ||
      (c < 32 && c !== 0x09) ||
      ((c === 0x20 || c === 0x09) && endOfLineFollows) ||
      (c === 0x2e /* . */ && lineLength === 0 && (endOfLineFollows || next === 0));
    if (mustEncode) {
      if (lineLength + 3 >= QP_LINE) {
        out += '=\n';
        lineLength = 0;
      }
      out += '=' + HEX[c >> 4] + HEX[c & 15];
      lineLength += 3;
    } else {
      if (!endOfLineFollows && lineLength + 1 >= QP_LINE) {
        out += '=\n';
        lineLength = 0;
      }
      out += String.fromCharCode(c);
      lineLength += 1;
    }
  }
  return out;
}

export function decodeQuotedPrintable(text: string): Uint8Array {
  const out: number[] = [];
  for (let i = 0; i < text.length; i++) {
    const ch = text[i]!;
    if (ch === '=') {
      if (text[i + 1] === '\n') {
        i += 1;
        continue;
      }
      if (text[i + 1] === '\r' && text[i + 2] === '\n') {
        i += 2;
        continue;
      }
      const hex = text.slice(i + 1, i + 3);
      if (/^[0-9A-Fa-f]{2}$/.test(hex)) {
        out.push(parseInt(hex, 16));
        i += 2;
        continue;
      }
    }
    const code = ch.charCodeAt(0);
    if (code < 0x80) out.push(code);
    else out.push(...Buffer.from(ch, 'utf8'));
  }
  return new Uint8Array(out);
}

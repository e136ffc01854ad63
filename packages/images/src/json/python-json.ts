// JSON text exactly as crit prints it. crit is Python: `json.dump(obj, f, indent=None|4)`, so
// - keys keep insertion order, separators are ", " and ": " (with indent 4: "," at line ends);
// - every character outside printable ASCII is escaped as \uXXXX (ensure_ascii), lower-case hex,
//   characters above U+FFFF as a surrogate pair; DEL (0x7f) is escaped too;
// - integers of any size print as plain digits (our 64-bit fields are bigint).
// JSON.stringify differs on all of the escaping points and cannot print bigint, hence this writer.

export type PyJson = null | boolean | number | bigint | string | PyJson[] | { [key: string]: PyJson };

const SHORT_ESCAPES: Record<string, string> = {
  '"': '\\"',
  '\\': '\\\\',
  '\n': '\\n',
  '\r': '\\r',
  '\t': '\\t',
  '\b': '\\b',
  '\f': '\\f',
};

// Characters Python escapes: '"', '\\', and everything outside printable ASCII.
const NEEDS_ESCAPE = /["\\\u0000-\u001f\u007f-\uffff]/;
const ESCAPE_ALL = /["\\\u0000-\u001f\u007f-\uffff]/g;
const escapeOne = (ch: string): string => SHORT_ESCAPES[ch] ?? '\\u' + ch.charCodeAt(0).toString(16).padStart(4, '0');

export function pyString(s: string): string {
  // Regular expressions walk long strings (base64 payloads) far faster than a charCodeAt loop.
  // They also see UTF-16 units, so astral characters come out as their surrogate pair, as in Python.
  return NEEDS_ESCAPE.test(s) ? '"' + s.replace(ESCAPE_ALL, escapeOne) + '"' : '"' + s + '"';
}

function pyNumber(n: number): string {
  if (Number.isInteger(n)) return String(n);
  if (Number.isNaN(n)) return 'NaN';
  if (!Number.isFinite(n)) return n > 0 ? 'Infinity' : '-Infinity';
  // Python's float repr is the shortest round-trip form, as is JS's, but keeps a ".0"/"e+" style.
  const text = String(n);
  return text.includes('e') ? text.replace(/e(\d)/, 'e+$1') : text;
}

/**
 * Serialises like Python's `json.dumps(value, indent=indent)`. `depth` is the nesting level the
 * value stands at, for printing one element of a larger document at a time.
 */
export function pyJsonStringify(value: PyJson, indent?: number, depth = 0): string {
  // String concatenation: V8 builds ropes, far cheaper than an array of small parts to join.
  const pad = (d: number): string => (indent === undefined ? '' : '\n' + ' '.repeat(indent * d));
  const comma = indent === undefined ? ', ' : ',';
  const write = (v: PyJson, d: number): string => {
    if (v === null) return 'null';
    switch (typeof v) {
      case 'boolean':
        return v ? 'true' : 'false';
      case 'bigint':
        return v.toString();
      case 'number':
        return pyNumber(v);
      case 'string':
        return pyString(v);
    }
    if (Array.isArray(v)) {
      if (v.length === 0) return '[]';
      let out = '[';
      for (let i = 0; i < v.length; i++) out += (i > 0 ? comma : '') + pad(d + 1) + write(v[i]!, d + 1);
      return out + pad(d) + ']';
    }
    const keys = Object.keys(v);
    if (keys.length === 0) return '{}';
    let out = '{';
    for (let i = 0; i < keys.length; i++) {
      const key = keys[i]!;
      out += (i > 0 ? comma : '') + pad(d + 1) + pyString(key) + ': ' + write(v[key]!, d + 1);
    }
    return out + pad(d) + '}';
  };
  return write(value, depth);
}

/**
 * Parses JSON text, keeping integers exact: those beyond 2^53 come back as bigint (JSON.parse
 * would round a 64-bit address). Errors name the byte offset.
 */
export function parseJsonExact(text: string): PyJson {
  let at = 0;
  const fail = (what: string): never => {
    throw new SyntaxError(`${what} at offset ${at}`);
  };
  const space = () => {
    while (at < text.length && ' \t\n\r'.includes(text[at]!)) at++;
  };
  const literal = (word: string, value: PyJson): PyJson => {
    if (text.startsWith(word, at)) {
      at += word.length;
      return value;
    }
    return fail(`unexpected ${JSON.stringify(text.slice(at, at + 10))}`);
  };
  const value = (depth: number): PyJson => {
    if (depth > 512) fail('nesting too deep');
    space();
    const ch = text[at];
    if (ch === '{') {
      at++;
      const out: { [key: string]: PyJson } = {};
      space();
      if (text[at] === '}') return at++, out;
      for (;;) {
        space();
        if (text[at] !== '"') fail('expected a string key');
        const key = string();
        space();
        if (text[at] !== ':') fail("expected ':'");
        at++;
        out[key] = value(depth + 1);
        space();
        if (text[at] === ',') at++;
        else if (text[at] === '}') return at++, out;
        else fail("expected ',' or '}'");
      }
    }
    if (ch === '[') {
      at++;
      const out: PyJson[] = [];
      space();
      if (text[at] === ']') return at++, out;
      for (;;) {
        out.push(value(depth + 1));
        space();
        if (text[at] === ',') at++;
        else if (text[at] === ']') return at++, out;
        else fail("expected ',' or ']'");
      }
    }
    if (ch === '"') return string();
    if (ch === 't') return literal('true', true);
    if (ch === 'f') return literal('false', false);
    if (ch === 'n') return literal('null', null);
    const m = /^-?(0|[1-9]\d*)(\.\d+)?([eE][+-]?\d+)?/.exec(text.slice(at, at + 400));
    if (!m) return fail(at >= text.length ? 'unexpected end of JSON' : `unexpected ${JSON.stringify(text[at])}`);
    at += m[0].length;
    if (m[2] === undefined && m[3] === undefined) {
      const n = Number(m[0]);
      return Number.isSafeInteger(n) ? n : BigInt(m[0]);
    }
    return Number(m[0]);
  };
  const string = (): string => {
    const start = at;
    at++;
    for (;;) {
      const ch = text[at];
      if (ch === undefined) fail('unterminated string');
      if (ch === '"') break;
      at += ch === '\\' ? 2 : 1;
    }
    at++;
    try {
      return JSON.parse(text.slice(start, at)) as string;
    } catch {
      return fail('bad string escape');
    }
  };
  const result = value(0);
  space();
  if (at !== text.length) fail('trailing characters after the JSON value');
  return result;
}

// How crit --pretty shows integer fields that carry a `(criu)` option, and how its encoder reads
// them back. The tables hold kernel and CRIU constants (mmap(2) prot/flags, open(2) flags,
// memfd seals, CRIU's VMA status bits and pagemap entry flags, socket families/types/states).

type FlagTable = ReadonlyArray<readonly [string, bigint]>;

const MMAP_PROT: FlagTable = [
  ['PROT_READ', 0x1n],
  ['PROT_WRITE', 0x2n],
  ['PROT_EXEC', 0x4n],
];

const MMAP_FLAGS: FlagTable = [
  ['MAP_SHARED', 0x1n],
  ['MAP_PRIVATE', 0x2n],
  ['MAP_DROPPABLE', 0x8n],
  ['MAP_ANON', 0x20n],
  ['MAP_GROWSDOWN', 0x100n],
];

/** CRIU's VMA status bits (`vma_entry.status`). */
const VMA_STATUS: FlagTable = [
  ['VMA_AREA_NONE', 0n],
  ['VMA_AREA_REGULAR', 1n << 0n],
  ['VMA_AREA_STACK', 1n << 1n],
  ['VMA_AREA_VSYSCALL', 1n << 2n],
  ['VMA_AREA_VDSO', 1n << 3n],
  ['VMA_AREA_HEAP', 1n << 5n],
  ['VMA_FILE_PRIVATE', 1n << 6n],
  ['VMA_FILE_SHARED', 1n << 7n],
  ['VMA_ANON_SHARED', 1n << 8n],
  ['VMA_ANON_PRIVATE', 1n << 9n],
  ['VMA_AREA_SYSVIPC', 1n << 10n],
  ['VMA_AREA_SOCKET', 1n << 11n],
  ['VMA_AREA_VVAR', 1n << 12n],
  ['VMA_AREA_AIORING', 1n << 13n],
  ['VMA_AREA_MEMFD', 1n << 14n],
  ['VMA_AREA_SHSTK', 1n << 15n],
  ['VMA_AREA_UPROBES', 1n << 17n],
  ['VMA_UNSUPP', 1n << 31n],
];

/** open(2) flags as the x86_64 kernel numbers them (octal in the headers). */
const OPEN_FLAGS: FlagTable = [
  ['O_WRONLY', 0o1n],
  ['O_RDWR', 0o2n],
  ['O_CREAT', 0o100n],
  ['O_EXCL', 0o200n],
  ['O_NOCTTY', 0o400n],
  ['O_TRUNC', 0o1000n],
  ['O_APPEND', 0o2000n],
  ['O_NONBLOCK', 0o4000n],
  ['O_DSYNC', 0o10000n],
  ['FASYNC', 0o20000n],
  ['O_DIRECT', 0o40000n],
  ['O_LARGEFILE', 0o100000n],
  ['O_DIRECTORY', 0o200000n],
  ['O_NOFOLLOW', 0o400000n],
  ['O_NOATIME', 0o1000000n],
  ['O_CLOEXEC', 0o2000000n],
];

const MEMFD_SEALS: FlagTable = [
  ['F_SEAL_SEAL', 0x1n],
  ['F_SEAL_SHRINK', 0x2n],
  ['F_SEAL_GROW', 0x4n],
  ['F_SEAL_WRITE', 0x8n],
  ['F_SEAL_FUTURE_WRITE', 0x10n],
];

/** Pagemap entry flags: in the parent image, lazily restorable, present in the pages file. */
const PAGEMAP_FLAGS: FlagTable = [
  ['PE_PARENT', 1n << 0n],
  ['PE_LAZY', 1n << 1n],
  ['PE_PRESENT', 1n << 2n],
];

const FLAG_TABLES: Readonly<Record<string, FlagTable>> = {
  'mmap.prot': MMAP_PROT,
  'mmap.flags': MMAP_FLAGS,
  'mmap.status': VMA_STATUS,
  'rfile.flags': OPEN_FLAGS,
  'pmap.flags': PAGEMAP_FLAGS,
  'seals.flags': MEMFD_SEALS,
};

type ValueNames = ReadonlyMap<bigint, string>;
const names = (pairs: Array<[number, string]>): ValueNames => new Map(pairs.map(([v, n]) => [BigInt(v), n]));

/** `(criu).dict` tables: per dictionary, per field name, value -> name. */
const DICTIONARIES: Readonly<Record<string, Readonly<Record<string, ValueNames>>>> = {
  gen: {
    // crit 4.2 has no name for 2 (a dead task, as zombies are dumped) and prints the number.
    task_state: names([[1, 'Alive'], [3, 'Stopped'], [6, 'Zombie']]),
  },
  sk: {
    family: names([[1, 'UNIX'], [2, 'INET'], [10, 'INET6'], [16, 'NETLINK'], [17, 'PACKET']]),
    type: names([[1, 'STREAM'], [2, 'DGRAM'], [3, 'RAW'], [5, 'SEQPACKET'], [10, 'PACKET']]),
    state: names([
      [1, 'ESTABLISHED'], [2, 'SYN_SENT'], [3, 'SYN_RECV'], [4, 'FIN_WAIT1'], [5, 'FIN_WAIT2'],
      [6, 'TIME_WAIT'], [7, 'CLOSE'], [8, 'CLOSE_WAIT'], [9, 'LAST_ACK'], [10, 'LISTEN'],
    ]),
    proto: names([[0, 'IP'], [6, 'TCP'], [17, 'UDP'], [136, 'UDPLITE']]),
  },
};

/** Python's "0x%x": lower-case, and a minus sign after the prefix for negative values. */
export function pyHex(value: bigint): string {
  return value < 0n ? '0x-' + (-value).toString(16) : '0x' + value.toString(16);
}

export function formatFlags(tableName: string, value: bigint): string {
  const table = FLAG_TABLES[tableName];
  if (!table) return pyHex(value);
  const parts: string[] = [];
  let rest = value;
  let known = 0n;
  for (const [name, bit] of table) {
    if (value & bit) parts.push(name);
    known |= bit;
  }
  rest &= ~known;
  if (rest) parts.push(pyHex(rest));
  return parts.join(' | ');
}

/** The inverse of formatFlags; undefined when a part is neither a flag name nor a number. */
export function parseFlags(tableName: string, text: string): bigint | undefined {
  const table = FLAG_TABLES[tableName];
  if (!table) return parsePyInt(text);
  if (text === '') return 0n;
  let sum = 0n;
  for (const part of text.split('|').map((p) => p.trim())) {
    const bit = table.find(([name]) => name === part)?.[1] ?? parsePyInt(part);
    if (bit === undefined) return undefined;
    sum += bit;
  }
  return sum;
}

export function hasFlagTable(tableName: string): boolean {
  return tableName in FLAG_TABLES;
}

export function dictionaryName(dict: string, field: string, value: bigint): string | undefined {
  return DICTIONARIES[dict]?.[field]?.get(value);
}

export function dictionaryValue(dict: string, field: string, name: string): bigint | undefined {
  const table = DICTIONARIES[dict]?.[field];
  if (!table) return undefined;
  for (const [value, n] of table) if (n === name) return value;
  return undefined;
}

/** Kernel dev_t encoding used by CRIU's `(criu).dev` fields: major above bit 20. */
const KERNEL_MINOR_BITS = 20n;

export function formatDev(value: bigint, oldEncoding: boolean): string {
  if (oldEncoding) {
    // glibc's gnu_dev_major/minor split of a 64-bit dev_t.
    const major = ((value >> 8n) & 0xfffn) | ((value >> 32n) & ~0xfffn);
    const minor = (value & 0xffn) | ((value >> 12n) & ~0xffn);
    return `${major}:${minor}`;
  }
  return `${value >> KERNEL_MINOR_BITS}:${value & ((1n << KERNEL_MINOR_BITS) - 1n)}`;
}

export function parseDev(text: string, oldEncoding: boolean): bigint | undefined {
  const m = /^\s*(\d+)\s*:\s*(\d+)\s*$/.exec(text);
  if (!m) return undefined;
  const major = BigInt(m[1]!);
  const minor = BigInt(m[2]!);
  if (oldEncoding) {
    return ((major & 0xfffn) << 8n) | ((major & ~0xfffn) << 32n) | (minor & 0xffn) | ((minor & ~0xffn) << 12n);
  }
  return (major << KERNEL_MINOR_BITS) | minor;
}

/** Python's int(text, 0): decimal, 0x/0o/0b prefixes, a sign, underscores between digits. */
export function parsePyInt(text: string): bigint | undefined {
  const m = /^\s*([+-]?)(0[xX][0-9a-fA-F_]+|0[oO][0-7_]+|0[bB][01_]+|[1-9][0-9_]*|0+)\s*$/.exec(text);
  if (!m) return undefined;
  const body = m[2]!.replace(/_/g, '');
  try {
    const magnitude = /^0[oO]/.test(body) ? BigInt('0o' + body.slice(2)) : BigInt(body);
    return m[1] === '-' ? -magnitude : magnitude;
  } catch {
    return undefined;
  }
}

/** `(criu).ipadd`: one u32 is IPv4, four are IPv6; each word holds the address bytes in network order. */
export function formatIpAddress(words: ReadonlyArray<number>): string {
  const bytes = new Uint8Array(words.length * 4);
  const view = new DataView(bytes.buffer);
  words.forEach((w, i) => view.setUint32(i * 4, w >>> 0, true));
  if (words.length === 1) return Array.from(bytes).join('.');
  const groups: number[] = [];
  for (let i = 0; i < 16; i += 2) groups.push((bytes[i]! << 8) | bytes[i + 1]!);
  return compressIpv6(groups);
}

function compressIpv6(groups: number[]): string {
  // RFC 5952: the longest run (first if tied) of two or more zero groups becomes "::".
  let bestStart = -1;
  let bestLength = 0;
  for (let i = 0; i < 8; ) {
    if (groups[i] !== 0) {
      i++;
      continue;
    }
    let j = i;
    while (j < 8 && groups[j] === 0) j++;
    if (j - i > bestLength) {
      bestStart = i;
      bestLength = j - i;
    }
    i = j;
  }
  const hex = groups.map((g) => g.toString(16));
  if (bestLength < 2) return hex.join(':');
  const head = hex.slice(0, bestStart).join(':');
  const tail = hex.slice(bestStart + bestLength).join(':');
  return `${head}::${tail}`;
}

/** Parses an IPv4 or IPv6 address into the u32 words CRIU stores; undefined if it is not one. */
export function parseIpAddress(text: string): number[] | undefined {
  const v4 = /^(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(text);
  if (v4) {
    const b = v4.slice(1).map(Number);
    if (b.some((x) => x > 255)) return undefined;
    return [new DataView(Uint8Array.from(b).buffer).getUint32(0, true)];
  }
  const groups = parseIpv6Groups(text);
  if (!groups) return undefined;
  const bytes = new Uint8Array(16);
  groups.forEach((g, i) => {
    bytes[i * 2] = g >> 8;
    bytes[i * 2 + 1] = g & 0xff;
  });
  const view = new DataView(bytes.buffer);
  return [0, 4, 8, 12].map((o) => view.getUint32(o, true));
}

function parseIpv6Groups(text: string): number[] | undefined {
  let body = text;
  const tailV4 = /(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})$/.exec(body);
  let extra: number[] = [];
  if (tailV4) {
    const b = tailV4.slice(1).map(Number);
    if (b.some((x) => x > 255)) return undefined;
    extra = [(b[0]! << 8) | b[1]!, (b[2]! << 8) | b[3]!];
    body = body.slice(0, tailV4.index) + '0:0';
  }
  const halves = body.split('::');
  if (halves.length > 2) return undefined;
  const parse = (s: string): number[] | undefined => {
    if (s === '') return [];
    const out: number[] = [];
    for (const g of s.split(':')) {
      if (!/^[0-9a-fA-F]{1,4}$/.test(g)) return undefined;
      out.push(parseInt(g, 16));
    }
    return out;
  };
  const head = parse(halves[0]!);
  const tail = halves.length === 2 ? parse(halves[1]!) : [];
  if (!head || !tail) return undefined;
  let groups: number[];
  if (halves.length === 2) {
    const missing = 8 - head.length - tail.length;
    if (missing < 1) return undefined;
    groups = [...head, ...new Array<number>(missing).fill(0), ...tail];
  } else groups = head;
  if (groups.length !== 8) return undefined;
  if (extra.length) groups.splice(6, 2, ...extra);
  return groups;
}

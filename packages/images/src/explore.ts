// `x DIR ps|fds|mems|rss`: crit's explorers, printing the same text crit 4.2 prints. Unlike crit,
// they also work on dumps with zombies: a zombie has a core image but no ids, mm or pagemap
// image, so it is listed with what it has (its pid) instead of stopping the whole listing.
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { ENUMS } from './gen/schema.js';
import { messageSchema, type DecodedMessage } from './json/message-json.js';
import { ImageReader } from './io/reader.js';
import { encodeQuotedPrintable } from './json/byte-text.js';

export type ExploreView = 'ps' | 'fds' | 'mems' | 'rss';
export const EXPLORE_VIEWS: readonly ExploreView[] = ['ps', 'fds', 'mems', 'rss'];

const PAGE_SHIFT = 12n;
const VMA_AREA_REGULAR = 1n << 0n;
const VMA_AREA_STACK = 1n << 1n;
const VMA_AREA_VSYSCALL = 1n << 2n;
const VMA_AREA_VDSO = 1n << 3n;
const VMA_FILE_PRIVATE = 1n << 6n;
const VMA_FILE_SHARED = 1n << 7n;
const VMA_ANON_SHARED = 1n << 8n;
const VMA_AREA_SYSVIPC = 1n << 10n;
const VMA_AREA_SOCKET = 1n << 11n;
const MAP_GROWSDOWN = 0x100n;

const pad = (text: string | number, width: number): string => String(text).padStart(width);
const padRight = (text: string | number, width: number): string => String(text).padEnd(width);
const hex = (value: bigint | number): string => BigInt(value).toString(16);

class ImageDir {
  private readonly cache = new Map<string, DecodedMessage[]>();
  constructor(readonly dir: string) {}

  has(name: string): boolean {
    return existsSync(join(this.dir, name));
  }

  entries(name: string): DecodedMessage[] {
    let entries = this.cache.get(name);
    if (!entries) {
      const reader = ImageReader.open(join(this.dir, name));
      try {
        entries = [...reader.entries()].map((e) => e.message);
      } finally {
        reader.close();
      }
      this.cache.set(name, entries);
    }
    return entries;
  }
}

function enumName(messageName: string, field: string, value: unknown): string {
  const schema = messageSchema(messageName).fields.find((f) => f.name === field);
  return (schema?.typeName && ENUMS[schema.typeName]?.values.get(value as number)) ?? String(value);
}

/** pid/pgid/sid of a pstree entry: the plain field, or the first of the ns_ list (nested pid namespaces). */
function taskId(entry: DecodedMessage, field: 'pid' | 'pgid' | 'sid'): number {
  const plain = entry[field];
  if (plain !== undefined) return Number(plain);
  const nested = entry[`ns_${field}`] as number[] | undefined;
  return Number(nested?.[0] ?? 0);
}

/** Describes an open file the way crit's explorers do (`/path`, `pipe[123]`, `unix[ino (peer) name]`, `TYPE.id`). */
class FileNames {
  private readonly cache = new Map<string, string>();
  constructor(private readonly images: ImageDir) {}

  describe(type: string, id: number): string {
    const key = `${type}/${id}`;
    let text = this.cache.get(key);
    if (text === undefined) {
      text = this.compute(type, id);
      this.cache.set(key, text);
    }
    return text;
  }

  private lookup(type: string, id: number): DecodedMessage | undefined {
    const sources: Record<string, { field: string; image: string }> = {
      REG: { field: 'reg', image: 'reg-files.img' },
      PIPE: { field: 'pipe', image: 'pipes.img' },
      UNIXSK: { field: 'usk', image: 'unixsk.img' },
    };
    const source = sources[type]!;
    const files = this.images.has('files.img') ? this.images.entries('files.img') : [];
    const file = files.find((f) => Number(f.id) === id);
    if (file) return file[source.field] as DecodedMessage | undefined;
    // Images from before files.img kept each file type in its own image.
    if (!this.images.has(source.image)) return undefined;
    return this.images.entries(source.image).find((f) => Number(f.id) === id);
  }

  private compute(type: string, id: number): string {
    switch (type) {
      case 'REG': {
        const reg = this.lookup(type, id);
        return (reg?.name as string | undefined) || 'unknown path';
      }
      case 'PIPE': {
        const pipe = this.lookup(type, id);
        return pipe ? `pipe[${pipe.pipe_id}]` : 'pipe[?]';
      }
      case 'UNIXSK': {
        const sk = this.lookup(type, id);
        if (!sk) return 'unix[?]';
        const name = sk.name as Uint8Array | undefined;
        // crit shows the name in its JSON form: quoted-printable.
        const shown = name && name.length > 0 ? ` ${encodeQuotedPrintable(name)}` : '';
        return `unix[${sk.ino} (${sk.peer})${shown}]`;
      }
      default:
        return `${type}.${id}`;
    }
  }
}

interface TaskRow {
  pid: number;
  entry: DecodedMessage;
  comm: string;
  kids: TaskRow[];
}

function tasks(images: ImageDir): DecodedMessage[] {
  return images.entries('pstree.img');
}

function explorePs(images: ImageDir): string[] {
  const rows = new Map<number, TaskRow>();
  for (const entry of tasks(images)) {
    const pid = taskId(entry, 'pid');
    const coreName = `core-${pid}.img`;
    const core = images.has(coreName) ? images.entries(coreName)[0] : undefined;
    const comm = ((core?.tc as DecodedMessage | undefined)?.comm as string | undefined) ?? '';
    rows.set(pid, { pid, entry, comm, kids: [] });
  }
  let root: TaskRow | undefined;
  for (const row of rows.values()) {
    const ppid = Number(row.entry.ppid ?? 0);
    if (ppid === 0) root = row;
    else rows.get(ppid)?.kids.push(row);
  }
  const out = [`${pad('PID', 7)}${pad('PGID', 7)}${pad('SID', 7)}   COMM`];
  const show = (row: TaskRow, depth: number): void => {
    out.push(`${pad(row.pid, 7)}${pad(taskId(row.entry, 'pgid'), 7)}${pad(taskId(row.entry, 'sid'), 7)}   ${' '.repeat(4 * depth)}${row.comm}`);
    for (const kid of row.kids) show(kid, depth + 1);
  };
  if (root) show(root, 0);
  return out;
}

function exploreFds(images: ImageDir): string[] {
  const names = new FileNames(images);
  const out: string[] = [];
  for (const entry of tasks(images)) {
    const pid = taskId(entry, 'pid');
    out.push(String(pid));
    if (!images.has(`ids-${pid}.img`)) continue; // a zombie: no files
    const ids = images.entries(`ids-${pid}.img`)[0]!;
    for (const fd of images.entries(`fdinfo-${ids.files_id}.img`)) {
      out.push(`\t${pad(Number(fd.fd), 7)}: ${names.describe(enumName('fdinfo_entry', 'type', fd.type), Number(fd.id))}`);
    }
    const fs = images.entries(`fs-${pid}.img`)[0]!;
    out.push(`\t${pad('cwd', 7)}: ${names.describe('REG', Number(fs.cwd_id))}`);
    out.push(`\t${pad('root', 7)}: ${names.describe('REG', Number(fs.root_id))}`);
  }
  return out;
}

function exploreMems(images: ImageDir): string[] {
  const names = new FileNames(images);
  const shmemIds = new Map<string, number>();
  const shortId = (id: unknown): string => {
    const key = String(id);
    if (!shmemIds.has(key)) shmemIds.set(key, shmemIds.size + 1);
    return hex(shmemIds.get(key)!);
  };
  const out: string[] = [];
  for (const entry of tasks(images)) {
    const pid = taskId(entry, 'pid');
    out.push(String(pid));
    if (!images.has(`mm-${pid}.img`)) continue; // a zombie: no memory
    const mm = images.entries(`mm-${pid}.img`)[0]!;
    out.push(`\t${padRight('exe', 36)}    ${names.describe('REG', Number(mm.exe_file_id))}`);
    for (const vma of (mm.vmas as DecodedMessage[] | undefined) ?? []) {
      const status = BigInt(vma.status as number | bigint);
      let what: string;
      if (status & VMA_AREA_SYSVIPC) what = ` ips[${shortId(vma.shmid)}]`;
      else if (status & VMA_ANON_SHARED) what = ` shmem[${shortId(vma.shmid)}]`;
      else if (status & VMA_AREA_SOCKET) what = ` packet[${shortId(vma.shmid)}]`;
      else if (status & (VMA_FILE_PRIVATE | VMA_FILE_SHARED)) {
        what = ' ' + names.describe('REG', Number(vma.shmid));
        if (BigInt(vma.pgoff as bigint) !== 0n) what += ` + 0x${hex(vma.pgoff as bigint)}`;
        if (status & VMA_FILE_SHARED) what += ' (s)';
      } else if (status & VMA_AREA_STACK) what = ' [stack]';
      else if (status & VMA_AREA_VSYSCALL) what = ' [vsyscall]';
      else if (status & VMA_AREA_VDSO) what = ' [vdso]';
      else if (BigInt(vma.flags as number) & MAP_GROWSDOWN) what = ' [stack?]';
      else what = '';
      if (!(status & VMA_AREA_REGULAR)) what += ' *';
      const prot = Number(vma.prot);
      const perms = (prot & 1 ? 'r' : '-') + (prot & 2 ? 'w' : '-') + (prot & 4 ? 'x' : '-');
      const range = `${hex(vma.start as bigint).padStart(8, '0')}-${hex(vma.end as bigint).padStart(8, '0')}`;
      out.push(`\t${padRight(range, 36)}${perms}${what}`);
    }
  }
  return out;
}

function pageCount(entry: DecodedMessage): bigint {
  return BigInt((entry.nr_pages ?? entry.compat_nr_pages ?? 0) as number | bigint);
}

function exploreRss(images: ImageDir): string[] {
  const names = new FileNames(images);
  const out: string[] = [];
  for (const entry of tasks(images)) {
    const pid = taskId(entry, 'pid');
    out.push(String(pid));
    if (!images.has(`mm-${pid}.img`) || !images.has(`pagemap-${pid}.img`)) continue; // a zombie
    const vmas = (images.entries(`mm-${pid}.img`)[0]!.vmas as DecodedMessage[] | undefined) ?? [];
    const pagemap = images.entries(`pagemap-${pid}.img`);
    let vi = 0;
    let previous = -1;
    for (const run of pagemap.slice(1)) {
      const vaddr = BigInt(run.vaddr as bigint);
      const pages = pageCount(run);
      const head = `\t${hex(vaddr)} / ${padRight(String(pages), 8)}`;
      while (vi < vmas.length && BigInt(vmas.at(vi)!.end as bigint) <= vaddr) vi++;
      const runEnd = vaddr + (pages << PAGE_SHIFT);
      let covered = '';
      while (vi < vmas.length && BigInt(vmas.at(vi)!.start as bigint) < runEnd) {
        const vma = vmas.at(vi)!;
        if (vi === previous) covered += ' ~';
        else {
          const start = BigInt(vma.start as bigint);
          const length = (BigInt(vma.end as bigint) - start) >> PAGE_SHIFT;
          covered += ` ${hex(start).padStart(8, '0')} / ${padRight(String(length), 8)}`;
          if (BigInt(vma.status as number) & (VMA_FILE_PRIVATE | VMA_FILE_SHARED)) {
            covered += ' ' + names.describe('REG', Number(vma.shmid));
          }
          previous = vi;
        }
        covered += '\n\t' + ' '.repeat(23);
        vi++;
      }
      vi--;
      out.push(padRight(head, 24) + covered);
    }
  }
  return out;
}

/** The lines `crit x DIR VIEW` prints, without trailing newlines. */
export function explore(dir: string, view: ExploreView): string[] {
  const images = new ImageDir(dir);
  switch (view) {
    case 'ps':
      return explorePs(images);
    case 'fds':
      return exploreFds(images);
    case 'mems':
      return exploreMems(images);
    case 'rss':
      return exploreRss(images);
  }
}

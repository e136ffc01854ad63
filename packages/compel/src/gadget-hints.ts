// Where the code snippets compel runs a task's syscalls with ("syscall; ret", "pop rax; ret"...,
// see injection.ts findGadgets) were found last time, by the file they lie in. Finding them means
// reading the task's code until each byte pattern shows up, often deep into libc's text, while
// the task is frozen: milliseconds per dump. The same libc (or vDSO, for a boot) has them at the
// same offsets in every process that maps it, so the offsets are remembered here, per process and
// in a file shared by criu-ts processes of this boot (/run is cleared at boot, as the vDSO may
// change with the kernel). A hint is only a place to look: the caller reads the task's bytes
// there and uses the address only if they are the gadget's, so a stale or wrong hint costs one
// small read and the usual search.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname } from 'node:path';
import type { Vma } from './proc.js';

export const GADGET_BYTES = {
  syscall: [0x0f, 0x05],
  syscallRet: [0x0f, 0x05, 0xc3],
  popRaxRet: [0x58, 0xc3],
  popRdiRet: [0x5f, 0xc3],
  popRsiRet: [0x5e, 0xc3],
} as const;
export type GadgetName = keyof typeof GADGET_BYTES;
export const GADGET_NAMES = Object.keys(GADGET_BYTES) as GadgetName[];

/** Offsets in the mapped file (or in the vDSO) of each gadget found there. */
type FileHints = Partial<Record<GadgetName, number>>;

const HINTS_FILE = '/run/criu-ts/gadgets.json';
/** Files remembered at most (the newest kept): a few libcs and loaders, the vDSO. */
const MAX_FILES = 32;

let hints: Map<string, FileHints> | undefined;
let boot: string | undefined;

function bootId(): string {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return '';
  }
}

/** What identifies a mapping's contents: the vDSO by itself, a file by its inode and path. */
export function hintKey(vma: Vma): string | undefined {
  if (vma.name === '[vdso]') return '[vdso]';
  if (vma.inode === 0 || !vma.name.startsWith('/')) return undefined;
  return `${vma.inode}:${vma.name}`;
}

function load(): Map<string, FileHints> {
  if (hints) return hints;
  boot = bootId();
  hints = new Map();
  try {
    const saved = JSON.parse(readFileSync(HINTS_FILE, 'utf8')) as { boot?: string; files?: Record<string, FileHints> };
    if (saved.boot === boot && saved.files && typeof saved.files === 'object') {
      for (const [key, value] of Object.entries(saved.files)) if (value && typeof value === 'object') hints.set(key, value);
    }
  } catch { /* none yet, unreadable or not JSON: search as usual */ }
  return hints;
}

/** The candidate address of gadget `name` in `vma`, from a hint (undefined when there is none). */
export function hintedAddress(vma: Vma, name: GadgetName): bigint | undefined {
  const key = hintKey(vma);
  const offset = key === undefined ? undefined : load().get(key)?.[name];
  if (typeof offset !== 'number') return undefined;
  const address = vma.start + (BigInt(offset) - vma.offset);
  return address >= vma.start && address + BigInt(GADGET_BYTES[name].length) <= vma.end ? address : undefined;
}

/** Records where the gadgets were found (`found`: name -> address in `vmas`); saves the file when something is new. */
export function rememberGadgets(vmas: readonly Vma[], found: Partial<Record<GadgetName, bigint | null>>): void {
  const all = load();
  let changed = false;
  for (const name of GADGET_NAMES) {
    const address = found[name];
    if (address === null || address === undefined) continue;
    const vma = vmas.find((v) => v.start <= address && address < v.end);
    const key = vma ? hintKey(vma) : undefined;
    if (!vma || key === undefined) continue;
    const offset = Number(vma.offset + (address - vma.start));
    const entry = all.get(key) ?? {};
    if (entry[name] === offset) continue;
    entry[name] = offset;
    all.delete(key); // re-inserted last: the newest
    all.set(key, entry);
    changed = true;
  }
  if (!changed) return;
  while (all.size > MAX_FILES) all.delete(all.keys().next().value!);
  try {
    mkdirSync(dirname(HINTS_FILE), { recursive: true, mode: 0o700 });
    const tmp = `${HINTS_FILE}.${process.pid}`;
    writeFileSync(tmp, JSON.stringify({ boot, files: Object.fromEntries(all) }), { mode: 0o600 });
    renameSync(tmp, HINTS_FILE);
  } catch { /* not root, or /run read-only: hints last for this process only */ }
}

/** @internal Tests: replace what was remembered (undefined: read the file again). */
export function setGadgetHintsForTest(files: Record<string, FileHints> | undefined): void {
  hints = files ? new Map(Object.entries(files)) : undefined;
  boot = bootId();
}

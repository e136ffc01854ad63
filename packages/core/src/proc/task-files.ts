// Small /proc/PID files: status, stat, limits, auxv, personality, comm and friends (proc(5)).
import { readFileSync, readlinkSync } from 'node:fs';
// No koffi here (only its koffi-free types): the pages prefill (dump/pages-prefill.ts) uses these
// readers before the command has loaded the native side.
import { asPid, type Pid } from '@criu-ts/sys/types';

export function readStatus(pid: number, tid = pid): Map<string, string> {
  const status = new Map<string, string>();
  for (const line of readFileSync(`/proc/${pid}/task/${tid}/status`, 'utf8').split('\n')) {
    const colon = line.indexOf(':');
    if (colon > 0) status.set(line.slice(0, colon), line.slice(colon + 1).trim());
  }
  return status;
}

/** /proc/PID/stat fields, numbered as in proc(5) (1 = pid, 2 = comm, 3 = state, ...). */
export function readStat(pid: number, tid = pid): string[] {
  const text = readFileSync(`/proc/${pid}/task/${tid}/stat`, 'utf8');
  // comm is in parentheses and may itself contain spaces and parentheses: split after the last ')'.
  const close = text.lastIndexOf(')');
  const head = text.slice(0, text.indexOf('(')).trim();
  const comm = text.slice(text.indexOf('(') + 1, close);
  return ['', head, comm, ...text.slice(close + 2).trim().split(' ')];
}

/** The 16 rlimits in RLIMIT_* order (cpu, fsize, data, stack, core, rss, nproc, nofile, memlock, as, locks, sigpending, msgqueue, nice, rtprio, rttime). */
const LIMIT_NAMES = [
  'Max cpu time', 'Max file size', 'Max data size', 'Max stack size', 'Max core file size', 'Max resident set',
  'Max processes', 'Max open files', 'Max locked memory', 'Max address space', 'Max file locks', 'Max pending signals',
  'Max msgqueue size', 'Max nice priority', 'Max realtime priority', 'Max realtime timeout',
];
const RLIM_INFINITY = 0xffff_ffff_ffff_ffffn;

/**
 * Limits from /proc/PID/limits. prlimit() on another uid's process needs CAP_SYS_RESOURCE, which
 * these machines lack (DESIGN.md); the proc file is readable and complete.
 */
export function readLimits(pid: number): Array<{ cur: bigint; max: bigint }> {
  const lines = readFileSync(`/proc/${pid}/limits`, 'utf8').split('\n');
  return LIMIT_NAMES.map((name) => {
    const line = lines.find((l) => l.startsWith(name));
    if (!line) throw new Error(`/proc/${pid}/limits has no "${name}" line`);
    const [soft, hard] = line.slice(26).trim().split(/\s+/);
    const value = (v: string | undefined): bigint => (v === 'unlimited' || v === undefined ? RLIM_INFINITY : BigInt(v));
    return { cur: value(soft), max: value(hard) };
  });
}

/** The saved auxiliary vector as u64 words (type, value pairs up to AT_NULL). */
export function readAuxv(pid: number): bigint[] {
  const bytes = readFileSync(`/proc/${pid}/auxv`);
  const words: bigint[] = [];
  for (let i = 0; i + 16 <= bytes.length; i += 16) {
    const type = bytes.readBigUInt64LE(i);
    words.push(type, bytes.readBigUInt64LE(i + 8));
    if (type === 0n) break;
  }
  return words;
}

export function readText(pid: number, file: string): string {
  return readFileSync(`/proc/${pid}/${file}`, 'utf8');
}

export function readLink(pid: number, file: string): string {
  return readlinkSync(`/proc/${pid}/${file}`);
}

/** Capability set words as CRIU stores them: [low 32 bits, high 32 bits]. */
export function capabilityWords(hex: string): number[] {
  const value = BigInt('0x' + hex);
  return [Number(value & 0xffff_ffffn), Number(value >> 32n)];
}

/** The children of `pid` as /proc/PID/task/TID/children lists them for each thread in `tids`. */
export function readChildren(pid: Pid, tids: readonly number[]): Pid[] {
  const out: Pid[] = [];
  for (const tid of tids) {
    let text = '';
    try {
      text = readFileSync(`/proc/${pid}/task/${tid}/children`, 'utf8');
    } catch {
      continue; // the thread exited meanwhile
    }
    for (const word of text.split(/\s+/)) if (word) out.push(asPid(Number(word)));
  }
  return out;
}

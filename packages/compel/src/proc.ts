// What /proc says about a task (proc(5)). Everything here is a plain file read: no ptrace.
import { readdirSync, readFileSync } from 'node:fs';
import { asPid, type Pid, type RemoteAddress } from '@criu-ts/sys';

/** Thread ids of a process, from /proc/PID/task (sorted, the leader first when alive). */
export function listThreads(pid: Pid): Pid[] {
  return readdirSync(`/proc/${pid}/task`)
    .map((n) => asPid(Number(n)))
    .sort((a, b) => (a === pid ? -1 : b === pid ? 1 : a - b));
}

/**
 * The state letter of /proc/PID/stat (R running, S sleeping, D disk sleep, T stopped by a signal,
 * t tracing stop, Z zombie, X dead) or undefined when the task is gone.
 */
export function taskState(pid: Pid, tid?: Pid): string | undefined {
  try {
    const path = tid === undefined ? `/proc/${pid}/stat` : `/proc/${pid}/task/${tid}/stat`;
    const stat = readFileSync(path, 'utf8');
    // comm may contain spaces and parentheses: the state follows the *last* ')'.
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

/** The "Key:\tvalue" lines of /proc/PID/status. */
export function readStatus(pid: Pid): Record<string, string> {
  const out: Record<string, string> = {};
  for (const line of readFileSync(`/proc/${pid}/status`, 'utf8').split('\n')) {
    const i = line.indexOf(':');
    if (i > 0) out[line.slice(0, i)] = line.slice(i + 1).trim();
  }
  return out;
}

export interface Vma {
  start: RemoteAddress;
  end: RemoteAddress;
  /** 'r-xp' etc. */
  perms: string;
  offset: bigint;
  inode: number;
  /** The path, '[vdso]', '[stack]', 'memfd:name (deleted)', or '' for anonymous memory. */
  name: string;
}

/**
 * Whether a line of /proc/PID/maps is a parasite's blob: the memfd named criu-ts-parasite, or the
 * shared anonymous mapping, readable, writable and executable, that infection uses instead when
 * it may open /proc/PID/map_files (parasite.ts, mapBlobHome). A program that makes such a mapping
 * itself would match too: this is for checking that a task was left clean, not for dumping it.
 */
export function isParasiteMapping(mapsLine: string): boolean {
  return mapsLine.includes('criu-ts-parasite') || /^[0-9a-f]+-[0-9a-f]+ rwxs [0-9a-f]+ \S+ \d+\s+\/dev\/zero \(deleted\)$/.test(mapsLine);
}

/** The VMAs of /proc/PID/maps, in address order. */
export function readMaps(pid: Pid): Vma[] {
  const vmas: Vma[] = [];
  for (const line of readFileSync(`/proc/${pid}/maps`, 'utf8').split('\n')) {
    if (!line) continue;
    const m = /^([0-9a-f]+)-([0-9a-f]+) (\S{4}) ([0-9a-f]+) \S+ (\d+)\s*(.*)$/.exec(line);
    if (!m) continue;
    vmas.push({
      start: BigInt(`0x${m[1]}`) as RemoteAddress,
      end: BigInt(`0x${m[2]}`) as RemoteAddress,
      perms: m[3]!,
      offset: BigInt(`0x${m[4]}`),
      inode: Number(m[5]),
      name: m[6] ?? '',
    });
  }
  return vmas;
}

/** POSIX timer ids of a process from /proc/PID/timers ("ID: n" lines; CONFIG_CHECKPOINT_RESTORE). */
export function listPosixTimers(pid: Pid): number[] {
  try {
    return [...readFileSync(`/proc/${pid}/timers`, 'utf8').matchAll(/^ID: (-?\d+)$/gm)].map((m) => Number(m[1]));
  } catch {
    return [];
  }
}

/** One timer_create() timer as /proc/PID/timers shows it (fs/proc/base.c, show_timer). */
export interface ProcPosixTimer {
  readonly id: number;
  readonly signal: number;
  /** sigev_value as a pointer (sival_int is its low half). */
  readonly sivalPtr: bigint;
  /** 'signal' (SIGEV_SIGNAL), 'none' (SIGEV_NONE) or 'thread' (SIGEV_THREAD). */
  readonly notify: string;
  /** With SIGEV_THREAD_ID: the thread the signal goes to ("tid.N"); otherwise undefined ("pid.N"). */
  readonly threadId: number | undefined;
  /** As the kernel keeps it: CPU-time clocks are negative (CLOCK_PROCESS_CPUTIME_ID shows -6). */
  readonly clockId: number;
}

/**
 * Every POSIX timer of a process, with what only /proc tells (timer_gettime does not give the
 * clock, signal or target). Blocks of four lines per timer: "ID: n", "signal: SIG/VALUE",
 * "notify: KIND/pid.N" or "KIND/tid.N", "ClockID: n". Empty when the process has none.
 */
export function readPosixTimers(pid: Pid): ProcPosixTimer[] {
  let text: string;
  try {
    text = readFileSync(`/proc/${pid}/timers`, 'utf8');
  } catch {
    return [];
  }
  const timers: ProcPosixTimer[] = [];
  for (const block of text.split(/^(?=ID: )/m)) {
    if (!block.trim()) continue;
    const m = /^ID: (-?\d+)\nsignal: (\d+)\/([0-9a-f]+)\nnotify: (\w+)\/(pid|tid)\.(\d+)\nClockID: (-?\d+)/.exec(block);
    if (!m) throw new Error(`/proc/${pid}/timers: unexpected block ${JSON.stringify(block)}`);
    timers.push({
      id: Number(m[1]), signal: Number(m[2]), sivalPtr: BigInt(`0x${m[3]}`), notify: m[4]!,
      threadId: m[5] === 'tid' ? Number(m[6]) : undefined, clockId: Number(m[7]),
    });
  }
  return timers;
}

// Seccomp state of every thread of the tree: seccomp.img and thread_core.seccomp_mode/_filter, laid
// out as CRIU 4.2 writes them.
//
//   seccomp.img    one seccomp_entry; seccomp_filters lists every thread's chain, threads by
//                  ascending TID across the whole tree, each chain newest filter first. Despite
//                  its name, a filter's `prev` is the index of the filter installed right after
//                  it (the entry before it in the list; absent for the newest): restore starts
//                  from the oldest and follows `prev`. `flags` is always present
//                  (SECCOMP_FILTER_FLAG_LOG from the kernel's metadata, SECCOMP_FILTER_FLAG_TSYNC
//                  as below)
//   thread_core    seccomp_mode (1 strict, 2 filter; absent when disabled) and, in filter mode,
//                  seccomp_filter = the index of the thread's oldest filter (installed first)
//
// Filters are per thread in the kernel and no interface says whether two threads share one
// (kcmp has no seccomp mode), so, as CRIU does: when every thread of a process has the same chain
// as its leader (byte for byte), the leader's filters get SECCOMP_FILTER_FLAG_TSYNC and the other
// threads are written without seccomp state; restore installs the chain once in the leader and
// the kernel copies it to every thread. Restoring without TSYNC would break a later
// TSYNC install by the program (it needs every thread's filter to be an ancestor of the caller's).
//
// Read with PTRACE_SECCOMP_GET_FILTER (index 0 = the oldest filter) and PTRACE_SECCOMP_GET_METADATA,
// which need the thread in a ptrace-stop: before the parasite runs.
import type { DecodedMessage } from '@criu-ts/images';
import { ptraceRaw, type Pid } from '@criu-ts/sys';
import { readStatus } from '../proc/task-files.js';

const PTRACE_SECCOMP_GET_FILTER = 0x420c;
const PTRACE_SECCOMP_GET_METADATA = 0x420d;
/** BPF_MAXINSNS: the kernel refuses longer classic BPF programs. */
const BPF_MAXINSNS = 4096;
const SOCK_FILTER_SIZE = 8;
export const SECCOMP_MODE_DISABLED = 0;
export const SECCOMP_MODE_STRICT = 1;
export const SECCOMP_MODE_FILTER = 2;
export const SECCOMP_FILTER_FLAG_TSYNC = 1;

export interface SeccompFilterCopy {
  /** The classic BPF program: struct sock_filter[], 8 bytes each. */
  readonly program: Buffer;
  /** SECCOMP_FILTER_FLAG_* the kernel reports for it (LOG). */
  readonly flags: number;
}

export interface ThreadSeccomp {
  readonly mode: number;
  /** Oldest first (the order they were installed in). */
  readonly filters: readonly SeccompFilterCopy[];
}

/** Seccomp mode of a thread (the "Seccomp:" line of /proc/PID/task/TID/status) and its filters. */
export function collectSeccomp(pid: Pid, tid: Pid): ThreadSeccomp {
  const mode = Number(readStatus(pid, tid).get('Seccomp') ?? '0');
  if (mode !== SECCOMP_MODE_FILTER) return { mode, filters: [] };
  const oldestFirst: SeccompFilterCopy[] = [];
  const buf = Buffer.alloc(BPF_MAXINSNS * SOCK_FILTER_SIZE);
  for (let index = 0; ; index++) {
    let count: number;
    try {
      count = Number(ptraceRaw(PTRACE_SECCOMP_GET_FILTER, tid, index, buf));
    } catch (err) {
      if ((err as { code?: string }).code === 'ENOENT') break; // past the newest filter
      throw new Error(`PTRACE_SECCOMP_GET_FILTER(${index}) of thread ${tid} failed: ${(err as Error).message}`, { cause: err });
    }
    const meta = Buffer.alloc(16);
    meta.writeBigUInt64LE(BigInt(index), 0);
    ptraceRaw(PTRACE_SECCOMP_GET_METADATA, tid, meta.length, meta);
    oldestFirst.push({ program: Buffer.from(buf.subarray(0, count * SOCK_FILTER_SIZE)), flags: Number(meta.readBigUInt64LE(8)) });
  }
  if (oldestFirst.length === 0) throw new Error(`thread ${tid} is in seccomp filter mode but PTRACE_SECCOMP_GET_FILTER finds no filter`);
  return { mode, filters: oldestFirst };
}

function sameChain(a: ThreadSeccomp, b: ThreadSeccomp): boolean {
  return a.mode === b.mode && a.filters.length === b.filters.length && a.filters.every((f, i) => f.program.equals(b.filters[i]!.program));
}

/**
 * seccomp.img's entry and, per TID, the seccomp fields of its thread_core. `processes` lists each
 * process's threads, the leader first.
 */
export function seccompImage(processes: ReadonlyArray<ReadonlyArray<{ tid: number; seccomp: ThreadSeccomp }>>): {
  entry: DecodedMessage;
  threadFields: Map<number, DecodedMessage>;
} {
  const effective = new Map<number, { mode: number; filters: Array<{ program: Buffer; flags: number }> }>();
  for (const threads of processes) {
    const [leader, ...others] = threads;
    if (!leader) continue;
    const tsync = leader.seccomp.mode === SECCOMP_MODE_FILTER && others.every((t) => sameChain(leader.seccomp, t.seccomp));
    for (const t of threads) {
      if (tsync && t !== leader) {
        effective.set(t.tid, { mode: SECCOMP_MODE_DISABLED, filters: [] });
        continue;
      }
      const filters = t.seccomp.filters.map((f) => ({ program: f.program, flags: f.flags | (tsync ? SECCOMP_FILTER_FLAG_TSYNC : 0) }));
      effective.set(t.tid, { mode: t.seccomp.mode, filters });
    }
  }
  const seccompFilters: DecodedMessage[] = [];
  const threadFields = new Map<number, DecodedMessage>();
  for (const tid of [...effective.keys()].sort((a, b) => a - b)) {
    const { mode, filters } = effective.get(tid)!;
    const fields: DecodedMessage = {};
    if (mode !== SECCOMP_MODE_DISABLED) fields.seccomp_mode = mode;
    [...filters].reverse().forEach((f, i) => {
      const filter: DecodedMessage = { filter: new Uint8Array(f.program) };
      if (i > 0) filter.prev = seccompFilters.length - 1;
      filter.flags = f.flags;
      seccompFilters.push(filter);
    });
    if (mode === SECCOMP_MODE_FILTER) fields.seccomp_filter = seccompFilters.length - 1;
    threadFields.set(tid, fields);
  }
  return { entry: seccompFilters.length > 0 ? { seccomp_filters: seccompFilters } : {}, threadFields };
}

// bpf(2): the few commands criu-ts uses: a small TC program (soccr's accept-queue refill) and a
// task_file iterator (core's packet-ring reader); btf.ts finds the kernel ids they name. Layouts are union bpf_attr's members for each
// command (linux/bpf.h); the kernel requires every byte past the member it reads to be zero, so
// each attr buffer is allocated zeroed and sized to cover the fields set.
import { addressOf, sysCallNumber } from './ffi.js';
import { SysError } from './errors.js';
import { asFd, type Fd } from './types.js';
import { SYSCALL_NUMBERS as N } from './syscall-numbers.js';

/** enum bpf_cmd values used here. */
export const BPF_CMD = { MAP_CREATE: 0, MAP_LOOKUP_ELEM: 1, MAP_UPDATE_ELEM: 2, PROG_LOAD: 5, LINK_CREATE: 28, ITER_CREATE: 33 } as const;
/** enum bpf_map_type values used here. */
export const BPF_MAP_TYPE = { ARRAY: 2, SOCKMAP: 15 } as const;
/** enum bpf_prog_type values used here. */
export const BPF_PROG_TYPE = { SCHED_CLS: 3, TRACING: 26 } as const;
/** enum bpf_attach_type values used here (tcx: Linux 6.6+). */
export const BPF_ATTACH = { TRACE_ITER: 28, TCX_INGRESS: 46, TCX_EGRESS: 47 } as const;

function bpf(cmd: number, attr: Buffer, what: string): number {
  return sysCallNumber('bpf', N.bpf, [cmd, attr, attr.length], what);
}

/** BPF_MAP_CREATE: a map of `maxEntries` entries of keySize/valueSize bytes. */
export function bpfMapCreate(type: number, keySize: number, valueSize: number, maxEntries: number, name = ''): Fd {
  const attr = Buffer.alloc(72);
  attr.writeUInt32LE(type, 0);
  attr.writeUInt32LE(keySize, 4);
  attr.writeUInt32LE(valueSize, 8);
  attr.writeUInt32LE(maxEntries, 12);
  attr.write(name.slice(0, 15), 28, 'latin1'); // map_name[16] after map_flags, inner_map_fd, numa_node
  return asFd(bpf(BPF_CMD.MAP_CREATE, attr, `map type ${type}`));
}

function elemAttr(map: Fd, key: Buffer, value: Buffer, flags: number): Buffer {
  const attr = Buffer.alloc(32);
  attr.writeUInt32LE(map, 0);
  attr.writeBigUInt64LE(addressOf(key), 8);
  attr.writeBigUInt64LE(addressOf(value), 16);
  attr.writeBigUInt64LE(BigInt(flags), 24);
  return attr;
}

/** BPF_MAP_UPDATE_ELEM (flags: BPF_ANY = 0). */
export function bpfMapUpdate(map: Fd, key: Buffer, value: Buffer, flags = 0): void {
  const attr = elemAttr(map, key, value, flags);
  bpf(BPF_CMD.MAP_UPDATE_ELEM, attr, `map fd ${map}`);
  keepAlive(key, value);
}

/** BPF_MAP_LOOKUP_ELEM: the value stored at `key` (valueSize bytes). */
export function bpfMapLookup(map: Fd, key: Buffer, valueSize: number): Buffer {
  const value = Buffer.alloc(valueSize);
  const attr = elemAttr(map, key, value, 0);
  bpf(BPF_CMD.MAP_LOOKUP_ELEM, attr, `map fd ${map}`);
  keepAlive(key);
  return value;
}

/** A program the verifier refused, with the verifier's own account of why. */
export class BpfVerifierError extends SysError {
  constructor(
    errno: number,
    readonly programName: string,
    readonly verifierLog: string,
  ) {
    super('bpf(BPF_PROG_LOAD)', errno, `program ${programName}; verifier: ${verifierLog.trim().split('\n').slice(-6).join(' | ') || 'no log'}`);
  }
}

export interface ProgLoadOptions {
  readonly type: number;
  /** struct bpf_insn array, 8 bytes per instruction. */
  readonly instructions: Buffer;
  /** kfunc calls need a GPL-compatible license string. */
  readonly license: string;
  readonly name: string;
  readonly expectedAttachType?: number;
  /** The vmlinux BTF id of what a tracing program attaches to (an iterator's bpf_iter_<target>). */
  readonly attachBtfId?: number;
}

/** BPF_PROG_LOAD with a verifier log: a refused program throws BpfVerifierError carrying the log. */
export function bpfProgLoad(o: ProgLoadOptions): Fd {
  const license = Buffer.from(`${o.license}\0`, 'latin1');
  const log = Buffer.alloc(64 * 1024);
  const attr = Buffer.alloc(128);
  attr.writeUInt32LE(o.type, 0);
  attr.writeUInt32LE(o.instructions.length / 8, 4);
  attr.writeBigUInt64LE(addressOf(o.instructions), 8);
  attr.writeBigUInt64LE(addressOf(license), 16);
  attr.writeUInt32LE(1, 24); // log_level 1: the verifier explains a refusal
  attr.writeUInt32LE(log.length, 28);
  attr.writeBigUInt64LE(addressOf(log), 32);
  attr.write(o.name.slice(0, 15), 48, 'latin1');
  attr.writeUInt32LE(o.expectedAttachType ?? 0, 68);
  attr.writeUInt32LE(o.attachBtfId ?? 0, 108);
  try {
    return asFd(bpf(BPF_CMD.PROG_LOAD, attr, `program ${o.name}`));
  } catch (error) {
    if (!(error instanceof SysError)) throw error;
    const end = log.indexOf(0);
    throw new BpfVerifierError(error.errno, o.name, log.subarray(0, end < 0 ? log.length : end).toString('latin1'));
  } finally {
    keepAlive(o.instructions, license, log);
  }
}

/** BPF_LINK_CREATE for a tcx hook of network device `ifindex`: the program runs until the link fd is closed. */
export function bpfLinkCreateTcx(prog: Fd, ifindex: number, attachType: number): Fd {
  const attr = Buffer.alloc(64);
  attr.writeUInt32LE(prog, 0);
  attr.writeUInt32LE(ifindex, 4);
  attr.writeUInt32LE(attachType, 8);
  return asFd(bpf(BPF_CMD.LINK_CREATE, attr, `program fd ${prog} on ifindex ${ifindex}`));
}

/**
 * BPF_LINK_CREATE of an iterator program, limited to the one task `tid` (union
 * bpf_iter_link_info's task member: tid, pid, pid_fd; Linux 6.1+).
 */
export function bpfLinkCreateTaskIter(prog: Fd, tid: number): Fd {
  const info = Buffer.alloc(16);
  info.writeUInt32LE(tid, 0);
  const attr = Buffer.alloc(64);
  attr.writeUInt32LE(prog, 0);
  attr.writeUInt32LE(BPF_ATTACH.TRACE_ITER, 8);
  attr.writeBigUInt64LE(addressOf(info), 16);
  attr.writeUInt32LE(info.length, 24);
  try {
    return asFd(bpf(BPF_CMD.LINK_CREATE, attr, `iterator program fd ${prog} for task ${tid}`));
  } finally {
    keepAlive(info);
  }
}

/** BPF_ITER_CREATE: an fd whose read() runs the iterator; what the program writes is the data read. */
export function bpfIterCreate(link: Fd): Fd {
  const attr = Buffer.alloc(8);
  attr.writeUInt32LE(link, 0);
  return asFd(bpf(BPF_CMD.ITER_CREATE, attr, `iterator link fd ${link}`));
}

// Buffers whose addresses went into an attr must outlive the call; referencing them after it
// keeps them reachable for its duration.
function keepAlive(..._buffers: Buffer[]): void {}

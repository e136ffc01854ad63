// bpf(2): the few commands criu-ts uses to load a small TC program (soccr's accept-queue refill)
// and the vmlinux BTF lookup its kfunc call needs. Layouts are union bpf_attr's members for each
// command (linux/bpf.h); the kernel requires every byte past the member it reads to be zero, so
// each attr buffer is allocated zeroed and sized to cover the fields set.
import { readFileSync } from 'node:fs';
import { addressOf, sysCallNumber } from './ffi.js';
import { SysError } from './errors.js';
import { asFd, type Fd } from './types.js';
import { SYSCALL_NUMBERS as N } from './syscall-numbers.js';

/** enum bpf_cmd values used here. */
export const BPF_CMD = { MAP_CREATE: 0, MAP_LOOKUP_ELEM: 1, MAP_UPDATE_ELEM: 2, PROG_LOAD: 5, LINK_CREATE: 28 } as const;
/** enum bpf_map_type values used here. */
export const BPF_MAP_TYPE = { ARRAY: 2, SOCKMAP: 15 } as const;
/** enum bpf_prog_type values used here. */
export const BPF_PROG_TYPE = { SCHED_CLS: 3 } as const;
/** enum bpf_attach_type values used here (tcx: Linux 6.6+). */
export const BPF_ATTACH = { TCX_INGRESS: 46, TCX_EGRESS: 47 } as const;

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

// --- vmlinux BTF ---------------------------------------------------------------------------

const BTF_MAGIC = 0xeb9f;
const BTF_KIND_FUNC = 12;
/** Bytes following struct btf_type (12 bytes) for each kind, from its vlen (linux/btf.h). */
function btfTrailer(kind: number, vlen: number): number {
  switch (kind) {
    case 1: return 4; // INT
    case 3: return 12; // ARRAY
    case 4: case 5: return 12 * vlen; // STRUCT, UNION: btf_member
    case 6: return 8 * vlen; // ENUM
    case 13: return 8 * vlen; // FUNC_PROTO: btf_param
    case 14: return 4; // VAR
    case 15: return 12 * vlen; // DATASEC
    case 17: return 4; // DECL_TAG
    case 19: return 12 * vlen; // ENUM64
    default: return 0; // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
  }
}

/**
 * The BTF type id of kernel function `name` in /sys/kernel/btf/vmlinux: what a kfunc call
 * instruction carries in its imm. undefined when this kernel has no such function.
 */
export function vmlinuxBtfFuncId(name: string, path = '/sys/kernel/btf/vmlinux'): number | undefined {
  const btf = readFileSync(path);
  if (btf.readUInt16LE(0) !== BTF_MAGIC) throw new Error(`${path}: not BTF (magic 0x${btf.readUInt16LE(0).toString(16)})`);
  const hdrLen = btf.readUInt32LE(4);
  const typeStart = hdrLen + btf.readUInt32LE(8);
  const typeEnd = typeStart + btf.readUInt32LE(12);
  const strStart = hdrLen + btf.readUInt32LE(16);
  const wanted = Buffer.from(`${name}\0`, 'latin1');
  let id = 1;
  for (let off = typeStart; off < typeEnd; id++) {
    const nameOff = btf.readUInt32LE(off);
    const info = btf.readUInt32LE(off + 4);
    const kind = (info >>> 24) & 0x1f;
    const nameAt = strStart + nameOff;
    if (kind === BTF_KIND_FUNC && nameAt + wanted.length <= btf.length && btf.compare(wanted, 0, wanted.length, nameAt, nameAt + wanted.length) === 0) return id;
    off += 12 + btfTrailer(kind, info & 0xffff);
  }
  return undefined;
}

// Buffers whose addresses went into an attr must outlive the call; referencing them after it
// keeps them reachable for its duration.
function keepAlive(..._buffers: Buffer[]): void {}

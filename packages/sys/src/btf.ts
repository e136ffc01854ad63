// The kernel's own type information (/sys/kernel/btf/vmlinux, BTF format: linux/btf.h and
// Documentation/bpf/btf.rst): the id of a kernel function (what a kfunc call or a tracing
// program's attach point names) and where a field lies in a kernel struct on this very kernel
// (what a BPF program that reads kernel memory needs; struct layouts change between builds, so
// they are never written into criu-ts).
import { readFileSync } from 'node:fs';

const BTF_MAGIC = 0xeb9f;
const KIND = {
  INT: 1, PTR: 2, ARRAY: 3, STRUCT: 4, UNION: 5, ENUM: 6, FWD: 7, TYPEDEF: 8, VOLATILE: 9, CONST: 10, RESTRICT: 11,
  FUNC: 12, FUNC_PROTO: 13, VAR: 14, DATASEC: 15, FLOAT: 16, DECL_TAG: 17, TYPE_TAG: 18, ENUM64: 19,
} as const;

/** Bytes following struct btf_type (12 bytes) for each kind, from its vlen. */
function trailerSize(kind: number, vlen: number): number {
  switch (kind) {
    case KIND.INT: return 4;
    case KIND.ARRAY: return 12;
    case KIND.STRUCT: case KIND.UNION: return 12 * vlen; // btf_member
    case KIND.ENUM: return 8 * vlen;
    case KIND.FUNC_PROTO: return 8 * vlen; // btf_param
    case KIND.VAR: return 4;
    case KIND.DATASEC: return 12 * vlen;
    case KIND.DECL_TAG: return 4;
    case KIND.ENUM64: return 12 * vlen;
    default: return 0; // PTR, FWD, TYPEDEF, VOLATILE, CONST, RESTRICT, FUNC, FLOAT, TYPE_TAG
  }
}

/** A field found in a kernel struct: byte offset from the struct's start, and size in bytes. */
export interface BtfField {
  readonly offset: number;
  readonly size: number;
}

/** A field path the kernel's BTF does not have (another kernel version, or a config without it). */
export class BtfFieldMissing extends Error {
  constructor(readonly structName: string, readonly path: readonly string[], readonly detail: string) {
    super(`kernel BTF: struct ${structName} has no ${path.join('.')} (${detail})`);
  }
}

export class Btf {
  /** Byte offset of each type's btf_type record, by type id (id 0 is void). */
  private readonly typeAt: number[] = [0];
  private readonly strStart: number;
  private readonly byName = new Map<string, number[]>();

  constructor(private readonly data: Buffer, readonly path: string) {
    if (data.readUInt16LE(0) !== BTF_MAGIC) throw new Error(`${path}: not BTF (magic 0x${data.readUInt16LE(0).toString(16)})`);
    const hdrLen = data.readUInt32LE(4);
    const typeStart = hdrLen + data.readUInt32LE(8);
    const typeEnd = typeStart + data.readUInt32LE(12);
    this.strStart = hdrLen + data.readUInt32LE(16);
    for (let off = typeStart; off < typeEnd; ) {
      this.typeAt.push(off);
      const info = data.readUInt32LE(off + 4);
      off += 12 + trailerSize((info >>> 24) & 0x1f, info & 0xffff);
    }
  }

  private static vmlinuxCache: Btf | undefined;
  /** This kernel's BTF, read once per process (5 MB or so). */
  static vmlinux(): Btf {
    return (Btf.vmlinuxCache ??= new Btf(readFileSync('/sys/kernel/btf/vmlinux'), '/sys/kernel/btf/vmlinux'));
  }

  private kind(id: number): number {
    return (this.data.readUInt32LE(this.typeAt[id]! + 4) >>> 24) & 0x1f;
  }
  private vlen(id: number): number {
    return this.data.readUInt32LE(this.typeAt[id]! + 4) & 0xffff;
  }
  private kindFlag(id: number): boolean {
    return (this.data.readUInt32LE(this.typeAt[id]! + 4) & 0x80000000) !== 0;
  }
  /** size (INT, STRUCT, UNION, ENUM) or the referenced type (PTR, TYPEDEF, CONST, ...). */
  private sizeOrType(id: number): number {
    return this.data.readUInt32LE(this.typeAt[id]! + 8);
  }
  private string(offset: number): string {
    const at = this.strStart + offset;
    return this.data.toString('latin1', at, this.data.indexOf(0, at));
  }
  private name(id: number): string {
    return this.string(this.data.readUInt32LE(this.typeAt[id]!));
  }

  /** Ids of the types called `name` (built on first use: one pass over every type). */
  private idsNamed(name: string): readonly number[] {
    if (this.byName.size === 0) {
      for (let id = 1; id < this.typeAt.length; id++) {
        const nameOff = this.data.readUInt32LE(this.typeAt[id]!);
        if (nameOff === 0) continue;
        const n = this.string(nameOff);
        const list = this.byName.get(n);
        if (list) list.push(id);
        else this.byName.set(n, [id]);
      }
    }
    return this.byName.get(name) ?? [];
  }

  /** The id of kernel function `name` (a FUNC), undefined when this kernel has none. */
  funcId(name: string): number | undefined {
    return this.idsNamed(name).find((id) => this.kind(id) === KIND.FUNC);
  }

  /** The type behind typedefs and qualifiers. */
  private resolve(id: number): number {
    for (let hops = 0; hops < 64; hops++) {
      const k = this.kind(id);
      if (k !== KIND.TYPEDEF && k !== KIND.VOLATILE && k !== KIND.CONST && k !== KIND.RESTRICT && k !== KIND.TYPE_TAG) return id;
      id = this.sizeOrType(id);
    }
    throw new Error(`${this.path}: type chain too long at id ${id}`);
  }

  private sizeOf(id: number): number {
    id = this.resolve(id);
    switch (this.kind(id)) {
      case KIND.INT: case KIND.STRUCT: case KIND.UNION: case KIND.ENUM: case KIND.ENUM64: case KIND.FLOAT:
        return this.sizeOrType(id);
      case KIND.PTR:
        return 8;
      case KIND.ARRAY: {
        const at = this.typeAt[id]! + 12; // btf_array { type, index_type, nelems }
        return this.sizeOf(this.data.readUInt32LE(at)) * this.data.readUInt32LE(at + 8);
      }
      default:
        return 0;
    }
  }

  /** Finds member `name` of struct/union `id`, looking into anonymous members; bit offset and type. */
  private member(id: number, name: string): { bits: number; type: number } | undefined {
    const kindFlag = this.kindFlag(id);
    const first = this.typeAt[id]! + 12;
    for (let i = 0; i < this.vlen(id); i++) {
      const at = first + 12 * i;
      const memberName = this.string(this.data.readUInt32LE(at));
      const type = this.data.readUInt32LE(at + 4);
      const raw = this.data.readUInt32LE(at + 8);
      const bits = kindFlag ? raw & 0xffffff : raw;
      if (memberName === name) return { bits, type };
      if (memberName === '') {
        const inner = this.resolve(type);
        const k = this.kind(inner);
        if (k === KIND.STRUCT || k === KIND.UNION) {
          const found = this.member(inner, name);
          if (found) return { bits: bits + found.bits, type: found.type };
        }
      }
    }
    return undefined;
  }

  /**
   * Where `path` (member names, nested structs and unions followed, anonymous ones looked into)
   * lies in struct `structName`. Throws BtfFieldMissing when this kernel's struct differs.
   */
  field(structName: string, path: readonly string[]): BtfField {
    const id = this.idsNamed(structName).find((t) => this.kind(t) === KIND.STRUCT && this.vlen(t) > 0);
    if (id === undefined) throw new BtfFieldMissing(structName, path, 'no such struct');
    let type = id;
    let bits = 0;
    for (const [i, name] of path.entries()) {
      const container = this.resolve(type);
      const k = this.kind(container);
      if (k !== KIND.STRUCT && k !== KIND.UNION) throw new BtfFieldMissing(structName, path, `${path.slice(0, i).join('.')} is not a struct`);
      const found = this.member(container, name);
      if (!found) throw new BtfFieldMissing(structName, path, `no member ${name}`);
      bits += found.bits;
      type = found.type;
    }
    if (bits % 8 !== 0) throw new BtfFieldMissing(structName, path, 'it is a bit field');
    return { offset: bits / 8, size: this.sizeOf(type) };
  }
}

/**
 * The BTF type id of kernel function `name` in the vmlinux BTF: what a kfunc call instruction
 * carries in its imm. undefined when this kernel has no such function.
 */
export function vmlinuxBtfFuncId(name: string, path = '/sys/kernel/btf/vmlinux'): number | undefined {
  const btf = path === '/sys/kernel/btf/vmlinux' ? Btf.vmlinux() : new Btf(readFileSync(path), path);
  return btf.funcId(name);
}

/**
 * A minimal eBPF instruction encoder: just the instructions criu-ts's programs use (soccr's
 * accept-queue refill, core's packet-ring reader). criu-ts builds them at run time (their
 * constants are the connection being put back, this kernel's struct offsets) and needs no
 * compiler for BPF on the machine. Encodings from the kernel's instruction-set document
 * (Documentation/bpf/standardization/instruction-set.rst): 8 bytes per instruction, opcode,
 * dst/src register nibbles, signed 16-bit offset, signed 32-bit immediate; a 64-bit immediate
 * load takes two slots.
 */

export type Reg = 0 | 1 | 2 | 3 | 4 | 5 | 6 | 7 | 8 | 9 | 10;
export const R0: Reg = 0, R1: Reg = 1, R2: Reg = 2, R3: Reg = 3, R4: Reg = 4, R5: Reg = 5;
export const R6: Reg = 6, R7: Reg = 7, R8: Reg = 8, R9: Reg = 9, FP: Reg = 10;

const CLS = { LD: 0x00, LDX: 0x01, ST: 0x02, STX: 0x03, JMP: 0x05, JMP32: 0x06, ALU64: 0x07 } as const;
const SIZE = { W: 0x00, H: 0x08, B: 0x10, DW: 0x18 } as const;
const MODE = { IMM: 0x00, MEM: 0x60 } as const;
const SRC = { K: 0x00, X: 0x08 } as const;
const ALU = { ADD: 0x00, MOV: 0xb0 } as const;
const JOP = { JA: 0x00, JEQ: 0x10, JNE: 0x50, CALL: 0x80, EXIT: 0x90 } as const;

/** src_reg of a call: a helper by number, or a kernel function by its vmlinux BTF id. */
export const BPF_PSEUDO_KFUNC_CALL = 2;
/** src_reg of a 64-bit immediate load whose value is a map fd. */
export const BPF_PSEUDO_MAP_FD = 1;

export type Size = keyof typeof SIZE;

interface Insn {
  code: number;
  dst: Reg;
  src: number;
  off: number | string; // a label name is resolved to a relative jump when assembled
  imm: number;
}

/** Builds a program instruction by instruction; jumps name labels, resolved by `assemble`. */
export class BpfProgram {
  private readonly insns: Insn[] = [];
  private readonly labels = new Map<string, number>();

  private push(code: number, dst: Reg, src: number, off: number | string, imm: number): this {
    this.insns.push({ code, dst, src, off, imm: imm | 0 });
    return this;
  }

  label(name: string): this {
    if (this.labels.has(name)) throw new Error(`bpf: label ${name} defined twice`);
    this.labels.set(name, this.insns.length);
    return this;
  }
  movImm(dst: Reg, imm: number): this {
    return this.push(CLS.ALU64 | ALU.MOV | SRC.K, dst, 0, 0, imm);
  }
  movReg(dst: Reg, src: Reg): this {
    return this.push(CLS.ALU64 | ALU.MOV | SRC.X, dst, src, 0, 0);
  }
  addImm(dst: Reg, imm: number): this {
    return this.push(CLS.ALU64 | ALU.ADD | SRC.K, dst, 0, 0, imm);
  }
  /** dst = *(size *)(src + off) */
  load(size: Size, dst: Reg, src: Reg, off: number): this {
    return this.push(CLS.LDX | SIZE[size] | MODE.MEM, dst, src, off, 0);
  }
  /** *(size *)(dst + off) = imm */
  storeImm(size: Size, dst: Reg, off: number, imm: number): this {
    return this.push(CLS.ST | SIZE[size] | MODE.MEM, dst, 0, off, imm);
  }
  /** *(size *)(dst + off) = src */
  storeReg(size: Size, dst: Reg, off: number, src: Reg): this {
    return this.push(CLS.STX | SIZE[size] | MODE.MEM, dst, src, off, 0);
  }
  /** dst = map fd, as the verifier's map pointer. */
  loadMapFd(dst: Reg, fd: number): this {
    this.push(CLS.LD | SIZE.DW | MODE.IMM, dst, BPF_PSEUDO_MAP_FD, 0, fd);
    return this.push(0, 0, 0, 0, 0);
  }
  /** 64-bit compare with imm sign-extended: for pointers and small constants. */
  jumpIfImm(op: 'eq' | 'ne', dst: Reg, imm: number, target: string): this {
    return this.push(CLS.JMP | (op === 'eq' ? JOP.JEQ : JOP.JNE) | SRC.K, dst, 0, target, imm);
  }
  /** 32-bit compare of the low halves: for a u32 loaded from memory against any 32-bit pattern. */
  jump32IfImm(op: 'eq' | 'ne', dst: Reg, imm: number, target: string): this {
    return this.push(CLS.JMP32 | (op === 'eq' ? JOP.JEQ : JOP.JNE) | SRC.K, dst, 0, target, imm);
  }
  jump(target: string): this {
    return this.push(CLS.JMP | JOP.JA, 0, 0, target, 0);
  }
  callHelper(id: number): this {
    return this.push(CLS.JMP | JOP.CALL, 0, 0, 0, id);
  }
  callKfunc(btfId: number): this {
    return this.push(CLS.JMP | JOP.CALL, 0, BPF_PSEUDO_KFUNC_CALL, 0, btfId);
  }
  exit(): this {
    return this.push(CLS.JMP | JOP.EXIT, 0, 0, 0, 0);
  }

  /** struct bpf_insn[], little-endian. */
  assemble(): Buffer {
    const out = Buffer.alloc(this.insns.length * 8);
    this.insns.forEach((insn, i) => {
      let off = insn.off;
      if (typeof off === 'string') {
        const at = this.labels.get(off);
        if (at === undefined) throw new Error(`bpf: jump to undefined label ${off}`);
        off = at - (i + 1);
      }
      out[i * 8] = insn.code;
      out[i * 8 + 1] = (insn.src << 4) | insn.dst;
      out.writeInt16LE(off, i * 8 + 2);
      out.writeInt32LE(insn.imm, i * 8 + 4);
    });
    return out;
  }
}

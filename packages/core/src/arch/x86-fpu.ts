// The x86_64 FPU/SIMD state between the kernel's NT_X86_XSTATE image and CRIU's
// user_x86_fpregs_entry (core-x86.proto). Dump and restore both go through here, so the two
// directions cannot drift apart.
//
// NT_X86_XSTATE is the XSAVE area in standard (non-compacted) form:
//
//   0    legacy FXSAVE area (512): cwd swd twd fop rip rdp mxcsr mxcsr_mask st[8x16] xmm[16x16] pad
//   464    (inside the pad) sw_reserved: XCR0 of the task as ptrace reports it
//   512  XSAVE header (64): XSTATE_BV (which components hold non-init state), XCOMP_BV
//   then the extended components at the offsets CPUID leaf 0xD gives (EBX of sub-leaf N):
//        component 2  AVX: upper halves of YMM0-15         (256)
//        component 3  MPX bound registers                   (64)
//        component 4  MPX BNDCFGU/BNDSTATUS                  (64)
//        component 5  AVX-512 opmask k0-k7                   (64)
//        component 6  AVX-512 upper halves of ZMM0-15        (512)
//        component 7  AVX-512 ZMM16-31                       (1024)
//        component 9  PKRU                                   (8)
//
// The offsets are the CPU's, not the architecture's: Intel parts put opmask at 1088 after the
// MPX area, AMD Zen 4 (no MPX) at 832 and PKRU at 2432. So both directions take the CPU's
// offsets (XsaveOffsets, from CPUID); INTEL_XSAVE_OFFSETS is only the fallback for images
// handled where no CPUID reading is at hand.
import { xstateXcr0, XSAVE_HEADER_OFFSET } from '@criu-ts/sys';

interface Component {
  readonly bit: number;
  readonly size: number;
  readonly field: 'ymmh_space' | 'bndreg_state' | 'bndcsr_state' | 'opmask_reg' | 'zmm_upper' | 'hi16_zmm' | 'pkru';
  /** Width of the repeated field's items in the image. */
  readonly word: 4 | 8;
}

const COMPONENTS: readonly Component[] = [
  { bit: 2, size: 256, field: 'ymmh_space', word: 4 },
  { bit: 3, size: 64, field: 'bndreg_state', word: 8 },
  { bit: 4, size: 64, field: 'bndcsr_state', word: 8 },
  { bit: 5, size: 64, field: 'opmask_reg', word: 8 },
  { bit: 6, size: 512, field: 'zmm_upper', word: 8 },
  { bit: 7, size: 1024, field: 'hi16_zmm', word: 8 },
  { bit: 9, size: 8, field: 'pkru', word: 4 },
];

/** Standard-form offset of each XSAVE component the CPU has, by component number. */
export type XsaveOffsets = ReadonlyMap<number, number>;

/** The offsets of Intel CPUs with MPX (Skylake-SP and later server parts). */
export const INTEL_XSAVE_OFFSETS: XsaveOffsets = new Map([[2, 576], [3, 960], [4, 1024], [5, 1088], [6, 1152], [7, 1664], [9, 2688]]);

/**
 * XsaveOffsets from CPUID leaf 0xD as the parasite or the restore stub report it: per component
 * number, its size and offset (a size of 0: the CPU has no such component).
 */
export function xsaveOffsetsFromCpuid(components: ReadonlyArray<{ size: number; offset: number } | undefined> | Readonly<Record<string, readonly [number, number]>>): XsaveOffsets {
  const out = new Map<number, number>();
  const entries: Array<[number, number, number]> = Array.isArray(components)
    ? components.map((c, i) => [i, c?.offset ?? 0, c?.size ?? 0])
    : Object.entries(components as Record<string, readonly [number, number]>).map(([k, [offset, size]]) => [Number(k), offset, size]);
  for (const [bit, offset, size] of entries) if (bit >= 2 && size > 0) out.set(bit, offset);
  return out;
}
export type FpregsEntry = Record<string, unknown>;

function words32(buf: Buffer, offset: number, count: number): number[] {
  return Array.from({ length: count }, (_, i) => buf.readUInt32LE(offset + i * 4));
}
function words64(buf: Buffer, offset: number, count: number): bigint[] {
  return Array.from({ length: count }, (_, i) => buf.readBigUInt64LE(offset + i * 8));
}

/** CRIU's fpregs entry from an NT_X86_XSTATE image (or a bare 512-byte FXSAVE image). */
export function fpregsFromXsave(xsave: Uint8Array, offsets: XsaveOffsets): FpregsEntry {
  const buf = Buffer.from(xsave.buffer, xsave.byteOffset, xsave.byteLength);
  const entry: FpregsEntry = {
    cwd: buf.readUInt16LE(0),
    swd: buf.readUInt16LE(2),
    twd: buf.readUInt16LE(4),
    fop: buf.readUInt16LE(6),
    rip: buf.readBigUInt64LE(8),
    rdp: buf.readBigUInt64LE(16),
    mxcsr: buf.readUInt32LE(24),
    mxcsr_mask: buf.readUInt32LE(28),
    st_space: words32(buf, 32, 32),
    xmm_space: words32(buf, 160, 64),
  };
  if (buf.length <= XSAVE_HEADER_OFFSET) return entry;
  const enabled = xstateXcr0(buf);
  const xsaveEntry: Record<string, unknown> = { xstate_bv: buf.readBigUInt64LE(XSAVE_HEADER_OFFSET) };
  for (const c of COMPONENTS) {
    const offset = offsets.get(c.bit);
    if (offset === undefined || !(enabled & (1n << BigInt(c.bit))) || offset + c.size > buf.length) continue;
    xsaveEntry[c.field] = c.word === 4 ? words32(buf, offset, c.size / 4) : words64(buf, offset, c.size / 8);
  }
  // Shadow-stack state lives in its own regset (NT_X86_SHSTK) and is off for user tasks here.
  xsaveEntry.cet = { cet: 0n, ssp: 0n };
  entry.xsave = xsaveEntry;
  return entry;
}

/**
 * An NT_X86_XSTATE image with the state of `entry`, laid over `template` (the target thread's own
 * current image, which has the right size and the kernel's sw_reserved bytes). Components the
 * entry does not carry are left as the template has them.
 */
export function xsaveFromFpregs(entry: FpregsEntry, template: Uint8Array, offsets: XsaveOffsets): Buffer {
  const buf = Buffer.from(template);
  buf.writeUInt16LE(Number(entry.cwd ?? 0), 0);
  buf.writeUInt16LE(Number(entry.swd ?? 0), 2);
  buf.writeUInt16LE(Number(entry.twd ?? 0), 4);
  buf.writeUInt16LE(Number(entry.fop ?? 0), 6);
  buf.writeBigUInt64LE(BigInt(entry.rip as bigint ?? 0n), 8);
  buf.writeBigUInt64LE(BigInt(entry.rdp as bigint ?? 0n), 16);
  buf.writeUInt32LE(Number(entry.mxcsr ?? 0x1f80), 24);
  buf.writeUInt32LE(Number(entry.mxcsr_mask ?? 0), 28);
  ((entry.st_space as number[] | undefined) ?? []).slice(0, 32).forEach((w, i) => buf.writeUInt32LE(w >>> 0, 32 + i * 4));
  ((entry.xmm_space as number[] | undefined) ?? []).slice(0, 64).forEach((w, i) => buf.writeUInt32LE(w >>> 0, 160 + i * 4));
  if (buf.length <= XSAVE_HEADER_OFFSET) return buf;
  // x87 and SSE (bits 0, 1) are always taken from the legacy area just written: with a bit clear,
  // XRSTOR would put the component in its init state and drop the xmm values (the template's
  // bits only say whether the *template's* task happened to use SSE).
  const LEGACY = 3n;
  const xsave = entry.xsave as Record<string, unknown> | undefined;
  if (!xsave) {
    buf.writeBigUInt64LE(buf.readBigUInt64LE(XSAVE_HEADER_OFFSET) | LEGACY, XSAVE_HEADER_OFFSET);
    return buf;
  }
  const enabled = xstateXcr0(buf);
  let bv = BigInt(xsave.xstate_bv as bigint) | LEGACY;
  for (const c of COMPONENTS) {
    const words = xsave[c.field] as Array<number | bigint> | undefined;
    const offset = offsets.get(c.bit);
    if (!words || offset === undefined || offset + c.size > buf.length) continue;
    words.slice(0, c.size / c.word).forEach((w, i) => {
      if (c.word === 4) buf.writeUInt32LE(Number(w) >>> 0, offset + i * 4);
      else buf.writeBigUInt64LE(BigInt(w), offset + i * 8);
    });
  }
  // Never claim components the kernel did not enable for this task: XRSTOR would fault.
  bv &= enabled | LEGACY;
  buf.writeBigUInt64LE(bv, XSAVE_HEADER_OFFSET);
  return buf;
}

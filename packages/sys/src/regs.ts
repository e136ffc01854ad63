// x86_64 register layouts as ptrace exchanges them (arch/x86/include/asm/user_64.h, uapi/asm/ptrace.h).
//
// - user_regs_struct: 27 unsigned longs, PTRACE_GETREGS/SETREGS and NT_PRSTATUS.
// - user_fpregs_struct: the 512-byte FXSAVE image, PTRACE_GETFPREGS and NT_PRFPREG.
// - NT_X86_XSTATE: the XSAVE area in the standard (non-compacted) format. Its size depends on the
//   CPU features the kernel enabled, so it is read from the kernel (GETREGSET shrinks the iovec to
//   the real size) and never hard-coded. Bytes 464..511 of the FXSAVE part carry the kernel's
//   "software reserved" header (FP_XSTATE_MAGIC1, sizes, features) and 512..575 the XSAVE header
//   (XSTATE_BV at 512).
import { layout } from './ffi.js';

/** Names of user_regs_struct members in their kernel order (offset = index * 8). */
export const USER_REGS_FIELDS = [
  'r15', 'r14', 'r13', 'r12', 'rbp', 'rbx', 'r11', 'r10', 'r9', 'r8', 'rax', 'rcx', 'rdx', 'rsi',
  'rdi', 'orig_rax', 'rip', 'cs', 'eflags', 'rsp', 'ss', 'fs_base', 'gs_base', 'ds', 'es', 'fs', 'gs',
] as const;
export type UserRegsField = (typeof USER_REGS_FIELDS)[number];

/** x86_64 user_regs_struct, every member as an unsigned 64-bit bigint. */
export type UserRegs = { [K in UserRegsField]: bigint };

export const USER_REGS_SIZE = USER_REGS_FIELDS.length * 8; // 216
export const USER_FPREGS_SIZE = 512;

/** koffi's view of the same struct: the layout test checks sizes and offsets against the C compiler's. */
export const UserRegsStruct = layout.struct(
  'user_regs_struct',
  Object.fromEntries(USER_REGS_FIELDS.map((f) => [f, 'unsigned long'])),
);

export function decodeUserRegs(buf: Uint8Array): UserRegs {
  const b = Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength);
  const regs = {} as UserRegs;
  for (let i = 0; i < USER_REGS_FIELDS.length; i++) regs[USER_REGS_FIELDS[i]!] = b.readBigUInt64LE(i * 8);
  return regs;
}

export function encodeUserRegs(regs: UserRegs, out: Buffer = Buffer.alloc(USER_REGS_SIZE)): Buffer {
  for (let i = 0; i < USER_REGS_FIELDS.length; i++) {
    out.writeBigUInt64LE(BigInt.asUintN(64, regs[USER_REGS_FIELDS[i]!]), i * 8);
  }
  return out;
}

/** RAX read as the signed return value of a syscall (the kernel returns -errno in -4095..-1). */
export function signedRax(regs: UserRegs): bigint {
  return BigInt.asIntN(64, regs.rax);
}

/** orig_rax read as the kernel does: -1 means "not in a syscall", so no restart logic applies. */
export function syscallNrOf(regs: UserRegs): bigint {
  return BigInt.asIntN(64, regs.orig_rax);
}

// Offsets inside the XSAVE area (Intel SDM vol. 1, 13.4; the kernel's struct fxregs_state / xstate_header).
export const FXSAVE_SW_RESERVED_OFFSET = 464;
export const XSAVE_HEADER_OFFSET = 512;
/** FP_XSTATE_MAGIC1 in sw_reserved: the area has the extended XSAVE layout. */
export const FP_XSTATE_MAGIC1 = 0x46505853;
/** FP_XSTATE_MAGIC2 right after the XSAVE area in a signal frame: the area is complete. */
export const FP_XSTATE_MAGIC2 = 0x46505845;

/**
 * XCR0 (the user-visible state components the kernel enabled) from an NT_X86_XSTATE image: the
 * ptrace ABI puts it in the first 8 bytes of sw_reserved (USER_XSTATE_XCR0_WORD in the kernel's
 * uapi). Signal frames use the same bytes differently (see writeSigframeSwBytes).
 */
export function xstateXcr0(xsave: Uint8Array): bigint {
  return Buffer.from(xsave.buffer, xsave.byteOffset, xsave.byteLength).readBigUInt64LE(FXSAVE_SW_RESERVED_OFFSET);
}

/**
 * Turns a copy of an NT_X86_XSTATE image into the fpstate of a signal frame, which rt_sigreturn
 * accepts in full only with struct _fpx_sw_bytes in sw_reserved (magic1, extended_size, xfeatures,
 * xstate_size) and FP_XSTATE_MAGIC2 right after the area; otherwise it restores the legacy
 * FXSAVE part only and puts every other component in its init state.
 *
 * The kernel also falls back to FXSAVE-only when xstate_size exceeds the task's own signal-frame
 * size (fpstate->user_size), and that is smaller than the NT_X86_XSTATE image whenever XCR0 holds
 * a dynamic feature the task has no buffer for (AMX tile data: ptrace reports 11008 bytes, a task
 * that never used AMX restores at most 2816). So `layout` names the components to restore
 * (`features`, which also becomes XRSTOR's mask: never a component the task may not use) and the
 * area's length (`size`, the end of the topmost of them); the image is cut there. Without it, the
 * whole image and XCR0 are used. Returns a new buffer of size + 4 bytes.
 */
export function toSigframeFpstate(xsave: Uint8Array, layout?: { features: bigint; size: number }): Buffer {
  const xcr0 = xstateXcr0(xsave);
  const features = layout ? layout.features & xcr0 : xcr0;
  const size = layout ? Math.min(Math.max(layout.size, XSAVE_HEADER_OFFSET + 64), xsave.byteLength) : xsave.byteLength;
  const out = Buffer.alloc(size + 4);
  out.set(xsave.subarray(0, size));
  const o = FXSAVE_SW_RESERVED_OFFSET;
  out.fill(0, o, XSAVE_HEADER_OFFSET);
  out.writeUInt32LE(FP_XSTATE_MAGIC1, o);
  out.writeUInt32LE(size + 4, o + 4);
  out.writeBigUInt64LE(features, o + 8);
  out.writeUInt32LE(size, o + 16);
  // XSTATE_BV: only components XRSTOR is asked to load (the rest are put in init state anyway).
  if (size >= XSAVE_HEADER_OFFSET + 8) out.writeBigUInt64LE(out.readBigUInt64LE(XSAVE_HEADER_OFFSET) & features, XSAVE_HEADER_OFFSET);
  out.writeUInt32LE(FP_XSTATE_MAGIC2, size);
  return out;
}

/** XSTATE_BV of an XSAVE image: which state components the image holds. */
export function xstateBv(xsave: Uint8Array): bigint {
  return Buffer.from(xsave.buffer, xsave.byteOffset, xsave.byteLength).readBigUInt64LE(XSAVE_HEADER_OFFSET);
}

// Signal frames that put a thread back as it was, and the XSAVE layout they need.
//
// A thread that runs our code (a remote syscall, a parasite call, the parasite daemon) must get
// back to its own state by itself if criu-ts dies meanwhile: then nobody is left to restore its
// registers. rt_sigreturn does that from a frame on its stack holding the registers (with the
// restart of an interrupted syscall done in advance), the signal mask and the XSAVE state. The
// frame's extended state must be what the task's rt_sigreturn accepts, hence the CPU's layout.
import { mkdirSync, readFileSync, renameSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import {
  toSigframeFpstate, syscallNumber, ERESTARTSYS, ERESTARTNOINTR, ERESTARTNOHAND, ERESTART_RESTARTBLOCK,
  xstateBv, xstateXcr0, XSAVE_HEADER_OFFSET, type UserRegs,
} from '@criu-ts/sys';
import { CompelError } from './errors.js';
import { nativeDir } from './native.js';
import {
  SIGCONTEXT_CSGSFSSS, SIGCONTEXT_FPSTATE, SIGCONTEXT_GPRS, SIGFRAME, UC_FP_XSTATE, UC_SIGCONTEXT_SS,
  UC_STRICT_RESTORE_SS,
} from './parasite-abi.js';

// child_process on first use, not at import: loading it (with the net and dgram modules it pulls
// in) costs the criu-ts command ~4 ms of start-up, and a plain dump never spawns anything.
const childProcess = () => process.getBuiltinModule('node:child_process');

const alignB = (v: bigint, a: bigint) => ((v + a - 1n) / a) * a;

/**
 * The registers the task would have if the kernel had already restarted its interrupted syscall
 * (arch/x86/kernel/signal.c: with no handler to run, every restart code rewinds RIP by the 2
 * bytes of `syscall`; ERESTART_RESTARTBLOCK re-enters through restart_syscall). rt_sigreturn sets
 * orig_rax to -1, so a frame must carry the restarted state itself.
 */
export function restartedRegs(regs: UserRegs): UserRegs {
  const nr = BigInt.asIntN(64, regs.orig_rax);
  if (nr < 0n) return regs;
  const ret = -BigInt.asIntN(64, regs.rax);
  if (ret === BigInt(ERESTARTSYS) || ret === BigInt(ERESTARTNOINTR) || ret === BigInt(ERESTARTNOHAND)) {
    return { ...regs, rax: regs.orig_rax, rip: regs.rip - 2n };
  }
  if (ret === BigInt(ERESTART_RESTARTBLOCK)) {
    return { ...regs, rax: BigInt(syscallNumber('restart_syscall')), rip: regs.rip - 2n };
  }
  return regs;
}

/** The CPU's XSAVE layout (CPUID leaf 0xD), and the components a task may use where known. */
export interface XstateLayout {
  /** ARCH_GET_XCOMP_PERM: the components the task may use; null when not known. */
  perm: bigint | null;
  /** CPUID(0xD, i) per component i (index 0 and 1 unused): size, standard-format offset, flags (ECX). */
  components: Array<{ size: number; offset: number; flags: number }>;
}

let cpuLayoutCache: (XstateLayout & { size: number }) | undefined;

/**
 * Where the layout is kept between criu-ts processes, with the boot it was read in: running the
 * program costs a Node process ~12 ms (a fork of itself), reading this file well under one. The
 * CPU does not change within a boot. /run is cleared at boot anyway; not writable: no cache.
 */
const CPU_LAYOUT_CACHE = '/run/criu-ts/cpu-xstate.json';

function bootId(): string | undefined {
  try {
    return readFileSync('/proc/sys/kernel/random/boot_id', 'utf8').trim();
  } catch {
    return undefined;
  }
}

/** The program's output, from the cache when it was written in this boot. */
function cpuXstateOutput(program: string): string {
  const boot = bootId();
  try {
    const cached = JSON.parse(readFileSync(CPU_LAYOUT_CACHE, 'utf8')) as { boot?: string; output?: string };
    if (boot !== undefined && cached.boot === boot && typeof cached.output === 'string') return cached.output;
  } catch { /* none yet, or unreadable: run the program */ }
  const output = childProcess().execFileSync(program, [], { encoding: 'utf8', timeout: 10_000 });
  if (boot !== undefined) {
    try {
      mkdirSync(dirname(CPU_LAYOUT_CACHE), { recursive: true, mode: 0o700 });
      const tmp = `${CPU_LAYOUT_CACHE}.${process.pid}`;
      writeFileSync(tmp, JSON.stringify({ boot, output }), { mode: 0o600 });
      renameSync(tmp, CPU_LAYOUT_CACHE);
    } catch { /* not root, or /run read-only: every process runs the program */ }
  }
  return output;
}

/**
 * This CPU's XSAVE layout, as native/build/cpu-xstate reads it with CPUID (once per boot, see
 * CPU_LAYOUT_CACHE). `perm` is null: permissions are per task, and what this process may use says
 * nothing of another (sigframeXstateLayout then relies on the task's XSTATE_BV for dynamic
 * components). `size` is the standard-format area for every feature enabled in XCR0. Remote calls
 * need it before the parasite runs in the task: their return frames carry the task's extended
 * state (see ReturnChain).
 */
export function cpuXstateLayout(dir = nativeDir()): XstateLayout & { size: number } {
  if (cpuLayoutCache) return cpuLayoutCache;
  const program = join(dir, 'build', 'cpu-xstate');
  let parsed: { size: number; components: Record<string, [number, number, number]> };
  try {
    parsed = JSON.parse(cpuXstateOutput(program)) as typeof parsed;
  } catch (err) {
    throw new CompelError('parasite', 0, `cannot read the CPU's XSAVE layout with ${program} (run npm run build): ${(err as Error).message}`, {}, err as Error);
  }
  const components = Array.from({ length: 64 }, (_, i) => {
    const c = parsed.components[String(i)];
    return c ? { offset: c[0], size: c[1], flags: c[2] } : { offset: 0, size: 0, flags: 0 };
  });
  cpuLayoutCache = { perm: null, components, size: parsed.size };
  return cpuLayoutCache;
}

/** CPUID(0xD, i).ECX bit 2: the component can be armed in XFD, i.e. the kernel gives a task its buffer on first use (AMX tile data). */
const XSTATE_COMP_XFD = 4;

/**
 * Which components a signal frame for this task may restore, and the area's length: what
 * rt_sigreturn accepts from it. The kernel takes an extended frame only up to the task's own
 * signal-frame size (fpstate->user_size) and XRSTORs exactly the sw_reserved xfeatures; a dynamic
 * component (XFD-capable: AMX tile data) counts only once the task has a buffer for it, which it
 * certainly has when XSTATE_BV shows the component in use. Elsewhere it is left out: its state is
 * init then, which is what rt_sigreturn gives every component outside the mask anyway.
 * Returns undefined (use the whole image) when the layout does not describe every component.
 */
export function sigframeXstateLayout(xsave: Buffer, layout: XstateLayout): { features: bigint; size: number } | undefined {
  if (xsave.length <= XSAVE_HEADER_OFFSET) return undefined;
  const bv = xstateBv(xsave);
  let features = xstateXcr0(xsave);
  if (layout.perm !== null) features &= layout.perm | 3n;
  let size = XSAVE_HEADER_OFFSET + 64;
  for (let i = 2; i < 64; i++) {
    const bit = 1n << BigInt(i);
    if (!(features & bit)) continue;
    const c = layout.components[i]!;
    if (c.flags & XSTATE_COMP_XFD && !(bv & bit)) {
      features &= ~bit;
      continue;
    }
    if (c.size === 0 || c.offset + c.size > xsave.length) return undefined;
    size = Math.max(size, c.offset + c.size);
  }
  return { features, size };
}

/**
 * An rt_sigreturn frame at `frameAddr` restoring `regs`, `sigmask` and the XSAVE image; the
 * fpstate goes at the next 64-byte boundary after the frame (XRSTOR needs that alignment).
 * `xstate` (see sigframeXstateLayout) limits the extended state to what the task's rt_sigreturn
 * accepts; without it the whole image is offered.
 * uc_stack is left zero (the parasite fills in the task's current sigaltstack before use).
 */
export function buildSigframe(
  regs: UserRegs, sigmask: bigint, xsave: Buffer, frameAddr: bigint, pretcode: bigint,
  xstate?: { features: bigint; size: number },
): Buffer {
  const fp = toSigframeFpstate(xsave, xstate);
  const fpAddr = alignB(frameAddr + BigInt(SIGFRAME.size), 64n);
  const fpOff = Number(fpAddr - frameAddr);
  const frame = Buffer.alloc(fpOff + fp.length);
  frame.writeBigUInt64LE(pretcode, SIGFRAME.pretcode);
  frame.writeBigUInt64LE(BigInt(UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS), SIGFRAME.uc_flags);
  const mc = SIGFRAME.mcontext;
  SIGCONTEXT_GPRS.forEach((r, i) => frame.writeBigUInt64LE(BigInt.asUintN(64, regs[r]), mc + i * 8));
  frame.writeUInt16LE(Number(regs.cs), mc + SIGCONTEXT_CSGSFSSS);
  frame.writeUInt16LE(Number(regs.ss), mc + SIGCONTEXT_CSGSFSSS + 6);
  frame.writeBigUInt64LE(fpAddr, mc + SIGCONTEXT_FPSTATE);
  frame.writeBigUInt64LE(sigmask, SIGFRAME.uc_sigmask);
  fp.copy(frame, fpOff);
  return frame;
}

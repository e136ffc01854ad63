import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SYSCALL_NUMBERS } from '@criu-ts/sys';
import {
  buildSigframe, PARASITE_CMD, PARASITE_CTL, PARASITE_MISC_SIZE, restartedRegs, SIGFRAME, sigframeXstateLayout, undoInterruptEintr, type XstateLayout,
} from '@criu-ts/compel';
import { USER_REGS_FIELDS, type UserRegs } from '@criu-ts/sys';

const ABI_BIN = fileURLToPath(new URL('../../../../tests/bin/compel-parasite-abi', import.meta.url));

const zeroRegs = (): UserRegs => Object.fromEntries(USER_REGS_FIELDS.map((f) => [f, 0n])) as UserRegs;

describe('@criu-ts/compel parasite ABI', () => {
  it('matches native/parasite.h as compiled', function () {
    if (!existsSync(ABI_BIN)) throw new Error(`${ABI_BIN} missing: run npm run build`);
    const c = JSON.parse(execFileSync(ABI_BIN, { encoding: 'utf8' })) as {
      ctl: Record<string, number>; cmd: Record<string, number>; magic: string; misc: number;
    };
    expect(c.ctl).to.deep.equal(PARASITE_CTL);
    expect(c.cmd).to.deep.equal(PARASITE_CMD);
    expect(c.misc).to.equal(PARASITE_MISC_SIZE);
  });

  it('turns restart codes into the registers of a restarted syscall', () => {
    const r = { ...zeroRegs(), orig_rax: 0n, rax: BigInt.asUintN(64, -512n), rip: 0x1002n };
    expect(restartedRegs(r)).to.include({ rax: 0n, rip: 0x1000n });
    const nanosleep = { ...zeroRegs(), orig_rax: 35n, rax: BigInt.asUintN(64, -516n), rip: 0x2002n };
    expect(restartedRegs(nanosleep)).to.include({ rax: BigInt(SYSCALL_NUMBERS.restart_syscall), rip: 0x2000n });
    const eintr = { ...zeroRegs(), orig_rax: 0n, rax: BigInt.asUintN(64, -4n), rip: 0x3002n };
    expect(restartedRegs(eintr)).to.deep.equal(eintr); // a real EINTR stays
    const epoll = { ...zeroRegs(), orig_rax: 232n, rax: BigInt.asUintN(64, -4n), r10: 0xffff_ffffn, rip: 0x4002n };
    expect(undoInterruptEintr(epoll)).to.include({ rax: 232n, rip: 0x4000n });
    expect(undoInterruptEintr({ ...epoll, r10: 100n })).to.deep.equal({ ...epoll, r10: 100n }); // finite timeout: left alone
  });

  it('lays out an rt_sigframe the way rt_sigreturn reads it', () => {
    const regs = { ...zeroRegs(), rip: 0x401000n, rsp: 0x7ffd0000n, rax: 7n, r8: 8n, eflags: 0x246n, cs: 0x33n, ss: 0x2bn };
    const xsave = Buffer.alloc(1024);
    xsave.writeBigUInt64LE(0x7n, 464); // XCR0 as ptrace reports it
    const frameAddr = 0x7ffc0010n;
    const f = buildSigframe(regs, 0x5n, xsave, frameAddr, 0xabcn);
    expect(f.readBigUInt64LE(SIGFRAME.pretcode)).to.equal(0xabcn);
    expect(f.readBigUInt64LE(SIGFRAME.mcontext)).to.equal(8n); // r8 first
    expect(f.readBigUInt64LE(SIGFRAME.mcontext + 13 * 8)).to.equal(7n); // rax
    expect(f.readBigUInt64LE(SIGFRAME.mcontext + 16 * 8)).to.equal(0x401000n); // rip
    expect(f.readBigUInt64LE(SIGFRAME.uc_sigmask)).to.equal(5n);
    const fpstate = f.readBigUInt64LE(SIGFRAME.mcontext + 23 * 8);
    expect(fpstate % 64n).to.equal(0n);
    const fpOff = Number(fpstate - frameAddr);
    expect(f.readUInt32LE(fpOff + 464)).to.equal(0x46505853); // FP_XSTATE_MAGIC1
    expect(f.readUInt32LE(fpOff + 1024)).to.equal(0x46505845); // FP_XSTATE_MAGIC2 after the area
  });

  // An AMX machine as ptrace shows it: XCR0 0x600e7, NT_X86_XSTATE of 11008 bytes, the standard
  // offsets CPUID reports there. A task that never used AMX restores at most 2816 bytes (its
  // fpstate->user_size): a frame offering the whole image would make rt_sigreturn fall back to
  // the FXSAVE part and drop ymm/zmm upper halves, opmasks and the tile config.
  const amx: XstateLayout = {
    perm: 0x200e7n,
    components: Array.from({ length: 64 }, () => ({ size: 0, offset: 0, flags: 0 })),
  };
  for (const [i, size, offset, flags] of [[2, 256, 576, 0], [5, 64, 1088, 0], [6, 512, 1152, 0], [7, 1024, 1664, 0], [17, 64, 2752, 2], [18, 8192, 2816, 6]]) {
    amx.components[i!] = { size: size!, offset: offset!, flags: flags! };
  }
  const amxImage = (bv: bigint) => {
    const x = Buffer.alloc(11008);
    x.writeBigUInt64LE(0x600e7n, 464);
    x.writeBigUInt64LE(bv, 512);
    return x;
  };

  it('restricts the frame\'s extended state to what the task\'s rt_sigreturn accepts', () => {
    expect(sigframeXstateLayout(amxImage(0xa3n), amx)).to.deep.equal({ features: 0x200e7n, size: 2816 });
    // Tile data in use: the task has its big buffer and the permission; everything goes.
    expect(sigframeXstateLayout(amxImage(0x600e7n), { ...amx, perm: 0x600e7n })).to.deep.equal({ features: 0x600e7n, size: 11008 });
    // No ARCH_GET_XCOMP_PERM (old kernel): XCR0 minus unused dynamic features.
    expect(sigframeXstateLayout(amxImage(0x3n), { ...amx, perm: null })).to.deep.equal({ features: 0x200e7n, size: 2816 });
    // A layout that does not describe an enabled component: no restriction.
    const holes = { ...amx, components: amx.components.map((c, i) => (i === 6 ? { size: 0, offset: 0, flags: 0 } : c)) };
    expect(sigframeXstateLayout(amxImage(0xa3n), holes)).to.equal(undefined);

    const frameAddr = 0x7ffc0010n;
    const f = buildSigframe(zeroRegs(), 0n, amxImage(0x400e7n), frameAddr, 0n, { features: 0x200e7n, size: 2816 });
    const fpOff = Number(f.readBigUInt64LE(SIGFRAME.mcontext + 23 * 8) - frameAddr);
    expect(f.length).to.equal(fpOff + 2816 + 4);
    expect(f.readUInt32LE(fpOff + 464)).to.equal(0x46505853); // magic1
    expect(f.readUInt32LE(fpOff + 468)).to.equal(2820); // extended_size
    expect(f.readBigUInt64LE(fpOff + 472)).to.equal(0x200e7n); // xfeatures
    expect(f.readUInt32LE(fpOff + 480)).to.equal(2816); // xstate_size
    expect(f.readBigUInt64LE(fpOff + 512)).to.equal(0xe7n); // XSTATE_BV within the mask
    expect(f.readUInt32LE(fpOff + 2816)).to.equal(0x46505845); // magic2
  });
});

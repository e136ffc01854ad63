import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { SYSCALL_NUMBERS } from '@criu-ts/sys';
import { buildSigframe, PARASITE_CMD, PARASITE_CTL, restartedRegs, SIGFRAME, undoInterruptEintr } from '@criu-ts/compel';
import { USER_REGS_FIELDS, type UserRegs } from '@criu-ts/sys';

const ABI_BIN = fileURLToPath(new URL('../../../../tests/bin/compel-parasite-abi', import.meta.url));

const zeroRegs = (): UserRegs => Object.fromEntries(USER_REGS_FIELDS.map((f) => [f, 0n])) as UserRegs;

describe('@criu-ts/compel parasite ABI', () => {
  it('matches native/parasite.h as compiled', function () {
    if (!existsSync(ABI_BIN)) throw new Error(`${ABI_BIN} missing: run npm run build`);
    const c = JSON.parse(execFileSync(ABI_BIN, { encoding: 'utf8' })) as {
      ctl: Record<string, number>; cmd: Record<string, number>; magic: string;
    };
    expect(c.ctl).to.deep.equal(PARASITE_CTL);
    expect(c.cmd).to.deep.equal(PARASITE_CMD);
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
});

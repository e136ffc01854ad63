import { expect } from 'chai';
import { execFileSync } from 'node:child_process';
import {
  asPid, close, errnoName, errnoValue, isSysError, kill, memfdCreate, NT, pipe2, pread, processVmReadv,
  ptraceDetach, ptraceGetRegs, ptraceGetRegset, ptraceGetSigmask, ptraceInterrupt, ptracePeekData, ptraceSeize,
  read, recvmsg, sendmsg, SIGNALS, signalName, socketpair, AF_UNIX, SOCK, splice, STRUCTS, SysError, syscall,
  syscallName, syscallNumber, USER_REGS_FIELDS, vmsplice, wait4, write, __WALL, PTRACE_EVENT, asRemoteAddress,
  xstateXcr0, xstateBv, getpid, asFd, sysCallRaw, decodeWaitStatus, ERESTARTSYS,
  BPF_PROG_TYPE, bpfProgLoad, BpfVerifierError, vmlinuxBtfFuncId, Btf, BtfFieldMissing,
} from '@criu-ts/sys';
import { killAllVictims, requireRootAndBinaries, TESTS_BIN, Victim } from './victim.js';

describe('@criu-ts/sys', () => {
  afterEach(killAllVictims);

  describe('struct layouts', () => {
    it('match what the C compiler says for the kernel headers', function () {
      requireRootAndBinaries(this);
      const c = JSON.parse(execFileSync(`${TESTS_BIN}/sys-struct-layouts`, { encoding: 'utf8' })) as Record<string, Record<string, number>>;
      for (const [name, members] of Object.entries(c)) {
        if (name === 'user_fpregs_struct') continue; // encoded as raw bytes, size checked below
        const type = STRUCTS[name];
        expect(type, `koffi struct ${name}`).to.not.equal(undefined);
        expect(type!.size, `sizeof(${name})`).to.equal(members.size);
        for (const [member, offset] of Object.entries(members)) {
          if (member === 'size') continue;
          expect(type!.members![member]!.offset, `offsetof(${name}, ${member})`).to.equal(offset);
        }
      }
      // The register codec writes member i at offset 8 * i.
      const regs = c.user_regs_struct!;
      for (const f of ['r15', 'rax', 'orig_rax', 'rip', 'eflags', 'rsp', 'fs_base', 'gs_base', 'gs']) {
        expect(USER_REGS_FIELDS.indexOf(f as never) * 8, f).to.equal(regs[f]);
      }
      expect(c.user_fpregs_struct!.size).to.equal(512);
    });
  });

  describe('errors', () => {
    it('turn a failed call into SysError { errno, code, syscall }', () => {
      let caught: unknown;
      try {
        close(asFd(987654));
      } catch (err) {
        caught = err;
      }
      expect(caught).to.be.instanceOf(SysError);
      const e = caught as SysError;
      expect(e.errno).to.equal(9);
      expect(e.code).to.equal('EBADF');
      expect(e.syscall).to.equal('close');
      expect(e.message).to.contain('EBADF');
      expect(isSysError(e, 'EBADF')).to.equal(true);
    });

    it('name errnos, kernel-internal restart codes and signals', () => {
      expect(errnoName(3)).to.equal('ESRCH');
      expect(errnoValue('ESRCH')).to.equal(3);
      expect(errnoName(ERESTARTSYS)).to.equal('ERESTARTSYS');
      expect(errnoName(516)).to.equal('ERESTART_RESTARTBLOCK');
      expect(errnoName(4000)).to.equal('E4000');
      expect(signalName(SIGNALS.SIGSTOP)).to.equal('SIGSTOP');
      expect(signalName(35)).to.equal('SIGRT3');
      expect(syscallNumber('getpid')).to.equal(39);
      expect(syscallNumber('clone3')).to.equal(435);
      expect(syscallName(15)).to.equal('rt_sigreturn');
      expect(() => syscallNumber('no_such_call')).to.throw(RangeError);
    });

    it('report ESRCH for a pid that does not exist', () => {
      expect(() => kill(asPid(0x3fffffff), 0)).to.throw(SysError).with.property('code', 'ESRCH');
      expect(sysCallRaw(syscallNumber('kill'), [0x3fffffff, 0])).to.equal(-3n);
    });

    it('decode wait statuses', () => {
      const p = asPid(5);
      expect(decodeWaitStatus(p, 0x0100)).to.deep.include({ kind: 'exited', code: 1 });
      expect(decodeWaitStatus(p, 9)).to.deep.include({ kind: 'signaled', signal: 9 });
      expect(decodeWaitStatus(p, (0x80 << 16) | (19 << 8) | 0x7f)).to.deep.include({ kind: 'stopped', signal: 19, event: 128 });
    });
  });

  describe('calls in this process', () => {
    it('syscall() by name returns the kernel result', () => {
      expect(Number(syscall('getpid'))).to.equal(process.pid);
      expect(getpid()).to.equal(process.pid);
    });

    it('vmsplice a buffer into a pipe and splice it into a memfd', () => {
      const [r, w] = pipe2();
      const mfd = memfdCreate('sys-test');
      try {
        const payload = Buffer.alloc(8192, 0x5a);
        payload.write('criu-ts', 100);
        expect(vmsplice(w, [payload])).to.equal(8192);
        expect(splice(r, null, mfd, 0n, 8192)).to.equal(8192);
        const back = Buffer.alloc(8192);
        expect(pread(mfd, back, 0n)).to.equal(8192);
        expect(back.equals(payload)).to.equal(true);
      } finally {
        close(r); close(w); close(mfd);
      }
    });

    it('pass a file descriptor with SCM_RIGHTS', () => {
      const [a, b] = socketpair(AF_UNIX, SOCK.SEQPACKET);
      const [r, w] = pipe2();
      try {
        expect(sendmsg(a, Buffer.from('fd'), [w])).to.equal(2);
        const got = recvmsg(b, Buffer.alloc(16));
        expect(got.bytes).to.equal(2);
        expect(got.fds).to.have.length(1);
        write(got.fds[0]!, Buffer.from('through the passed fd'));
        close(got.fds[0]!);
        const buf = Buffer.alloc(64);
        const n = read(r, buf);
        expect(buf.subarray(0, n).toString()).to.equal('through the passed fd');
      } finally {
        for (const fd of [a, b, r, w]) close(fd);
      }
    });
  });

  describe('ptrace on a real process', () => {
    it('seizes, interrupts, reads registers, xsave, sigmask and memory, and detaches', async function () {
      requireRootAndBinaries(this);
      const v = await Victim.start('busy');
      const pid = asPid(v.pid);
      ptraceSeize(pid);
      ptraceInterrupt(pid);
      const st = wait4(pid, __WALL);
      expect(st).to.deep.include({ kind: 'stopped', pid, event: PTRACE_EVENT.STOP });
      const regs = ptraceGetRegs(pid);
      expect(regs.cs).to.equal(0x33n); // __USER_CS: a 64-bit user task
      expect(regs.rip > 0n).to.equal(true);
      const xsave = ptraceGetRegset(pid, NT.X86_XSTATE);
      expect(xsave.length).to.be.greaterThanOrEqual(576);
      const xcr0 = xstateXcr0(xsave);
      expect(xcr0 & 3n).to.equal(3n); // x87 and SSE are always enabled
      expect(xstateBv(xsave) & ~xcr0).to.equal(0n); // the image holds only enabled components
      expect(ptraceGetSigmask(pid)).to.equal(0n);
      // PEEKDATA and process_vm_readv agree with what the victim wrote.
      const word = ptracePeekData(pid, asRemoteAddress(v.data));
      expect(word).to.equal(v.expectedData(0, 8).readBigUInt64LE(0));
      const page = Buffer.alloc(4096);
      expect(processVmReadv(pid, page, [{ addr: asRemoteAddress(v.data + 4096n), len: 4096 }])).to.equal(4096);
      expect(page.equals(v.expectedData(4096, 4096))).to.equal(true);
      ptraceDetach(pid);
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('fails with EPERM when seizing ourselves and ESRCH for a non-existent pid', () => {
      expect(() => ptraceSeize(asPid(process.pid))).to.throw(SysError).with.property('code', 'EPERM');
      expect(() => ptraceSeize(asPid(0x3fffffff))).to.throw(SysError).with.property('code', 'ESRCH');
    });
  });
});

describe('@criu-ts/sys bpf', () => {
  it('vmlinuxBtfFuncId finds a kernel function by name in the vmlinux BTF, and says undefined for one that is not there', () => {
    const id = vmlinuxBtfFuncId('bpf_sk_assign_tcp_reqsk');
    expect(id).to.be.a('number').above(0);
    expect(vmlinuxBtfFuncId('bpf_sk_assign_tcp_reqsk'), 'same answer twice').to.equal(id);
    expect(vmlinuxBtfFuncId('criu_ts_no_such_kernel_function')).to.equal(undefined);
  });

  it('Btf.field: where a kernel struct member lies, through nested structs and anonymous unions; BtfFieldMissing names what is not there', () => {
    const btf = Btf.vmlinux();
    expect(btf.field('socket', ['sk']).size, 'a pointer').to.equal(8);
    const ring = btf.field('packet_sock', ['rx_ring']);
    const head = btf.field('packet_sock', ['rx_ring', 'head']);
    expect(head.offset - ring.offset, 'head inside rx_ring').to.equal(btf.field('packet_ring_buffer', ['head']).offset);
    expect(head.size).to.equal(4);
    // rx_owner_map and prb_bdqc share an anonymous union in struct packet_ring_buffer
    expect(btf.field('packet_ring_buffer', ['rx_owner_map']).offset).to.equal(btf.field('packet_ring_buffer', ['prb_bdqc']).offset);
    expect(btf.field('packet_ring_buffer', ['prb_bdqc', 'kactive_blk_num']).size).to.equal(2);
    expect(() => btf.field('packet_sock', ['rx_ring', 'criu_ts_no_such_member'])).to.throw(BtfFieldMissing, /no member criu_ts_no_such_member/);
    expect(() => btf.field('criu_ts_no_such_struct', ['x'])).to.throw(BtfFieldMissing, /no such struct/);
  });

  it('bpfProgLoad: a program the verifier refuses throws BpfVerifierError carrying the verifier\'s reason', () => {
    if (process.getuid?.() !== 0) throw new Error('loading BPF programs needs root (CI runs as root)');
    const exitOnly = Buffer.from([0x95, 0, 0, 0, 0, 0, 0, 0]); // "exit" with r0 never set
    let error: unknown;
    try {
      close(bpfProgLoad({ type: BPF_PROG_TYPE.SCHED_CLS, instructions: exitOnly, license: 'GPL', name: 'criu_ts_bad' }));
    } catch (e) {
      error = e;
    }
    expect(error).to.be.instanceOf(BpfVerifierError);
    expect((error as BpfVerifierError).code).to.equal('EACCES');
    expect((error as BpfVerifierError).verifierLog).to.match(/R0 !read_ok/);
  });
});

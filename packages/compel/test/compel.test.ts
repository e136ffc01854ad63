import { expect } from 'chai';
import { spawn } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { fileURLToPath } from 'node:url';
import {
  asRemoteAddress, close, lseek, memfdCreate, MAP, pipe2, pread, PROT, read, SEEK, signalNumber, SysError, write,
  ptraceGetRegs, ptraceGetRegset, NT, type Fd,
} from '@criu-ts/sys';
import { CompelError, compileBlob, inject, injectSync, isParasiteMapping, prepareSync, readMaps, type Victim as Injected } from '@criu-ts/compel';
import { setGadgetHintsForTest } from '../src/gadget-hints.js';
// The victim programs and their handling are shared with @criu-ts/sys's tests.
import { killAllVictims, requireRootAndBinaries, Victim } from '@criu-ts/sys/testing';

const mapsText = (pid: number) => readFileSync(`/proc/${pid}/maps`, 'utf8');
const hasParasite = (pid: number) => mapsText(pid).split('\n').some(isParasiteMapping);

/** Infects, runs remote syscalls and parasite commands, checks their results, cures. */
async function fullInfection(v: Victim): Promise<void> {
  const victim = await inject(v.pid);
  try {
    expect(Number(await victim.syscall('getpid'))).to.equal(v.pid);
    const parasite = await victim.infect();
    expect(parasite.ping()).to.deep.equal({ tid: v.pid, pid: v.pid });
    const page = parasite.readPages([{ addr: asRemoteAddress(v.data), len: 8192 }]);
    expect(page.equals(v.expectedData(0, 8192))).to.equal(true);
    expect(parasite.dumpSigactions()[signalNumber('SIGUSR1') - 1]!.handler).to.not.equal(0n);
  } finally {
    await victim.cure();
  }
  expect(hasParasite(v.pid)).to.equal(false);
}

describe('@criu-ts/compel', function () {
  this.timeout(60_000);
  beforeEach(function () {
    requireRootAndBinaries(this);
  });
  afterEach(killAllVictims);

  describe('typed errors', () => {
    it('no-such-process for a pid that does not exist', () => {
      expect(() => prepareSync(0x3ffffff0)).to.throw(CompelError).with.property('kind', 'no-such-process');
    });

    it('permission for a task we cannot trace (ourselves; a task already traced)', async () => {
      expect(() => prepareSync(process.pid)).to.throw(CompelError).with.property('kind', 'permission');
      const v = await Victim.start('busy');
      const first = injectSync(v.pid);
      try {
        // ptrace allows one tracer: a second seize fails. The evidence names the tracer.
        const child = spawn(process.execPath, ['-e', `
          import('@criu-ts/compel').then(({ prepareSync }) => {
            try { prepareSync(${v.pid}); console.log('seized?!'); }
            catch (e) { console.log(JSON.stringify({ kind: e.kind, tracer: e.evidence.tracerPid })); }
          });`], { cwd: fileURLToPath(new URL('.', import.meta.url)) });
        let out = '';
        child.stdout.on('data', (d) => { out += d; });
        await new Promise((resolve) => child.on('exit', resolve));
        expect(JSON.parse(out)).to.deep.equal({ kind: 'permission', tracer: process.pid });
      } finally {
        first.cureSync();
      }
    });

    it('zombie for an exited, unreaped task', async () => {
      const v = await Victim.start('zombie');
      expect(v.zombie).to.be.greaterThan(0);
      expect(() => prepareSync(v.zombie)).to.throw(CompelError).with.property('kind', 'zombie');
      // Its parent (which has the zombie child) is infected normally.
      await fullInfection(v);
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('exited when the task dies while seized', async () => {
      const v = await Victim.start('busy');
      const victim = injectSync(v.pid);
      process.kill(v.pid, 'SIGKILL');
      let err: unknown;
      try {
        victim.syscallSync('getpid');
      } catch (e) {
        err = e;
      }
      expect(err).to.be.instanceOf(CompelError);
      expect((err as CompelError).kind).to.equal('exited');
      victim.cureSync(); // nothing left to do, and no throw
    });

    it('remote failures are SysErrors naming the remote call', async () => {
      const v = await Victim.start('busy');
      const victim = injectSync(v.pid);
      try {
        expect(() => victim.syscallSync('close', 9999)).to.throw(SysError).with.property('code', 'EBADF');
        expect(victim.syscallRawSync('close', 9999)).to.equal(-9n);
      } finally {
        victim.cureSync();
      }
    });
  });

  describe('remote syscalls, memory and registers', () => {
    it('gadgets: hints from earlier dumps are used only where the task really has the bytes; wrong ones fall back to the search', async () => {
      const v = await Victim.start('busy');
      const expected = { syscall: [0x0f, 0x05], syscallRet: [0x0f, 0x05, 0xc3], popRaxRet: [0x58, 0xc3], popRdiRet: [0x5f, 0xc3], popRsiRet: [0x5e, 0xc3] } as const;
      const check = async (label: string) => {
        const victim = await inject(v.pid);
        try {
          const g = victim.findGadgets();
          expect(g.syscall, label).to.not.equal(null);
          for (const [name, bytes] of Object.entries(expected)) {
            const at = g[name as keyof typeof expected];
            if (at === null) continue;
            expect([...(await victim.readMemory(at, bytes.length))], `${label}: ${name}`).to.deep.equal([...bytes]);
          }
          return g;
        } finally {
          await victim.cure();
        }
      };
      try {
        setGadgetHintsForTest({});
        const searched = await check('searched');
        // Every file and the vDSO "remembered" at offsets that hold other bytes (0: an ELF header).
        const wrong = Object.fromEntries(readMaps(v.pid as never).filter((m) => m.perms.startsWith('r-x')).map((m) => [
          m.name === '[vdso]' ? '[vdso]' : `${m.inode}:${m.name}`, { syscall: 0, syscallRet: 0, popRaxRet: 0, popRdiRet: 0, popRsiRet: 0 },
        ]));
        setGadgetHintsForTest(wrong);
        expect(await check('with wrong hints'), 'the search finds the same gadgets again').to.deep.equal(searched);
      } finally {
        setGadgetHintsForTest(undefined);
      }
    });

    it('getpid returns the target pid; a remote mmap shows up in /proc/PID/maps; memory r/w', async () => {
      const v = await Victim.start('busy');
      const victim = await inject(v.pid);
      const before = mapsText(v.pid);
      try {
        expect(Number(await victim.syscall('getpid'))).to.equal(v.pid);
        expect(Number(await victim.syscall('gettid'))).to.equal(v.pid);
        const addr = victim.mapSync(3 * 4096, PROT.READ | PROT.WRITE, MAP.PRIVATE | MAP.ANONYMOUS);
        // The kernel may merge it with an adjacent anonymous mapping: look for the VMA covering it.
        expect(before).to.not.contain(`${addr.toString(16)}-`);
        const vma = readMaps(v.pid as never).find((m) => m.start <= addr && addr + 3n * 4096n <= m.end);
        expect(vma, 'new mapping in /proc/PID/maps').to.not.equal(undefined);
        expect(vma!.perms).to.equal('rw-p');
        await victim.writeMemory(addr + 100n, Buffer.from('written by the injector'));
        expect((await victim.readMemory(addr + 100n, 23)).toString()).to.equal('written by the injector');
        // The victim's own data, as it wrote it.
        expect((await victim.readMemory(v.data, 4096)).equals(v.expectedData(0, 4096))).to.equal(true);
        // The task itself can read what we wrote: a remote write(2) from that memory into our pipe.
        const [r, w] = pipe2();
        try {
          const parasite = await victim.infect();
          const [remoteW] = parasite.sendFds([w]);
          expect(Number(parasite.syscallRaw('write', remoteW!, addr + 100n, 23))).to.equal(23);
          const buf = Buffer.alloc(64);
          expect(buf.subarray(0, read(r, buf)).toString()).to.equal('written by the injector');
          parasite.syscallRaw('close', remoteW!);
        } finally {
          close(r); close(w);
        }
      } finally {
        await victim.cure();
      }
      expect(mapsText(v.pid)).to.equal(before);
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('after cure, maps, registers (general, fs/gs base, xsave) and signal mask are identical', async () => {
      const v = await Victim.start('busy');
      process.kill(v.pid, 'SIGSTOP'); // a stopped task does not move: what we see later must be what it had
      for (let i = 0; i < 100 && v.state() !== 'T'; i++) await new Promise((r) => setTimeout(r, 10));
      const first = injectSync(v.pid);
      const regs = first.saved.regs;
      const xsave = first.saved.xsave;
      const maps = mapsText(v.pid);
      expect(regs.fs_base).to.not.equal(0n); // glibc's TLS
      first.syscallSync('getpid');
      first.mapSync(4096);
      first.infectSync().dumpMisc();
      first.cureSync();
      // Detaching kicks a task that has a group stop pending so it re-enters the stop from the
      // kernel: for a moment /proc shows it running (never in user space). It must settle in 'T'.
      for (let i = 0; i < 100 && v.state() !== 'T'; i++) await new Promise((r) => setTimeout(r, 10));
      expect(v.state()).to.equal('T');
      const second = injectSync(v.pid);
      try {
        expect(second.saved.regs).to.deep.equal(regs);
        expect(second.saved.xsave.equals(xsave)).to.equal(true);
        expect(second.saved.sigmask).to.equal(first.saved.sigmask);
        expect(ptraceGetRegs(second.worker)).to.deep.equal(regs);
        expect(ptraceGetRegset(second.worker, NT.X86_XSTATE).equals(xsave)).to.equal(true);
        expect(mapsText(v.pid)).to.equal(maps);
      } finally {
        second.cureSync();
      }
      process.kill(v.pid, 'SIGCONT');
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });
  });

  describe('victims in every state see nothing', () => {
    it('busy loop in user space', async () => {
      const v = await Victim.start('busy');
      await fullInfection(v);
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('blocked in read(): still gets its data after cure', async () => {
      const v = await Victim.start('read');
      await new Promise((r) => setTimeout(r, 50));
      await fullInfection(v);
      v.send('after-cure');
      expect(await v.waitLine(/^read /)).to.equal('read rc=11 errno=0 data=after-cure');
      v.send('check');
      expect(await v.waitLine(/data$/)).to.equal('ok data');
    });

    it('blocked in nanosleep(): sleeps its full time and returns 0 (restart_syscall)', async () => {
      const v = await Victim.start('nanosleep');
      await new Promise((r) => setTimeout(r, 100));
      await fullInfection(v);
      const line = await v.waitLine(/^slept /, 5000);
      const m = /slept rc=(-?\d+) errno=(\d+) ms=(\d+)/.exec(line)!;
      expect(Number(m[1]), line).to.equal(0);
      expect(Number(m[3])).to.be.within(1490, 3000);
    });

    it('a thread blocked in FUTEX_WAIT', async () => {
      const v = await Victim.start('futex');
      await new Promise((r) => setTimeout(r, 50));
      await fullInfection(v);
      // FUTEX_WAIT was interrupted (-ERESTARTSYS) and is restarted when the thread runs again;
      // it re-checks the futex word then, so give it a moment to be back in the wait before the
      // wake (a wake before that makes the restarted wait return EAGAIN, as after SIGSTOP/SIGCONT).
      await new Promise((r) => setTimeout(r, 100));
      v.send('wake');
      expect(await v.waitLine(/^woke /)).to.equal('woke rc=0 errno=0 word=1');
      v.send('check');
      expect(await v.waitLine(/data$/)).to.equal('ok data');
    });

    it('a remote syscall in a non-worker thread runs there; the thread blocked in FUTEX_WAIT restarts it afterwards', async () => {
      const v = await Victim.start('futex');
      await new Promise((r) => setTimeout(r, 50));
      const victim = injectSync(v.pid);
      let others: number[];
      let before;
      try {
        expect(victim.threads.size).to.equal(2);
        others = [...victim.threads.keys()].filter((t) => t !== v.pid);
        before = ptraceGetRegs(others[0]! as never);
        for (const tid of victim.threads.keys()) {
          // gettid answers the tid of the thread that ran it.
          expect(Number(victim.syscallInThreadRawSync(tid, 'gettid'))).to.equal(tid);
        }
        expect(victim.syscallInThreadRawSync(others[0]! as never, 'close', -1)).to.equal(-9n); // -EBADF
      } finally {
        victim.cureSync();
      }
      // Cure put the thread back: seized again, it is in the same interrupted FUTEX_WAIT with the
      // same registers (it restarted the wait; a thread left with ours would be elsewhere).
      await new Promise((r) => setTimeout(r, 50));
      const again = injectSync(v.pid);
      try {
        expect(ptraceGetRegs(others[0]! as never)).to.deep.equal(before);
      } finally {
        again.cureSync();
      }
      await new Promise((r) => setTimeout(r, 100));
      v.send('wake');
      expect(await v.waitLine(/^woke /)).to.equal('woke rc=0 errno=0 word=1');
    });

    it('blocked in epoll_wait(): no spurious EINTR', async () => {
      const v = await Victim.start('epoll');
      await new Promise((r) => setTimeout(r, 50));
      await fullInfection(v);
      v.send('data');
      expect(await v.waitLine(/^epoll /)).to.equal('epoll n=1 errno=0 tag=7');
    });

    it('8 computing threads: all seized, all correct afterwards', async () => {
      const v = await Victim.start('threads');
      await new Promise((r) => setTimeout(r, 50));
      const victim = injectSync(v.pid);
      try {
        expect(victim.threads.size).to.equal(9);
        for (const t of victim.threads.values()) expect(v.stateOf(t.tid)).to.equal('t');
        victim.infectSync().ping();
      } finally {
        victim.cureSync();
      }
      v.send('check');
      expect(await v.waitLine(/threads=8$/)).to.equal('ok threads=8');
    });

    it('stopped with SIGSTOP: still stopped after cure, fine after SIGCONT', async () => {
      const v = await Victim.start('busy');
      process.kill(v.pid, 'SIGSTOP');
      for (let i = 0; i < 100 && v.state() !== 'T'; i++) await new Promise((r) => setTimeout(r, 10));
      const victim = injectSync(v.pid);
      expect(victim.wasStopped).to.equal(true);
      await fullInfectionOf(victim, v);
      await new Promise((r) => setTimeout(r, 100));
      expect(v.state()).to.equal('T');
      process.kill(v.pid, 'SIGCONT');
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('the blob lives in a shared anonymous mapping (root) or in a memfd (blobHome: memfd); either way cure leaves no mapping and no descriptor', async () => {
      const v = await Victim.start('busy');
      const maps = mapsText(v.pid);
      const fds = () => readdirSync(`/proc/${v.pid}/fd`).map((fd) => `${fd} ${readlinkSync(`/proc/${v.pid}/fd/${fd}`)}`).sort();
      const fdsBefore = fds();
      for (const blobHome of ['auto', 'memfd'] as const) {
        const victim = injectSync(v.pid);
        try {
          const parasite = victim.infectSync(undefined, { blobHome });
          expect(parasite.ping().pid).to.equal(v.pid);
          const blobLine = mapsText(v.pid).split('\n').find((l) => l.startsWith(`${parasite.base.toString(16)}-`));
          // As root (CI), auto takes the one-syscall way; memfd always the memfd way.
          expect(blobLine, `${blobHome}: the blob's line in maps`).to.match(blobHome === 'auto' ? / rwxs .*\/dev\/zero \(deleted\)$/ : / rwxs .*\/memfd:criu-ts-parasite \(deleted\)$/);
          expect(isParasiteMapping(blobLine!)).to.equal(true);
        } finally {
          victim.cureSync();
        }
        expect(mapsText(v.pid), `${blobHome}: maps after cure`).to.equal(maps);
        expect(fds(), `${blobHome}: descriptors after cure`).to.deep.equal(fdsBefore);
      }
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('1000 infect/cure cycles leave the victim healthy', async () => {
      const v = await Victim.start('busy');
      const maps = mapsText(v.pid);
      for (let i = 0; i < 1000; i++) {
        const victim = injectSync(v.pid);
        try {
          const parasite = victim.infectSync();
          if (i % 100 === 0) expect(parasite.ping().pid).to.equal(v.pid);
        } finally {
          victim.cureSync();
        }
      }
      expect(mapsText(v.pid)).to.equal(maps);
      expect(readFileSync(`/proc/${v.pid}/status`, 'utf8')).to.match(/TracerPid:\s+0\n/);
      process.kill(v.pid, 'SIGUSR1');
      // The check replays every iteration the victim ran during the cycles: on a loaded machine
      // that takes about as long as the cycles did, well past the default 5 s.
      expect(await v.waitLine(/^(ok|bad)/, 60_000)).to.match(/^ok/);
    });
  });

  describe('parasite commands', () => {
    it('vmsplice returns the bytes the target wrote; dumpPages splices them into a file', async () => {
      const v = await Victim.start('busy', 4);
      const victim = injectSync(v.pid);
      try {
        const parasite = victim.infectSync();
        const ranges = [
          { addr: asRemoteAddress(v.data), len: 2 << 20 }, // larger than the pipe: two chunks
          { addr: asRemoteAddress(v.data + (3n << 20n)), len: 4096 },
        ];
        const bytes = parasite.readPages(ranges);
        expect(bytes.length).to.equal((2 << 20) + 4096);
        expect(bytes.subarray(0, 2 << 20).equals(v.expectedData(0, 2 << 20))).to.equal(true);
        expect(bytes.subarray(2 << 20).equals(v.expectedData(3 << 20, 4096))).to.equal(true);
        const file = memfdCreate('pages');
        try {
          expect(parasite.dumpPages(ranges, file)).to.equal((2 << 20) + 4096);
          const back = Buffer.alloc(bytes.length);
          expect(pread(file, back, 0n)).to.equal(bytes.length);
          expect(back.equals(bytes)).to.equal(true);
        } finally {
          close(file);
        }
      } finally {
        victim.cureSync();
      }
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('dumpPagesStart in the task: other work meanwhile, then the bytes; a request or a cure while it copies waits for it', async () => {
      const v = await Victim.start('busy', 4);
      const victim = injectSync(v.pid);
      const ranges = [{ addr: asRemoteAddress(v.data), len: 3 << 20 }];
      const expected = v.expectedData(0, 3 << 20);
      const file = memfdCreate('pages');
      try {
        const parasite = victim.infectSync();
        // Finished by its own function, after other work of ours.
        const finish = parasite.dumpPagesStart(ranges, file, { inTask: true });
        const busyUntil = Date.now() + 5;
        while (Date.now() < busyUntil) { /* our side's work while the parasite copies */ }
        expect(finish()).to.equal(3 << 20);
        const back = Buffer.alloc(3 << 20);
        expect(pread(file, back, 0n)).to.equal(3 << 20);
        expect(back.equals(expected)).to.equal(true);
        expect(() => finish(), 'a second wait has no reply to read').to.throw(/taken by another request/);
        // Left in flight: the next request reads that reply first, then gets its own.
        parasite.dumpPagesStart(ranges, file, { inTask: true });
        expect(parasite.ping().pid).to.equal(v.pid);
        expect(pread(file, back, BigInt(3 << 20))).to.equal(3 << 20);
        expect(back.equals(expected)).to.equal(true);
        // And in flight at cure: cure waits for it, then puts the task back.
        parasite.dumpPagesStart(ranges, file, { inTask: true });
      } finally {
        victim.cureSync();
        close(file);
      }
      expect(hasParasite(v.pid)).to.equal(false);
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('dumpPagesStart in the task calls whileWaiting while it waits for the reply, and the file position it sees only grows', async () => {
      // 64 MiB: a copy of several milliseconds at least, so the wait polls more than once.
      const v = await Victim.start('busy', 64);
      const victim = injectSync(v.pid);
      const len = 64 << 20;
      const file = memfdCreate('pages');
      const positions: number[] = [];
      try {
        const parasite = victim.infectSync();
        const finish = parasite.dumpPagesStart([{ addr: asRemoteAddress(v.data), len }], file, {
          inTask: true,
          whileWaiting: () => positions.push(lseek(file, 0, SEEK.CUR)),
        });
        expect(finish()).to.equal(len);
        expect(positions.length, 'calls while the parasite copied').to.be.greaterThan(0);
        expect(positions.every((p, i) => p >= 0 && p <= len && (i === 0 || p >= positions[i - 1]!)), positions.join(' ')).to.equal(true);
        const back = Buffer.alloc(1 << 20);
        for (const at of [0, len - (1 << 20)]) {
          expect(pread(file, back, BigInt(at))).to.equal(back.length);
          expect(back.equals(v.expectedData(at, back.length)), `bytes at ${at}`).to.equal(true);
        }
      } finally {
        victim.cureSync();
        close(file);
      }
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/, 60_000)).to.match(/^ok/);
    });

    it('dump sigactions, itimers, posix timers and misc state', async () => {
      const v = await Victim.start('busy');
      const victim = injectSync(v.pid);
      try {
        const p = victim.infectSync();
        const sa = p.dumpSigactions();
        expect(sa).to.have.length(64);
        expect(sa[signalNumber('SIGUSR1') - 1]!.handler > 1n, 'SIGUSR1 has a handler function').to.equal(true);
        expect(sa[signalNumber('SIGALRM') - 1]!.handler).to.equal(1n); // SIG_IGN
        expect(sa[signalNumber('SIGTERM') - 1]!.handler).to.equal(0n); // SIG_DFL
        const it = p.dumpItimers();
        expect(it.real.intervalSec).to.equal(1000n);
        expect(it.real.valueSec > 1900n && it.real.valueSec <= 2000n).to.equal(true);
        expect(it.virtual.valueSec).to.equal(0n);
        const timers = p.dumpPosixTimers();
        expect(timers).to.have.length(1);
        expect(timers[0]!.intervalSec).to.equal(300n);
        expect(timers[0]!.valueSec > 590n && timers[0]!.valueSec <= 600n).to.equal(true);
        const misc = p.dumpMisc();
        expect(Number(misc.pid)).to.equal(v.pid);
        expect(Number(misc.tid)).to.equal(v.pid);
        expect(misc.comm).to.equal('compel-victim');
        const umask = Number.parseInt(/Umask:\s+(\d+)/.exec(readFileSync(`/proc/${v.pid}/status`, 'utf8'))![1]!, 8);
        expect(misc.umask).to.equal(BigInt(umask));
        expect(misc.altstack_flags).to.equal(2n); // SS_DISABLE
        // DUMP_TASK: the same three answers in one request.
        const sigactions = p.dumpSigactions();
        const task = p.dumpTask();
        expect(task.misc).to.deep.equal(misc);
        expect(task.sigactions).to.deep.equal(sigactions);
        expect(task.sigactions.some((s) => s.handler !== 0n), 'the victim has handlers').to.equal(true);
        expect(task.itimers.real.intervalSec).to.equal(1000n);
        expect(task.itimers.real.valueSec > 1900n && task.itimers.real.valueSec <= 2000n).to.equal(true);
        expect(task.itimers.virtual).to.deep.equal(it.virtual);
      } finally {
        victim.cureSync();
      }
    });

    it('taskAtStart: the daemon\'s answers at start are what dumpTask() answers after; meanwhile runs once before the connection', async () => {
      const v = await Victim.start('busy');
      const victim = injectSync(v.pid);
      try {
        expect(victim.infectSync().taskAtStart, 'not asked for').to.equal(undefined);
      } finally {
        victim.cureSync();
      }
      const again = injectSync(v.pid);
      try {
        let calls = 0;
        const p = again.infectSync(undefined, { taskAtStart: true, meanwhile: () => calls++ });
        expect(calls).to.equal(1);
        // Already infected: nothing starts, and meanwhile runs at once.
        expect(again.infectSync(undefined, { meanwhile: () => calls++ })).to.equal(p);
        expect(calls).to.equal(2);
        const atStart = p.taskAtStart!;
        const now = p.dumpTask();
        expect(atStart.misc).to.deep.equal(now.misc);
        expect(Number(atStart.misc.pid)).to.equal(v.pid);
        expect(atStart.sigactions).to.deep.equal(now.sigactions);
        expect(atStart.sigactions[signalNumber('SIGUSR1') - 1]!.handler > 1n).to.equal(true);
        expect(atStart.itimers.real.intervalSec).to.equal(1000n);
        // ITIMER_REAL counts down while the task is frozen: the answer at start is the larger.
        const left = (t: typeof now.itimers.real) => t.valueSec * 1_000_000n + t.valueUsec;
        expect(left(atStart.itimers.real) >= left(now.itimers.real)).to.equal(true);
        expect(left(atStart.itimers.real) - left(now.itimers.real) < 5_000_000n).to.equal(true);
      } finally {
        again.cureSync();
      }
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('meanwhile that throws: the infection is undone (same maps and descriptors after cure, the victim whole) and its error thrown', async () => {
      const v = await Victim.start('busy');
      const fdsBefore = readdirSync(`/proc/${v.pid}/fd`).sort();
      const mapsBefore = mapsText(v.pid);
      const victim = injectSync(v.pid);
      try {
        expect(() => victim.infectSync(undefined, { meanwhile: () => { throw new Error('describing failed'); } })).to.throw('describing failed');
        expect(victim.parasite).to.equal(null);
      } finally {
        victim.cureSync();
      }
      expect(mapsText(v.pid)).to.equal(mapsBefore);
      expect(readdirSync(`/proc/${v.pid}/fd`).sort()).to.deep.equal(fdsBefore);
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
    });

    it('sends fds into the task and receives the task fds', async () => {
      const v = await Victim.start('busy');
      const victim = injectSync(v.pid);
      const [r, w] = pipe2();
      let stdout: Fd | undefined;
      try {
        const p = victim.infectSync();
        const [remote] = p.sendFds([w]);
        expect(readMaps(v.pid as never)).to.be.an('array');
        expect(readFileSync(`/proc/${v.pid}/fdinfo/${remote}`, 'utf8')).to.match(/flags:\s+\d*2000001/); // O_CLOEXEC|O_WRONLY
        expect(Number(p.syscallRaw('write', remote!, v.data, 64))).to.equal(64);
        const buf = Buffer.alloc(64);
        expect(read(r, buf)).to.equal(64);
        expect(buf.equals(v.expectedData(0, 64))).to.equal(true);
        p.syscallRaw('close', remote!);
        [stdout] = p.receiveFds([1]);
        expect(stdout).to.be.a('number');
      } finally {
        victim.cureSync();
        close(r); close(w);
      }
      write(stdout!, Buffer.from('line from the injector\n'));
      close(stdout!);
      expect(await v.waitLine(/injector/)).to.equal('line from the injector');
    });

    it('runs functions of a user blob compiled from C', async () => {
      const dir = mkdtempSync(`${tmpdir()}/compel-blob-`);
      try {
        const blob = compileBlob(fileURLToPath(new URL('../../test/fixtures/user-blob.c', import.meta.url)), `${dir}/user.bin`);
        const v = await Victim.start('busy');
        const victim = injectSync(v.pid);
        try {
          const loaded = victim.infectSync().loadBlob(blob);
          expect(loaded.call('add3', 1, 2, 39)).to.equal(42n);
          expect(Number(loaded.call('my_getpid'))).to.equal(v.pid);
          const expected = [...v.expectedData(0, 1000)].reduce((a, b) => a + b, 0);
          expect(Number(loaded.call('sum_bytes', v.data, 1000))).to.equal(expected);
        } finally {
          victim.cureSync();
        }
        expect(readMaps(v.pid as never).filter((m) => m.perms === 'rwxp')).to.have.length(0);
        process.kill(v.pid, 'SIGUSR1');
        expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
      } finally {
        rmSync(dir, { recursive: true, force: true });
      }
    });
  });

  it('the self-cure frame restores what the kernel\'s own signal frames restore for the task', async () => {
    // The victim reads the _fpx_sw_bytes of a signal frame the kernel built for it (xfeatures and
    // xstate_size its rt_sigreturn takes); the parasite's frame must offer exactly that.
    const v = await Victim.start('xstate');
    const victim = injectSync(v.pid);
    let chosen: { features: bigint; size: number } | undefined;
    try {
      chosen = victim.infectSync().selfCureXstate;
    } finally {
      victim.cureSync();
    }
    process.kill(v.pid, 'SIGUSR1');
    const line = await v.waitLine(/^(ok|bad) xstate/);
    expect(line).to.match(/^ok xstate/);
    const m = /sigframe=([0-9a-f]+)\/(\d+)/.exec(line)!;
    expect(chosen).to.deep.equal({ features: BigInt(`0x${m[1]}`), size: Number(m[2]) });
  });

  describe('injector killed in the middle of a parasite call', () => {
    // xstate: xmm0, ymm15, zmm31 and k7 (AVX-512 if the CPU has it) must survive the self-cure's
    // rt_sigreturn, which restores the extended state only from a frame the kernel accepts.
    for (const mode of ['busy', 'read', 'xstate'] as const) {
      it(`${mode}: the victim cures itself within a second, with no blob mapping left`, async () => {
        const v = await Victim.start(mode);
        await new Promise((r) => setTimeout(r, 50));
        const injector = spawn(process.execPath, [fileURLToPath(new URL('./injector-child.js', import.meta.url)), String(v.pid)], {
          stdio: ['ignore', 'pipe', 'inherit'],
        });
        try {
          const line = await new Promise<string>((resolve, reject) => {
            const t = setTimeout(() => reject(new Error('injector did not infect within 10 s')), 10_000);
            injector.stdout!.on('data', (d: Buffer) => { clearTimeout(t); resolve(d.toString()); });
          });
          expect(line).to.match(/^infected [0-9a-f]+ selfcure=true/);
          expect(hasParasite(v.pid)).to.equal(true);
          await new Promise((r) => setTimeout(r, 100)); // let it be mid-request
          injector.kill('SIGKILL');
          const t0 = Date.now();
          // The blob goes when the parasite sees EOF (the injector's files closed); ptrace lets go of
          // the task a little later in the injector's exit (exit_notify); the mask comes back with
          // the rt_sigreturn that follows the blob's munmap (a preempted task can be between the
          // two): wait for all three.
          const traced = () => !/TracerPid:\s+0\n/.test(readFileSync(`/proc/${v.pid}/status`, 'utf8'));
          const masked = () => !/SigBlk:\s+0+\n/.test(readFileSync(`/proc/${v.pid}/status`, 'utf8'));
          while ((hasParasite(v.pid) || traced() || masked()) && Date.now() - t0 < 1000) await new Promise((r) => setTimeout(r, 10));
          expect(hasParasite(v.pid), 'blob mapping still there after 1 s').to.equal(false);
          expect(readFileSync(`/proc/${v.pid}/status`, 'utf8')).to.match(/TracerPid:\s+0\n/);
          expect(readFileSync(`/proc/${v.pid}/status`, 'utf8')).to.match(/SigBlk:\s+0+\n/);
        } finally {
          injector.kill('SIGKILL');
        }
        if (mode === 'busy') {
          process.kill(v.pid, 'SIGUSR1');
          expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
        } else if (mode === 'xstate') {
          process.kill(v.pid, 'SIGUSR1');
          expect(await v.waitLine(/^(ok|bad) xstate/)).to.match(/^ok xstate xmm0=ok ymm15=ok ymm15hi=ok zmm31=ok k7=ok/);
        } else {
          v.send('after-selfcure');
          expect(await v.waitLine(/^read /)).to.equal('read rc=15 errno=0 data=after-selfcure');
        }
      });
    }
  });
});

describe('@criu-ts/compel: injector killed at random moments of whole injections', function () {
  this.timeout(120_000);
  beforeEach(function () {
    requireRootAndBinaries(this);
  });
  afterEach(() => killAllVictims());

  // Remote syscalls, parasite calls in every thread and the parasite's stop each leave the thread
  // with our registers for a while; a SIGTRAP stop there used to kill the task when the injector
  // died. Every one of them now returns through the thread's return chain (or the daemon's
  // self-cure): the victim must live on with its own registers, extended state and mask.
  for (const mode of ['xstate', 'futex'] as const) {
    it(`${mode}: 15 kills, the victim lives and is whole after each, with nothing of ours left`, async () => {
      const v = await Victim.start(mode);
      await new Promise((r) => setTimeout(r, 50));
      const status = () => readFileSync(`/proc/${v.pid}/status`, 'utf8');
      const maps = () => readFileSync(`/proc/${v.pid}/maps`, 'utf8');
      const fds = () => readdirSync(`/proc/${v.pid}/fd`).map((fd) => `${fd} -> ${readlinkSync(`/proc/${v.pid}/fd/${fd}`)}`).sort();
      const mapsBefore = maps();
      const fdsBefore = fds();
      for (let round = 0; round < 15; round++) {
        await runInjectorUntilKilled(v.pid, 'cycles', 150);
        await expectFreeAndRunning(v.pid, `round ${round}`);
        expect(status(), `round ${round}`).to.match(/SigPnd:\s+0+\n/);
        // Nothing of ours left: the return chain undid the mappings and descriptors made so far.
        expect(maps(), `round ${round}: maps`).to.equal(mapsBefore);
        expect(fds(), `round ${round}: fds`).to.deep.equal(fdsBefore);
      }
      if (mode === 'xstate') {
        process.kill(v.pid, 'SIGUSR1');
        expect(await v.waitLine(/^(ok|bad) xstate/)).to.match(/^ok xstate xmm0=ok ymm15=ok ymm15hi=ok zmm31=ok k7=ok/);
      } else {
        await new Promise((r) => setTimeout(r, 100));
        v.send('wake');
        expect(await v.waitLine(/^woke /)).to.equal('woke rc=0 errno=0 word=1');
      }
    });
  }
});

describe('@criu-ts/compel: injector killed while it rewrites the return chain', function () {
  this.timeout(120_000);
  beforeEach(function () {
    requireRootAndBinaries(this);
  });
  afterEach(() => killAllVictims());

  // A write into the task stops part way when the writer gets SIGKILL during it (the kernel stops
  // pinning pages once a fatal signal is pending): the chain must be whole at any such point.
  it('xstate: 20 kills amid changes of its undo operations, the victim\'s registers and extended state are whole', async () => {
    const v = await Victim.start('xstate');
    await new Promise((r) => setTimeout(r, 50));
    const mapsBefore = mapsText(v.pid);
    for (let round = 0; round < 20; round++) {
      await runInjectorUntilKilled(v.pid, 'undo-storm', 20);
      await expectFreeAndRunning(v.pid, `round ${round}`);
    }
    expect(mapsText(v.pid)).to.equal(mapsBefore);
    process.kill(v.pid, 'SIGUSR1');
    expect(await v.waitLine(/^(ok|bad) xstate/)).to.match(/^ok xstate xmm0=ok ymm15=ok ymm15hi=ok zmm31=ok k7=ok/);
  });

  it('xstate: writes into the chain cut at a page boundary by the injector\'s death, 12 victims (their chains at other page offsets): each is whole', async () => {
    for (let round = 0; round < 12; round++) {
      const v = await Victim.start('xstate');
      await new Promise((r) => setTimeout(r, 20));
      const mapsBefore = mapsText(v.pid);
      const injector = spawn(process.execPath, [fileURLToPath(new URL('./injector-child.js', import.meta.url)), String(v.pid), 'torn-write'], {
        stdio: ['ignore', 'pipe', 'inherit'],
      });
      const exited = new Promise<NodeJS.Signals | null>((resolve) => injector.on('exit', (_code, signal) => resolve(signal)));
      expect(await exited, `round ${round}: the injector killed itself`).to.equal('SIGKILL');
      await expectFreeAndRunning(v.pid, `round ${round}`);
      expect(mapsText(v.pid), `round ${round}: maps`).to.equal(mapsBefore);
      process.kill(v.pid, 'SIGUSR1');
      expect(await v.waitLine(/^(ok|bad) xstate/), `round ${round}`).to.match(/^ok xstate xmm0=ok ymm15=ok ymm15hi=ok zmm31=ok k7=ok/);
      process.kill(v.pid, 'SIGKILL');
    }
  });
});

describe('@criu-ts/compel: injector killed after a vmsplice met a dead reader', function () {
  this.timeout(30_000);
  beforeEach(function () {
    requireRootAndBinaries(this);
  });
  afterEach(() => killAllVictims());

  // The page pipe's reader is the injector: killed mid-dump, the parasite's vmsplice fails with
  // EPIPE and the kernel raises SIGPIPE in the task (pipe(7)). Blocked while the parasite runs, it
  // would be delivered the moment the self-cure restores the task's mask, and kill it.
  it('the victim cures itself and lives, with no SIGPIPE pending', async () => {
    const v = await Victim.start('busy');
    await new Promise((r) => setTimeout(r, 50));
    const injector = spawn(process.execPath, [fileURLToPath(new URL('./injector-child.js', import.meta.url)), String(v.pid), 'epipe'], {
      stdio: ['ignore', 'pipe', 'inherit'],
    });
    try {
      const line = await new Promise<string>((resolve, reject) => {
        let out = '';
        const t = setTimeout(() => reject(new Error(`injector did not report within 10 s: ${out}`)), 10_000);
        injector.stdout!.on('data', (d: Buffer) => {
          out += d.toString();
          const m = /^epipe .*$/m.exec(out);
          if (m) { clearTimeout(t); resolve(m[0]); }
        });
      });
      expect(line).to.match(/^epipe .*EPIPE/);
      injector.kill('SIGKILL');
      const t0 = Date.now();
      const status = () => readFileSync(`/proc/${v.pid}/status`, 'utf8');
      while ((hasParasite(v.pid) || !/TracerPid:\s+0\n/.test(status())) && Date.now() - t0 < 1000) await new Promise((r) => setTimeout(r, 10));
      await new Promise((r) => setTimeout(r, 50));
      expect(status()).to.match(/State:\s+[RS]/);
      expect(status()).to.match(/SigPnd:\s+0+\n/);
      expect(status()).to.match(/ShdPnd:\s+0+\n/);
    } finally {
      injector.kill('SIGKILL');
    }
    process.kill(v.pid, 'SIGUSR1');
    expect(await v.waitLine(/^(ok|bad)/)).to.match(/^ok/);
  });
});

/**
 * Runs test/injector-child.js on `pid` in `mode`, waits until it says it has started, lets it work
 * for a random 0..maxDelayMs, then SIGKILLs it.
 */
async function runInjectorUntilKilled(pid: number, mode: string, maxDelayMs: number): Promise<void> {
  const injector = spawn(process.execPath, [fileURLToPath(new URL('./injector-child.js', import.meta.url)), String(pid), mode], {
    stdio: ['ignore', 'pipe', 'inherit'],
  });
  try {
    await new Promise<void>((resolve, reject) => {
      const t = setTimeout(() => reject(new Error('injector did not start within 10 s')), 10_000);
      injector.stdout!.on('data', () => { clearTimeout(t); resolve(); });
    });
    await new Promise((r) => setTimeout(r, Math.floor(Math.random() * maxDelayMs)));
  } finally {
    injector.kill('SIGKILL');
  }
}

/** After its injector died: `pid` is untraced with no signal blocked (within 2 s), and running or sleeping. */
async function expectFreeAndRunning(pid: number, what: string): Promise<void> {
  const status = () => readFileSync(`/proc/${pid}/status`, 'utf8');
  const t0 = Date.now();
  while ((!/TracerPid:\s+0\n/.test(status()) || !/SigBlk:\s+0+\n/.test(status())) && Date.now() - t0 < 2000) await new Promise((r) => setTimeout(r, 5));
  expect(status(), what).to.match(/State:\s+[RS]/);
  expect(status(), what).to.match(/TracerPid:\s+0\n/);
  expect(status(), what).to.match(/SigBlk:\s+0+\n/);
}

async function fullInfectionOf(victim: Injected, v: Victim): Promise<void> {
  try {
    expect(Number(victim.syscallSync('getpid'))).to.equal(v.pid);
    const parasite = victim.infectSync();
    expect(parasite.ping().pid).to.equal(v.pid);
    const page = parasite.readPages([{ addr: asRemoteAddress(v.data), len: 4096 }]);
    expect(page.equals(v.expectedData(0, 4096))).to.equal(true);
  } finally {
    victim.cureSync();
  }
}

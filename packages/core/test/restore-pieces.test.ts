// The pieces of restore on their own: the stub, clone3 with set_tid, building a VMA layout and
// filling it from a pages file, and a whole process from a hand-made image set.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, readdirSync, readFileSync, readlinkSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { cpuXstateLayout, injectSync } from '@criu-ts/compel';
import { fpregsFromXsave, restoreSync, RestoreError, xsaveFromFpregs, xsaveOffsetsFromCpuid } from '@criu-ts/core';
import { ImageWriter, kindForName, PE_PRESENT } from '@criu-ts/images';
import { asPid, asRemoteAddress, processVmReadv, SIGNALS, wait4, __WALL, WNOHANG } from '@criu-ts/sys';
import { Stub, stubPath } from '../src/restore/stub.js';
import { RestoreTask, findControlAreaHole } from '../src/restore/remote-task.js';
import { fillPages, mapVdso, mapVmas, protectVmas, unmapAllButKept } from '../src/restore/memory.js';
import { readImageSet, TASK_SIZE, type ImageSet, type VmaImage } from '../src/restore/image-set.js';
import {
  alive, dataPattern, freePid, HANDMADE, mappedFileBytes, isRoot, killQuietly, ourStubs, procState, sleepMs, vdsoBlockLayout, waitFor,
  writeHandmadeImages,
} from './restore-helpers.js';

/** Kills and reaps (bounded) a task we traced or created. */
function reap(pid: number | undefined): void {
  if (pid === undefined) return;
  killQuietly(pid);
  for (let i = 0; i < 200; i++) {
    try {
      const st = wait4(asPid(pid), __WALL | WNOHANG);
      if (st.kind === 'exited' || st.kind === 'signaled') return;
    } catch {
      return;
    }
    sleepMs(5);
  }
}

describe('core restore: the stub', function () {
  this.timeout(30_000);
  let stub: Stub | undefined;
  let created: number | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace and clone3 set_tid need root
  });
  afterEach(() => {
    reap(created);
    created = undefined;
    stub?.killSync();
    stub = undefined;
  });

  it('starts, stops itself and is seized; killSync leaves no stub behind', function () {
    stub = Stub.startSync();
    expect(procState(stub.pid)).to.equal('t'); // traced stop, after its own SIGSTOP
    expect(stub.injection.wasStopped).to.equal(true);
    const pid = stub.pid;
    stub.killSync();
    waitFor('the stub to go', () => !alive(pid));
    expect(ourStubs()).to.deep.equal([]);
  });

  it('dies by itself when the parent it was given is not its parent', function () {
    const r = spawnSync(stubPath(), ['1'], { timeout: 5000 });
    expect(r.status).to.equal(3);
  });

  it('reports the XSAVE layout, and the FPU conversions put each component where this CPU has it', function () {
    const layout = cpuXstateLayout();
    expect(layout.components[2]).to.deep.include({ offset: 576, size: 256 });
    // Each component present gets its own byte pattern at the CPU's offset; what comes out of
    // the image entry and back must be found at those offsets (Intel's and AMD's differ).
    const offsets = xsaveOffsetsFromCpuid(layout.components);
    const xsave = Buffer.alloc(layout.size);
    let xcr0 = 3n;
    for (const [bit, offset] of offsets) {
      const size = layout.components[bit]!.size;
      if (![2, 3, 4, 5, 6, 7, 9].includes(bit)) continue;
      xsave.fill(0x10 + bit, offset, offset + size);
      xcr0 |= 1n << BigInt(bit);
    }
    xsave.writeBigUInt64LE(xcr0, 464);
    xsave.writeBigUInt64LE(xcr0, 512);
    const entry = fpregsFromXsave(xsave, offsets);
    const template = Buffer.alloc(layout.size); // a thread's own image: zeroed, XCR0 in sw_reserved
    template.writeBigUInt64LE(xcr0, 464);
    const back = xsaveFromFpregs(entry, template, offsets);
    for (const [bit, offset] of offsets) {
      if (![2, 3, 4, 5, 6, 7, 9].includes(bit)) continue;
      const size = layout.components[bit]!.size;
      expect(back.subarray(offset, offset + size).every((b) => b === 0x10 + bit), `component ${bit} at ${offset}`).to.equal(true);
    }
    if (offsets.has(5)) {
      // The opmask words come from the CPU's offset, whatever the vendor.
      expect((entry.xsave as { opmask_reg: bigint[] }).opmask_reg[0]).to.equal(0x1515151515151515n);
    }
  });

  for (const parentIsCaller of [true, false]) {
    it(`clone3 with set_tid gives the asked PID, stopped and traced (${parentIsCaller ? 'CLONE_PARENT: our child' : "the stub's child"})`, function () {
      stub = Stub.startSync();
      const want = freePid();
      const got = stub.cloneWithPidSync(want, { parentIsCaller });
      created = got.pid;
      expect(got.pid).to.equal(want);
      const status = readFileSync(`/proc/${want}/status`, 'utf8');
      expect(status).to.match(new RegExp(`TracerPid:\\s+${process.pid}\\b`));
      const ppid = Number(/PPid:\s+(\d+)/.exec(status)![1]);
      expect(ppid).to.equal(parentIsCaller ? process.pid : stub.pid);
      expect(procState(want)).to.equal('t');
    });
  }

  it('clone3 onto a PID in use fails with a clear error and creates nothing', function () {
    stub = Stub.startSync();
    let err: unknown;
    try {
      stub.cloneWithPidSync(process.pid, { parentIsCaller: true });
    } catch (e) {
      err = e;
    }
    expect(err).to.be.instanceOf(RestoreError);
    expect((err as RestoreError).stage).to.equal('clone');
    expect((err as Error).message).to.include('already in use');
  });
});


describe('core restore: address space', function () {
  this.timeout(30_000);
  let stub: Stub | undefined;
  let created: number | undefined;
  let dir: string;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace and clone3 set_tid need root
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-rst-'));
  });
  afterEach(() => {
    reap(created);
    created = undefined;
    stub?.killSync();
    stub = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  /** A new task with only its control area left. */
  function emptyTask(avoid: Array<{ start: bigint; end: bigint }>): RestoreTask {
    stub = Stub.startSync();
    const got = stub.cloneWithPidSync(freePid(), { parentIsCaller: true });
    created = got.pid;
    stub.killSync();
    stub = undefined;
    const task = RestoreTask.adopt(got.pid, got.gadget);
    task.setUpControlArea(findControlAreaHole([...task.currentMaps(), ...avoid], 65536n, TASK_SIZE));
    unmapAllButKept(task);
    return task;
  }

  it('maps a VMA layout that /proc/PID/maps then shows exactly, vDSO block included, and fills pages at their addresses', function () {
    const file = join(dir, 'mapped.bin');
    const fileBytes = Buffer.alloc(3 * 4096);
    for (let i = 0; i < fileBytes.length; i++) fileBytes[i] = (i * 31 + 7) & 0xff;
    writeFileSync(file, fileBytes);
    const base = 0x20_0000_0000n;
    const reg = { id: 7, name: file, flags: 0, pos: 0n };
    const v = (off: bigint, pages: bigint, prot: number, flags: number, status: number, extra: Partial<VmaImage> = {}): VmaImage => ({
      start: base + off, end: base + off + pages * 4096n, pgoff: 0n, shmid: 0n, prot, flags, status, madv: 0n, ...extra,
    });
    const vmas: VmaImage[] = [
      v(0n, 4n, 3, 0x22, 0x201), // anon rw
      v(0x4000n, 1n, 0, 0x22, 0x201), // PROT_NONE guard, adjacent
      v(0x5000n, 2n, 1, 0x22, 0x201), // anon read-only, with contents
      v(0x10000n, 2n, 1, 0x2, 0x41, { file: reg, pgoff: 4096n, shmid: 7n }), // private file r--, at offset 4096
      v(0x12000n, 1n, 3, 0x2, 0x41, { file: reg, pgoff: 0n, shmid: 7n }), // private file rw-, one page written
      v(0x20000n, 8n, 3, 0x122, 0x203), // growsdown "stack"
    ];
    let at = base + 0x100000n;
    for (const part of vdsoBlockLayout()) {
      vmas.push(v(at - base, part.size / 4096n, part.name === '[vdso]' ? 5 : 1, 0x22, part.name === '[vdso]' ? 0x209 : 0x1201));
      at += part.size;
    }
    // Pages: 4 anon rw pages + the read-only page in one run, the written file page in another.
    const pagemap = join(dir, 'pagemap-1.img');
    const pm = ImageWriter.create(pagemap, kindForName('PAGEMAP')!);
    pm.append({ pages_id: 1 });
    pm.append({ vaddr: base, compat_nr_pages: 4, flags: PE_PRESENT, nr_pages: 4n });
    pm.append({ vaddr: base + 0x5000n, compat_nr_pages: 1, flags: PE_PRESENT, nr_pages: 1n });
    pm.append({ vaddr: base + 0x12000n, compat_nr_pages: 1, flags: PE_PRESENT, nr_pages: 1n });
    pm.finish();
    const pages = Buffer.alloc(6 * 4096);
    for (let i = 0; i < pages.length; i++) pages[i] = (i * 7 + (i >> 12)) & 0xff;
    writeFileSync(join(dir, 'pages-1.img'), pages);
    const set = {
      vmas, pagesFile: join(dir, 'pages-1.img'),
      runs: [{ vaddr: base, nrPages: 4, offset: 0 }, { vaddr: base + 0x5000n, nrPages: 1, offset: 4 * 4096 }, { vaddr: base + 0x12000n, nrPages: 1, offset: 5 * 4096 }],
      shmem: [],
    } as unknown as ImageSet;

    const task = emptyTask(vmas);
    mapVdso(task, vmas);
    const mapped = mapVmas(task, set);
    expect(fillPages(task, set)).to.deep.equal({ read: 6 * 4096, shared: 0 });
    protectVmas(task, mapped);

    const maps = readFileSync(`/proc/${task.pid}/maps`, 'utf8').split('\n').filter((l) => l && !l.includes('[vsyscall]'));
    const ctrl = task.controlArea;
    const shown = maps.filter((l) => BigInt(`0x${l.split('-')[0]}`) !== ctrl).map((l) => {
      const [range, perms, offset, , , name] = l.split(/\s+/);
      return `${range} ${perms} ${offset} ${name ?? ''}`.trim();
    });
    const hex = (x: bigint) => x.toString(16).padStart(8, '0');
    const perms = (p: number, shared = false) => `${p & 1 ? 'r' : '-'}${p & 2 ? 'w' : '-'}${p & 4 ? 'x' : '-'}${shared ? 's' : 'p'}`;
    const vdsoNames = vdsoBlockLayout().map((p) => p.name);
    const expected = vmas.map((x, i) => {
      const name = x.file ? file : i >= 6 ? vdsoNames[i - 6]! : '';
      return `${hex(x.start)}-${hex(x.end)} ${perms(x.prot)} ${hex(x.pgoff)} ${name}`.trim();
    });
    expect(shown).to.deep.equal(expected);

    const read = (addr: bigint, len: number) => {
      const b = Buffer.alloc(len);
      expect(processVmReadv(task.pid, b, [{ addr: asRemoteAddress(addr), len }])).to.equal(len);
      return b;
    };
    expect(read(base, 4 * 4096).equals(pages.subarray(0, 4 * 4096))).to.equal(true);
    expect(read(base + 0x5000n, 4096).equals(pages.subarray(4 * 4096, 5 * 4096))).to.equal(true);
    expect(read(base + 0x12000n, 4096).equals(pages.subarray(5 * 4096))).to.equal(true);
    // An unwritten private file page shows the file at the VMA's offset.
    expect(read(base + 0x10000n, 8192).equals(fileBytes.subarray(4096, 3 * 4096))).to.equal(true);
  });
});

describe('core restore: a hand-made image set', function () {
  this.timeout(60_000);
  let dir: string;
  let pid: number | undefined;
  before(function () {
    if (!isRoot()) this.skip(); // stated reason: ptrace and clone3 set_tid need root
  });
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-hand-'));
  });
  afterEach(() => {
    reap(pid);
    pid = undefined;
    rmSync(dir, { recursive: true, force: true });
  });

  it('restores a process that runs its loop with the dumped registers, mask, fds and cwd', function () {
    pid = freePid();
    writeHandmadeImages(dir, pid);
    const r = restoreSync({ imagesDir: dir });
    expect(r.pid).to.equal(pid);
    expect(ourStubs()).to.deep.equal([]);
    // The counter in the data page goes up: the task runs our code from the pages file.
    const counter = () => {
      const b = Buffer.alloc(8);
      processVmReadv(asPid(pid!), b, [{ addr: asRemoteAddress(HANDMADE.data), len: 8 }]);
      return b.readBigUInt64LE(0);
    };
    const first = counter();
    // It counts as soon as it is scheduled; on a loaded machine that may take a while.
    waitFor('the restored loop to count', () => counter() > first, 10_000);
    const rest = Buffer.alloc(4088);
    processVmReadv(asPid(pid), rest, [{ addr: asRemoteAddress(HANDMADE.data + 8n), len: 4088 }]);
    expect(rest.equals(dataPattern().subarray(8))).to.equal(true);
    const status = readFileSync(`/proc/${pid}/status`, 'utf8');
    expect(status).to.match(/^Name:\s+handmade$/m);
    expect(status).to.match(/^SigBlk:\s+0*200$/m);
    expect(status).to.match(/^Umask:\s+0027$/m);
    expect(status).to.match(/^TracerPid:\s+0$/m);
    expect(readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1]!.split(' ').slice(2, 4).map(Number)).to.deep.equal([pid, pid]); // pgid, sid
    expect(readFileSync(`/proc/${pid}/maps`, 'utf8')).to.include(join(dir, 'mapped.bin'));
    const page = Buffer.alloc(4096);
    processVmReadv(asPid(pid), page, [{ addr: asRemoteAddress(HANDMADE.file), len: 4096 }]);
    expect(page.equals(mappedFileBytes())).to.equal(true);
    expect(readlinkSync(`/proc/${pid}/exe`)).to.equal(process.execPath);
    expect(readlinkSync(`/proc/${pid}/fd/0`)).to.equal('/dev/null');
    expect(readlinkSync(`/proc/${pid}/cwd`)).to.equal('/');
    // Registers: seize it briefly and look (compel puts it back as it was).
    const v = injectSync(pid);
    try {
      expect(v.saved.regs.r12).to.equal(HANDMADE.r12);
      expect(v.saved.regs.rip >= HANDMADE.code && v.saved.regs.rip < HANDMADE.code + 16n).to.equal(true);
      expect(v.saved.xsave.readUInt32LE(160)).to.equal(0x11111111);
      expect(v.saved.xsave.readUInt32LE(172)).to.equal(0x44444444);
    } finally {
      v.cureSync();
    }
    const later = counter();
    sleepMs(30);
    expect(counter() > later).to.equal(true);
  });

  it('restore({ detached: false }) makes the process our child and reports how it ended', async function () {
    pid = freePid();
    writeHandmadeImages(dir, pid);
    const { restore } = await import('@criu-ts/core');
    const result = await restore({ imagesDir: dir, onRunning: (p) => setTimeout(() => killQuietly(p), 50) });
    expect(result.exit).to.deep.equal({ code: null, signal: SIGNALS.SIGKILL });
    pid = undefined;
  });

  it('writes the pidfile', function () {
    pid = freePid();
    writeHandmadeImages(dir, pid);
    const pidfile = join(dir, 'pid');
    restoreSync({ imagesDir: dir, detached: true, pidfile });
    expect(readFileSync(pidfile, 'utf8')).to.equal(String(pid));
  });

  describe('failures create nothing and say why', function () {
    const attempt = (): RestoreError => {
      try {
        restoreSync({ imagesDir: dir });
      } catch (e) {
        expect(e).to.be.instanceOf(RestoreError);
        return e as RestoreError;
      }
      throw new Error('restore succeeded');
    };

    it('a missing image', function () {
      pid = freePid();
      writeHandmadeImages(dir, pid);
      rmSync(join(dir, `mm-${pid}.img`));
      const err = attempt();
      expect(err.stage).to.equal('read-images');
      expect(err.message).to.include(`mm-${pid}.img is missing`);
      expect(alive(pid)).to.equal(false);
      expect(ourStubs()).to.deep.equal([]);
    });

    it('a truncated image', function () {
      pid = freePid();
      writeHandmadeImages(dir, pid);
      const core = join(dir, `core-${pid}.img`);
      writeFileSync(core, readFileSync(core).subarray(0, 40));
      const err = attempt();
      expect(err.stage).to.equal('read-images');
      expect(err.evidence.reason).to.match(/truncated|length-beyond-end/);
      expect(alive(pid)).to.equal(false);
    });

    it('a truncated pages file', function () {
      pid = freePid();
      writeHandmadeImages(dir, pid);
      writeFileSync(join(dir, 'pages-1.img'), Buffer.alloc(4096));
      const err = attempt();
      expect(err.stage).to.equal('read-images');
      expect(alive(pid)).to.equal(false);
    });

    it('the PID already taken', function () {
      pid = undefined;
      writeHandmadeImages(dir, process.pid);
      const err = attempt();
      expect(err.stage).to.equal('validate');
      expect(err.message).to.include('already in use');
      expect(ourStubs()).to.deep.equal([]);
    });

    it('a failure after the process exists kills it and the stub', function () {
      pid = freePid();
      writeHandmadeImages(dir, pid, { fdPath: join(dir, 'no-such-file') });
      const err = attempt();
      expect(err.stage).to.equal('files');
      expect(err.message).to.include('ENOENT');
      expect(alive(pid)).to.equal(false);
      expect(ourStubs()).to.deep.equal([]);
    });
  });
});


// readImageSet on CRIU 4.2's own images: what we cannot restore yet is named, never crashes.
describe('core restore: reading CRIU 4.2 image sets', function () {
  const fixtures = '/work/shared/criu-images';
  it('reads or rejects with a RestoreError every fixture', function () {
    let dirs: string[];
    try {
      dirs = readdirSync(fixtures).filter((n) => statSync(join(fixtures, n)).isDirectory());
    } catch {
      this.skip(); // stated reason: the CRIU fixtures are not on this machine
      return;
    }
    for (const d of dirs) {
      try {
        readImageSet(join(fixtures, d), { shellJob: true });
      } catch (e) {
        expect(e, d).to.be.instanceOf(RestoreError);
        expect((e as RestoreError).stage, `${d}: ${(e as Error).message}`).to.be.oneOf(['validate', 'read-images']);
      }
    }
  });
});

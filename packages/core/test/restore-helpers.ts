// Helpers for the restore tests: free PIDs, cleanup of every process a test created, and a
// hand-made minimal image set (written with ImageWriter) for a process whose code we write.
import { readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageWriter, kindForName, PE_PRESENT } from '@criu-ts/images';

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
export function sleepMs(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

export function isRoot(): boolean {
  return process.getuid?.() === 0;
}

export function procState(pid: number): string | undefined {
  try {
    const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
  } catch {
    return undefined;
  }
}

export function alive(pid: number): boolean {
  const s = procState(pid);
  return s !== undefined && s !== 'Z' && s !== 'X';
}

/** Waits (bounded in time) until `predicate` holds. */
export function waitFor(what: string, predicate: () => boolean, timeoutMs = 10_000): void {
  const deadline = Date.now() + timeoutMs;
  while (!predicate()) {
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}`);
    sleepMs(5);
  }
}

/** A PID nobody uses, well away from where new processes are being numbered. */
export function freePid(): number {
  const max = Number.parseInt(readFileSync('/proc/sys/kernel/pid_max', 'utf8'), 10);
  const last = Number.parseInt(readFileSync('/proc/sys/kernel/ns_last_pid', 'utf8'), 10);
  for (let i = 0; i < 1000; i++) {
    const pid = ((last + 3000 + Math.floor(Math.random() * 4000)) % (max - 400)) + 300;
    if (procState(pid) === undefined) return pid;
  }
  throw new Error('no free pid found');
}

/** Stub processes (restore-stub) whose parent is this process: there must be none after a restore. */
export function ourStubs(): number[] {
  const found: number[] = [];
  for (const name of readdirSync('/proc')) {
    if (!/^\d+$/.test(name)) continue;
    try {
      const stat = readFileSync(`/proc/${name}/stat`, 'utf8');
      const ppid = Number(stat.slice(stat.lastIndexOf(')') + 2).split(' ')[1]);
      if (stat.includes('(restore-stub)') && ppid === process.pid && !/\) [ZX]/.test(stat)) found.push(Number(name));
    } catch { /* gone */ }
  }
  return found;
}

export function killQuietly(pid: number | undefined): void {
  if (pid === undefined) return;
  try { process.kill(pid, 'SIGKILL'); } catch { /* gone */ }
}

/** The [vvar]/[vvar_vclock]/[vdso] block of this kernel, as sizes in bytes, from our own maps. */
export function vdsoBlockLayout(): Array<{ name: string; size: bigint }> {
  const out: Array<{ name: string; size: bigint }> = [];
  for (const line of readFileSync('/proc/self/maps', 'utf8').split('\n')) {
    const m = /^([0-9a-f]+)-([0-9a-f]+) .*\s(\[vvar\]|\[vvar_vclock\]|\[vdso\])$/.exec(line);
    if (m) out.push({ name: m[3]!, size: BigInt(`0x${m[2]}`) - BigInt(`0x${m[1]}`) });
  }
  return out;
}

const PROT_R = 1;
const PROT_W = 2;
const PROT_X = 4;
const MAP_PRIVATE = 2;
const MAP_ANON = 0x20;
const VMA_REGULAR = 1;
const VMA_VDSO = 1 << 3;
const VMA_FILE_PRIVATE = 1 << 6;
const VMA_ANON_PRIVATE = 1 << 9;
const VMA_VVAR = 1 << 12;

/** Where the hand-made process lives. */
export const HANDMADE = {
  code: 0x10_0000_0000n, // one r-x page with the loop below
  data: 0x10_0000_1000n, // one rw page: the counter at +0, a pattern after
  file: 0x10_0000_4000n, // one r-- page of the exe file, private
  vdso: 0x10_0001_0000n, // the vDSO block
  r12: 0x1234_5678_9abc_def0n,
};

/**
 * The loop the hand-made process runs: `inc qword [rip + X]` (the counter at the start of the
 * data page) then `jmp` back. Registers other than RIP and flags are never touched.
 */
function loopCode(): Buffer {
  const code = Buffer.alloc(4096, 0xcc);
  // 48 ff 05 disp32: inc qword [rip+disp32]; disp is relative to the next instruction (code+7).
  code.set([0x48, 0xff, 0x05], 0);
  code.writeInt32LE(Number(HANDMADE.data - (HANDMADE.code + 7n)), 3);
  code.set([0xeb, 0xf7], 7); // jmp -9: back to code+0
  return code;
}

export function mappedFileBytes(): Buffer {
  const b = Buffer.alloc(4096);
  for (let i = 0; i < 4096; i++) b[i] = (i * 3 + 1) & 0xff;
  return b;
}

export function dataPattern(): Buffer {
  const b = Buffer.alloc(4096);
  for (let i = 8; i < 4096; i++) b[i] = (i * 13 + 5) & 0xff;
  return b;
}

/**
 * Writes a minimal CRIU image set for process `pid`: exe = node's binary, a code page and a
 * data page restored from pages-1.img, one private page of DIR/mapped.bin, the vDSO
 * block at HANDMADE.vdso, fd 0 on /dev/null, cwd and root "/", registers that start the loop
 * with r12 = HANDMADE.r12 and xmm0 = a pattern.
 */
export function writeHandmadeImages(dir: string, pid: number, extra: { fdPath?: string } = {}): void {
  const exe = process.execPath;
  // Not the stub: the kernel refuses to change the exe link while the old exe (the stub) is
  // still mapped (replace_mm_exe_file: EBUSY).
  const mapped = join(dir, 'mapped.bin');
  writeFileSync(mapped, mappedFileBytes());
  const img = (name: string, kind: string, entries: Array<Record<string, unknown>>) => {
    const w = ImageWriter.create(join(dir, name), kindForName(kind)!);
    for (const e of entries) w.append(e);
    w.finish();
  };
  img('inventory.img', 'INVENTORY', [{ img_version: 2, fdinfo_per_id: true }]);
  img('pstree.img', 'PSTREE', [{ pid, ppid: 0, pgid: pid, sid: pid, threads: [pid] }]);
  img(`ids-${pid}.img`, 'IDS', [{ vm_id: 1, files_id: 1, fs_id: 1, sighand_id: 1 }]);
  img(`fs-${pid}.img`, 'FS', [{ cwd_id: 2, root_id: 2, umask: 0o27 }]);
  const fown = { uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 };
  const reg = (id: number, name: string, flags = 0) => ({ type: 1, id, reg: { id, flags, pos: 0n, fown, name } });
  img('files.img', 'FILES', [reg(1, exe), reg(2, '/'), reg(3, extra.fdPath ?? '/dev/null', 2), reg(4, mapped)]);
  img('fdinfo-1.img', 'FDINFO', [{ id: 3, flags: 0, type: 1, fd: 0 }]);

  const vmas: Array<Record<string, unknown>> = [
    { start: HANDMADE.code, end: HANDMADE.code + 4096n, pgoff: 0n, shmid: 0n, prot: PROT_R | PROT_X, flags: MAP_PRIVATE | MAP_ANON, status: VMA_REGULAR | VMA_ANON_PRIVATE, fd: -1n },
    { start: HANDMADE.data, end: HANDMADE.data + 4096n, pgoff: 0n, shmid: 0n, prot: PROT_R | PROT_W, flags: MAP_PRIVATE | MAP_ANON, status: VMA_REGULAR | VMA_ANON_PRIVATE, fd: -1n },
    { start: HANDMADE.file, end: HANDMADE.file + 4096n, pgoff: 0n, shmid: 4n, prot: PROT_R, flags: MAP_PRIVATE, status: VMA_REGULAR | VMA_FILE_PRIVATE, fd: -1n },
  ];
  let at = HANDMADE.vdso;
  for (const part of vdsoBlockLayout()) {
    const isVdso = part.name === '[vdso]';
    vmas.push({
      start: at, end: at + part.size, pgoff: 0n, shmid: 0n, prot: isVdso ? PROT_R | PROT_X : PROT_R, flags: MAP_PRIVATE | MAP_ANON,
      status: VMA_REGULAR | VMA_ANON_PRIVATE | (isVdso ? VMA_VDSO : VMA_VVAR), fd: -1n,
    });
    at += part.size;
  }
  img(`mm-${pid}.img`, 'MM', [{
    mm_start_code: HANDMADE.code, mm_end_code: HANDMADE.code + 4096n, mm_start_data: HANDMADE.data, mm_end_data: HANDMADE.data + 4096n,
    mm_start_stack: HANDMADE.data + 4000n, mm_start_brk: HANDMADE.data + 0x2000n, mm_brk: HANDMADE.data + 0x2000n,
    mm_arg_start: HANDMADE.data + 8n, mm_arg_end: HANDMADE.data + 16n, mm_env_start: HANDMADE.data + 16n, mm_env_end: HANDMADE.data + 24n,
    exe_file_id: 1, mm_saved_auxv: [6n, 4096n, 0n, 0n], vmas,
  }]);
  // pagemap: head, then the code and data pages (contiguous: one run of 2 pages).
  const pm = ImageWriter.create(join(dir, `pagemap-${pid}.img`), kindForName('PAGEMAP')!);
  pm.append({ pages_id: 1 });
  pm.append({ vaddr: HANDMADE.code, compat_nr_pages: 2, flags: PE_PRESENT, nr_pages: 2n });
  pm.finish();
  writeFileSync(join(dir, 'pages-1.img'), Buffer.concat([loopCode(), dataPattern()]));

  const zeros = (n: number) => Array.from({ length: n }, () => 0);
  const xmm = zeros(64);
  xmm[0] = 0x11111111; xmm[1] = 0x22222222; xmm[2] = 0x33333333; xmm[3] = 0x44444444;
  const gp = {
    r15: 0n, r14: 0n, r13: 0n, r12: HANDMADE.r12, bp: 0n, bx: 0n, r11: 0n, r10: 0n, r9: 0n, r8: 0n, ax: 0n, cx: 0n, dx: 0n, si: 0n,
    di: 0n, orig_ax: 0xffff_ffff_ffff_ffffn, ip: HANDMADE.code, cs: 0x33n, flags: 0x202n, sp: HANDMADE.data + 4000n, ss: 0x2bn,
    fs_base: 0n, gs_base: 0n, ds: 0n, es: 0n, fs: 0n, gs: 0n, mode: 1,
  };
  img(`core-${pid}.img`, 'CORE', [{
    mtype: 1,
    thread_info: {
      clear_tid_addr: 0n, gpregs: gp,
      fpregs: { cwd: 0x37f, swd: 0, twd: 0, fop: 0, rip: 0n, rdp: 0n, mxcsr: 0x1f80, mxcsr_mask: 0xffff, st_space: zeros(32), xmm_space: xmm, padding: [] },
    },
    tc: { task_state: 1, exit_code: 0, personality: 0, flags: 0, blk_sigset: 0n, comm: 'handmade', sigactions: [] },
    thread_core: { futex_rla: 0n, futex_rla_len: 0, blk_sigset: 1n << 9n },
  }]);
}

/** What `fn` throws (undefined when it returns): for tests that go on to check the error. */
export function thrownBy(fn: () => unknown): unknown {
  try {
    fn();
  } catch (error) {
    return error;
  }
  return undefined;
}

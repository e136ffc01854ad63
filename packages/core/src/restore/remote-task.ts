// The task being restored, driven with compel's remote syscalls, and its control area.
//
// The new task starts as a copy of the stub (the root) or of its restored parent, and ends as
// the dumped process; in between its own code disappears (every mapping of the stub, or what
// it does not keep of its parent's, is unmapped, then the dumped VMAs take the address space). Remote syscalls need a `syscall` instruction that survives this, and the
// calls that take pointers (paths, iovecs, struct prctl_mm_map...) need memory for their
// arguments. Both live in the control area: one mapping, placed in an address range that
// neither the stub nor the dumped layout uses, holding `0f 05 cc` (syscall; int3) at its start
// and scratch space after it. It is the last thing unmapped, by a munmap run from its own
// gadget: the single-step trap arrives after the syscall returned, before the next (now
// unmapped) instruction would be fetched, and the registers are then replaced by the dumped ones.
//
// Memory of the task is written with process_vm_writev (the control area is writable), so no
// /proc/PID/mem handle stays open in criu-ts.
import {
  asPid, asRemoteAddress, MAP, processVmReadv, processVmWritev, PROT, ptraceGetRegs, ptraceGetRegset, ptraceGetSigmask,
  NT, type Pid, type RemoteAddress,
} from '@criu-ts/sys';
import { Injection, readMaps, type Gadgets, type SeizedThread } from '@criu-ts/compel';
import { PAGE_SIZE } from '@criu-ts/images';
import { RestoreError } from './errors.js';

/** Size of the control area: one code page, then scratch for arguments (iovecs, paths, structs). */
export const CONTROL_SIZE = 32 * PAGE_SIZE;
const SCRATCH_OFFSET = 64; // the gadget is 3 bytes; keep arguments 64-byte aligned

/**
 * A traced task that arrived through PTRACE_O_TRACEFORK (never seized by compel itself: it was
 * born traced). Precondition for every method: the task is in a ptrace-stop.
 */
export class RestoreTask extends Injection {
  // A task we create dies with criu-ts (EXITKILL, death-guard.ts): no settling between calls.
  protected override settleBetweenCalls = false;
  private ownGadget: Gadgets | null = null;
  private control: RemoteAddress | null = null;

  /** Wraps a task that is traced by us and stopped; `gadget` is a syscall instruction it can run. */
  static adopt(pidNumber: number, gadget: RemoteAddress, timeoutMs = 10_000): RestoreTask {
    const pid = asPid(pidNumber);
    const threads = new Map<Pid, SeizedThread>([[pid, { tid: pid, groupStop: 0, pendingSignals: [] }]]);
    const saved = { regs: ptraceGetRegs(pid), xsave: ptraceGetRegset(pid, NT.X86_XSTATE), sigmask: ptraceGetSigmask(pid) };
    const task = new RestoreTask(pid, pid, threads, saved, timeoutMs);
    task.ownGadget = { syscall: gadget, syscallRet: null, popRaxRet: null, popRdiRet: null, popRsiRet: null };
    return task;
  }

  /**
   * A process cloned (fork-like, no CLONE_VM) from a restored task whose control area was set
   * up: the copy of that area is at the same address in the child, gadget included, so remote
   * calls run from it at once. Precondition: the child is traced by us and stopped.
   */
  static adoptForked(pidNumber: number, controlArea: RemoteAddress, timeoutMs = 10_000): RestoreTask {
    const task = RestoreTask.adopt(pidNumber, controlArea, timeoutMs);
    task.control = controlArea;
    return task;
  }

  /** Remote calls run from our own gadget (the task's code is going away), never from a search. */
  override findGadgets(): Gadgets {
    if (!this.ownGadget) throw new RestoreError('control-area', 'no syscall gadget set for the new task');
    return this.ownGadget;
  }

  get controlArea(): RemoteAddress {
    if (this.control === null) throw new RestoreError('control-area', 'control area not set up');
    return this.control;
  }

  /** Bytes of scratch space after the gadget. */
  get scratchSize(): number {
    return CONTROL_SIZE - SCRATCH_OFFSET;
  }

  /**
   * Maps the control area at `addr` (MAP_FIXED_NOREPLACE: it must be free), writes the gadget,
   * and switches remote calls to it.
   */
  setUpControlArea(addr: bigint): void {
    const got = this.syscallSync('mmap', addr, CONTROL_SIZE, PROT.READ | PROT.WRITE | PROT.EXEC, MAP.PRIVATE | MAP.ANONYMOUS | MAP.FIXED_NOREPLACE, -1, 0);
    if (got !== addr) throw new RestoreError('control-area', `mmap of the control area at 0x${addr.toString(16)} returned 0x${got.toString(16)}`);
    this.control = asRemoteAddress(addr);
    this.write(addr, Buffer.from([0x0f, 0x05, 0xcc]));
    this.ownGadget = { syscall: asRemoteAddress(addr), syscallRet: null, popRaxRet: null, popRdiRet: null, popRsiRet: null };
  }

  /** Writes `data` into the task's memory (process_vm_writev: the range must be writable). */
  write(addr: bigint, data: Uint8Array): void {
    let done = 0;
    for (let i = 0; done < data.byteLength && i < 100; i++) {
      const part = data.subarray(done);
      done += processVmWritev(this.pid, part, [{ addr: asRemoteAddress(addr + BigInt(done)), len: part.byteLength }]);
    }
    if (done !== data.byteLength) throw new RestoreError('control-area', `short write of ${data.byteLength} bytes at 0x${addr.toString(16)}`);
  }

  read(addr: bigint, len: number): Buffer {
    const buf = Buffer.alloc(len);
    const n = processVmReadv(this.pid, buf, [{ addr: asRemoteAddress(addr), len }]);
    return buf.subarray(0, n);
  }

  /**
   * Copies `parts` back to back into the scratch space (each 16-byte aligned) and returns
   * their remote addresses. Every call reuses the scratch space from its start.
   */
  scratchPut(...parts: Uint8Array[]): RemoteAddress[] {
    const base = this.controlArea + BigInt(SCRATCH_OFFSET);
    let off = 0;
    const addrs: RemoteAddress[] = [];
    const chunks: Uint8Array[] = [];
    for (const p of parts) {
      const pad = (16 - (off % 16)) % 16;
      if (pad) chunks.push(new Uint8Array(pad));
      off += pad;
      addrs.push(asRemoteAddress(base + BigInt(off)));
      chunks.push(p);
      off += p.byteLength;
    }
    if (off > this.scratchSize) throw new RangeError(`scratch overflow: ${off} > ${this.scratchSize}`);
    if (off > 0) this.write(base, Buffer.concat(chunks));
    return addrs;
  }

  /** A NUL-terminated path in the scratch space (at offset `at` of it, for calls that need two). */
  cString(s: string): Buffer {
    return Buffer.concat([Buffer.from(s, 'utf8'), Buffer.alloc(1)]);
  }

  /** The task's VMAs as /proc shows them. */
  currentMaps() {
    return readMaps(this.pid);
  }
}

/**
 * Picks a free spot for the control area: the lowest page-aligned range of CONTROL_SIZE bytes
 * at or above mmap_min_addr that overlaps neither `busy` range set (the stub's mappings and the
 * dumped VMAs). Ranges are [start, end).
 */
export function findControlAreaHole(busy: ReadonlyArray<{ start: bigint; end: bigint }>, minAddr: bigint, limit: bigint): bigint {
  const sorted = [...busy].sort((a, b) => (a.start < b.start ? -1 : a.start > b.start ? 1 : 0));
  const page = BigInt(PAGE_SIZE);
  let candidate = ((minAddr + page - 1n) / page) * page;
  // Leave a guard page below: nothing is adjacent to the area, so it never merges with a neighbour.
  const size = BigInt(CONTROL_SIZE);
  for (const r of sorted) {
    if (r.end <= candidate) continue;
    if (r.start >= candidate + size + page) break;
    candidate = ((r.end + page - 1n) / page) * page + page;
  }
  if (candidate + size > limit) throw new RestoreError('control-area', 'no free address range for the control area');
  return candidate;
}

// SysV shared memory attached in the dumped tree (shmget + shmat): ipcns-shm-<ipc ns id>.img,
// one ipc_shm_entry (ipc_desc_entry key, owner, creator, mode, id; size) per segment, followed by
// its contents; the attachments are VMA_AREA_SYSVIPC VMAs whose shmid is the segment id.
//
// criu-ts restores a tree into its own IPC namespace (it makes none), and the root IPC namespace
// belongs to the whole machine: where CRIU dumps an IPC namespace the tree owns whole, criu-ts
// dumps only the segments the tree's processes have attached, and restore makes each again with
// its id in the namespace it runs in (restore/sysv-shm.ts). So, refused naming the segment:
//   - a segment of another IPC namespace than criu-ts's (its ids mean nothing here);
//   - a segment attached outside the tree too (shm_nattch counts every attachment, the tree's
//     VMAs of it fewer): those processes would be left with a segment the restore does not share;
//   - an attachment that does not start at the segment's start or covers only part of it (an
//     munmap or mprotect of part of it), or one on huge pages.
// A segment the tree made but has no attachment of is not dumped (nothing in the tree refers to
// it by address; by id or key, yes, which criu-ts cannot see).
//
// Contents: criu-ts attaches each segment read-only and copies it. CRIU 4.x writes them to a
// shmem pagemap instead (in_pagemaps); but crit (3.17 and 4.2 alike) reads `size` bytes after
// every entry whatever in_pagemaps says, so a file with two such segments does not decode there.
// The inline form is the one both crit and CRIU's restore read.
import { readlinkSync } from 'node:fs';
import type { DecodedMessage } from '@criu-ts/images';
import { asRemoteAddress, getpid, processVmReadv, shmat, shmdt, shmStat, SHM, type ShmStat } from '@criu-ts/sys';
import type { ProcVma } from '../proc/smaps.js';

const PAGE = 4096n;
/** Largest segment criu-ts copies into an image (its contents go through one buffer). */
const SEGMENT_LIMIT = 1n << 30n;

export class SysvShmRefused extends Error {
  constructor(
    readonly id: number,
    reason: string,
  ) {
    super(`SysV shared memory segment id ${id}${reason}`);
    this.name = 'SysvShmRefused';
  }
}

interface Attachment {
  readonly pid: number;
  readonly vma: ProcVma;
}

export interface DumpedSegment {
  readonly id: number;
  /** ipc_shm_entry. */
  readonly entry: DecodedMessage;
  readonly contents: Buffer;
}

/** The segments attached in one dump's tree, met VMA by VMA, then checked and read at once. */
export class SysvShmDumper {
  private readonly attachments = new Map<number, Attachment[]>();
  private readonly ownIpcNs = readlinkSync('/proc/self/ns/ipc');

  /** A /SYSV<key> VMA of process `pid` (its inode is the segment id). */
  attach(pid: number, vma: ProcVma): void {
    const id = vma.inode;
    const where = ` (key 0x${vma.name.slice('/SYSV'.length)}) attached at 0x${vma.start.toString(16)}-0x${vma.end.toString(16)} in process ${pid}`;
    const ns = readlinkSync(`/proc/${pid}/ns/ipc`);
    if (ns !== this.ownIpcNs) throw new SysvShmRefused(id, `${where}: it is in IPC namespace ${ns}, not criu-ts's (${this.ownIpcNs}); segments of another IPC namespace are not supported`);
    if (vma.vmFlags.has('ht')) throw new SysvShmRefused(id, `${where}: a segment on huge pages (SHM_HUGETLB) is not supported`);
    if (vma.offset !== 0n) throw new SysvShmRefused(id, `${where}: the mapping starts at offset 0x${vma.offset.toString(16)} of the segment (part of the attachment was unmapped or protected apart), which restore cannot attach again`);
    let list = this.attachments.get(id);
    if (!list) this.attachments.set(id, (list = []));
    list.push({ pid, vma });
  }

  /** Every segment met, checked against what the kernel says of it, with its contents. */
  collect(): DumpedSegment[] {
    const out: DumpedSegment[] = [];
    for (const [id, list] of this.attachments) {
      const first = list[0]!;
      const where = ` (key 0x${first.vma.name.slice('/SYSV'.length)}) attached at 0x${first.vma.start.toString(16)} in process ${first.pid}`;
      let stat: ShmStat;
      try {
        stat = shmStat(id);
      } catch (error) {
        throw new SysvShmRefused(id, `${where}: IPC_STAT failed: ${(error as Error).message}`);
      }
      const details = `${where}, ${stat.size} bytes, mode ${(stat.mode & 0o777).toString(8)}${stat.mode & SHM.DEST ? ', marked for removal (IPC_RMID)' : ''}`;
      if (stat.nattch > list.length) {
        throw new SysvShmRefused(id, `${details}: ${stat.nattch} attachment(s), ${list.length} of them in the dumped tree; a segment shared with processes outside the tree is not supported`);
      }
      const span = (stat.size + PAGE - 1n) & ~(PAGE - 1n);
      for (const a of list) {
        if (a.vma.end - a.vma.start !== span) {
          throw new SysvShmRefused(id, `${details}: the attachment at 0x${a.vma.start.toString(16)} in process ${a.pid} covers 0x${(a.vma.end - a.vma.start).toString(16)} bytes of its 0x${span.toString(16)} (part of it was unmapped or protected apart), which restore cannot attach again`);
        }
      }
      if (stat.size > SEGMENT_LIMIT) throw new SysvShmRefused(id, `${details}: segments over ${SEGMENT_LIMIT} bytes are not supported`);
      out.push({
        id,
        entry: { desc: { key: stat.key >>> 0, uid: stat.uid, gid: stat.gid, cuid: stat.cuid, cgid: stat.cgid, mode: stat.mode, id }, size: stat.size },
        contents: readSegment(id, Number(stat.size)),
      });
    }
    return out;
  }
}

/** The contents of segment `id`: attached read-only in criu-ts for the copy (the tree is frozen: they cannot change meanwhile). */
function readSegment(id: number, size: number): Buffer {
  const contents = Buffer.alloc(size);
  if (size === 0) return contents;
  const addr = shmat(id, 0n, SHM.RDONLY);
  try {
    // process_vm_readv on ourselves: a plain copy from an address koffi gives no Buffer for.
    const n = processVmReadv(getpid(), contents, [{ addr: asRemoteAddress(addr), len: size }]);
    if (n !== size) throw new SysvShmRefused(id, `: ${n} of its ${size} bytes could be read`);
  } finally {
    shmdt(addr);
  }
  return contents;
}

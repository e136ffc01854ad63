// VMAs of a process as /proc/PID/smaps shows them (proc(5)): address range, permissions,
// offset, device, inode, path, and the VmFlags mnemonics that carry what maps hides (growsdown,
// dontdump, ...). smaps because CRIU's VMA flags and madvise bits need VmFlags; /proc/PID/maps
// (readMaps) when they can wait: smaps walks every page table entry to count Rss and Pss, 2-4 ms
// for 64 MiB of memory on this VM, where maps costs a few hundred microseconds.
import { readFileSync } from 'node:fs';

export interface ProcVma {
  readonly start: bigint;
  readonly end: bigint;
  readonly read: boolean;
  readonly write: boolean;
  readonly exec: boolean;
  readonly shared: boolean;
  readonly offset: bigint;
  /** Device as major:minor, from the maps line. */
  readonly major: number;
  readonly minor: number;
  readonly inode: number;
  /** Path or pseudo name ([heap], [stack], [vdso], [vvar], [vvar_vclock], [vsyscall]); '' for anonymous. */
  readonly name: string;
  /** " (deleted)" was appended by the kernel: the mapped file is unlinked. */
  readonly deleted: boolean;
  /** VmFlags mnemonics (rd wr ex sh mr mw me ms gd pf dw lo io sr rr dc de ac nr ht sf nl ar wf dd sd mm hg nh mg um uw ss sl ...). */
  readonly vmFlags: ReadonlySet<string>;
}

const HEADER = /^([0-9a-f]+)-([0-9a-f]+) ([r-])([w-])([x-])([ps]) ([0-9a-f]+) ([0-9a-f]+):([0-9a-f]+) (\d+)\s*(.*)$/;

export function parseSmaps(text: string): ProcVma[] {
  const vmas: ProcVma[] = [];
  let current: Omit<ProcVma, 'vmFlags'> & { vmFlags: Set<string> } | undefined;
  for (const line of text.split('\n')) {
    const m = HEADER.exec(line);
    if (m) {
      let name = m[11]!;
      const deleted = name.endsWith(' (deleted)');
      if (deleted) name = name.slice(0, -' (deleted)'.length);
      current = {
        start: BigInt('0x' + m[1]), end: BigInt('0x' + m[2]),
        read: m[3] === 'r', write: m[4] === 'w', exec: m[5] === 'x', shared: m[6] === 's',
        offset: BigInt('0x' + m[7]), major: parseInt(m[8]!, 16), minor: parseInt(m[9]!, 16), inode: Number(m[10]),
        name, deleted, vmFlags: new Set(),
      };
      vmas.push(current);
    } else if (current && line.startsWith('VmFlags:')) {
      for (const flag of line.slice(8).trim().split(/\s+/)) if (flag) current.vmFlags.add(flag);
    }
  }
  return vmas;
}

export function readSmaps(pid: number): ProcVma[] {
  return parseSmaps(readFileSync(`/proc/${pid}/smaps`, 'utf8'));
}

/** The same VMAs from /proc/PID/maps: every field but vmFlags, which is empty. */
export function readMaps(pid: number): ProcVma[] {
  return parseSmaps(readFileSync(`/proc/${pid}/maps`, 'utf8'));
}

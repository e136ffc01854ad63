// memfd files (memfd_create): an inode of the kernel's internal shmem mount, named "memfd:NAME",
// with contents and seals of its own. CRIU records each inode once in memfd.img (name, owner,
// mode, size, seals, and a shmid naming its contents) and each open file as a MEMFD file entry
// pointing at the inode; the contents are shmem pages: pagemap-shmem-<shmid>.img (offsets in the
// file) and a pages-N.img of their own. Only pages that hold data are saved (holes and pages of
// zeros are not).
import { closeSync, openSync, readSync, writeSync, type Stats } from 'node:fs';
import { close, fcntl, O, open } from '@criu-ts/sys';
import { PE_PRESENT, type DecodedMessage } from '@criu-ts/images';

const F_GET_SEALS = 1034;
const PAGE = 4096;
const CHUNK = 1 << 20;

/** The NAME of a /proc/PID/fd link `/memfd:NAME (deleted)`, or undefined for anything else. */
export function memfdName(link: string): string | undefined {
  const match = /^\/memfd:(.*) \(deleted\)$/.exec(link);
  return match ? match[1] : undefined;
}

/** memfd_inode_entry of the memfd behind `procFd` (a /proc/PID/fd/N path). */
export function memfdInodeEntry(procFd: string, name: string, stats: Stats, inodeId: number): DecodedMessage {
  const fd = open(procFd, O.RDONLY);
  let seals: number;
  try {
    seals = fcntl(fd, F_GET_SEALS);
  } finally {
    close(fd);
  }
  return { name, uid: stats.uid, gid: stats.gid, size: BigInt(stats.size), shmid: stats.ino, seals, inode_id: BigInt(inodeId), mode: stats.mode };
}

/**
 * Copies the pages of the memfd behind `procFd` that hold data into the pages file `pagesFd`
 * (appending), and returns the pagemap entries (offsets in the file) and the number of pages.
 */
export function writeMemfdPages(procFd: string, size: number, pagesFd: number): { entries: DecodedMessage[]; pages: number } {
  const source = openSync(procFd, 'r');
  const entries: DecodedMessage[] = [];
  let pages = 0;
  let run: { start: number; pages: number } | undefined;
  const flush = () => {
    if (run) entries.push({ vaddr: BigInt(run.start), compat_nr_pages: 0, flags: PE_PRESENT, nr_pages: BigInt(run.pages) });
    run = undefined;
  };
  try {
    const buffer = Buffer.alloc(CHUNK);
    for (let offset = 0; offset < size; offset += CHUNK) {
      const length = Math.min(CHUNK, size - offset);
      let got = 0;
      while (got < length) {
        const n = readSync(source, buffer, got, length - got, offset + got);
        if (n === 0) break;
        got += n;
      }
      buffer.fill(0, got, Math.ceil(length / PAGE) * PAGE);
      for (let p = 0; p * PAGE < length; p++) {
        const page = buffer.subarray(p * PAGE, (p + 1) * PAGE);
        const at = offset + p * PAGE;
        if (page.every((b) => b === 0)) {
          flush();
          continue;
        }
        writeSync(pagesFd, page);
        pages++;
        if (run && run.start + run.pages * PAGE === at) run.pages++;
        else {
          flush();
          run = { start: at, pages: 1 };
        }
      }
    }
    flush();
  } finally {
    closeSync(source);
  }
  return { entries, pages };
}

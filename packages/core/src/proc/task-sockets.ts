// Sockets of another process, through copies of its descriptors (pidfd_getfd).
import { readdirSync, readlinkSync } from 'node:fs';
import { asPid, close, pidfdGetfd, pidfdOpen, type Fd } from '@criu-ts/sys';

/**
 * Calls `use` with a copy (pidfd_getfd) of each socket descriptor of `pid` and its number there;
 * each copy is closed after its call unless `use` returns true (it keeps it, and closes it).
 */
export function withSocketsOf(pid: number, use: (fd: Fd, num: number) => boolean | void): void {
  const pidfd = pidfdOpen(asPid(pid));
  try {
    for (const name of readdirSync(`/proc/${pid}/fd`)) {
      let link: string;
      try {
        link = readlinkSync(`/proc/${pid}/fd/${name}`);
      } catch {
        continue; // closed meanwhile
      }
      if (!link.startsWith('socket:')) continue;
      const fd = pidfdGetfd(pidfd, Number(name));
      let kept = false;
      try {
        kept = use(fd, Number(name)) === true;
      } finally {
        if (!kept) close(fd);
      }
    }
  } finally {
    close(pidfd);
  }
}

// File handles (name_to_handle_at / the f_handle /proc shows for inotify and fanotify marks)
// turned back into paths: open_by_handle_at on the filesystem's mount point, then the path the
// kernel shows for the opened inode. Needs CAP_DAC_READ_SEARCH and the same mount namespace.
import { readFileSync, readlinkSync } from 'node:fs';
import { close, O, open, openByHandleAt, type Fd } from '@criu-ts/sys';

/** The mount point of the filesystem with kernel device number `sdev`, from /proc/self/mountinfo. */
function mountPointOf(sdev: number): string | undefined {
  const wanted = `${sdev >>> 20}:${sdev & 0xfffff}`;
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const fields = line.split(' ');
    if (fields[2] === wanted) return fields[4]!.replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
  }
  return undefined;
}

/**
 * The path of the inode a file handle names on the filesystem with kernel device number `sdev`
 * (as /proc/PID/fdinfo shows them for inotify and fanotify marks), or an error naming `what`.
 */
export function pathOfHandle(sdev: number, handleType: number, handle: Uint8Array, what: string): string {
  const mountPoint = mountPointOf(sdev);
  if (mountPoint === undefined) throw new Error(`${what} is on device ${sdev >>> 20}:${sdev & 0xfffff}, which is not mounted here`);
  let mountFd: Fd | undefined;
  let target: Fd | undefined;
  try {
    mountFd = open(mountPoint, O.RDONLY | O.DIRECTORY); // not O_PATH: open_by_handle_at refuses those (EBADF)
    target = openByHandleAt(mountFd, handleType, handle, O.PATH);
    const path = readlinkSync(`/proc/self/fd/${target}`);
    if (path.endsWith(' (deleted)')) throw new Error(`${what} is on a deleted file (${path}), which cannot be watched again`);
    return path;
  } finally {
    if (target !== undefined) close(target);
    if (mountFd !== undefined) close(mountFd);
  }
}


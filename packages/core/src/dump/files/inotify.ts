// inotify instances: every watch with its mask, its watch descriptor number and the file it
// watches. /proc/PID/fdinfo/N lists the watches with a file handle of each watched inode; the
// handle is turned into a path here (open_by_handle_at on the inode's filesystem, then the
// path the kernel shows for it), because restore adds watches by path. The handle is kept too,
// as CRIU keeps it (16 64-bit words, zero-padded).
import type { DecodedMessage } from '@criu-ts/images';
import { pathOfHandle } from '../../proc/file-handles.js';

const FH_WORDS = 16;

export interface InotifyWatchLine {
  readonly wd: number;
  readonly ino: bigint;
  /** The kernel's dev_t encoding (major << 20 | minor), as CRIU stores s_dev. */
  readonly sdev: number;
  readonly mask: number;
  readonly ignoredMask: number;
  readonly handleType: number;
  readonly handle: Buffer;
}

export function inotifyWatches(fdinfo: string): InotifyWatchLine[] {
  const line = /^inotify wd:([0-9a-f]+) ino:([0-9a-f]+) sdev:([0-9a-f]+) mask:([0-9a-f]+) ignored_mask:([0-9a-f]+) fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) f_handle:([0-9a-f]*)/gm;
  const watches: InotifyWatchLine[] = [];
  for (let m = line.exec(fdinfo); m; m = line.exec(fdinfo)) {
    const bytes = parseInt(m[6]!, 16);
    watches.push({
      wd: parseInt(m[1]!, 16), ino: BigInt('0x' + m[2]), sdev: parseInt(m[3]!, 16), mask: parseInt(m[4]!, 16),
      ignoredMask: parseInt(m[5]!, 16), handleType: parseInt(m[7]!, 16), handle: Buffer.from(m[8]!, 'hex').subarray(0, bytes),
    });
  }
  return watches;
}

/** The path of the inode a watch is on, or an error naming the watch. */
export function watchedPath(w: InotifyWatchLine, what: string): string {
  return pathOfHandle(w.sdev, w.handleType, w.handle, `${what}: watch ${w.wd}`);
}

export function inotifyEntry(fdinfo: string, flags: number, what: string): DecodedMessage {
  const wd = inotifyWatches(fdinfo).map((w) => {
    const words: bigint[] = [];
    const padded = Buffer.alloc(FH_WORDS * 8);
    w.handle.copy(padded);
    for (let i = 0; i < FH_WORDS; i++) words.push(padded.readBigUInt64LE(i * 8));
    return {
      id: 0, i_ino: w.ino, mask: w.mask, ignored_mask: w.ignoredMask, s_dev: w.sdev, wd: w.wd,
      f_handle: { bytes: w.handle.length, type: w.handleType, handle: words, path: watchedPath(w, what) },
    };
  });
  return { flags, wd };
}

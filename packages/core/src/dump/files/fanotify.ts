// fanotify groups: the group's flags (fanotify_init's flags and event_f_flags) and every mark
// with its masks, as /proc/PID/fdinfo/N lists them (Documentation/filesystems/proc.rst):
//
//   fanotify flags:F event-flags:E
//   fanotify ino:I sdev:D mflags:M mask:K ignored_mask:G fhandle-bytes:B fhandle-type:T f_handle:H   (inode mark)
//   fanotify mnt_id:N mflags:M mask:K ignored_mask:G                                                  (mount mark)
//   fanotify sdev:D mflags:M mask:K ignored_mask:G                                                    (filesystem mark)
//
// Inode marks name their inode by a file handle, turned into a path as for inotify (restore adds
// marks by path); mount marks by mount id, turned into the mount point from the task's
// mountinfo. CRIU records both (fanotify_mark_entry ie / me, path included).
//
// Not supported, refused before the freeze (findUnsupportedFanotify) or while reading:
//   - filesystem marks (FAN_MARK_FILESYSTEM) and any mark kind this parser does not know
//     (mount-namespace marks): CRIU has no record for them;
//   - permission events (FAN_*_PERM, FAN_PRE_ACCESS): while the group's task is frozen, every
//     access it would have to answer blocks, criu-ts's own reads of /proc and writes of images
//     among them; and a pending permission request cannot be handed to the restored task.
// Events queued at dump time are not kept (neither does CRIU): the queue starts empty.
import { readFileSync } from 'node:fs';
import type { DecodedMessage } from '@criu-ts/images';
import { pathOfHandle } from '../../proc/file-handles.js';

const FH_WORDS = 16;
/** Permission and pre-content event bits (uapi/linux/fanotify.h): FAN_OPEN_PERM, FAN_ACCESS_PERM, FAN_OPEN_EXEC_PERM, FAN_PRE_ACCESS. */
const PERMISSION_EVENTS = 0x00010000 | 0x00020000 | 0x00040000 | 0x00100000;
/** mark_type (fsnotify.proto). */
const MARK_TYPE = { INODE: 1, MOUNT: 2 } as const;

export interface FanotifyMarkLine {
  readonly kind: 'inode' | 'mount' | 'other';
  readonly line: string;
  readonly mflags: number;
  readonly mask: number;
  readonly ignoredMask: number;
  readonly ino?: bigint;
  readonly sdev?: number;
  readonly handleType?: number;
  readonly handle?: Buffer;
  readonly mntId?: number;
}

export interface FanotifyGroup {
  readonly flags: number;
  readonly eventFlags: number;
  readonly marks: FanotifyMarkLine[];
}

const hex = (s: string): number => parseInt(s, 16);

/** The group and its marks from fdinfo text, in the order the kernel lists them. */
export function parseFanotifyFdinfo(fdinfo: string, what: string): FanotifyGroup {
  const head = /^fanotify flags:([0-9a-f]+) event-flags:([0-9a-f]+)/m.exec(fdinfo);
  if (!head) throw new Error(`${what}: fdinfo has no "fanotify flags:" line (kernel without CONFIG_PROC_FS fdinfo for fanotify?)`);
  const marks: FanotifyMarkLine[] = [];
  for (const line of fdinfo.split('\n')) {
    if (!line.startsWith('fanotify ') || line.startsWith('fanotify flags:')) continue;
    const common = /mflags:([0-9a-f]+) mask:([0-9a-f]+) ignored_mask:([0-9a-f]+)/.exec(line);
    if (!common) {
      marks.push({ kind: 'other', line, mflags: 0, mask: 0, ignoredMask: 0 });
      continue;
    }
    const base = { line, mflags: hex(common[1]!), mask: hex(common[2]!), ignoredMask: hex(common[3]!) };
    const inode = /^fanotify ino:([0-9a-f]+) sdev:([0-9a-f]+) .* fhandle-bytes:([0-9a-f]+) fhandle-type:([0-9a-f]+) f_handle:([0-9a-f]*)/.exec(line);
    const mount = /^fanotify mnt_id:([0-9a-f]+) /.exec(line);
    if (inode) {
      marks.push({
        ...base, kind: 'inode', ino: BigInt('0x' + inode[1]), sdev: hex(inode[2]!), handleType: hex(inode[4]!),
        handle: Buffer.from(inode[5]!, 'hex').subarray(0, hex(inode[3]!)),
      });
    } else if (mount) {
      marks.push({ ...base, kind: 'mount', mntId: hex(mount[1]!) });
    } else {
      marks.push({ ...base, kind: 'other' });
    }
  }
  return { flags: hex(head[1]!), eventFlags: hex(head[2]!), marks };
}

/** Why this group cannot be dumped, or undefined. Needs only the fdinfo text: checked before the freeze. */
export function fanotifyRefusal(group: FanotifyGroup): string | undefined {
  for (const m of group.marks) {
    if (m.kind === 'other') {
      return `its mark "${m.line}" is of a kind CRIU images cannot hold (only inode and mount marks; filesystem and mount-namespace marks are not)`;
    }
    if ((m.mask | m.ignoredMask) & PERMISSION_EVENTS) {
      return `its ${m.kind} mark asks for permission events (mask 0x${m.mask.toString(16)}): every access it covers would wait for the frozen task, criu-ts's own among them`;
    }
  }
  return undefined;
}

/** The mount point and device (kernel encoding, major << 20 | minor) of mount `mntId` in `pid`'s mount namespace. */
function mountOf(pid: number, mntId: number, what: string): { path: string; sdev: number } {
  for (const line of readFileSync(`/proc/${pid}/mountinfo`, 'utf8').split('\n')) {
    const fields = line.split(' ');
    if (Number(fields[0]) !== mntId) continue;
    const [major, minor] = fields[2]!.split(':').map(Number);
    const path = fields[4]!.replace(/\\(\d{3})/g, (_m, o: string) => String.fromCharCode(parseInt(o, 8)));
    return { path, sdev: ((major! << 20) | minor!) >>> 0 };
  }
  throw new Error(`${what}: mount ${mntId} of its mount mark is not in /proc/${pid}/mountinfo`);
}

/** fanotify_file_entry (without id and fown, which the file table adds) of the group behind fd `what`. */
export function fanotifyEntry(pid: number, fdinfo: string, flags: number, what: string): DecodedMessage {
  const group = parseFanotifyFdinfo(fdinfo, what);
  const refusal = fanotifyRefusal(group);
  if (refusal) throw new Error(`${what}: fanotify group cannot be dumped: ${refusal}`);
  const mark = group.marks.map((m): DecodedMessage => {
    const common = { id: 0, mflags: m.mflags, mask: m.mask, ignored_mask: m.ignoredMask };
    if (m.kind === 'mount') {
      const mount = mountOf(pid, m.mntId!, what);
      return { ...common, type: MARK_TYPE.MOUNT, s_dev: mount.sdev, me: { mnt_id: m.mntId!, path: mount.path } };
    }
    const words: bigint[] = [];
    const padded = Buffer.alloc(FH_WORDS * 8);
    m.handle!.copy(padded);
    for (let i = 0; i < FH_WORDS; i++) words.push(padded.readBigUInt64LE(i * 8));
    const path = pathOfHandle(m.sdev!, m.handleType!, m.handle!, `${what}: fanotify inode mark on inode ${m.ino}`);
    return {
      ...common, type: MARK_TYPE.INODE, s_dev: m.sdev!,
      ie: { i_ino: m.ino!, f_handle: { bytes: m.handle!.length, type: m.handleType!, handle: words, path } },
    };
  });
  return { flags, faflags: group.flags, evflags: group.eventFlags, mark };
}

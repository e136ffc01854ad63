// fanotify groups back from file_entry.ffy: fanotify_init with the dumped flags in the task, then
// every mark added again by path (fanotify_mark(2)): the event mask with FAN_MARK_ADD, the
// ignore mask with a second FAN_MARK_ADD and FAN_MARK_IGNORED_MASK (or FAN_MARK_IGNORE when the
// mark was made with it, which fdinfo's mflags show), FAN_MARK_IGNORED_SURV_MODIFY and
// FAN_MARK_EVICTABLE as the mark had them. Inode marks name their inode by path (or by file
// handle, for images that keep no path, as for inotify); mount marks by the mount point path
// CRIU records beside the mount id.
import { close, F, fcntl, isSysError, O, read, asFd, type Fd } from '@criu-ts/sys';
import { pathOfHandle } from '../proc/file-handles.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Invalid = (message: string, evidence?: Record<string, unknown>) => never;

/** fanotify_mark(2) flags (uapi/linux/fanotify.h). */
export const FAN_MARK = {
  ADD: 0x1, DONT_FOLLOW: 0x4, MOUNT: 0x10, IGNORED_MASK: 0x20, IGNORED_SURV_MODIFY: 0x40, FILESYSTEM: 0x100, EVICTABLE: 0x200, IGNORE: 0x400,
} as const;
/** Permission event bits, never restored (dump refuses them: dump/files/fanotify.ts). */
const PERMISSION_EVENTS = 0x00010000 | 0x00020000 | 0x00040000 | 0x00100000;
const MARK_FLAGS_KNOWN = FAN_MARK.IGNORED_SURV_MODIFY | FAN_MARK.EVICTABLE | FAN_MARK.IGNORE;

export interface FanotifyMark {
  readonly type: 'inode' | 'mount';
  readonly path: string;
  readonly mflags: number;
  readonly mask: number;
  readonly ignoredMask: number;
}

export interface FanotifyImage {
  readonly kind: 'fanotify';
  readonly id: number;
  /** The group file's open flags (O_RDWR, O_NONBLOCK...). */
  readonly flags: number;
  /** fanotify_init's flags and event_f_flags. */
  readonly initFlags: number;
  readonly eventFlags: number;
  readonly marks: readonly FanotifyMark[];
}

/** file_entry.ffy, checked. */
export function readFanotify(id: number, e: Msg, where: string, invalid: Invalid): FanotifyImage {
  const marks = ((e.mark as Msg[] | undefined) ?? []).map((m, i): FanotifyMark => {
    const at = `${where}: fanotify mark ${i}`;
    const mask = Number(m.mask) >>> 0;
    const ignoredMask = Number(m.ignored_mask) >>> 0;
    const mflags = Number(m.mflags) >>> 0;
    if ((mask | ignoredMask) & PERMISSION_EVENTS) invalid(`${at}: permission events (mask 0x${mask.toString(16)}) are not restored`, { mask });
    if (mask === 0 && ignoredMask === 0) invalid(`${at}: neither an event nor an ignore mask: no fanotify_mark call can make it`);
    if (mflags & ~MARK_FLAGS_KNOWN) invalid(`${at}: mark flags 0x${mflags.toString(16)} are not ones fdinfo reports`, { mflags });
    if (Number(m.type) === 2) {
      const path = (m.me as Msg | undefined)?.path as string | undefined;
      if (!path) invalid(`${at}: mount mark (mount ${(m.me as Msg | undefined)?.mnt_id}) without a path; criu-ts needs the mount point's path`);
      return { type: 'mount', path: path!, mflags, mask, ignoredMask };
    }
    if (Number(m.type) !== 1 || !m.ie) invalid(`${at}: mark type ${m.type} is neither an inode (1) nor a mount (2) mark`, { type: m.type });
    const fh = (m.ie as Msg).f_handle as Msg;
    let path = fh.path as string | undefined;
    if (path === undefined) {
      const words = (fh.handle as bigint[]).map((v) => BigInt(v));
      const bytes = Buffer.alloc(words.length * 8);
      words.forEach((v, k) => bytes.writeBigUInt64LE(BigInt.asUintN(64, v), k * 8));
      try {
        path = pathOfHandle(Number(m.s_dev), Number(fh.type), bytes.subarray(0, Number(fh.bytes)), at);
      } catch (err) {
        invalid(`${at}: ${(err as Error).message}`);
      }
    }
    return { type: 'inode', path: path!, mflags, mask, ignoredMask };
  });
  return { kind: 'fanotify', id, flags: Number(e.flags), initFlags: Number(e.faflags) >>> 0, eventFlags: Number(e.evflags) >>> 0, marks };
}

/**
 * The fanotify_mark calls that give a new group `marks`, in order: [flags, mask, path]. The
 * kernel lists the newest mark first; they are added oldest first so that a second dump lists
 * them in the same order.
 */
export function fanotifyMarkCalls(marks: readonly FanotifyMark[]): Array<{ flags: number; mask: number; path: string }> {
  const calls: Array<{ flags: number; mask: number; path: string }> = [];
  for (const m of [...marks].reverse()) {
    const target = m.type === 'mount' ? FAN_MARK.MOUNT : FAN_MARK.DONT_FOLLOW;
    const kept = m.mflags & FAN_MARK.EVICTABLE;
    if (m.mask !== 0) calls.push({ flags: FAN_MARK.ADD | target | kept, mask: m.mask, path: m.path });
    if (m.ignoredMask !== 0) {
      const ignore = m.mflags & FAN_MARK.IGNORE ? FAN_MARK.IGNORE : FAN_MARK.IGNORED_MASK;
      calls.push({ flags: FAN_MARK.ADD | target | kept | ignore | (m.mflags & FAN_MARK.IGNORED_SURV_MODIFY), mask: m.ignoredMask, path: m.path });
    }
  }
  return calls;
}

/**
 * Empties the event queue of a restored group (`group`: criu-ts's duplicate of the task's fd,
 * the same open file). Between its marks and the release, criu-ts itself opens and reads files
 * (images, /proc): a mount mark on a busy mount queues events for those, which the task never
 * had. Events are read and their event fds closed (they are opened with FMODE_NONOTIFY: reading
 * makes no new event). Run last before the release, when criu-ts touches no more files.
 */
export function drainFanotifyGroup(group: Fd): number {
  const flags = fcntl(group, F.GETFL);
  if (!(flags & O.NONBLOCK)) fcntl(group, F.SETFL, flags | O.NONBLOCK);
  let events = 0;
  try {
    const buf = Buffer.alloc(16384);
    for (;;) {
      let n: number;
      try {
        n = read(group, buf);
      } catch (error) {
        if (isSysError(error, 'EAGAIN')) break;
        throw error;
      }
      if (n <= 0) break;
      // struct fanotify_event_metadata: u32 event_len, u8 vers, u8 reserved, u16 metadata_len, u64 mask, s32 fd, s32 pid.
      for (let off = 0; off + 24 <= n; ) {
        const len = buf.readUInt32LE(off);
        const fd = buf.readInt32LE(off + 16);
        if (fd >= 0) close(asFd(fd));
        events++;
        if (len < 24) break;
        off += len;
      }
    }
  } finally {
    if (!(flags & O.NONBLOCK)) fcntl(group, F.SETFL, flags);
  }
  return events;
}

// SysV shared memory segments on restore (ipcns-shm-<ipc ns id>.img; see dump/sysv-shm.ts for
// what is dumped and why only segments attached in the tree).
//
// The tree is restored into criu-ts's IPC namespace. Each segment is made again by criu-ts with
// its dumped id: shm_next_id (proc(5)) makes the next shmget of the namespace take that id, if
// its index is free (otherwise the kernel takes the next free index: the segment is removed and
// the restore fails). Key, size, creator (shmget under the dumped creator's effective ids, which
// are what the kernel records as cuid/cgid), owner and mode (IPC_SET) and contents (criu-ts
// attaches it and copies them in) are the dumped ones. Every process then attaches it at its
// dumped address with a remote shmat(SHM_REMAP); a segment dumped marked for removal (SHM_DEST)
// gets IPC_RMID once every attachment is in place, so it goes with its last one, as it would have.
//
// The id must be free when the restore starts, checked before anything is made; except that a
// segment with that id, the same key and size and no attachment is taken over (its contents
// replaced): the one the dumped tree left behind when it was killed without IPC_RMID, which
// nothing attached since (a segment that outlives its processes is what SysV shared memory is for).
import { asRemoteAddress, getpid, IPC, isSysError, processVmWritev, setShmNextId, shmNextId, shmat, shmdt, shmget, SHM, shmRemove, shmSetOwner, shmStat, type ShmStat } from '@criu-ts/sys';
import { RestoreError } from './errors.js';
import type { ImageSet, SysvSegmentImage } from './image-set.js';

const describe = (s: SysvSegmentImage): string => `SysV shared memory segment id ${s.id} (key 0x${(s.key >>> 0).toString(16)}, ${s.size} bytes)`;

function statOf(id: number): ShmStat | undefined {
  try {
    return shmStat(id);
  } catch (error) {
    if (isSysError(error, 'EINVAL') || isSysError(error, 'EIDRM')) return undefined;
    throw error;
  }
}

/** The segments of one restore: checked, made, released or removed. */
export class SysvSegments {
  /** Segments criu-ts made (removed again if the restore fails). */
  private readonly made: number[] = [];

  private constructor(readonly segments: readonly SysvSegmentImage[]) {}

  /** Every segment some process of `sets` attaches, once each. */
  static plan(sets: readonly ImageSet[]): SysvSegments {
    const byId = new Map<number, SysvSegmentImage>();
    for (const set of sets) for (const v of set.vmas) if (v.sysv) byId.set(v.sysv.id, v.sysv);
    return new SysvSegments([...byId.values()]);
  }

  /** Before anything is made: each id free, or a segment left behind that can be taken over. */
  check(): void {
    for (const s of this.segments) this.existing(s);
  }

  /** The segment now holding `s`'s id when it can be taken over; throws when another holds it. */
  private existing(s: SysvSegmentImage): ShmStat | undefined {
    const now = statOf(s.id);
    if (!now) return undefined;
    if (now.key === s.key && s.key !== IPC.PRIVATE && now.size === s.size && now.nattch === 0 && !(now.mode & SHM.DEST)) return now;
    throw new RestoreError('validate', `${describe(s)}: the id is taken by a segment with key 0x${(now.key >>> 0).toString(16)}, ${now.size} bytes, ${now.nattch} attachment(s); remove it (ipcrm -m ${s.id}) to restore`, { id: s.id });
  }

  /** Makes (or takes over) every segment with its id, owner, mode and contents. */
  create(): void {
    for (const s of this.segments) {
      if (!this.existing(s)) this.make(s);
      try {
        shmSetOwner(s.id, s.uid, s.gid, s.mode);
        fill(s);
      } catch (error) {
        throw new RestoreError('map-vmas', `${describe(s)}: setting its owner and contents failed`, { id: s.id }, error);
      }
    }
  }

  private make(s: SysvSegmentImage): void {
    let got: number;
    try {
      setShmNextId(s.id);
      got = asCreator(s.cuid, s.cgid, () => shmget(s.key, s.size, IPC.CREAT | IPC.EXCL | (s.mode & 0o777)));
    } catch (error) {
      consumeNextId();
      throw new RestoreError('map-vmas', `${describe(s)}: shmget failed${isSysError(error, 'EEXIST') ? ' (another segment has its key)' : ''}`, { id: s.id }, error);
    }
    if (got !== s.id) {
      shmRemove(got);
      throw new RestoreError('map-vmas', `${describe(s)}: the kernel gave id ${got} (the id's index is taken by another segment)`, { id: s.id, got });
    }
    this.made.push(got);
  }

  /** Once every process has attached its segments: those dumped marked for removal are marked again. */
  release(): void {
    for (const s of this.segments) if (s.mode & SHM.DEST) shmRemove(s.id);
  }

  /** After a failure: the segments criu-ts made go (with the killed processes' attachments). */
  abandon(): void {
    for (const id of this.made.splice(0)) {
      try {
        shmRemove(id);
      } catch {
        /* gone already */
      }
    }
  }
}

/**
 * A shm_next_id left set (shmget failed before making a segment) would give the next segment
 * anyone makes in the namespace our id. The kernel refuses -1 from a write, so a throwaway
 * segment takes it.
 */
function consumeNextId(): void {
  try {
    if (shmNextId() < 0) return;
    shmRemove(shmget(IPC.PRIVATE, 1, IPC.CREAT | 0o600));
  } catch {
    /* nothing better to do: the restore fails anyway */
  }
}

/**
 * Runs `make` with criu-ts's effective ids set to the segment's creator's: shmget records the
 * caller's euid/egid as cuid/cgid, which IPC_SET cannot change. Effective ids only (the real
 * and saved ones stay 0), so setting them back gives root's capabilities back.
 */
function asCreator<T>(cuid: number, cgid: number, make: () => T): T {
  if (cuid === 0 && cgid === 0) return make();
  process.setegid!(cgid);
  try {
    process.seteuid!(cuid);
    try {
      return make();
    } finally {
      process.seteuid!(0);
    }
  } finally {
    process.setegid!(0);
  }
}

/** Copies the dumped contents in: criu-ts attaches the segment for the copy. */
function fill(s: SysvSegmentImage): void {
  if (s.contents.byteLength === 0) return;
  const addr = shmat(s.id, 0n, 0);
  try {
    const n = processVmWritev(getpid(), s.contents, [{ addr: asRemoteAddress(addr), len: s.contents.byteLength }]);
    if (n !== s.contents.byteLength) throw new Error(`${n} of ${s.contents.byteLength} bytes copied in`);
  } finally {
    shmdt(addr);
  }
}

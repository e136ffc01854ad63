// The owner of an open file description (fcntl F_SETOWN/F_SETOWN_EX: who gets SIGIO/SIGURG) and
// the signal it sends (F_SETSIG), as CRIU's fown_entry records them. They belong to the open file
// description, so criu-ts reads them on a duplicate of the task's fd (pidfd_getfd: the same
// description) instead of running anything in the task.
import { close, fcntl, isSysError, pidfdGetfd, pidfdOpen, asPid, type Fd } from '@criu-ts/sys';
import type { DecodedMessage } from '@criu-ts/images';

const F_GETSIG = 11;
const F_GETOWN_EX = 16;
const F_GETOWNER_UIDS = 17;

export const noOwner = (): DecodedMessage => ({ uid: 0, euid: 0, signum: 0, pid_type: 0, pid: 0 });

/** fown of fd `fd` of task `pid`. */
export function ownerOf(pid: number, fd: number): DecodedMessage {
  const pidfd = pidfdOpen(asPid(pid));
  let ours: Fd | undefined;
  try {
    ours = pidfdGetfd(pidfd, fd);
    // struct f_owner_ex { int type; pid_t pid; } and two uid_t: filled by the kernel.
    const ownerEx = Buffer.alloc(8);
    try {
      fcntl(ours, F_GETOWN_EX, ownerEx);
    } catch (error) {
      // An O_PATH fd has no owner to ask about (fcntl answers EBADF): it cannot have one.
      if (isSysError(error, 'EBADF')) return noOwner();
      throw error;
    }
    const signum = fcntl(ours, F_GETSIG);
    const owner = { type: ownerEx.readInt32LE(0), pid: ownerEx.readInt32LE(4) };
    if (owner.pid === 0 && signum === 0) return noOwner();
    const uids = Buffer.alloc(8);
    try {
      fcntl(ours, F_GETOWNER_UIDS, uids);
    } catch {
      /* kernels without CONFIG_CHECKPOINT_RESTORE: the owner's uids stay 0 */
    }
    return { uid: uids.readUInt32LE(0), euid: uids.readUInt32LE(4), signum, pid_type: owner.type, pid: owner.pid };
  } finally {
    if (ours !== undefined) close(ours);
    close(pidfd);
  }
}

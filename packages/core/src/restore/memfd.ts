// memfd inodes of a restore (memfd.img), made once each and shared by everything that uses one.
//
// A memfd can be mapped (VMA_AREA_MEMFD) and open as fds, in one process or in several of the
// tree, and all of them must see one inode (a write through the mapping is read through the fd).
// Memory is restored before fds, and a parent before its children, so no one task can own the
// inode: criu-ts makes it in its own process (memfd_create, then size, contents, mode and
// owner), and each task opens /proc/<criu-ts>/fd/N. Opening that link reopens the very inode
// (a new open file description, with the flags asked for), as opening /proc/self/fd/N of a
// memfd does. The memfd's name is the dumped one; /proc shows "/memfd:NAME (deleted)" as before.
//
// Seals come last (sealAll), once every task mapped and opened what it needs: F_SEAL_WRITE and
// F_SEAL_FUTURE_WRITE forbid new writable shared mappings, which the dumped task may have made
// before sealing (CRIU, too, applies memfd seals at the end of restore).
import { closeSync, fchmodSync, fchownSync, openSync, readSync, writeSync } from 'node:fs';
import { close, fcntl, ftruncate, memfdCreate, MFD, type Fd } from '@criu-ts/sys';
import { RestoreError } from './errors.js';
import type { MemfdInode } from './fd-images.js';

const F_ADD_SEALS = 1033;
const F_SEAL_SEAL = 1;

export class MemfdInodes {
  private readonly made = new Map<number, { fd: Fd; inode: MemfdInode }>();

  /** A path any task of the restore opens to get `inode` (made on first use). */
  pathOf(inode: MemfdInode, what: string): string {
    return `/proc/${process.pid}/fd/${this.fdOf(inode, what)}`;
  }

  private fdOf(inode: MemfdInode, what: string): Fd {
    const known = this.made.get(inode.inodeId);
    if (known) return known.fd;
    // A memfd whose only seal is F_SEAL_SEAL was made without MFD_ALLOW_SEALING.
    const sealable = inode.seals !== F_SEAL_SEAL;
    let fd: Fd;
    try {
      fd = memfdCreate(inode.name, MFD.CLOEXEC | (sealable ? MFD.ALLOW_SEALING : 0));
    } catch (err) {
      throw new RestoreError('files', `memfd_create ${inode.name} (memfd.img inode ${inode.inodeId}) for ${what}`, { inodeId: inode.inodeId }, err);
    }
    this.made.set(inode.inodeId, { fd, inode });
    try {
      ftruncate(fd, inode.size);
      if (inode.pagesFile && inode.runs.length > 0) {
        const pages = openSync(inode.pagesFile, 'r');
        try {
          for (const [offset, at, length] of inode.runs) {
            const bytes = Buffer.alloc(length);
            readSync(pages, bytes, 0, length, at);
            writeSync(fd, bytes, 0, Math.min(length, inode.size - offset), offset);
          }
        } finally {
          closeSync(pages);
        }
      }
      fchmodSync(fd, inode.mode & 0o7777);
      fchownSync(fd, inode.uid, inode.gid);
    } catch (err) {
      throw new RestoreError('files', `filling memfd ${inode.name} (memfd.img inode ${inode.inodeId}) for ${what}`, { inodeId: inode.inodeId, pagesFile: inode.pagesFile }, err);
    }
    return fd;
  }

  /** The dumped seals of every memfd made. Call once every task holds its memfds. */
  sealAll(): void {
    for (const { fd, inode } of this.made.values()) {
      if (inode.seals === F_SEAL_SEAL || inode.seals === 0) continue;
      try {
        fcntl(fd, F_ADD_SEALS, inode.seals & ~F_SEAL_SEAL);
        if (inode.seals & F_SEAL_SEAL) fcntl(fd, F_ADD_SEALS, F_SEAL_SEAL);
      } catch (err) {
        throw new RestoreError('files', `sealing memfd ${inode.name} (seals 0x${inode.seals.toString(16)})`, { inodeId: inode.inodeId }, err);
      }
    }
  }

  /** Closes criu-ts's own fds of the memfds (the tasks keep theirs). */
  closeAll(): void {
    for (const { fd } of this.made.values()) {
      try { close(fd); } catch { /* closed already */ }
    }
    this.made.clear();
  }
}

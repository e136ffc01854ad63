// The directory a dump writes into. Images are created 0600 (they decide what a restore runs);
// a directory we create is 0700. Every file written is tracked, so a failed dump removes exactly
// what it wrote and nothing else. inventory.img is written last by the dump: a directory
// without it never looks like a complete dump.
import { closeSync, existsSync, fsyncSync, mkdirSync, openSync, rmSync, rmdirSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { asFd, linkat, syncFileRange, SYNC_FILE_RANGE, type Fd } from '@criu-ts/sys';
import { ImageWriter, kindForFileName, type DecodedMessage, type EntryPayload } from '@criu-ts/images';

/** Files synced per batch by syncWritten (each batch holds that many descriptors). */
const SYNC_BATCH = 256;

export class ImageDir {
  private readonly written: string[] = [];
  /** How many of `written` (from the start) syncWritten has synced. */
  private syncedCount = 0;
  private readonly createdDir: boolean;

  constructor(readonly path: string) {
    this.createdDir = !existsSync(path);
    // Only the last component, as criu expects its parent to exist (and Node's recursive mkdir
    // spins forever where mkdir answers ENOENT for an existing parent, as in /proc).
    if (this.createdDir) mkdirSync(path, { mode: 0o700 });
    else if (!statSync(path).isDirectory()) throw new Error(`${path} is not a directory`);
    // Fail now, not after the task is frozen, when the directory is not writable.
    const probe = join(path, `.criu-ts-probe-${process.pid}`);
    closeSync(openSync(probe, 'w', 0o600));
    rmSync(probe);
  }

  file(name: string): string {
    return join(this.path, name);
  }

  /** Writes an image of the kind its name says, entry by entry. */
  writeImage(name: string, entries: Iterable<DecodedMessage | { message: DecodedMessage; payload: EntryPayload }>): void {
    const kind = kindForFileName(name);
    if (!kind) throw new Error(`no image kind is named like ${name}`);
    this.track(name);
    const writer = ImageWriter.create(this.file(name), kind);
    try {
      for (const entry of entries) {
        if ('message' in entry && 'payload' in entry) writer.append(entry.message as DecodedMessage, entry.payload as EntryPayload);
        else writer.append(entry as DecodedMessage);
      }
    } finally {
      // Not synced here: syncWritten() does all files at once, when the task no longer waits.
      writer.finish();
    }
  }

  /**
   * fsync of every file written since the last call (images and raw pages). The writeback of
   * all of them is started first, so the disk takes them in one batch: then the first fsync's
   * journal commit carries every file's new blocks, and the others find little left to do. One
   * fsync after another instead cost each small image a commit of its own (13 images: ~8 ms).
   */
  syncWritten(): void {
    const names = this.written.slice(this.syncedCount);
    // In batches, so that a tree of many processes does not hold too many descriptors at once.
    for (let at = 0; at < names.length; at += SYNC_BATCH) {
      const fds: number[] = [];
      try {
        for (const name of names.slice(at, at + SYNC_BATCH)) {
          const fd = openSync(this.file(name), 'r');
          fds.push(fd);
          try {
            syncFileRange(asFd(fd), 0, 0, SYNC_FILE_RANGE.WRITE);
          } catch { /* only a head start: the fsync below is what counts */ }
        }
        for (const fd of fds) fsyncSync(fd);
      } finally {
        for (const fd of fds) closeSync(fd);
      }
    }
    this.syncedCount = this.written.length;
  }

  /** Opens a raw file (pages) for writing, tracked like images. */
  openRaw(name: string): number {
    this.track(name);
    return openSync(this.file(name), 'w', 0o600);
  }

  /**
   * Names `fd`, an unnamed file opened in this directory with O_TMPFILE, as `name` (replacing a
   * file of that name, as openRaw would truncate it), tracked like images.
   */
  linkUnnamed(fd: Fd, name: string): void {
    this.track(name);
    rmSync(this.file(name), { force: true });
    linkat(`/proc/self/fd/${fd}`, this.file(name));
  }

  private track(name: string): void {
    const at = this.written.indexOf(name);
    if (at >= 0 && at >= this.syncedCount) return;
    if (at >= 0) {
      // Written again after it was synced: to be synced again.
      this.written.splice(at, 1);
      this.syncedCount--;
    }
    this.written.push(name);
  }

  /** fsync of the directory: the new names are durable before the task is killed. */
  syncDirectory(): void {
    const fd = openSync(this.path, 'r');
    try {
      fsyncSync(fd);
    } finally {
      closeSync(fd);
    }
  }

  /** Removes what this dump wrote (and the directory, if the dump created it). */
  removeWritten(): void {
    for (const name of this.written.reverse()) rmSync(this.file(name), { force: true });
    if (this.createdDir) {
      // Only if empty: a log file the user asked for stays, with the reason of the failure.
      try {
        rmdirSync(this.path);
      } catch {
        /* not empty: keep it */
      }
    }
  }
}

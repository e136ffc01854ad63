// Files that were deleted while open (ghost files).
//
// The dump kept their contents (ghost-file-N.img). To give the task an open file description
// of an unlinked file again, criu-ts recreates the file under a temporary name next to the
// original path (same directory, so the same filesystem as the dumped one), lets the task open
// (or mmap) it by that name, and unlinks it once every fd and mapping holds it: the task then has
// what it had, a deleted file with the dumped contents. The temporary names are removed on
// failure too; and since a restore killed outright (SIGKILL) removes nothing, every name made is
// written first to a journal of this restore (journalDir(), on tmpfs), which the next restore
// reads: names made by a restore that is gone, still holding the same inode, are removed then
// (removeStaleGhostFiles). A file whose directory was removed after it (rmdir of its emptied parents) gets
// those directories back for as long as it takes, with the dumped file's owner; they go again
// with the temporary name, deepest first, when nothing else was put in them meanwhile.
//
// A file the dump gave a hard link to (--link-remap: link_remap.N beside it, remap type LINKED)
// is the very file, not a copy: the task opens it through the link, and the link is removed once
// every fd and mapping holds the file (done()). On failure the link stays: it is the file's only
// name, and the next restore of these images needs it.
import {
  appendFileSync, chmodSync, chownSync, closeSync, existsSync, ftruncateSync, lstatSync, mkdirSync, openSync, readdirSync, readFileSync, rmdirSync, unlinkSync, writeSync,
} from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, dirname, join } from 'node:path';
import { RestoreError } from './errors.js';
import type { GhostFile, ImageSet, RegFile } from './image-set.js';

/** Where restores journal the names they make: /run (tmpfs, gone at reboot like the need), else the temp dir. */
export function journalDir(): string {
  for (const dir of ['/run/criu-ts/ghost-journal', join(tmpdir(), 'criu-ts-ghost-journal')]) {
    try {
      mkdirSync(dir, { recursive: true, mode: 0o700 });
      return dir;
    } catch {
      /* not writable: the next one */
    }
  }
  return join(tmpdir(), 'criu-ts-ghost-journal');
}

/**
 * Removes the ghost files and directories that restores killed before their cleanup left: for
 * each journal whose restore process is gone, every name it lists that still holds the inode it
 * made (so nothing made since by anyone else), files then directories, deepest first. Returns the
 * names removed.
 */
export function removeStaleGhostFiles(dir = journalDir()): string[] {
  const removed: string[] = [];
  let journals: string[] = [];
  try {
    journals = readdirSync(dir).filter((n) => /^\d+-[0-9a-z]+\.list$/.test(n));
  } catch {
    return removed;
  }
  for (const name of journals) {
    const owner = Number(name.split('-')[0]);
    if (existsSync(`/proc/${owner}`)) continue; // still running (or its PID taken again): not ours to judge
    const path = join(dir, name);
    let lines: string[] = [];
    try {
      lines = readFileSync(path, 'utf8').split('\n').filter(Boolean);
    } catch {
      continue;
    }
    for (const line of lines.reverse()) {
      const [kind, dev, ino, ...rest] = line.split('\t');
      const target = rest.join('\t');
      try {
        const st = lstatSync(target);
        if (String(st.dev) !== dev || String(st.ino) !== ino) continue;
        if (kind === 'dir') rmdirSync(target);
        else unlinkSync(target);
        removed.push(target);
      } catch {
        /* gone, or a directory someone filled: left alone */
      }
    }
    try { unlinkSync(path); } catch { /* another restore took it */ }
  }
  return removed;
}

export class GhostFiles {
  /** This restore's journal of the names it made (created on the first one). */
  private readonly journal = join(journalDir(), `${process.pid}-${Math.random().toString(36).slice(2, 10)}.list`);
  private journaled = false;

  private record(kind: 'file' | 'dir', path: string): void {
    const st = lstatSync(path);
    appendFileSync(this.journal, `${kind}\t${st.dev}\t${st.ino}\t${path}\n`, { mode: 0o600 });
    this.journaled = true;
  }

  private readonly paths = new Map<number, string>();
  /** Link remaps the task opens (files.img id -> the link's path). */
  private readonly links = new Map<number, string>();

  /** Creates every ghost file of the image set under a temporary name. */
  static create(set: ImageSet): GhostFiles {
    const g = new GhostFiles();
    g.add(set);
    return g;
  }

  /**
   * Creates the ghost files of one more image set of the tree, except those made already: file
   * ids are the tree's, and processes that share a deleted file (a shared mapping inherited
   * across fork) must open the one file recreated for it, not one each.
   */
  add(set: ImageSet): void {
    const all = new Map<number, RegFile>();
    for (const v of set.vmas) if (v.file?.ghost) all.set(v.file.id, v.file);
    for (const { file } of [...set.fds, ...set.inFlight]) if ((file.kind === 'reg' || file.kind === 'fifo') && file.reg.ghost) all.set(file.reg.id, file.reg);
    if (set.exe.ghost) all.set(set.exe.id, set.exe);
    for (const v of set.vmas) if (v.file?.linkRemap !== undefined) this.links.set(v.file.id, v.file.linkRemap);
    for (const { file } of [...set.fds, ...set.inFlight]) if ((file.kind === 'reg' || file.kind === 'fifo') && file.reg.linkRemap !== undefined) this.links.set(file.reg.id, file.reg.linkRemap);
    if (set.exe.linkRemap !== undefined) this.links.set(set.exe.id, set.exe.linkRemap);
    this.materializeAll(all);
  }

  /**
   * The ghost files in flight in the unix sockets of `set` (SCM_RIGHTS): the process that makes
   * the tree's unix sockets makes them too, which may come before `set`'s own process.
   */
  addInFlight(set: ImageSet): void {
    const all = new Map<number, RegFile>();
    for (const { file } of set.inFlight) {
      if (file.kind !== 'reg' && file.kind !== 'fifo') continue;
      if (file.reg.ghost) all.set(file.reg.id, file.reg);
      if (file.reg.linkRemap !== undefined) this.links.set(file.reg.id, file.reg.linkRemap);
    }
    this.materializeAll(all);
  }

  private materializeAll(all: ReadonlyMap<number, RegFile>): void {
    try {
      for (const f of all.values()) if (!this.paths.has(f.id)) this.materialize(f, f.ghost!);
    } catch (err) {
      this.removeAll();
      throw err instanceof RestoreError ? err : new RestoreError('files', 'recreating a file deleted while open', {}, err);
    }
  }

  private materialize(f: RegFile, ghost: GhostFile): void {
    // The original name when it is free (the task's /proc/PID/fd link then reads exactly as
    // before: "NAME (deleted)"), else a temporary one beside it.
    const path = existsSync(f.name) ? join(dirname(f.name), `.${basename(f.name)}.criu-ts-ghost.${ghost.id}.${process.pid}`) : f.name;
    this.makeMissingParents(dirname(path), ghost);
    const fd = openSync(path, 'wx', 0o600);
    this.paths.set(f.id, path);
    this.record('file', path);
    try {
      for (const [off, bytes] of ghost.chunks) {
        for (let done = 0, i = 0; done < bytes.byteLength && i < 1000; i++) done += writeSync(fd, bytes, done, bytes.byteLength - done, off + done);
      }
      ftruncateSync(fd, ghost.size);
    } finally {
      closeSync(fd);
    }
    chownSync(path, ghost.uid, ghost.gid);
    chmodSync(path, ghost.mode & 0o7777);
  }

  /** The name to open for `file`: its temporary name if it is a ghost, its link if it has a link remap, else its own path. */
  pathOf(file: RegFile): string {
    return this.paths.get(file.id) ?? file.linkRemap ?? file.name;
  }

  /** Once every fd and mapping of the tree holds its file: the temporary names and the link remaps go. */
  done(): void {
    this.removeAll();
    for (const p of new Set(this.links.values())) {
      try { unlinkSync(p); } catch { /* already gone */ }
    }
    this.links.clear();
  }

  /** Directories made for ghost files whose parents were removed, in the order they were made. */
  private readonly madeDirs: string[] = [];

  /** mkdir of each missing component of `dir`, top down, owned as the ghost file was. */
  private makeMissingParents(dir: string, ghost: GhostFile): void {
    const missing: string[] = [];
    for (let d = dir; !existsSync(d) && d !== dirname(d); d = dirname(d)) missing.unshift(d);
    for (const d of missing) {
      mkdirSync(d, 0o700);
      this.madeDirs.push(d);
      this.record('dir', d);
      chownSync(d, ghost.uid, ghost.gid);
    }
  }

  /** Unlinks every temporary name of a ghost file (after the task opened them, or on failure); link remaps stay. */
  removeAll(): void {
    for (const p of this.paths.values()) {
      try { unlinkSync(p); } catch { /* already gone */ }
    }
    this.paths.clear();
    // Deepest first; one someone else put a file in meanwhile is left (ENOTEMPTY).
    for (const d of this.madeDirs.reverse()) {
      try { rmdirSync(d); } catch { /* not empty or gone */ }
    }
    this.madeDirs.length = 0;
    if (this.journaled) {
      try { unlinkSync(this.journal); } catch { /* already gone */ }
      this.journaled = false;
    }
  }
}

// File descriptors, fs state (cwd, root, umask) and the session of the restored task.
//
// Every fd is opened by the task itself (openat of the dumped path, lseek to the dumped
// position), so the open file description is the task's own, with the dumped access mode and
// status flags. Fds that shared one description at dump time (same files.img id, e.g. stdout
// and stderr on one file) get one open and dups, so they share the offset again.
//
// Numbering: the stub's own fds (0-2: /dev/null or criu-ts's terminal) are still there, and a
// fresh open takes the lowest free number. So every source is first moved above the highest
// dumped fd (F_DUPFD), then the stub's fds are closed, then each source is dup3'd onto its
// dumped number (with O_CLOEXEC from fdinfo), and finally the temporaries are closed.
import { readdirSync, readlinkSync } from 'node:fs';
import { F, O } from '@criu-ts/sys';
import { FD_TYPE, type ImageSet, type RegFile } from './image-set.js';
import { remote, remoteOpen } from './memory.js';
import type { RestoreTask } from './remote-task.js';

const SEEK_SET = 0;
/** Flags that only make sense when creating a file: never replayed. */
const CREATE_ONLY = O.CREAT | O.EXCL | O.TRUNC | O.CLOEXEC;

function openFds(pid: number): number[] {
  return readdirSync(`/proc/${pid}/fd`).map(Number).filter((n) => Number.isInteger(n)).sort((a, b) => a - b);
}

function isTerminal(pid: number, fd: number): boolean {
  try {
    return /^\/dev\/(pts\/\d+|tty\w*|console)$/.test(readlinkSync(`/proc/${pid}/fd/${fd}`));
  } catch {
    return false;
  }
}

export function restoreFiles(task: RestoreTask, set: ImageSet, pathOf: (f: RegFile) => string = (f) => f.name): void {
  const pid = task.pid;
  const inherited = openFds(pid);
  const base = Math.max(2, ...set.fds.map((f) => f.fd), ...inherited) + 1;
  const temps = new Map<number, number>(); // file id -> temporary fd (above every dumped one)
  for (const f of set.fds) {
    if (temps.has(f.fileId)) continue;
    let source: number;
    let opened = false;
    if (f.type === FD_TYPE.REG && f.reg) {
      source = remoteOpen(task, 'files', pathOf(f.reg), f.reg.flags & ~CREATE_ONLY);
      opened = true;
      if (f.reg.pos !== 0n) remote(task, 'files', `lseek ${f.reg.name} to ${f.reg.pos}`, 'lseek', source, f.reg.pos, SEEK_SET);
    } else {
      // A terminal with --shell-job: criu-ts's own terminal, which the stub inherited.
      const candidates = [f.fd, 0, 1, 2].filter((n) => inherited.includes(n) && isTerminal(pid, n));
      if (candidates.length === 0) throw new Error(`fd ${f.fd} was a terminal but criu-ts has none to give (stdin/stdout/stderr are not terminals)`);
      source = candidates[0]!;
    }
    const temp = Number(remote(task, 'files', `F_DUPFD of fd ${source}`, 'fcntl', source, F.DUPFD, base + temps.size));
    if (opened) remote(task, 'files', `close ${source}`, 'close', source);
    temps.set(f.fileId, temp);
  }
  const tempFds = new Set(temps.values());
  for (const fd of inherited) {
    if (!tempFds.has(fd)) remote(task, 'files', `close inherited fd ${fd}`, 'close', fd);
  }
  for (const f of set.fds) {
    remote(task, 'files', `dup3 onto fd ${f.fd}`, 'dup3', temps.get(f.fileId)!, f.fd, f.cloexec ? O.CLOEXEC : 0);
  }
  const dumped = new Set(set.fds.map((f) => f.fd));
  for (const t of tempFds) if (!dumped.has(t)) remote(task, 'files', `close temporary fd ${t}`, 'close', t);
}

export function restoreFs(task: RestoreTask, set: ImageSet): void {
  const [cwd] = task.scratchPut(task.cString(set.cwd.name));
  remote(task, 'fs', `chdir ${set.cwd.name}`, 'chdir', cwd!);
  if (set.root.name !== '/') {
    const [root] = task.scratchPut(task.cString(set.root.name));
    remote(task, 'fs', `chroot ${set.root.name}`, 'chroot', root!);
  }
  if (set.umask !== undefined) remote(task, 'fs', 'umask', 'umask', set.umask);
}

/**
 * A session leader gets its own session again (setsid: sid = pgid = its pid); a process-group
 * leader of a shell job its own group inside criu-ts's session; anything else stays in
 * criu-ts's group (only possible with --shell-job, checked when reading the images).
 */
export function restoreSession(task: RestoreTask, set: ImageSet): void {
  if (set.sid === set.pid) remote(task, 'session', 'setsid', 'setsid');
  else if (set.pgid === set.pid) remote(task, 'session', 'setpgid(0, 0)', 'setpgid', 0, 0);
}

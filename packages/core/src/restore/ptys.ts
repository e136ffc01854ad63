// The ptys of the dumped tree (a master from /dev/ptmx open in some dumped process, slaves in the
// same or other processes), made again by criu-ts itself and handed to the tasks.
//
// criu-ts opens every pair in its own process before the first task is cloned: the tasks take
// their files from it (remote pidfd_getfd: the very open files criu-ts made), in whatever order
// the processes are restored, and a session leader can make the pty its controlling terminal
// right after its setsid, before it clones its children, which then inherit it as they did.
//
// Per pty, in this order:
//   1. /dev/ptmx opened until the kernel hands out the dumped index (devpts gives the lowest
//      free index and has no way to ask for one: lower free indexes are held open meanwhile,
//      as CRIU does; an index another process holds now fails the restore, naming it);
//   2. unlocked (a fresh master is locked: no slave opens), every slave file opened from the
//      master (TIOCGPTPEER, O_NOCTTY: never criu-ts's controlling terminal);
//   3. window size and termios set through the master (they act on the slave's tty), the
//      queued bytes put back (pty-queues.ts), packet and exclusive modes, locked termios
//      (TIOCSLCKTRMIOS, CAP_SYS_ADMIN; after termios, which it would otherwise block) and the
//      pty lock last.
import {
  asPid, close, F, fcntl, O, open, tcsets, tiocexcl, tiocgptn, tiocgptpeer, tiocpkt, tiocslcktrmios, tiocsptlck, tiocswinsz, TTY_IOCTL,
  type Fd, type KernelTermios, type Winsize,
} from '@criu-ts/sys';
import { RestoreError } from './errors.js';
import { remote } from './memory.js';
import { refillPty } from '../pty-queues.js';
import type { RestoreTask } from './remote-task.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

/** TtyType.PTY (tty.proto). */
const TTY_TYPE_PTY = 1;
/** Highest pty index criu-ts will open /dev/ptmx towards (the kernel's default max is 4096). */
const MAX_PTY_INDEX = 4095;
/** Status flags F_SETFL can set on a received master or slave. */
const SETFL_MASK = O.APPEND | O.NONBLOCK;

/** One end's tty_info_entry, checked. */
export interface PtyInfo {
  readonly infoId: number;
  readonly index: number;
  readonly master: boolean;
  readonly locked: boolean;
  readonly exclusive: boolean;
  readonly packetMode: boolean;
  readonly sid: number;
  readonly pgrp: number;
  /** Absent for a pty hung up at dump time (CRIU writes no termios then). */
  readonly termios?: KernelTermios;
  readonly termiosLocked?: KernelTermios;
  readonly winsize?: Winsize;
}

/** major of a glibc-encoded st_rdev. */
function majorOf(rdev: number): number {
  return ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff);
}
function minorOf(rdev: number): number {
  return (rdev & 0xff) | ((rdev >>> 12) & ~0xff);
}

/** A tty-info rdev that is a pty master: /dev/ptmx (5:2) or a Unix98 master major (128-135). */
export function isPtyMasterRdev(rdev: number): boolean {
  const major = majorOf(rdev);
  return (major === 5 && minorOf(rdev) === 2) || (major >= 128 && major <= 135);
}

/**
 * termios_entry back to the kernel's termios: CRIU packs glibc's c_cc byte array four bytes to
 * a uint32 word (see dump/files/terminals.ts), so the 19 control characters are the first 19
 * bytes of the words, little-endian.
 */
function termiosOf(e: Msg | undefined, where: string, invalid: Invalid): KernelTermios | undefined {
  if (!e) return undefined;
  const words = ((e.c_cc as unknown[] | undefined) ?? []).map((w) => Number(w) >>> 0);
  if (words.length < 5) invalid(`${where}: termios has ${words.length} control character words, fewer than the 19 characters need`);
  const bytes = Buffer.alloc(words.length * 4);
  words.forEach((w, i) => bytes.writeUInt32LE(w, i * 4));
  return {
    iflag: Number(e.c_iflag) >>> 0, oflag: Number(e.c_oflag) >>> 0, cflag: Number(e.c_cflag) >>> 0, lflag: Number(e.c_lflag) >>> 0,
    line: Number(e.c_line) & 0xff, cc: [...bytes.subarray(0, 19)],
  };
}

type Invalid = (message: string, evidence?: Record<string, unknown>) => never;

/** tty-info.img entry `e` of a pty, checked. */
export function readPtyInfo(e: Msg, where: string, invalid: Invalid): PtyInfo {
  if (Number(e.type) !== TTY_TYPE_PTY || !e.pty) invalid(`${where}: tty-info id ${e.id} is not a pty with an index`);
  const index = Number((e.pty as Msg).index);
  if (!Number.isInteger(index) || index < 0 || index > MAX_PTY_INDEX) invalid(`${where}: pty index ${index} is out of range (0-${MAX_PTY_INDEX})`, { index });
  const master = isPtyMasterRdev(Number(e.rdev));
  if (Number(e.id) !== index * 2 + (master ? 1 : 0)) invalid(`${where}: tty-info id ${e.id} does not match pty ${index}'s ${master ? 'master' : 'slave'} (${index * 2 + (master ? 1 : 0)})`);
  const termios = termiosOf(e.termios as Msg | undefined, where, invalid);
  if (master && !termios) invalid(`${where}: pty ${index}'s master has no termios (CRIU requires it of a master)`);
  const w = e.winsize as Msg | undefined;
  const termiosLocked = termiosOf(e.termios_locked as Msg | undefined, where, invalid);
  return {
    infoId: Number(e.id), index, master, locked: e.locked === true, exclusive: e.exclusive === true, packetMode: e.packet_mode === true,
    sid: Number(e.sid ?? 0), pgrp: Number(e.pgrp ?? 0),
    ...(termios ? { termios } : {}), ...(termiosLocked ? { termiosLocked } : {}),
    ...(w ? { winsize: { row: Number(w.ws_row), col: Number(w.ws_col), xpixel: Number(w.ws_xpixel), ypixel: Number(w.ws_ypixel) } } : {}),
  };
}

/** One pty file of a task's table (a TTY files.img entry whose pty has its master in the dump). */
export interface PtyFileImage {
  readonly kind: 'pty';
  readonly id: number;
  /** Open flags (access mode, O_NONBLOCK...). */
  readonly flags: number;
  readonly info: PtyInfo;
  /** Bytes the end would read next (tty-data.img: for the master, what the slave wrote; for a slave, what the master wrote). */
  readonly queued?: Uint8Array;
}

interface PlannedPty {
  index: number;
  master?: PtyFileImage;
  slaves: Map<number, PtyFileImage>;
}

/** The ptys of a tree, made by criu-ts (see the module doc). One per restore; closeAll() when it ends, either way. */
export class Ptys {
  private readonly ours = new Map<number, Fd>();
  /** A slave of each pty criu-ts holds for making it a controlling terminal (one of `ours` or a spare). */
  private readonly anySlave = new Map<number, Fd>();
  private readonly spares: Fd[] = [];

  private constructor(private readonly ptys: ReadonlyMap<number, PlannedPty>) {}

  /**
   * The ptys the processes' fd tables use. `tasks`: every process with its session and its fd
   * slots; `live`: whether it is restored running (a pty's session must be led by one).
   */
  static plan(tasks: ReadonlyArray<{ pid: number; sid: number; live: boolean; files: ReadonlyArray<{ file: { kind: string } }> }>): Ptys {
    const invalid = (message: string, evidence: Record<string, unknown> = {}): never => {
      throw new RestoreError('validate', message, evidence);
    };
    const ptys = new Map<number, PlannedPty>();
    for (const t of tasks) {
      for (const slot of t.files) {
        if (slot.file.kind !== 'pty') continue;
        const file = slot.file as PtyFileImage;
        let pty = ptys.get(file.info.index);
        if (!pty) ptys.set(file.info.index, (pty = { index: file.info.index, slaves: new Map() }));
        if (file.info.master) {
          if (pty.master && pty.master.id !== file.id) invalid(`files.img ids ${pty.master.id} and ${file.id} are both the master of pty ${file.info.index}`, { index: file.info.index });
          pty.master = file;
        } else {
          pty.slaves.set(file.id, file);
        }
      }
    }
    for (const pty of ptys.values()) {
      if (!pty.master) return invalid(`pty ${pty.index} has slaves in the images but no master`, { index: pty.index });
      const sid = pty.master.info.sid;
      if (sid !== 0) {
        const leader = tasks.find((t) => t.pid === sid);
        if (!leader || leader.sid !== sid || !leader.live) {
          invalid(`pty ${pty.index} is the controlling terminal of session ${sid}, whose leader is not a live process of the images`, { index: pty.index, sid });
        }
      }
    }
    return new Ptys(ptys);
  }

  get size(): number {
    return this.ptys.size;
  }

  /** Opens every pty (see the module doc). Preconditions: nothing else of this restore opened ptys. */
  create(): void {
    const held: Fd[] = [];
    try {
      for (const pty of [...this.ptys.values()].sort((a, b) => a.index - b.index)) this.createOne(pty, held);
    } finally {
      for (const fd of held) close(fd);
    }
  }

  private createOne(pty: PlannedPty, held: Fd[]): void {
    const master = pty.master!;
    const what = `pty ${pty.index}`;
    const masterFd = openPtmxWithIndex(pty.index, (master.flags & 3) | O.NOCTTY, held);
    this.ours.set(master.id, masterFd);
    tiocsptlck(masterFd, false);
    let firstSlave: Fd | undefined;
    for (const slave of pty.slaves.values()) {
      const fd = tiocgptpeer(masterFd, (slave.flags & 3) | O.NOCTTY | O.CLOEXEC);
      this.ours.set(slave.id, fd);
      firstSlave ??= fd;
    }
    const info = master.info;
    if (info.winsize) tiocswinsz(masterFd, info.winsize);
    if (info.termios) tcsets(masterFd, info.termios);
    const output = master.queued;
    const input = [...pty.slaves.values()].find((s) => s.queued)?.queued;
    if ((output || input) && firstSlave === undefined) throw new RestoreError('files', `${what}: bytes are queued but no slave is open to put them back through`, { index: pty.index });
    if (firstSlave !== undefined) {
      try {
        refillPty(masterFd, firstSlave, { ...(output ? { output } : {}), ...(input ? { input } : {}) }, what);
      } catch (error) {
        throw new RestoreError('files', `${what}: putting the queued bytes back`, { index: pty.index }, error);
      }
    }
    if (info.packetMode) tiocpkt(masterFd, true);
    if (info.exclusive) tiocexcl(masterFd);
    const exclusiveSlave = [...pty.slaves.values()].some((s) => s.info.exclusive);
    if (exclusiveSlave && firstSlave !== undefined) tiocexcl(firstSlave);
    if (info.termiosLocked && (info.termiosLocked.iflag || info.termiosLocked.oflag || info.termiosLocked.cflag || info.termiosLocked.lflag || info.termiosLocked.cc.some((c) => c !== 0))) {
      tiocslcktrmios(masterFd, info.termiosLocked);
    }
    if (firstSlave !== undefined) this.anySlave.set(pty.index, firstSlave);
    else if (info.sid !== 0) {
      // The controlling terminal of a session with no slave open: criu-ts keeps one for TIOCSCTTY.
      const spare = tiocgptpeer(masterFd, O.RDWR | O.NOCTTY | O.CLOEXEC);
      this.spares.push(spare);
      this.anySlave.set(pty.index, spare);
    }
    if (info.locked) tiocsptlck(masterFd, true);
    // Status flags (O_NONBLOCK...) as dumped; O_ASYNC comes last, in the task (files.ts).
    for (const [id, fd] of this.ours) {
      const file = id === master.id ? master : pty.slaves.get(id);
      if (!file) continue;
      const flags = fcntl(fd, F.GETFL);
      fcntl(fd, F.SETFL, (flags & ~SETFL_MASK) | (file.flags & SETFL_MASK));
    }
  }

  /** criu-ts's open file for files.img id `fileId` (a master or a slave). */
  fileFor(fileId: number, what: string): Fd {
    const fd = this.ours.get(fileId);
    if (fd === undefined) throw new RestoreError('files', `${what}: criu-ts has not made pty file id ${fileId}`, { fileId });
    return fd;
  }

  /** Sessions to give a controlling terminal: leader PID, the pty's index, its foreground group. */
  controllingTerminals(): Array<{ sid: number; pgrp: number; index: number }> {
    return [...this.ptys.values()].filter((p) => p.master!.info.sid !== 0).map((p) => ({ sid: p.master!.info.sid, pgrp: p.master!.info.pgrp, index: p.index }));
  }

  /**
   * Makes pty `index` the controlling terminal of `task`, a session leader without one
   * (TIOCSCTTY on a slave it takes from criu-ts and closes again: the terminal stays its
   * session's). Children it clones afterwards inherit it.
   */
  takeAsControllingTerminal(task: RestoreTask, index: number): void {
    const slave = this.anySlave.get(index)!;
    withOurFile(task, slave, `pty ${index}`, (fd) => {
      remote(task, 'session', `TIOCSCTTY of pty ${index} in ${task.pid}`, 'ioctl', fd, TTY_IOCTL.TIOCSCTTY, 0);
    });
  }

  /** Sets the foreground process group of pty `index` from its session leader `task` (TIOCSPGRP: only a session member may). */
  setForegroundGroup(task: RestoreTask, index: number, pgrp: number): void {
    if (pgrp <= 0) return;
    const slave = this.anySlave.get(index)!;
    withOurFile(task, slave, `pty ${index}`, (fd) => {
      const value = Buffer.alloc(4);
      value.writeInt32LE(pgrp, 0);
      const [arg] = task.scratchPut(value);
      remote(task, 'session', `TIOCSPGRP ${pgrp} of pty ${index} in ${task.pid}`, 'ioctl', fd, TTY_IOCTL.TIOCSPGRP, arg!);
    });
  }

  /** Closes criu-ts's files (the tasks hold their own by now, or the restore failed). */
  closeAll(): void {
    for (const fd of new Set([...this.ours.values(), ...this.spares])) {
      try {
        close(fd);
      } catch {
        /* already closed */
      }
    }
    this.ours.clear();
    this.anySlave.clear();
    this.spares.length = 0;
  }
}

/**
 * Opens /dev/ptmx until it gives pty `index`. Lower indexes handed out on the way are pushed on
 * `held` (kept open so the next open moves on; the caller closes them).
 */
function openPtmxWithIndex(index: number, flags: number, held: Fd[]): Fd {
  for (let attempts = 0; attempts <= MAX_PTY_INDEX; attempts++) {
    const fd = open('/dev/ptmx', flags);
    let got: number;
    try {
      got = tiocgptn(fd);
    } catch (error) {
      close(fd);
      throw new RestoreError('files', `pty ${index}: TIOCGPTN on a new /dev/ptmx`, { index }, error);
    }
    if (got === index) return fd;
    held.push(fd);
    if (got > index) {
      throw new RestoreError('files', `pty ${index} is in use (another process holds /dev/pts/${index}): the pty cannot get its dumped index back`, { index, got });
    }
  }
  throw new RestoreError('files', `pty ${index}: /dev/ptmx never handed out that index`, { index });
}

/** Runs `fn` with criu-ts's file `ours` duplicated into `task` (remote pidfd_open + pidfd_getfd), closed again after. */
function withOurFile(task: RestoreTask, ours: Fd, what: string, fn: (fd: number) => void): void {
  const pidfd = Number(remote(task, 'session', `pidfd_open of criu-ts for ${what}`, 'pidfd_open', asPid(process.pid), 0));
  try {
    const fd = Number(remote(task, 'session', `pidfd_getfd of ${what} from criu-ts`, 'pidfd_getfd', pidfd, ours, 0));
    try {
      fn(fd);
    } finally {
      remote(task, 'session', `close ${what}`, 'close', fd);
    }
  } finally {
    remote(task, 'session', 'close pidfd of criu-ts', 'close', pidfd);
  }
}

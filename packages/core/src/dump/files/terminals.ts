// Terminals: a TTY file entry per open terminal file, pointing at a tty-info.img entry (kind,
// index, session and foreground group, termios, locked termios, window size, pty lock, packet
// and exclusive modes) and at a REG entry with the device path, as CRIU 4.2 records them.
//
// Two cases:
//   - ptys of the dumped tree: the pair's master (/dev/ptmx) is open in some dumped process
//     (slaves may be too, in the same process or others). Restore makes a new pair with the
//     same index and gives it back, queued bytes included (pty-queues.ts).
//   - a terminal from outside (a shell's pty slave, a VT): only with --shell-job; restore gives
//     the task criu-ts's own terminal instead (as criu does), so these values are kept for tools.
//
// The driver state is read on a duplicate of the task's fd (pidfd_getfd: the same open file,
// nothing runs in the task). Opening /proc/PID/fd/N instead would make a new pty for a master.
// Through a master the kernel answers termios, window size, session and foreground group for
// the slave's tty from any process; through a slave the session only for the caller's
// controlling terminal, so the session of a terminal is found from the dumped processes'
// /proc/PID/stat (tty_nr, session, tpgid).
import { readFileSync } from 'node:fs';
import {
  isSysError, tcgets, tiocgexcl, tiocglcktrmios, tiocgpkt, tiocgptlck, tiocgptn, tiocgsid, tiocgwinsz, type Fd, type KernelTermios,
} from '@criu-ts/sys';
import type { DecodedMessage } from '@criu-ts/images';
import type { Stats } from 'node:fs';

/** TtyType (tty.proto). */
export const TTY_TYPE = { PTY: 1, CONSOLE: 2, VT: 3, CTTY: 4, SERIAL: 6 } as const;

/**
 * tty_info_entry ids as CRIU numbers them: a pty's index * 2, plus 1 for the master (so the two
 * ends of a pair are told apart and found from each other); fixed numbers for the single
 * devices (CRIU's CONSOLE_INDEX 1002, VT_INDEX 1004, CTTY_INDEX 1006, doubled the same way).
 */
export function ttyInfoId(kind: TerminalKind): number {
  switch (kind.type) {
    case TTY_TYPE.PTY: return kind.index * 2 + (kind.master ? 1 : 0);
    case TTY_TYPE.CONSOLE: return 1002 * 2;
    case TTY_TYPE.VT: return 1004 * 2;
    case TTY_TYPE.CTTY: return 1006 * 2;
    default: return 0; // serial lines: CRIU's driver has no index of its own
  }
}

/** major/minor of a st_rdev as glibc encodes it. */
export function deviceNumbers(rdev: number): { major: number; minor: number } {
  return { major: ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff), minor: (rdev & 0xff) | ((rdev >>> 12) & ~0xff) };
}

/** The st_rdev (glibc encoding, as /proc/PID/stat's tty_nr) of pty slave `index` (/dev/pts/index: majors 136-143). */
export function ptySlaveRdev(index: number): number {
  const major = 136 + (index >> 8);
  const minor = index & 0xff;
  return (major << 8) | minor;
}

export interface TerminalKind {
  readonly type: number;
  readonly index: number;
  /** A pty master (/dev/ptmx): its index comes from TIOCGPTN, not from the device number. */
  readonly master?: boolean;
}

/**
 * What kind of terminal a character device is, or undefined when it is none. The console is a
 * terminal no restore can give back (it is the machine's), so it is reported for refusal.
 * A pty master's index is unknown here (-1): see ptyMasterIndex.
 */
export function terminalKind(path: string, stats: Stats): TerminalKind | undefined {
  if (!stats.isCharacterDevice()) return undefined;
  const { major, minor } = deviceNumbers(stats.rdev);
  if (major >= 136 && major <= 143) return { type: TTY_TYPE.PTY, index: (major - 136) * 256 + minor };
  if (major === 5 && minor === 2) return { type: TTY_TYPE.PTY, index: -1, master: true };
  if (major >= 128 && major <= 135) return { type: TTY_TYPE.PTY, index: -1, master: true }; // Unix98 master majors, as CRIU counts them
  if (major === 5 && minor === 0) return { type: TTY_TYPE.CTTY, index: 0 };
  if (major === 5 && minor === 1) return { type: TTY_TYPE.CONSOLE, index: 0 };
  if (major === 4 && minor < 64) return { type: TTY_TYPE.VT, index: minor };
  if (major === 4 && minor >= 64) return { type: TTY_TYPE.SERIAL, index: minor - 64 };
  if (/^\/dev\/(tty|pts\/)/.test(path)) return { type: TTY_TYPE.PTY, index: minor };
  return undefined;
}

/** The index of the pty whose master `master` (a duplicate of the task's fd) is. */
export function ptyMasterIndex(master: Fd): number {
  return tiocgptn(master);
}

/**
 * termios_entry as CRIU writes it: CRIU copies glibc's cc_t c_cc[32] byte array over the first
 * eight of its 19 uint32 words (four control characters per word, little-endian) and leaves the
 * rest as they were (zero here), and CRIU's restore copies the 32 bytes back the same way. So
 * the kernel's 19 control characters are bytes 0-18 of that array, not one per word.
 */
export function termiosEntry(t: KernelTermios): DecodedMessage {
  const bytes = Buffer.alloc(19 * 4);
  for (let i = 0; i < t.cc.length; i++) bytes[i] = t.cc[i]!;
  const words: number[] = [];
  for (let i = 0; i < 19; i++) words.push(bytes.readUInt32LE(i * 4));
  return { c_iflag: t.iflag, c_oflag: t.oflag, c_cflag: t.cflag, c_lflag: t.lflag, c_line: t.line, c_ispeed: 0, c_ospeed: 0, c_cc: words };
}

export interface TerminalSession {
  /** The session the terminal controls (0: none). */
  readonly sid: number;
  /** Its foreground process group (0: none). */
  readonly pgrp: number;
}

/**
 * The session a terminal (st_rdev `rdev`) controls and its foreground group, from the first of
 * `pids` that has it as controlling terminal (/proc/PID/stat fields tty_nr, session, tpgid), or
 * zeros when none does.
 */
export function sessionOf(rdev: number, pids: readonly number[]): TerminalSession {
  for (const pid of pids) {
    let stat: string;
    try {
      stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
    } catch {
      continue;
    }
    const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
    const [sid, ttyNr, tpgid] = [Number(fields[3]), Number(fields[4]), Number(fields[5])];
    if (ttyNr === rdev && ttyNr !== 0) return { sid, pgrp: tpgid > 0 ? tpgid : 0 };
  }
  return { sid: 0, pgrp: 0 };
}

/**
 * The controlling terminal of `pid` (/proc/PID/stat tty_nr, 0 for none) with its session and
 * foreground group, and the pty index when it is a pty slave.
 */
export function controllingTerminalOf(pid: number): TerminalSession & { rdev: number; ptyIndex?: number } {
  const stat = readFileSync(`/proc/${pid}/stat`, 'utf8');
  const fields = stat.slice(stat.lastIndexOf(')') + 2).split(' ');
  const [sid, ttyNr, tpgid] = [Number(fields[3]), Number(fields[4]), Number(fields[5])];
  if (ttyNr === 0) return { sid: 0, pgrp: 0, rdev: 0 };
  const { major, minor } = deviceNumbers(ttyNr);
  return { sid, pgrp: tpgid > 0 ? tpgid : 0, rdev: ttyNr, ...(major >= 136 && major <= 143 ? { ptyIndex: (major - 136) * 256 + minor } : {}) };
}

/**
 * The session a pty master's slave controls as the kernel tells it through the master (from
 * any process), or 0. Used to refuse a pty whose session lives outside the dump.
 */
export function masterSessionId(master: Fd): number {
  try {
    return tiocgsid(master);
  } catch (error) {
    if (isSysError(error, 'ENOTTY')) return 0; // no session has the slave as controlling terminal
    throw error;
  }
}

/**
 * The tty_info_entry of the terminal open as `tty` (a duplicate of the task's fd), with id `id`.
 */
export function ttyInfoEntry(id: number, tty: Fd, stats: Stats, kind: TerminalKind, session: TerminalSession): DecodedMessage {
  let exclusive = false;
  try {
    exclusive = tiocgexcl(tty);
  } catch {
    /* kernels before 3.8 cannot tell: not exclusive */
  }
  const winsize = tiocgwinsz(tty);
  return {
    id, type: kind.type,
    locked: kind.master ? tiocgptlck(tty) : false,
    exclusive,
    packet_mode: kind.master ? tiocgpkt(tty) : false,
    sid: session.sid, pgrp: session.pgrp, rdev: stats.rdev,
    termios: termiosEntry(tcgets(tty)),
    termios_locked: termiosEntry(tiocglcktrmios(tty)),
    winsize: { ws_row: winsize.row, ws_col: winsize.col, ws_xpixel: winsize.xpixel, ws_ypixel: winsize.ypixel },
    ...(kind.type === TTY_TYPE.PTY ? { pty: { index: kind.index } } : {}),
    dev: stats.dev, uid: stats.uid, gid: stats.gid,
  };
}

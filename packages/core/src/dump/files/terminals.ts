// Terminals (with --shell-job): the tty a task has open, as CRIU records it: a TTY file entry
// pointing at a tty-info.img entry (kind, index, session and foreground group, termios, window
// size) and at a REG entry with the device path.
//
// The driver state is read from a second open of the same device (/proc/PID/fd/N reopened with
// O_NOCTTY | O_NONBLOCK: never becomes anyone's controlling terminal, never waits for carrier).
// Restore with --shell-job gives the task criu-ts's own terminal instead (as criu does), so
// these values are what the task had, kept for tools and for restoring on another terminal.
import { close, ioctl, O, open } from '@criu-ts/sys';
import type { DecodedMessage } from '@criu-ts/images';
import type { Stats } from 'node:fs';

/** TtyType (tty.proto). */
export const TTY_TYPE = { PTY: 1, CONSOLE: 2, VT: 3, CTTY: 4, SERIAL: 6 } as const;
const TCGETS = 0x5401;
const TIOCGWINSZ = 0x5413;
const TIOCGEXCL = 0x80045440;
/** Kernel struct termios (asm-generic): four u32 flags, c_line, 19 control characters. */
const KERNEL_NCCS = 19;

/** major/minor of a st_rdev as glibc encodes it. */
export function deviceNumbers(rdev: number): { major: number; minor: number } {
  return { major: ((rdev >>> 8) & 0xfff) | (Math.floor(rdev / 2 ** 32) & ~0xfff), minor: (rdev & 0xff) | ((rdev >>> 12) & ~0xff) };
}

/**
 * What kind of terminal a character device is, or undefined when it is none. The console is a
 * terminal no restore can give back (it is the machine's), so it is reported for refusal.
 */
export function terminalKind(path: string, stats: Stats): { type: number; index: number } | undefined {
  if (!stats.isCharacterDevice()) return undefined;
  const { major, minor } = deviceNumbers(stats.rdev);
  if (major >= 136 && major <= 143) return { type: TTY_TYPE.PTY, index: (major - 136) * 256 + minor };
  if (major === 5 && minor === 0) return { type: TTY_TYPE.CTTY, index: 0 };
  if (major === 5 && minor === 1) return { type: TTY_TYPE.CONSOLE, index: 0 };
  if (major === 4 && minor < 64) return { type: TTY_TYPE.VT, index: minor };
  if (major === 4 && minor >= 64) return { type: TTY_TYPE.SERIAL, index: minor - 64 };
  if (/^\/dev\/(tty|pts\/)/.test(path)) return { type: TTY_TYPE.PTY, index: minor };
  return undefined;
}

function termiosEntry(raw: Buffer): DecodedMessage {
  const cc: number[] = [];
  for (let i = 0; i < KERNEL_NCCS; i++) cc.push(raw[17 + i]!);
  return {
    c_iflag: raw.readUInt32LE(0), c_oflag: raw.readUInt32LE(4), c_cflag: raw.readUInt32LE(8), c_lflag: raw.readUInt32LE(12),
    c_line: raw[16]!, c_ispeed: 0, c_ospeed: 0, c_cc: cc,
  };
}

/**
 * The tty_info_entry of the terminal behind fd `fd` of `pid`. `session`: the task's session and
 * foreground group when this terminal is its controlling one (stat fields tty_nr and tpgid),
 * otherwise zeros.
 */
export function ttyInfoEntry(
  id: number, pid: number, fd: number, stats: Stats, kind: { type: number; index: number }, session: { sid: number; pgrp: number },
): DecodedMessage {
  const tty = open(`/proc/${pid}/fd/${fd}`, O.RDONLY | O.NOCTTY | O.NONBLOCK);
  try {
    const termios = Buffer.alloc(64);
    ioctl(tty, TCGETS, termios);
    const winsize = Buffer.alloc(8);
    ioctl(tty, TIOCGWINSZ, winsize);
    const excl = Buffer.alloc(4);
    let exclusive = false;
    try {
      ioctl(tty, TIOCGEXCL, excl);
      exclusive = excl.readInt32LE(0) !== 0;
    } catch {
      /* kernels before 3.8 cannot tell: not exclusive */
    }
    return {
      id, type: kind.type, locked: false, exclusive, packet_mode: false, sid: session.sid, pgrp: session.pgrp, rdev: stats.rdev,
      termios: termiosEntry(termios),
      winsize: { ws_row: winsize.readUInt16LE(0), ws_col: winsize.readUInt16LE(2), ws_xpixel: winsize.readUInt16LE(4), ws_ypixel: winsize.readUInt16LE(6) },
      ...(kind.type === TTY_TYPE.PTY ? { pty: { index: kind.index } } : {}),
      dev: stats.dev, uid: stats.uid, gid: stats.gid,
    };
  } finally {
    close(tty);
  }
}

// Terminal ioctls (tty_ioctl(4), ioctl_tty(2)), one wrapper per request. On a pty master the
// termios, locked-termios and window-size requests act on the slave's tty (the kernel passes
// them to the other end of the pair), so criu-ts can read and set a pair's state through the
// master alone.
import { ioctl } from './files.js';
import type { Fd } from './types.js';

/** Request numbers (asm-generic/ioctls.h, x86_64). */
export const TTY_IOCTL = {
  TCGETS: 0x5401, TCSETS: 0x5402, TIOCEXCL: 0x540c, TIOCNXCL: 0x540d, TIOCSCTTY: 0x540e, TIOCGPGRP: 0x540f,
  TIOCSPGRP: 0x5410, TIOCGWINSZ: 0x5413, TIOCSWINSZ: 0x5414, TIOCINQ: 0x541b, TIOCPKT: 0x5420, TIOCGSID: 0x5429,
  TIOCGLCKTRMIOS: 0x5456, TIOCSLCKTRMIOS: 0x5457,
  TIOCGPTN: 0x80045430, TIOCSPTLCK: 0x40045431, TIOCGPKT: 0x80045438, TIOCGPTLCK: 0x80045439, TIOCGEXCL: 0x80045440,
  TIOCGPTPEER: 0x5441,
} as const;

/**
 * The kernel's struct termios (asm-generic/termbits.h): c_iflag, c_oflag, c_cflag, c_lflag (u32
 * each), c_line, then NCCS = 19 control characters. 36 bytes; glibc's struct is larger (32
 * control characters, speeds), which is why these wrappers use the kernel's.
 */
export interface KernelTermios {
  iflag: number;
  oflag: number;
  cflag: number;
  lflag: number;
  line: number;
  /** 19 control characters (VINTR, VQUIT, VERASE, ...). */
  cc: number[];
}
export const KERNEL_NCCS = 19;
const TERMIOS_BYTES = 17 + KERNEL_NCCS;

function decodeTermios(raw: Buffer): KernelTermios {
  return {
    iflag: raw.readUInt32LE(0), oflag: raw.readUInt32LE(4), cflag: raw.readUInt32LE(8), lflag: raw.readUInt32LE(12),
    line: raw[16]!, cc: [...raw.subarray(17, 17 + KERNEL_NCCS)],
  };
}

function encodeTermios(t: KernelTermios): Buffer {
  const raw = Buffer.alloc(TERMIOS_BYTES);
  raw.writeUInt32LE(t.iflag >>> 0, 0);
  raw.writeUInt32LE(t.oflag >>> 0, 4);
  raw.writeUInt32LE(t.cflag >>> 0, 8);
  raw.writeUInt32LE(t.lflag >>> 0, 12);
  raw[16] = t.line & 0xff;
  for (let i = 0; i < KERNEL_NCCS; i++) raw[17 + i] = (t.cc[i] ?? 0) & 0xff;
  return raw;
}

/** ioctl(fd, TCGETS): the terminal's attributes. */
export function tcgets(fd: Fd): KernelTermios {
  const raw = Buffer.alloc(64);
  ioctl(fd, TTY_IOCTL.TCGETS, raw);
  return decodeTermios(raw);
}

/** ioctl(fd, TCSETS): sets the attributes now (no drain, no flush). */
export function tcsets(fd: Fd, t: KernelTermios): void {
  ioctl(fd, TTY_IOCTL.TCSETS, encodeTermios(t));
}

/** ioctl(fd, TIOCGLCKTRMIOS): which attribute bits are locked (a set bit cannot be changed by TCSETS). */
export function tiocglcktrmios(fd: Fd): KernelTermios {
  const raw = Buffer.alloc(64);
  ioctl(fd, TTY_IOCTL.TIOCGLCKTRMIOS, raw);
  return decodeTermios(raw);
}

/** ioctl(fd, TIOCSLCKTRMIOS): needs CAP_SYS_ADMIN. */
export function tiocslcktrmios(fd: Fd, t: KernelTermios): void {
  ioctl(fd, TTY_IOCTL.TIOCSLCKTRMIOS, encodeTermios(t));
}

export interface Winsize {
  row: number;
  col: number;
  xpixel: number;
  ypixel: number;
}

/** ioctl(fd, TIOCGWINSZ). */
export function tiocgwinsz(fd: Fd): Winsize {
  const raw = Buffer.alloc(8);
  ioctl(fd, TTY_IOCTL.TIOCGWINSZ, raw);
  return { row: raw.readUInt16LE(0), col: raw.readUInt16LE(2), xpixel: raw.readUInt16LE(4), ypixel: raw.readUInt16LE(6) };
}

/** ioctl(fd, TIOCSWINSZ): also sends SIGWINCH to the foreground group when the size changes. */
export function tiocswinsz(fd: Fd, w: Winsize): void {
  const raw = Buffer.alloc(8);
  raw.writeUInt16LE(w.row, 0);
  raw.writeUInt16LE(w.col, 2);
  raw.writeUInt16LE(w.xpixel, 4);
  raw.writeUInt16LE(w.ypixel, 6);
  ioctl(fd, TTY_IOCTL.TIOCSWINSZ, raw);
}

function getInt(fd: Fd, request: number): number {
  const raw = Buffer.alloc(4);
  ioctl(fd, request, raw);
  return raw.readInt32LE(0);
}

function setInt(fd: Fd, request: number, value: number): void {
  const raw = Buffer.alloc(4);
  raw.writeInt32LE(value, 0);
  ioctl(fd, request, raw);
}

/** ioctl(master, TIOCGPTN): the pty's index (the N of /dev/pts/N). */
export function tiocgptn(master: Fd): number {
  return getInt(master, TTY_IOCTL.TIOCGPTN);
}

/** ioctl(master, TIOCGPTLCK): whether the slave is locked (opens of it fail with EIO). */
export function tiocgptlck(master: Fd): boolean {
  return getInt(master, TTY_IOCTL.TIOCGPTLCK) !== 0;
}

/** ioctl(master, TIOCSPTLCK): locks (true) or unlocks (unlockpt(3)) the slave. */
export function tiocsptlck(master: Fd, locked: boolean): void {
  setInt(master, TTY_IOCTL.TIOCSPTLCK, locked ? 1 : 0);
}

/** ioctl(master, TIOCGPKT): whether the master is in packet mode. */
export function tiocgpkt(master: Fd): boolean {
  return getInt(master, TTY_IOCTL.TIOCGPKT) !== 0;
}

/** ioctl(master, TIOCPKT): packet mode on or off (turning it on clears the pending status byte). */
export function tiocpkt(master: Fd, on: boolean): void {
  setInt(master, TTY_IOCTL.TIOCPKT, on ? 1 : 0);
}

/** ioctl(fd, TIOCGEXCL): whether this end is in exclusive mode (TIOCEXCL: new opens get EBUSY unless CAP_SYS_ADMIN). */
export function tiocgexcl(fd: Fd): boolean {
  return getInt(fd, TTY_IOCTL.TIOCGEXCL) !== 0;
}

/** ioctl(fd, TIOCEXCL). */
export function tiocexcl(fd: Fd): void {
  ioctl(fd, TTY_IOCTL.TIOCEXCL, 0);
}

/**
 * ioctl(fd, TIOCGSID): the session the terminal controls. Through a master it answers for the
 * slave from any process; through a slave only for the caller's own controlling terminal
 * (otherwise ENOTTY, as when no session has it).
 */
export function tiocgsid(fd: Fd): number {
  return getInt(fd, TTY_IOCTL.TIOCGSID);
}

/** ioctl(fd, TIOCGPGRP): the foreground process group (same rules as tiocgsid). */
export function tiocgpgrp(fd: Fd): number {
  return getInt(fd, TTY_IOCTL.TIOCGPGRP);
}

/** ioctl(fd, TIOCINQ): bytes ready to read (a slave in canonical mode counts complete lines only). */
export function tiocinq(fd: Fd): number {
  return getInt(fd, TTY_IOCTL.TIOCINQ);
}

/**
 * ioctl(master, TIOCGPTPEER, flags): a new open file of the pty's slave, without a path lookup
 * (Linux 4.13+). `flags`: O_RDWR and the like, O_NOCTTY, O_NONBLOCK, O_CLOEXEC.
 */
export function tiocgptpeer(master: Fd, flags: number): Fd {
  return ioctl(master, TTY_IOCTL.TIOCGPTPEER, flags) as Fd;
}

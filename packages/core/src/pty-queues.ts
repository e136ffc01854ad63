// Bytes waiting in a pty pair, taken out and put back exactly (dump reads them and writes them
// back at once, so the dump changes nothing; restore puts them into the new pair).
//
// A pty pair has two queues a program can read:
//   - output: what the slave side wrote and the master has not read yet (read on the master);
//   - input: what the master wrote and the slave has not read yet, as the slave's line
//     discipline stored it (after its input processing). In canonical mode a read returns
//     complete lines only, so the slave's canonical mode is turned off for the length of the
//     read: the kernel then hands out every stored byte, the partial line being typed included
//     (n_tty makes the whole buffer readable when ICANON goes off).
// The kernel has no way to peek at them, so they are read out and written back through the
// other end: output by a write to the slave, input by a write to the master. Both writes go
// through the slave's line discipline again, which would add to them (ONLCR turns the "\r\n"
// already there into "\r\r\n", ECHO sends input back to the master, ISIG turns ^C into a
// signal, ERASE eats the byte before it), so the slave's termios is changed for the length of
// the write and put back after: OPOST off for output; for input echo, signals and the input
// translations off, and the editing characters (ERASE, KILL, EOF, WERASE, LNEXT, REPRINT) moved
// to byte values the data does not contain, so every byte is stored as it was read, "\n", EOL
// and EOL2 end lines again and a trailing partial line stays partial, still editable.
//
// What cannot be kept: where a line ended by VEOF ended (n_tty stores a NUL in its place, which
// comes back as a literal NUL), and the status byte of packet mode (stripped, not kept). A pty is
// not a transport with delivery guarantees (CRIU says as much), but lines, partial lines and raw
// bytes come back byte for byte.
import { F, fcntl, sleepSync, isSysError, O, read, tcgets, tcsets, tiocinq, write, type Fd, type KernelTermios } from '@criu-ts/sys';

/** termios bits (asm-generic/termbits.h). */
const OPOST = 0o1;
const IFLAGS_TRANSLATING = 0o1 /* IGNBRK */ | 0o10 /* PARMRK */ | 0o20 /* INPCK */ | 0o40 /* ISTRIP */ | 0o100 /* INLCR */
  | 0o200 /* IGNCR */ | 0o400 /* ICRNL */ | 0o1000 /* IUCLC */ | 0o2000 /* IXON */ | 0o10000 /* IXOFF */ | 0o20000 /* IMAXBEL */;
const LFLAGS_REACTING = 0o1 /* ISIG */ | 0o10 /* ECHO */ | 0o20 /* ECHOE */ | 0o40 /* ECHOK */ | 0o100 /* ECHONL */;
const ICANON = 0o2;
const IEXTEN = 0o100000;
/** Control characters (asm-generic/termbits.h indexes) that edit a line in canonical mode: moved out of the data's way. */
const EDITING = [2 /* VERASE */, 3 /* VKILL */, 4 /* VEOF */, 12 /* VREPRINT */, 14 /* VWERASE */, 15 /* VLNEXT */];
const VEOL = 11;
const VEOL2 = 16;
/** Largest queue read (the kernel buffers at most a few pages per direction). */
const QUEUE_LIMIT = 1 << 20;

/** Reads everything readable from `fd` now, without waiting (O_NONBLOCK for the length of it; put back after). */
export function drainTty(fd: Fd, packetMode = false): Buffer {
  const flags = fcntl(fd, F.GETFL);
  if (!(flags & O.NONBLOCK)) fcntl(fd, F.SETFL, flags | O.NONBLOCK);
  const chunks: Buffer[] = [];
  let total = 0;
  try {
    const buf = Buffer.alloc(65536);
    while (total < QUEUE_LIMIT) {
      let n: number;
      try {
        n = read(fd, buf);
      } catch (error) {
        // EAGAIN: nothing more; EIO: the other end is closed and nothing is left.
        if (isSysError(error, 'EAGAIN') || isSysError(error, 'EIO')) break;
        throw error;
      }
      if (n <= 0) break;
      // In packet mode each read starts with a status byte: 0 (TIOCPKT_DATA) before data, or a
      // status alone (flush/stop/start events), which is not data and is not kept.
      const chunk = packetMode ? (buf[0] === 0 ? buf.subarray(1, n) : buf.subarray(0, 0)) : buf.subarray(0, n);
      chunks.push(Buffer.from(chunk));
      total += chunk.length;
    }
  } finally {
    if (!(flags & O.NONBLOCK)) fcntl(fd, F.SETFL, flags);
  }
  return Buffer.concat(chunks);
}

function writeAll(fd: Fd, bytes: Uint8Array, what: string): void {
  const flags = fcntl(fd, F.GETFL);
  if (!(flags & O.NONBLOCK)) fcntl(fd, F.SETFL, flags | O.NONBLOCK);
  try {
    for (let done = 0; done < bytes.byteLength; ) {
      const n = write(fd, bytes.subarray(done));
      if (n <= 0) throw new Error(`${what}: the pty took ${done} of ${bytes.byteLength} bytes`);
      done += n;
    }
  } finally {
    if (!(flags & O.NONBLOCK)) fcntl(fd, F.SETFL, flags);
  }
}

/**
 * The slave's input queue, every stored byte (canonical mode off for the length of the read,
 * through `master`: the termios is the pair's), read from `slave`.
 */
export function drainPtyInput(master: Fd, slave: Fd): Buffer {
  const original = tcgets(master);
  if (!(original.lflag & ICANON)) return drainTty(slave);
  tcsets(master, { ...original, lflag: original.lflag & ~ICANON });
  try {
    return drainTty(slave);
  } finally {
    tcsets(master, original);
  }
}

/** Byte values that do not occur in `bytes` (and are not "\n"), highest first. */
function unusedBytes(bytes: Uint8Array, count: number): number[] {
  const used = new Set<number>(bytes);
  used.add(0x0a);
  used.add(0); // _POSIX_VDISABLE would still be mapped by n_tty: keep NUL literal too
  const out: number[] = [];
  for (let b = 255; b > 0 && out.length < count; b--) if (!used.has(b)) out.push(b);
  return out;
}


/**
 * A pty write reaches the other side's line discipline later, from a kernel worker (the flip
 * buffer is pushed asynchronously): waits (bounded) until `fd` has `bytes` ready to read, so
 * that the termios the bytes must be received with is still in place when they are.
 */
function waitReadable(fd: Fd, bytes: number, what: string): void {
  const deadline = Date.now() + 2000;
  for (;;) {
    const ready = tiocinq(fd);
    if (ready >= bytes) return;
    if (Date.now() > deadline) throw new Error(`${what}: ${ready} of ${bytes} bytes arrived within 2 s`);
    sleepSync(1);
  }
}

/**
 * Puts `output` back in the master's read queue (written to the slave with OPOST off) and
 * `input` back in the slave's (written to the master with the slave taking every byte
 * literally). `master` and `slave` are any open files of the pair; the termios is the same
 * through either and is set back to what it was.
 */
export function refillPty(master: Fd, slave: Fd, queues: { output?: Uint8Array; input?: Uint8Array }, what: string): void {
  const original: KernelTermios = tcgets(master);
  try {
    if (queues.output && queues.output.byteLength > 0) {
      // OPOST is applied by the slave's write itself: the termios may change back right after.
      const before = tiocinq(master);
      tcsets(master, { ...original, oflag: original.oflag & ~OPOST });
      writeAll(slave, queues.output, `${what} (master's queued output)`);
      waitReadable(master, before + queues.output.byteLength, `${what} (master's queued output)`);
    }
    if (queues.input && queues.input.byteLength > 0) {
      const input = queues.input;
      const cc = [...original.cc];
      const spare = unusedBytes(input, EDITING.length);
      if (spare.length === EDITING.length) EDITING.forEach((index, i) => (cc[index] = spare[i]!));
      const before = tiocinq(slave);
      tcsets(master, { ...original, iflag: original.iflag & ~IFLAGS_TRANSLATING, lflag: original.lflag & ~LFLAGS_REACTING, cc });
      writeAll(master, input, `${what} (slave's queued input)`);
      // In canonical mode only complete lines count as readable: up to the last line end.
      let readable = input.byteLength;
      if (original.lflag & ICANON) {
        const ends = [0x0a, original.cc[VEOL]!, ...(original.lflag & IEXTEN ? [original.cc[VEOL2]!] : [])].filter((c) => c !== 0);
        readable = Math.max(...ends.map((c) => input.lastIndexOf(c))) + 1;
      }
      waitReadable(slave, before + readable, `${what} (slave's queued input)`);
    }
  } finally {
    tcsets(master, original);
  }
}

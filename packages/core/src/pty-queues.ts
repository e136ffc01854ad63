// Bytes waiting in a pty pair, taken out and put back exactly (dump reads them and writes them
// back at once, so the dump changes nothing; restore puts them into the new pair).
//
// A pty pair has two queues a program can read:
//   - output: what the slave side wrote and the master has not read yet (read on the master);
//   - input: what the master wrote and the slave has not read yet (read on the slave, after the
//     slave's line discipline processed it: in canonical mode only complete lines are readable).
// The kernel has no way to peek at them, so they are read out and written back through the
// other end: output by a write to the slave, input by a write to the master. Both writes go
// through the slave's line discipline again, which would add to them (ONLCR turns the "\r\n"
// already there into "\r\r\n", ECHO sends input back to the master, ISIG turns ^C into a
// signal, ERASE eats the byte before it), so the slave's termios is changed for the length of
// the write and put back after: OPOST off for output; for input echo, signals, IEXTEN and the
// input translations off, and the canonical editing characters moved to byte values the data
// does not contain, so every byte is taken literally and each "\n" still ends a line.
//
// What cannot be read or put back: a partial line in canonical mode (not readable until it is
// complete; it is lost), where a line ended by VEOF ended (the read gives the line without the
// character; it comes back joined to the next one), and the status byte of packet mode (it is
// stripped, not kept). A pty is not a transport with delivery guarantees (CRIU says as much),
// but the common case (lines, raw bytes) comes back byte for byte.
import { F, fcntl, isSysError, O, read, tcgets, tcsets, tiocinq, write, type Fd, type KernelTermios } from '@criu-ts/sys';

/** termios bits (asm-generic/termbits.h). */
const OPOST = 0o1;
const IFLAGS_TRANSLATING = 0o1 /* IGNBRK */ | 0o10 /* PARMRK */ | 0o20 /* INPCK */ | 0o40 /* ISTRIP */ | 0o100 /* INLCR */
  | 0o200 /* IGNCR */ | 0o400 /* ICRNL */ | 0o1000 /* IUCLC */ | 0o2000 /* IXON */ | 0o10000 /* IXOFF */ | 0o20000 /* IMAXBEL */;
const LFLAGS_REACTING = 0o1 /* ISIG */ | 0o10 /* ECHO */ | 0o20 /* ECHOE */ | 0o40 /* ECHOK */ | 0o100 /* ECHONL */ | 0o100000 /* IEXTEN */;
/** Control character indexes that are special in canonical mode without IEXTEN. */
const VERASE = 2;
const VKILL = 3;
const VEOF = 4;
const VEOL = 11;
const ICANON = 0o2;
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

/** Byte values that do not occur in `bytes` (and are not "\n"), lowest first. */
function unusedBytes(bytes: Uint8Array, count: number): number[] {
  const used = new Set<number>(bytes);
  used.add(0x0a);
  used.add(0); // _POSIX_VDISABLE would still be mapped by n_tty: keep NUL literal too
  const out: number[] = [];
  for (let b = 255; b > 0 && out.length < count; b--) if (!used.has(b)) out.push(b);
  return out;
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));

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
    Atomics.wait(sleepCell, 0, 0, 1);
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
      const cc = [...original.cc];
      const spare = unusedBytes(queues.input, 4);
      if (spare.length === 4) [cc[VERASE], cc[VKILL], cc[VEOF], cc[VEOL]] = spare;
      const before = tiocinq(slave);
      tcsets(master, { ...original, iflag: original.iflag & ~IFLAGS_TRANSLATING, lflag: original.lflag & ~LFLAGS_REACTING, cc });
      writeAll(master, queues.input, `${what} (slave's queued input)`);
      // In canonical mode only complete lines count as readable.
      const canonical = (original.lflag & ICANON) !== 0;
      const readable = canonical ? queues.input.lastIndexOf(0x0a) + 1 : queues.input.byteLength;
      waitReadable(slave, before + readable, `${what} (slave's queued input)`);
    }
  } finally {
    tcsets(master, original);
  }
}

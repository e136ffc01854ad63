// Pipes and FIFOs: which pipe a descriptor is an end of, and the bytes buffered in it.
//
// The buffered bytes are read without taking them out of the pipe: criu-ts opens the pipe through
// /proc/PID/fd/N for reading (non-blocking: no writer is waited for), tee()s its contents into a
// pipe of its own of the same capacity, and reads that. The task's pipe keeps every byte, in
// order, so a dump that fails or leaves the task running changes nothing it can see.
import { close, F, fcntl, O, open, pipe2, read, SPLICE_F, tee, isSysError, type Fd } from '@criu-ts/sys';

export interface PipeContents {
  /** The pipe's capacity (F_GETPIPE_SZ), restored with F_SETPIPE_SZ. */
  readonly size: number;
  readonly bytes: Buffer;
}

/** The pipe inode number in a /proc/PID/fd link such as `pipe:[1234]`, or undefined. */
export function pipeInode(link: string): number | undefined {
  const match = /^pipe:\[(\d+)\]$/.exec(link);
  return match ? Number(match[1]) : undefined;
}

/** Buffered contents of the pipe (or FIFO) behind fd `fd` of task `pid`. */
export function readPipeContents(pid: number, fd: number): PipeContents {
  const reader = open(`/proc/${pid}/fd/${fd}`, O.RDONLY | O.NONBLOCK);
  let copy: [Fd, Fd] | undefined;
  try {
    const size = fcntl(reader, F.GETPIPE_SZ);
    copy = pipe2(O.CLOEXEC | O.NONBLOCK);
    // Our pipe must hold everything in one tee: at least the task pipe's capacity.
    if (fcntl(copy[1], F.GETPIPE_SZ) < size) fcntl(copy[1], F.SETPIPE_SZ, size);
    let length = 0;
    try {
      length = tee(reader, copy[1], size, SPLICE_F.NONBLOCK);
    } catch (error) {
      if (!isSysError(error, 'EAGAIN')) throw error; // EAGAIN: the pipe is empty
    }
    const bytes = Buffer.alloc(length);
    for (let done = 0; done < length; ) {
      const n = read(copy[0], bytes.subarray(done));
      if (n === 0) throw new Error(`pipe behind /proc/${pid}/fd/${fd}: the copy ended after ${done} of ${length} bytes`);
      done += n;
    }
    return { size, bytes };
  } finally {
    if (copy) {
      close(copy[0]);
      close(copy[1]);
    }
    close(reader);
  }
}

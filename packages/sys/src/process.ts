// Process-level calls: ids, signals, pidfds, kcmp, prctl.
import { sysCallNumber } from './ffi.js';
import { SYSCALL_NUMBERS as N } from './syscall-numbers.js';
import { asFd, asPid, type Fd, type Pid } from './types.js';

/** getpid(): the thread group id of the caller. */
export function getpid(): Pid {
  return asPid(sysCallNumber('getpid', N.getpid, []));
}

/** gettid(): the id of the calling thread (the one that owns any ptrace attachments it makes). */
export function gettid(): Pid {
  return asPid(sysCallNumber('gettid', N.gettid, []));
}

/** kill(pid, sig). */
export function kill(pid: Pid, sig: number): void {
  sysCallNumber('kill', N.kill, [pid, sig], `pid ${pid}`);
}

/** tgkill(tgid, tid, sig): a signal to one thread. */
export function tgkill(tgid: Pid, tid: Pid, sig: number): void {
  sysCallNumber('tgkill', N.tgkill, [tgid, tid, sig], `tid ${tid}`);
}

export const PIDFD_NONBLOCK = 0o4000;
export const PIDFD_THREAD = 0o200;

/** pidfd_open(pid, flags): a file descriptor that names exactly this process (no pid reuse race). */
export function pidfdOpen(pid: Pid, flags = 0): Fd {
  return asFd(sysCallNumber('pidfd_open', N.pidfd_open, [pid, flags], `pid ${pid}`));
}

/** pidfd_getfd(pidfd, targetfd, 0): a duplicate of another process's fd (needs PTRACE_MODE_ATTACH_REALCREDS). */
export function pidfdGetfd(pidfd: Fd, targetFd: number): Fd {
  return asFd(sysCallNumber('pidfd_getfd', N.pidfd_getfd, [pidfd, targetFd, 0], `pidfd ${pidfd} fd ${targetFd}`));
}

/** pidfd_send_signal(pidfd, sig, NULL, 0). */
export function pidfdSendSignal(pidfd: Fd, sig: number): void {
  sysCallNumber('pidfd_send_signal', N.pidfd_send_signal, [pidfd, sig, 0, 0], `pidfd ${pidfd}`);
}

export const KCMP = { FILE: 0, VM: 1, FILES: 2, FS: 3, SIGHAND: 4, IO: 5, SYSVSEM: 6, EPOLL_TFD: 7 } as const;

/**
 * kcmp(pid1, pid2, type, idx1, idx2): 0 when the two resources are the same kernel object, 1 or 2
 * for an ordering, 3 when they differ but cannot be ordered.
 */
export function kcmp(pid1: Pid, pid2: Pid, type: number, idx1 = 0, idx2 = 0): number {
  return sysCallNumber('kcmp', N.kcmp, [pid1, pid2, type, idx1, idx2], `pids ${pid1} ${pid2}`);
}

/**
 * kcmp(KCMP_EPOLL_TFD): 0 when fd `fd1` of pid1 is the file that epoll instance `epfd` of pid2
 * watches as its target `tfd` (the `toff`-th registration of that fd number).
 */
export function kcmpEpollTarget(pid1: Pid, fd1: number, pid2: Pid, epfd: number, tfd: number, toff = 0): number {
  const slot = Buffer.alloc(12);
  slot.writeUInt32LE(epfd, 0);
  slot.writeUInt32LE(tfd, 4);
  slot.writeUInt32LE(toff, 8);
  return sysCallNumber('kcmp', N.kcmp, [pid1, pid2, KCMP.EPOLL_TFD, fd1, slot], `pid ${pid1} fd ${fd1} vs epoll ${epfd} target ${tfd} of ${pid2}`);
}

/** prctl(option, a2..a5) on the caller. */
export function prctl(option: number, a2: number | bigint = 0, a3: number | bigint | Uint8Array = 0, a4: number | bigint = 0, a5: number | bigint = 0): number {
  return sysCallNumber('prctl', N.prctl, [option, a2, a3, a4, a5], `option ${option}`);
}

/** CLONE_NEWNET, the nstype of setns() for a network namespace. */
export const CLONE_NEWNET = 0x40000000;

/**
 * setns(fd, nstype): moves the *calling thread* into the namespace `fd` refers to (an open
 * /proc/PID/ns/net or a bind mount such as /run/netns/NAME). For a network namespace the
 * kernel allows it in a multi-threaded process and only the caller moves: sockets it creates
 * afterwards, and processes it forks, belong to the new namespace (setns(2)).
 */
export function setns(fd: Fd, nstype: number): void {
  sysCallNumber('setns', N.setns, [fd, nstype], `fd ${fd}`);
}

const sleepCell = new Int32Array(new SharedArrayBuffer(4));
/**
 * Blocks the calling thread for `ms` milliseconds (fractions allowed). criu-ts's waits on the
 * kernel (a stopped task, a ring filling, loopback delivering) are synchronous: the frozen tasks
 * must not wait on Node's event loop.
 */
export function sleepSync(ms: number): void {
  Atomics.wait(sleepCell, 0, 0, ms);
}

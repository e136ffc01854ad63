// Files on the kernel's anonymous inode: eventfd, epoll, signalfd, timerfd. Their whole state is
// in /proc/PID/fdinfo/N (proc(5)), so nothing has to run in the task to read it.
import { kcmpEpollTarget, type Pid } from '@criu-ts/sys';
import type { DecodedMessage } from '@criu-ts/images';

/** The kind in a /proc/PID/fd link such as `anon_inode:[eventfd]` or `anon_inode:inotify`. */
export function anonInodeKind(link: string): string | undefined {
  const match = /^anon_inode:\[?([^\]]*)\]?$/.exec(link);
  return match ? match[1] : undefined;
}

function field(fdinfo: string, name: string): string | undefined {
  return new RegExp(`^${name}:\\s*(.*)$`, 'm').exec(fdinfo)?.[1]?.trim();
}

function required(fdinfo: string, name: string, what: string): string {
  const value = field(fdinfo, name);
  if (value === undefined) throw new Error(`${what}: fdinfo has no "${name}" line (kernel without CONFIG_CHECKPOINT_RESTORE?)`);
  return value;
}

/**
 * EFD_SEMAPHORE is kept in the eventfd, not in the file flags, and CRIU's image has no field for
 * it. Bit 0 of the flags is free for an eventfd (its access mode is always O_RDWR, 2), so
 * criu-ts records semaphore mode there; CRIU ignores the bit when it restores (F_SETFL drops it).
 */
export const EVENTFD_SEMAPHORE_FLAG = 1;

export function eventfdEntry(fdinfo: string, flags: number, what: string): DecodedMessage {
  const counter = BigInt('0x' + required(fdinfo, 'eventfd-count', what));
  const semaphore = field(fdinfo, 'eventfd-semaphore') === '1';
  return { flags: semaphore ? flags | EVENTFD_SEMAPHORE_FLAG : flags, counter };
}

export function signalfdEntry(fdinfo: string, flags: number, what: string): DecodedMessage {
  return { flags, sigmask: BigInt('0x' + required(fdinfo, 'sigmask', what)) };
}

export function timerfdEntry(fdinfo: string, flags: number, what: string): DecodedMessage {
  const pair = (name: string): [bigint, bigint] => {
    const match = /^\((\d+),\s*(\d+)\)$/.exec(required(fdinfo, name, what));
    if (!match) throw new Error(`${what}: cannot parse fdinfo "${name}"`);
    return [BigInt(match[1]!), BigInt(match[2]!)];
  };
  const [vsec, vnsec] = pair('it_value');
  const [isec, insec] = pair('it_interval');
  return {
    flags, clockid: Number(required(fdinfo, 'clockid', what)), ticks: BigInt(required(fdinfo, 'ticks', what)),
    settime_flags: parseInt(required(fdinfo, 'settime flags', what), 8), vsec, vnsec, isec, insec,
  };
}

export interface EpollTargetLine {
  readonly tfd: number;
  readonly events: number;
  readonly data: bigint;
  readonly pos: bigint;
  readonly ino: bigint;
  readonly sdev: number;
}

export function epollTargets(fdinfo: string): EpollTargetLine[] {
  const targets: EpollTargetLine[] = [];
  const line = /^tfd:\s*(\d+)\s+events:\s*([0-9a-f]+)\s+data:\s*([0-9a-f]+)\s+pos:\s*(\d+)\s+ino:\s*([0-9a-f]+)\s+sdev:\s*([0-9a-f]+)/gm;
  for (let m = line.exec(fdinfo); m; m = line.exec(fdinfo)) {
    targets.push({
      tfd: Number(m[1]), events: parseInt(m[2]!, 16), data: BigInt('0x' + m[3]), pos: BigInt(m[4]!),
      ino: BigInt('0x' + m[5]), sdev: parseInt(m[6]!, 16),
    });
  }
  return targets;
}

/**
 * The epoll entry, with each target named by an fd of the task that is the watched file. The
 * number epoll recorded is checked with kcmp(KCMP_EPOLL_TFD): a target fd closed or replaced
 * after it was added (epoll keeps watching the file while a dup of it lives) is found among the
 * task's other fds; a watched file no fd of the task holds cannot be restored and is refused.
 */
export function eventpollEntry(pid: Pid, epfd: number, fdinfo: string, flags: number, taskFds: readonly number[]): DecodedMessage {
  const seenNumbers = new Map<number, number>();
  const tfd = epollTargets(fdinfo).map((target) => {
    const toff = seenNumbers.get(target.tfd) ?? 0;
    seenNumbers.set(target.tfd, toff + 1);
    const same = (fd: number): boolean => {
      try {
        return kcmpEpollTarget(pid, fd, pid, epfd, target.tfd, toff) === 0;
      } catch {
        return false;
      }
    };
    const fd = same(target.tfd) ? target.tfd : taskFds.find(same);
    if (fd === undefined) {
      throw new Error(`epoll fd ${epfd} watches a file (inode ${target.ino}, once fd ${target.tfd}) that no fd of process ${pid} holds any more`);
    }
    return { id: 0, tfd: fd, events: target.events, data: target.data, dev: target.sdev, inode: target.ino, pos: target.pos };
  });
  return { flags, tfd };
}

// AF_NETLINK sockets: the netlink_sk_entry CRIU writes for each (files.img, type NETLINKSK).
//
// Read from criu-ts's duplicate of the task's fd (pidfd_getfd, the same socket):
//   protocol      SO_PROTOCOL
//   portid        getsockname's nl_pid (0 while the socket has never been bound or autobound)
//   groups        NETLINK_LIST_MEMBERSHIPS: the bitmap of multicast groups joined, as u32 words
//                 (bind's nl_groups only reaches the first 32; CRIU stores the same bitmap)
//   dst_portid,   getpeername's nl_pid and nl_groups (0, 0 unless connected); state is CRIU's
//   dst_group     NETLINK_CONNECTED (1) when either is set, NETLINK_UNCONNECTED (0) otherwise
//   opts          the SOL_SOCKET options, as for inet sockets
// Refused, naming the fd: a socket with messages waiting in it. They come from the kernel (or
// another socket) and cannot be read without taking them; nothing could put them back as the
// kernel's (a program may check that a message comes from portid 0), so the dump says so and
// the task runs on; a moment later the queue is usually empty again.
import type { DecodedMessage } from '@criu-ts/images';
import { getpeername, getsockname, getsockopt, pollOne, POLL, type Fd } from '@criu-ts/sys';
import { SocketRefused } from './inet-sockets.js';
import { socketOptions } from './unix-sockets.js';

const SOL_NETLINK = 270;
const NETLINK_LIST_MEMBERSHIPS = 9;
/** ids-N.img numbers the task's namespaces in CRIU's order (dump.ts): net is the second. */
const NET_NS_ID = 2;

/** struct sockaddr_nl { u16 family; u16 pad; u32 nl_pid; u32 nl_groups; } */
function netlinkAddress(raw: Buffer): { portid: number; groups: number } {
  return raw.length >= 12 ? { portid: raw.readUInt32LE(4), groups: raw.readUInt32LE(8) } : { portid: 0, groups: 0 };
}

/** The multicast groups socket `dup` has joined, as bitmap words, trailing zero words dropped. */
function joinedGroups(dup: Fd): number[] {
  const bitmap = getsockopt(dup, SOL_NETLINK, NETLINK_LIST_MEMBERSHIPS, 256);
  const words: number[] = [];
  for (let i = 0; i + 4 <= bitmap.length; i += 4) words.push(bitmap.readUInt32LE(i));
  while (words.length > 0 && words[words.length - 1] === 0) words.pop();
  return words;
}

/**
 * The nlsk member (without id and fown, which FileTable adds) of netlink socket `dup` (criu-ts's
 * duplicate of fd `fd`, socket:[ino]) with file flags `flags`. Precondition: its task is frozen.
 */
export function netlinkSocketEntry(dup: Fd, fd: number, ino: number, flags: number, protocol: number): DecodedMessage {
  if ((pollOne(dup, POLL.IN, 0) & POLL.IN) !== 0) {
    throw new SocketRefused(fd, ino, 'netlink socket', 'messages are waiting in it; they cannot be saved without taking them from the program, nor given back as the kernel\'s (dump again once it has read them)');
  }
  const self = netlinkAddress(getsockname(dup));
  const peer = netlinkAddress(getpeername(dup));
  // getpeername gives the destination group as a one-bit mask (groups 1-32 only); CRIU's
  // dst_group is the group's number.
  const dstGroup = peer.groups === 0 ? 0 : 32 - Math.clz32(peer.groups & -peer.groups);
  const entry: DecodedMessage = {
    ino, protocol, state: peer.portid !== 0 || dstGroup !== 0 ? 1 : 0, flags,
    portid: self.portid, groups: joinedGroups(dup), dst_portid: peer.portid, dst_group: dstGroup,
    opts: socketOptions(dup, false), ns_id: NET_NS_ID,
  };
  return entry;
}

// AF_NETLINK sockets on restore: files.img NETLINKSK entries (netlink_sk_entry), checked, then made
// by criu-ts and handed to the task like inet sockets (files.ts).
//
//   socket(AF_NETLINK, SOCK_RAW, protocol)    (netlink makes no difference between RAW and DGRAM;
//                                              CRIU's entry does not record which it was)
//   the SOL_SOCKET options as dumped
//   bind(nl_pid = portid, nl_groups = first group word)  when the socket had a portid or groups:
//                                              the same portid, so that what the program sent
//                                              before (requests still to be answered, a peer
//                                              that knows its address) still reaches it
//   NETLINK_ADD_MEMBERSHIP for each group past the first 32
//   connect(dst_portid, dst_group)            when it was connected
// A portid still taken (the dumped process alive, or another socket) fails the bind with
// EADDRINUSE, named.
import { bind, connect, setsockopt, socket, type Fd, close } from '@criu-ts/sys';
import { applySocketOptions, socketSteps } from './unix-sockets.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any
type Invalid = (message: string, evidence?: Record<string, unknown>) => never;

const AF_NETLINK = 16;
const SOCK_RAW = 3;
const SOL_NETLINK = 270;
const NETLINK_ADD_MEMBERSHIP = 1;
/** MAX_LINKS: netlink protocols are numbered below it. */
const NETLINK_PROTOCOLS = 32;

export interface NetlinkSocketImage {
  readonly id: number;
  readonly ino: number;
  readonly protocol: number;
  readonly flags: number;
  readonly portid: number;
  /** Multicast group bitmap words (bit n of word w: group 32w + n + 1). */
  readonly groups: readonly number[];
  readonly dstPortid: number;
  readonly dstGroup: number;
  readonly opts: Msg;
}

/** One NETLINKSK files.img entry, checked (`where` names it in errors). */
export function readNetlinkSocket(id: number, e: Msg, where: string, invalid: Invalid): NetlinkSocketImage {
  const protocol = Number(e.protocol);
  if (!(protocol >= 0 && protocol < NETLINK_PROTOCOLS)) invalid(`${where}: netlink protocol ${protocol} is not one Linux has (0-${NETLINK_PROTOCOLS - 1})`, { protocol });
  const groups = ((e.groups as unknown[] | undefined) ?? []).map((w) => Number(w) >>> 0);
  const dstGroup = Number(e.dst_group ?? 0);
  if (dstGroup > 32) invalid(`${where}: netlink destination group ${dstGroup}: connect() reaches groups 1-32 only`, { dstGroup });
  return {
    id, ino: Number(e.ino), protocol, flags: Number(e.flags ?? 0), portid: Number(e.portid ?? 0) >>> 0, groups,
    dstPortid: Number(e.dst_portid ?? 0) >>> 0, dstGroup, opts: (e.opts as Msg | undefined) ?? {},
  };
}

export function describeNetlinkSocket(s: NetlinkSocketImage): string {
  return `netlink socket id ${s.id} (socket:[${s.ino}], protocol ${s.protocol}, portid ${s.portid})`;
}

/** struct sockaddr_nl */
function netlinkAddress(portid: number, groups: number): Buffer {
  const a = Buffer.alloc(12);
  a.writeUInt16LE(AF_NETLINK, 0);
  a.writeUInt32LE(portid >>> 0, 4);
  a.writeUInt32LE(groups >>> 0, 8);
  return a;
}

/** Makes the socket in criu-ts (see the module doc); returns its fd, for the task to take. */
export function createNetlinkSocket(s: NetlinkSocketImage): Fd {
  const what = describeNetlinkSocket(s);
  const step = socketSteps(what);
  const fd = step('socket', () => socket(AF_NETLINK, SOCK_RAW, s.protocol));
  try {
    applySocketOptions(fd, s.opts, what);
    const firstWord = s.groups[0] ?? 0;
    if (s.portid !== 0 || firstWord !== 0) step(`bind to portid ${s.portid}`, () => bind(fd, netlinkAddress(s.portid, firstWord)));
    s.groups.forEach((word, w) => {
      if (w === 0) return;
      for (let bit = 0; bit < 32; bit++) {
        if ((word >>> bit) & 1) step(`joining group ${w * 32 + bit + 1}`, () => setsockopt(fd, SOL_NETLINK, NETLINK_ADD_MEMBERSHIP, w * 32 + bit + 1));
      }
    });
    if (s.dstPortid !== 0 || s.dstGroup !== 0) {
      step(`connect to portid ${s.dstPortid}, group ${s.dstGroup}`, () => connect(fd, netlinkAddress(s.dstPortid, s.dstGroup === 0 ? 0 : 2 ** (s.dstGroup - 1))));
    }
    return fd;
  } catch (error) {
    close(fd);
    throw error;
  }
}

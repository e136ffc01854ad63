// AF_PACKET sockets: the packet_sock_entry CRIU writes for each (files.img, type PACKETSK).
//
// From NETLINK_SOCK_DIAG's packet_diag (one dump per dump of a tree): type, protocol, the bound
// interface, TPACKET version, reserve, copy threshold, timestamp source, the AUXDATA, ORIGDEV,
// VNET_HDR and LOSS flags, multicast/promiscuous memberships; SOL_SOCKET options (with a classic
// BPF filter, as tcpdump and dhclient attach) as for the other sockets.
// Refused, naming the fd:
//   - a socket with a receive or transmit ring (PACKET_RX_RING/TX_RING): the ring is memory
//     mapped into the task, and bringing the mapping back onto a new ring is not done yet;
//   - a member of a fanout group: the group's other members may be outside the dump;
//   - a socket with packets waiting: they cannot be read without taking them from the program.
import type { DecodedMessage } from '@criu-ts/images';
import { packetDiagDump, PDI, pollOne, POLL, type Fd, type PacketDiagSocket } from '@criu-ts/sys';
import { SocketRefused } from './inet-sockets.js';
import { socketOptions } from './unix-sockets.js';

/** ids-N.img numbers the task's namespaces in CRIU's order (dump.ts): net is the second. */
const NET_NS_ID = 2;

/** What packet_diag says of every packet socket of the netns, read once per dump (the tasks are frozen). */
export class PacketSocketTable {
  private sockets: Map<number, PacketDiagSocket> | undefined;

  /** The psk member (without id and fown) of packet socket `dup` (fd `fd`, socket:[ino]). */
  entry(dup: Fd, fd: number, ino: number, flags: number): DecodedMessage {
    this.sockets ??= packetDiagDump();
    const d = this.sockets.get(ino);
    const refuse = (reason: string): never => {
      throw new SocketRefused(fd, ino, 'packet socket', reason);
    };
    if (!d) return refuse('sock_diag does not know it (another network namespace?)');
    if (d.rxRing || d.txRing) refuse(`it has a ${[d.rxRing ? 'receive' : '', d.txRing ? 'transmit' : ''].filter(Boolean).join(' and ')} ring (PACKET_RX_RING/TX_RING), which cannot be brought back yet`);
    if (d.fanout !== undefined) refuse(`it is in fanout group ${d.fanout & 0xffff}, whose other members may be outside the dump`);
    if ((pollOne(dup, POLL.IN, 0) & POLL.IN) !== 0) refuse('packets are waiting in it; they cannot be read without taking them from the program (dump again once it has read them)');
    return {
      type: d.type, protocol: d.protocol, flags, ifindex: d.ifindex, opts: socketOptions(dup, false),
      version: d.version, reserve: d.reserve, aux_data: (d.flags & PDI.AUXDATA) !== 0, orig_dev: (d.flags & PDI.ORIGDEV) !== 0,
      vnet_hdr: (d.flags & PDI.VNETHDR) !== 0, loss: (d.flags & PDI.LOSS) !== 0, timestamp: d.tstamp, copy_thresh: d.copyThresh,
      mclist: d.mclist.map((m) => ({ index: m.index, type: m.type, addr: new Uint8Array(m.addr) })),
      ns_id: NET_NS_ID,
    };
  }
}

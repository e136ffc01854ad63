// AF_PACKET sockets: the packet_sock_entry CRIU writes for each (files.img, type PACKETSK).
//
// From NETLINK_SOCK_DIAG's packet_diag (one dump per dump of a tree): type, protocol, the bound
// interface, TPACKET version, reserve, copy threshold, timestamp source, the AUXDATA, ORIGDEV,
// VNET_HDR and LOSS flags, multicast/promiscuous memberships; SOL_SOCKET options (with a classic
// BPF filter, as tcpdump and dhclient attach) as for the other sockets.
// Rings (PACKET_RX_RING/TX_RING): their geometry in rx_ring/tx_ring as CRIU writes it, plus where
// the kernel stands in them (rx_ring_head/tx_ring_head) and their bytes (packet-ring-<id>.img),
// taken by packet-rings/rings.ts; the task's mapping of them is a VMA of status SOCKET whose
// shmid is this socket's file id (memory.ts).
// Refused, naming the fd:
//   - a member of a fanout group balancing by a BPF program (PACKET_FANOUT_CBPF/EBPF: the
//     kernel cannot give the program back); other fanout groups are kept (fanout: id | type << 16
//     | flags << 24, as getsockopt and setsockopt PACKET_FANOUT take it), their members join the
//     group again at restore, with members outside the dump if it still exists;
//   - a socket with packets waiting: they cannot be read without taking them from the program
//     (packets waiting in a receive ring are part of the ring, and saved).
import type { DecodedMessage } from '@criu-ts/images';
import { getsockopt, PACKET_OPT, SOL, packetDiagDump, PDI, pollOne, POLL, type Fd, type PacketDiagSocket, type PacketRingConfig } from '@criu-ts/sys';
import { SocketRefused } from './inet-sockets.js';
import { ringRefusal, snapshotRings, TPACKET, type PacketRings } from '../../packet-rings/rings.js';
import { socketOptions } from './unix-sockets.js';

/** PACKET_FANOUT modes whose balancing is a program attached with PACKET_FANOUT_DATA. */
const FANOUT = { CBPF: 6, EBPF: 7 } as const;

/** ids-N.img numbers the task's namespaces in CRIU's order (dump.ts): net is the second. */
const NET_NS_ID = 2;

/** What packet_diag says of every packet socket of the netns, read once per dump (the tasks are frozen). */
export class PacketSocketTable {
  private sockets: Map<number, PacketDiagSocket> | undefined;

  /** The psk member (without id and fown) of packet socket `dup` (fd `fd`, socket:[ino]), and its rings' bytes if it has rings. */
  entry(dup: Fd, fd: number, ino: number, flags: number): { entry: DecodedMessage; ringBytes?: Buffer } {
    this.sockets ??= packetDiagDump();
    const d = this.sockets.get(ino);
    const refuse = (reason: string): never => {
      throw new SocketRefused(fd, ino, 'packet socket', reason);
    };
    if (!d) return refuse('sock_diag does not know it (another network namespace?)');
    // packet_diag gives the group's id and mode but not its flags (ROLLOVER, DEFRAG...);
    // getsockopt(PACKET_FANOUT) gives all three, in the form PACKET_FANOUT takes.
    const fanout = d.fanout === undefined ? undefined : getsockopt(dup, SOL.PACKET, PACKET_OPT.FANOUT).readUInt32LE(0);
    if (fanout !== undefined) {
      const type = (fanout >>> 16) & 0xff;
      if (type === FANOUT.CBPF || type === FANOUT.EBPF) refuse(`it is in fanout group ${fanout & 0xffff}, which balances by a BPF program the kernel cannot give back (PACKET_FANOUT_${type === FANOUT.CBPF ? 'CBPF' : 'EBPF'})`);
    }
    const rings: PacketRings = { version: d.version, rx: d.rxRing, tx: d.txRing };
    let snapshot: ReturnType<typeof snapshotRings> | undefined;
    if (rings.rx || rings.tx) {
      const why = ringRefusal(rings);
      if (why) refuse(why);
      try {
        snapshot = snapshotRings(dup, rings);
      } catch (error) {
        refuse(`its rings could not be saved: ${(error as Error).message}`);
      }
    }
    // With a receive ring, POLLIN means a frame in the ring for the program: saved with it.
    if (!rings.rx && (pollOne(dup, POLL.IN, 0) & POLL.IN) !== 0) {
      refuse('packets are waiting in it; they cannot be read without taking them from the program (dump again once it has read them)');
    }
    const entry: DecodedMessage = {
      type: d.type, protocol: d.protocol, flags, ifindex: d.ifindex, opts: socketOptions(dup, false),
      version: d.version, reserve: d.reserve, aux_data: (d.flags & PDI.AUXDATA) !== 0, orig_dev: (d.flags & PDI.ORIGDEV) !== 0,
      vnet_hdr: (d.flags & PDI.VNETHDR) !== 0, loss: (d.flags & PDI.LOSS) !== 0, timestamp: d.tstamp, copy_thresh: d.copyThresh,
      mclist: d.mclist.map((m) => ({ index: m.index, type: m.type, addr: new Uint8Array(m.addr) })),
      ns_id: NET_NS_ID,
      ...(fanout !== undefined ? { fanout } : {}),
    };
    if (rings.rx) entry.rx_ring = ringEntry(rings.rx);
    if (rings.tx) entry.tx_ring = ringEntry(rings.tx);
    if (!snapshot) return { entry };
    if (rings.rx && rings.version === TPACKET.V3) {
      entry.rx_ring_head = snapshot.state.rxActiveBlock;
      entry.rx_ring_block_offset = snapshot.state.rxBlockOffset;
      entry.rx_ring_block_last = snapshot.state.rxBlockLast;
      entry.rx_ring_frozen = snapshot.state.rxFrozen;
    } else if (rings.rx) entry.rx_ring_head = snapshot.state.rxHead;
    if (rings.tx) entry.tx_ring_head = snapshot.state.txHead;
    return { entry, ringBytes: snapshot.bytes };
  }
}

function ringEntry(r: PacketRingConfig): DecodedMessage {
  return {
    block_size: r.blockSize, block_nr: r.blockNr, frame_size: r.frameSize, frame_nr: r.frameNr,
    retire_tmo: r.retireTmo, sizeof_priv: r.sizeofPriv, features: r.features,
  };
}

// Where the kernel is in a packet socket's rings: the frame it fills next (RX) or sends next (TX),
// and for a TPACKET_V3 receive ring the block it fills and how far. No socket option or sock_diag
// answer tells these, yet a ring only works if the kernel and the program agree on them: the
// program waits on "its" frame, the kernel writes "its" frame. So they are read from the
// kernel's struct packet_sock, by a BPF task_file iterator run over criu-ts's own descriptor of
// the socket; field offsets come from this kernel's BTF (btf.ts), never from a header.
//
//   for the one task (criu-ts), for each open file: not fd F -> skip
//   socket = file->private_data; sk = socket->sk          (struct packet_sock starts with its sock)
//   out[i] = 8 bytes at sk + offset[i]                     (bpf_probe_read_kernel)
//   bpf_seq_write(out)                                     -> what read() of the iterator returns
import { readSync } from 'node:fs';
import {
  BPF_ATTACH, BPF_PROG_TYPE, Btf, BpfProgram, bpfIterCreate, bpfLinkCreateTaskIter, bpfProgLoad, close, FP, R0, R1, R2, R3, R6, R7, R9, setsockopt, socket, AF_PACKET, PACKET_OPT, SOCK, SOL, type Fd,
} from '@criu-ts/sys';

const HELPER = { PROBE_READ_KERNEL: 113, SEQ_WRITE: 127 } as const;

/** The kernel's position in each ring of one packet socket. */
export interface PacketRingKernelState {
  /** Index of the frame the kernel fills next (V1/V2 receive ring). */
  readonly rxHead: number;
  /** Index of the frame the kernel sends next (transmit ring, any version). */
  readonly txHead: number;
  /** TPACKET_V3 receive ring: the block being filled, and the offset in it where the next packet goes. */
  readonly rxActiveBlock: number;
  readonly rxBlockOffset: number;
  /** TPACKET_V3: offset in the block of the last packet put there (the block's start past its header when none). */
  readonly rxBlockLast: number;
  /** TPACKET_V3: the kernel found its next block still the program's and stopped ("frozen" queue). */
  readonly rxFrozen: boolean;
  /** TPACKET_V3: the most one packet may take in a block (header included). */
  readonly rxMaxFrameLen: number;
}

type FieldPath = readonly [string, readonly string[]];
const FIELDS = {
  rxHead: ['packet_sock', ['rx_ring', 'head']],
  txHead: ['packet_sock', ['tx_ring', 'head']],
  rxActiveBlock: ['packet_sock', ['rx_ring', 'prb_bdqc', 'kactive_blk_num']],
  rxNext: ['packet_sock', ['rx_ring', 'prb_bdqc', 'nxt_offset']],
  rxBlockStart: ['packet_sock', ['rx_ring', 'prb_bdqc', 'pkblk_start']],
  rxPrev: ['packet_sock', ['rx_ring', 'prb_bdqc', 'prev']],
  rxFrozen: ['packet_sock', ['rx_ring', 'prb_bdqc', 'reset_pending_on_curr_blk']],
  rxMaxFrameLen: ['packet_sock', ['rx_ring', 'prb_bdqc', 'max_frame_len']],
} as const satisfies Record<string, FieldPath>;
type FieldName = keyof typeof FIELDS;
const ORDER = Object.keys(FIELDS) as FieldName[];

/** The iterator program for criu-ts's fd `fd`, reading ORDER's fields (8 bytes each). */
function program(fd: number, btf: Btf): Buffer {
  const privateData = btf.field('file', ['private_data']).offset;
  const socketSk = btf.field('socket', ['sk']).offset;
  if (btf.field('packet_sock', ['sk']).offset !== 0) throw new Error('kernel BTF: struct packet_sock does not start with its struct sock');
  const fields = ORDER.map((name) => {
    const [struct, path] = FIELDS[name];
    const f = btf.field(struct, path);
    if (f.size > 8) throw new Error(`kernel BTF: ${struct}.${path.join('.')} is ${f.size} bytes`);
    return f.offset;
  });
  const out = -8 * (fields.length + 1); // out[] below the pointer slot at fp-8
  const p = new BpfProgram()
    .movReg(R6, R1)
    // ctx (struct bpf_iter__task_file): meta at 0, task at 8, fd at 16, file at 24; 8-byte loads only
    .load('DW', R7, R6, 24)
    .jumpIfImm('eq', R7, 0, 'out')
    .load('DW', R2, R6, 16)
    .jump32IfImm('ne', R2, fd, 'out')
    .movReg(R1, FP).addImm(R1, -8).movImm(R2, 8).movReg(R3, R7).addImm(R3, privateData).callHelper(HELPER.PROBE_READ_KERNEL)
    .load('DW', R3, FP, -8)
    .jumpIfImm('eq', R3, 0, 'out')
    .movReg(R1, FP).addImm(R1, -8).movImm(R2, 8).addImm(R3, socketSk).callHelper(HELPER.PROBE_READ_KERNEL)
    .load('DW', R9, FP, -8)
    .jumpIfImm('eq', R9, 0, 'out');
  fields.forEach((offset, i) => {
    p.movReg(R1, FP).addImm(R1, out + 8 * i).movImm(R2, 8).movReg(R3, R9).addImm(R3, offset).callHelper(HELPER.PROBE_READ_KERNEL);
  });
  p.load('DW', R1, R6, 0) // meta
    .load('DW', R1, R1, 0) // meta->seq
    .movReg(R2, FP).addImm(R2, out).movImm(R3, 8 * fields.length).callHelper(HELPER.SEQ_WRITE)
    .label('out')
    .movImm(R0, 0)
    .exit();
  return p.assemble();
}

/**
 * Reads the kernel's ring positions of packet socket `fd` (a descriptor of criu-ts's own), as
 * often as asked: the program is loaded and attached once (about a millisecond), each read()
 * runs it again. close() when done.
 */
export class PacketRingKernelReader {
  private readonly prog: Fd;
  private readonly link: Fd;
  private readonly buf = Buffer.alloc(8 * ORDER.length + 8);

  constructor(private readonly fd: Fd) {
    const btf = Btf.vmlinux();
    const target = btf.funcId('bpf_iter_task_file');
    if (target === undefined) throw new Error('this kernel has no task_file BPF iterator (bpf_iter_task_file), needed to read a packet ring\'s position');
    this.prog = bpfProgLoad({
      type: BPF_PROG_TYPE.TRACING, expectedAttachType: BPF_ATTACH.TRACE_ITER, attachBtfId: target,
      instructions: program(fd, btf), license: 'GPL', name: 'criu_ts_pring',
    });
    try {
      this.link = bpfLinkCreateTaskIter(this.prog, process.pid);
    } catch (error) {
      close(this.prog);
      throw error;
    }
  }

  read(): PacketRingKernelState {
    const iter = bpfIterCreate(this.link);
    const buf = this.buf;
    try {
      let got = 0;
      for (let n; got < buf.length && (n = readSync(iter, buf, got, buf.length - got, null)) > 0; ) got += n;
      if (got !== 8 * ORDER.length) throw new Error(`packet ring iterator for fd ${this.fd} gave ${got} bytes, not ${8 * ORDER.length} (is fd ${this.fd} a socket?)`);
    } finally {
      close(iter);
    }
    const v = (name: FieldName) => buf.readBigUInt64LE(8 * ORDER.indexOf(name));
    return {
      rxHead: Number(v('rxHead') & 0xffffffffn),
      txHead: Number(v('txHead') & 0xffffffffn),
      rxActiveBlock: Number(v('rxActiveBlock') & 0xffffn),
      rxBlockOffset: v('rxNext') === 0n ? 0 : Number(v('rxNext') - v('rxBlockStart')),
      rxBlockLast: v('rxPrev') === 0n ? 0 : Number(v('rxPrev') - v('rxBlockStart')),
      rxFrozen: (v('rxFrozen') & 0xffn) !== 0n,
      rxMaxFrameLen: Number(v('rxMaxFrameLen') & 0xffffffffn),
    };
  }

  close(): void {
    close(this.link);
    close(this.prog);
  }
}

/** One read of `fd`'s ring positions (see PacketRingKernelReader, for more than one). */
export function readPacketRingKernelState(fd: Fd): PacketRingKernelState {
  const reader = new PacketRingKernelReader(fd);
  try {
    return reader.read();
  } finally {
    reader.close();
  }
}

/**
 * For `criu-ts check`: reads the position of a small receive ring on a packet socket of this
 * process (true), or says why it cannot (no BTF, no task_file iterator, no AF_PACKET...).
 */
export function probePacketRingPosition(): true | string {
  let fd: Fd | undefined;
  try {
    fd = socket(AF_PACKET, SOCK.RAW, 0);
    setsockopt(fd, SOL.PACKET, PACKET_OPT.VERSION, 1 /* TPACKET_V2 */);
    const req = Buffer.alloc(16); // tpacket_req: one 4 KiB block of two 2 KiB frames
    req.writeUInt32LE(4096, 0);
    req.writeUInt32LE(1, 4);
    req.writeUInt32LE(2048, 8);
    req.writeUInt32LE(2, 12);
    setsockopt(fd, SOL.PACKET, PACKET_OPT.RX_RING, req);
    const state = readPacketRingKernelState(fd);
    return state.rxHead === 0 ? true : `a new ring reads as being at frame ${state.rxHead}, not 0`;
  } catch (error) {
    return (error as Error).message;
  } finally {
    if (fd !== undefined) close(fd);
  }
}

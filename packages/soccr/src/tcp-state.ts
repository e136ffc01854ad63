/**
 * The saved form of one TCP connection, independent of how it is stored
 * (CRIU image form: image-form.ts; compact binary form: blob.ts).
 */
import type { sock } from '@criu-ts/sys';

export type InetAddress = sock.InetAddress;

/** TCP states as numbered by the kernel (include/net/tcp_states.h). */
export const TcpState = {
  ESTABLISHED: 1,
  SYN_SENT: 2,
  SYN_RECV: 3,
  FIN_WAIT1: 4,
  FIN_WAIT2: 5,
  TIME_WAIT: 6,
  CLOSE: 7,
  CLOSE_WAIT: 8,
  LAST_ACK: 9,
  LISTEN: 10,
  CLOSING: 11,
} as const;
export type TcpStateName = keyof typeof TcpState;

export function tcpStateName(state: number): TcpStateName | `UNKNOWN(${number})` {
  const hit = (Object.keys(TcpState) as TcpStateName[]).find((k) => TcpState[k] === state);
  return hit ?? `UNKNOWN(${state})`;
}

/** States save() and restore() handle: established and the half-closed ones. */
export const SUPPORTED_STATES: ReadonlySet<number> = new Set([
  TcpState.ESTABLISHED,
  TcpState.FIN_WAIT1,
  TcpState.FIN_WAIT2,
  TcpState.CLOSE_WAIT,
  TcpState.LAST_ACK,
  TcpState.CLOSING,
]);

/** States in which our FIN is in the send queue (write_seq counts it). */
export const FIN_SENT_STATES: ReadonlySet<number> = new Set([
  TcpState.FIN_WAIT1,
  TcpState.FIN_WAIT2,
  TcpState.CLOSING,
  TcpState.LAST_ACK,
]);
/** States in which the peer's FIN has been received (rcv_nxt counts it). */
export const FIN_RECEIVED_STATES: ReadonlySet<number> = new Set([
  TcpState.CLOSE_WAIT,
  TcpState.LAST_ACK,
  TcpState.CLOSING,
]);

export interface TcpConnectionState {
  /** Kernel TCP state number (TcpState). */
  state: number;
  local: InetAddress;
  remote: InetAddress;
  /**
   * TCP_QUEUE_SEQ of the send queue as read: write_seq, i.e. the sequence
   * number after the last queued byte (after our FIN when one is queued).
   * CRIU's `outq_seq`. Always sendSeq - sendQueue.length (- 1 with a FIN)
   * = snd_una: bytes appended to sendQueue as never-sent move it too.
   */
  sendSeq: number;
  /**
   * TCP_QUEUE_SEQ of the receive queue as read: rcv_nxt (after the peer's
   * FIN when one was received). CRIU's `inq_seq`.
   */
  recvSeq: number;
  /** Unread receive-queue bytes, oldest first. */
  recvQueue: Buffer;
  /** Send-queue bytes not acknowledged by the peer, oldest first (no FIN). */
  sendQueue: Buffer;
  /** How many bytes at the end of sendQueue were never sent (CRIU's `unsq_len`). */
  unsentLength: number;
  /** TCP_MAXSEG as read (the MSS clamp). */
  mssClamp: number;
  /** TCPI_OPT_* bits from TCP_INFO: 1 timestamps, 2 SACK, 4 window scaling. */
  optionMask: number;
  sndWscale: number;
  rcvWscale: number;
  /** TCP_TIMESTAMP clock when saved (only meaningful with timestamps on). */
  timestamp: number;
  /** TCP_REPAIR_WINDOW; absent when not known (e.g. from an old image). */
  window?: sock.TcpRepairWindow;
  nodelay: boolean;
  cork: boolean;
  /**
   * SO_REUSEADDR before repair mode (repair forces it on, and leaving repair
   * resets it to off, so it is carried here and put back by resume()).
   * An accepted socket inherits it from its listener; without it a new
   * listener on the same port (SO_REUSEPORT handover) fails with EADDRINUSE.
   */
  reuseaddr?: boolean;
}

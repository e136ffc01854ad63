/**
 * The one error type of @criu-ts/soccr. `code` says what went wrong,
 * `evidence` carries the values that show it (state numbers, lengths,
 * addresses, the failing syscall's errno), and `cause` the underlying
 * `SysError` when there is one.
 */
export type SoccrErrorCode =
  /** fd is not a TCP socket (or not a socket at all). */
  | 'NOT_TCP'
  /** Connection is in a state that cannot be saved or restored. */
  | 'UNSUPPORTED_STATE'
  /** TCP_REPAIR refused (needs CAP_NET_ADMIN). */
  | 'NO_REPAIR'
  /** Restore target address family differs from the state's. */
  | 'FAMILY_MISMATCH'
  /** The 4-tuple is still in use by another socket. */
  | 'ADDRESS_IN_USE'
  /** A queue could not be read or refilled completely. */
  | 'QUEUE'
  /** A kernel call failed while saving or restoring. */
  | 'SYSCALL'
  /** The compact binary state is malformed (magic, version, lengths). */
  | 'BAD_BLOB'
  /** A state object fails validation. */
  | 'BAD_STATE'
  /** Network lock could not be taken or released. */
  | 'LOCK'
  /** A net.Socket could not be frozen (pending writes, destroyed, ...). */
  | 'FREEZE'
  /** Handoff protocol failure between processes. */
  | 'HANDOFF';

export class SoccrError extends Error {
  override readonly name = 'SoccrError';
  constructor(
    readonly code: SoccrErrorCode,
    message: string,
    readonly evidence: Record<string, unknown> = {},
    options?: { cause?: unknown },
  ) {
    super(`${code}: ${message}`, options);
  }
}

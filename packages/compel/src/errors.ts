// The closed set of ways an injection fails, each with the evidence needed to understand it
// without re-running (the pid, what /proc said, the stop the tracee reported).
import type { SysError } from '@criu-ts/sys';

export type CompelErrorKind =
  | 'no-such-process' // /proc/PID does not exist (never existed, or exited and was reaped)
  | 'zombie' // the task has exited and waits for its parent: nothing to seize (ptrace(2) gives EPERM)
  | 'permission' // ptrace refused (another tracer, Yama, different credentials without CAP_SYS_PTRACE)
  | 'exited' // the task died while we were working on it
  | 'unexpected-stop' // the tracee stopped for a reason we did not cause (a fault in injected code...)
  | 'timeout' // a remote call or a parasite reply took longer than allowed
  | 'no-gadget' // no executable "syscall" instruction found in the task to run syscalls with
  | 'parasite' // the parasite blob is missing, malformed, or answered out of protocol
  | 'state'; // the API was used out of order (a call after cure...)

export class CompelError extends Error {
  override readonly name = 'CompelError';
  constructor(
    readonly kind: CompelErrorKind,
    readonly pid: number,
    message: string,
    readonly evidence: Record<string, unknown> = {},
    cause?: SysError | Error,
  ) {
    super(`compel: pid ${pid}: ${message}`, cause ? { cause } : undefined);
  }
}

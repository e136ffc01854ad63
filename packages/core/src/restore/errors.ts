// The one error restore throws. It names the stage that failed (so a user knows whether any
// process was created at all: nothing exists before 'spawn-stub'), the cause (an
// ImageFormatError, SysError or CompelError with its own evidence) and extra evidence.

/** Restore stages in the order they run; everything before 'spawn-stub' touches no process. */
export type RestoreStage =
  | 'read-images' // an image is missing, truncated or malformed
  | 'validate' // images are well-formed but describe something we cannot or must not restore
  | 'network-lock' // locking the TCP connections of the images (nft/iptables)
  | 'spawn-stub' // starting or seizing native/build/restore-stub
  | 'clone' // clone3 with set_tid for the dumped PID
  | 'control-area' // the scratch page remote calls run from in the new task
  | 'unmap-stub' // removing everything of the stub from the new address space
  | 'map-vmas' // mmap of every dumped VMA
  | 'vdso' // putting [vvar]/[vdso] back at their dumped address
  | 'fill-pages' // the pages image into the task's memory (process_vm_writev)
  | 'protect' // final protections and madvise
  | 'mm-fields' // prctl(PR_SET_MM_MAP): code/data/brk/stack/arg/env, auxv, exe
  | 'files' // file descriptors
  | 'fs' // cwd, root, umask
  | 'session' // setsid/setpgid
  | 'zombies' // processes that were zombies exit again with their status
  | 'signals' // sigactions, pending signals, sigaltstack
  | 'timers' // itimers, POSIX timers
  | 'rlimits'
  | 'task-misc' // comm, personality, rseq, pdeath signal
  | 'threads' // clone3 of every other thread with its TID, then its own state
  | 'creds' // scheduling, loginuid, oom_score_adj, uids/gids/groups/capabilities/securebits, no_new_privs
  | 'seccomp' // strict mode or filters, per thread
  | 'registers' // general registers and XSAVE state
  | 'release' // detaching the task so it runs on
  | 'wait'; // waiting for the restored task (non-detached restore)

export class RestoreError extends Error {
  override readonly name = 'RestoreError';
  constructor(
    readonly stage: RestoreStage,
    message: string,
    readonly evidence: Record<string, unknown> = {},
    cause?: unknown,
  ) {
    super(`restore: ${stage}: ${message}${cause instanceof Error && !message.includes(cause.message) ? `: ${cause.message}` : ''}`, cause === undefined ? undefined : { cause });
  }
}

/** Runs `fn`; anything it throws that is not already a RestoreError becomes one of `stage`. */
export function atStage<T>(stage: RestoreStage, what: string, fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof RestoreError) throw err;
    throw new RestoreError(stage, what, {}, err);
  }
}

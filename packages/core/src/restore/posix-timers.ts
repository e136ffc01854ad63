// timer_create() timers of a restored process, each with its dumped id.
//
// A program holds its timers by id (timer_settime(id, ...), the si_timerid its handler sees), so
// the ids must come back exactly. The kernel hands out ids itself; since Linux 6.14,
// prctl(PR_TIMER_CREATE_RESTORE_IDS, ON) makes timer_create take the id the caller writes into
// the timer_t it passes (the prctl exists for checkpoint/restore and is per process; turned off
// again right after). Older kernels allocate ids in sequence; without the prctl an id that comes
// out different is a RestoreError naming it.
//
// Run in the leader after every thread exists: a SIGEV_THREAD_ID timer names its target thread,
// which timer_create checks. The remaining time is set relative (timer_settime without
// TIMER_ABSTIME), as CRIU does: the time the process spent dumped does not count. The overrun
// count has no setter; a signal that was pending at dump time comes back through the pending
// queue with its si_overrun.
import { RestoreError } from './errors.js';
import type { ImageSet } from './image-set.js';
import type { RestoreTask } from './remote-task.js';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const PR_TIMER_CREATE_RESTORE_IDS = 77;
const PR_TIMER_CREATE_RESTORE_IDS_OFF = 0;
const PR_TIMER_CREATE_RESTORE_IDS_ON = 1;
const EINVAL = 22n;
const SIGEV_THREAD_ID = 4;
/** struct sigevent on x86_64: sigev_value (8), sigev_signo (4), sigev_notify (4), then the union (_tid first). */
const SIGEVENT_SIZE = 64;

function call(task: RestoreTask, what: string, name: Parameters<RestoreTask['syscallRawSync']>[0], ...args: Array<number | bigint>): bigint {
  const rc = task.syscallRawSync(name, ...args);
  if (rc < 0n && rc >= -4095n) throw new RestoreError('timers', `${what} failed with errno ${-rc}`, { errno: Number(-rc) });
  return rc;
}

/** Precondition: every thread of the process exists; the leader is stopped with its control area. */
export function restorePosixTimers(task: RestoreTask, set: ImageSet): void {
  if (set.posixTimers.length === 0) return;
  const on = task.syscallRawSync('prctl', PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_ON, 0, 0, 0);
  if (on < 0n && on !== -EINVAL) throw new RestoreError('timers', `prctl(PR_TIMER_CREATE_RESTORE_IDS) failed with errno ${-on}`);
  const exactIds = on === 0n;
  try {
    for (const t of set.posixTimers) createTimer(task, t, exactIds);
  } finally {
    if (exactIds) task.syscallRawSync('prctl', PR_TIMER_CREATE_RESTORE_IDS, PR_TIMER_CREATE_RESTORE_IDS_OFF, 0, 0, 0);
  }
}

function createTimer(task: RestoreTask, t: Msg, exactIds: boolean): void {
  const id = Number(t.it_id);
  const notify = Number(t.it_sigev_notify);
  const sigevent = Buffer.alloc(SIGEVENT_SIZE);
  sigevent.writeBigUInt64LE(BigInt.asUintN(64, BigInt(t.sival_ptr)), 0);
  sigevent.writeInt32LE(Number(t.si_signo), 8);
  sigevent.writeInt32LE(notify, 12);
  if (notify & SIGEV_THREAD_ID) sigevent.writeInt32LE(Number(t.notify_thread_id), 16);
  const idCell = Buffer.alloc(4);
  idCell.writeInt32LE(id, 0);
  const [eventAddr, idAddr] = task.scratchPut(sigevent, idCell);
  // The clock as the kernel keeps it: CPU-time clocks are negative ids stored as uint32.
  const clock = Number(t.clock_id) | 0;
  call(task, `timer_create of POSIX timer ${id} (clock ${clock})`, 'timer_create', clock, eventAddr!, idAddr!);
  const got = task.read(idAddr!, 4).readInt32LE(0);
  if (got !== id) {
    task.syscallRawSync('timer_delete', got);
    throw new RestoreError('timers', `POSIX timer ${id} came back as timer ${got}: this kernel has no PR_TIMER_CREATE_RESTORE_IDS (Linux 6.14+) and allocates other ids`, { id, got, exactIds });
  }
  // struct itimerspec: it_interval {sec, nsec}, it_value {sec, nsec}. A zero value leaves it disarmed.
  const spec = Buffer.alloc(32);
  spec.writeBigInt64LE(BigInt(t.isec), 0);
  spec.writeBigInt64LE(BigInt(t.insec), 8);
  spec.writeBigInt64LE(BigInt(t.vsec), 16);
  spec.writeBigInt64LE(BigInt(t.vnsec), 24);
  if (spec.readBigInt64LE(16) === 0n && spec.readBigInt64LE(24) === 0n) return;
  const [specAddr] = task.scratchPut(spec);
  call(task, `timer_settime of POSIX timer ${id}`, 'timer_settime', id, 0, specAddr!, 0);
}

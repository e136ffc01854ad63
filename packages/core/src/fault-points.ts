// Named fault points compiled into the normal code paths, for tests and for `criu-ts check
// --faults`. A fault fires when the caller passes `faultAt: POINT` or the environment has
// CRIU_TS_FAULT=dump:POINT (restore:POINT); the stage then fails as a real error there would,
// through the same rollback.
/**
 * Dump, in the order they are reached:
 *   after-freeze      every task is frozen, its maps and registers read
 *   after-parasite    every live task has its parasite
 *   in-pages          before the first task's pages are copied
 *   while-copying     the first images are being written while a parasite copies pages
 *   before-inventory  every image but inventory.img is written
 *   after-images      inventory.img written and synced, tasks not yet killed or resumed
 */
export const DUMP_FAULT_POINTS = ['after-freeze', 'after-parasite', 'in-pages', 'while-copying', 'before-inventory', 'after-images'] as const;
export type DumpFaultPoint = (typeof DUMP_FAULT_POINTS)[number];

/**
 * Restore, in the order they are reached:
 *   after-stub      the stub runs, is seized, and no process of the tree exists yet
 *   after-memory    the first live process has its address space (ghost files exist on disk)
 *   after-create    every process exists with its PID, session, group and memory; zombies are zombies
 *   after-files     the first live process has its fds, cwd and root
 *   after-threads   every live process has its threads and task state
 *   before-release  every process is complete and still stopped, registers not set yet
 */
export const RESTORE_FAULT_POINTS = ['after-stub', 'after-memory', 'after-create', 'after-files', 'after-threads', 'before-release'] as const;
export type RestoreFaultPoint = (typeof RESTORE_FAULT_POINTS)[number];

/**
 * Whether the fault `kind:point` is asked for, by option or by CRIU_TS_FAULT. With
 * CRIU_TS_KILL_AT=kind:point, criu-ts SIGKILLs itself there instead: what a kill at that exact
 * moment leaves behind (no rollback runs), for tests.
 */
export function faultRequested(kind: 'dump' | 'restore', point: string, faultAt: string | undefined): boolean {
  if (process.env.CRIU_TS_KILL_AT === `${kind}:${point}`) process.kill(process.pid, 'SIGKILL');
  return faultAt === point || process.env.CRIU_TS_FAULT === `${kind}:${point}`;
}

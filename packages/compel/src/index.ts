/**
 * @criu-ts/compel: run code inside another process.
 *
 * Lifecycle: prepare (seize every thread) -> infect (load the parasite) -> remote calls ->
 * cure (every trace removed, the task runs on or stays stopped as it was).
 *
 *   const victim = await inject(pid);           // prepare: seized, registers saved
 *   await victim.syscall('getpid');              // a syscall run by the task itself
 *   const parasite = await victim.infect();      // parasite blob loaded, RPC socket up
 *   parasite.dumpSigactions();
 *   await victim.cure();
 */
import { Injection, seizeSync, type PrepareOptions } from './injection.js';
import { infectSync, type Blob, type InfectOptions, type Parasite } from './parasite.js';

export { CompelError, type CompelErrorKind } from './errors.js';
export { Injection, prepare, prepareSync, undoInterruptEintr, type CureOptions, type PrepareOptions, type SeizedThread, type SavedState, type Gadgets } from './injection.js';
export { nativeDir } from './native.js';
export { buildSigframe, restartedRegs, sigframeXstateLayout, cpuXstateLayout, type XstateLayout } from './sigframe.js';
export {
  Parasite, infectSync, loadParasiteBlob, compileBlob,
  type Blob, type DumpPagesOptions, type InfectOptions, type LoadedBlob, type Sigaction, type Itimer, type PosixTimer, type TaskMisc, type TaskAnswers,
} from './parasite.js';
export { CMD as PARASITE_CMD, CTL as PARASITE_CTL, MISC_SIZE as PARASITE_MISC_SIZE, SIGFRAME } from './parasite-abi.js';
export { listThreads, taskState, readMaps, isParasiteMapping, readStatus, listPosixTimers, readPosixTimers, type ProcPosixTimer, type Vma } from './proc.js';

/** A seized task, with the parasite loaded on demand. */
export class Victim extends Injection {
  private parasiteInstance: Parasite | null = null;

  /**
   * Loads the parasite (once) and returns it. Once loaded, a later call starts nothing, so its
   * `meanwhile` runs at once: the caller's work is done either way.
   */
  infectSync(blob?: Blob, options?: InfectOptions): Parasite {
    if (!this.parasiteInstance) this.parasiteInstance = infectSync(this, blob, options);
    else options?.meanwhile?.();
    return this.parasiteInstance;
  }

  async infect(blob?: Blob, options?: InfectOptions): Promise<Parasite> {
    return this.infectSync(blob, options);
  }

  get parasite(): Parasite | null {
    return this.parasiteInstance;
  }
}

/** prepare() returning a {@link Victim} that can also be infected: the entry point of the library. */
export async function inject(pid: number, options: PrepareOptions = {}): Promise<Victim> {
  return injectSync(pid, options);
}

export function injectSync(pid: number, options: PrepareOptions = {}): Victim {
  return seizeSync(pid, options, Victim);
}

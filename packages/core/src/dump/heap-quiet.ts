// Emptying V8's young generation before the tasks are frozen.
//
// Why: a dump allocates about 1 MB of short-lived objects while the tasks are frozen (registers,
// /proc text, image entries). When the young generation fills up in that window, V8 stops us
// for a scavenge, which costs 3-10 ms on this machine (a VM): that much longer frozen. A minor
// GC just before the freeze leaves the whole young generation free for the window, and costs
// about as much, but while the tasks still run.
//
// Node 20 has no API for it: --expose-gc, set at run time, exposes gc() to contexts made after
// it (here, one vm context), not to the program's own global object.
import { setFlagsFromString } from 'node:v8';
import { runInNewContext } from 'node:vm';

type Gc = (options?: { type?: 'minor' | 'major' }) => void;
let gc: Gc | null | undefined;

/** Runs a minor GC (scavenge) if this Node can; otherwise does nothing. */
export function emptyYoungGeneration(): void {
  if (gc === undefined) {
    try {
      setFlagsFromString('--expose-gc');
      gc = runInNewContext('gc') as Gc;
    } catch {
      gc = null;
    } finally {
      // Back as it was: V8 stamps code caches with a hash of its flags, and one taken after this
      // (the criu-ts command's, at exit: cli/src/code-cache.ts) would be rejected by every later
      // start, which runs without the flag: 30 ms of compiling again on each `criu-ts dump`.
      // The gc function already taken keeps working.
      try {
        setFlagsFromString('--no-expose-gc');
      } catch { /* as it was anyway */ }
    }
  }
  gc?.({ type: 'minor' });
}

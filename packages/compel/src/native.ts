// Where the C parts built by `npm run build` (native/build/) are found.
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

/**
 * Where native/ (and its build/) lives: CRIU_TS_NATIVE_DIR if set, else the first native/ with a
 * Makefile found walking up from this module. Walking up, not a fixed relative path, because the
 * same code runs from packages/compel/dist/src and from the bundled criu-ts command.
 */
export function nativeDir(): string {
  if (process.env.CRIU_TS_NATIVE_DIR) return process.env.CRIU_TS_NATIVE_DIR;
  // Found once: callers on the frozen path (each seize asks, through cpuXstateLayout) would
  // otherwise walk the directories again, 0.1 ms each time.
  found ??= findNativeDir();
  return found;
}

let found: string | undefined;

function findNativeDir(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (let level = 0; level < 8; level++) {
    if (existsSync(join(dir, 'native', 'Makefile'))) return join(dir, 'native') + '/';
    const parent = dirname(dir);
    if (parent === dir) break;
    dir = parent;
  }
  return fileURLToPath(new URL('../../../../native/', import.meta.url));
}

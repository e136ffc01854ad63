// Images decide what code a restore runs (memory contents, registers, the executable): an image
// another user can write is a way into whatever runs the restore (root, here). CRIU trusts its
// images; criu-ts restores them but says so.
import { readdirSync, statSync } from 'node:fs';
import { join } from 'node:path';

const GROUP_OR_OTHER_WRITE = 0o022;
const STICKY = 0o1000;

/** One warning per image file (and for the directory) that a group or other users may write. */
export function imagePermissionWarnings(dir: string): string[] {
  const warnings: string[] = [];
  const mode = (path: string): number | undefined => {
    try {
      return statSync(path).mode;
    } catch {
      return undefined; // gone meanwhile: reading it will say so
    }
  };
  const dirMode = mode(dir);
  // A writable directory lets others replace files; sticky (as /tmp) only lets them add names.
  if (dirMode !== undefined && (dirMode & GROUP_OR_OTHER_WRITE) && !(dirMode & STICKY)) {
    warnings.push(`images directory ${dir} is writable by ${who(dirMode)} (mode 0${(dirMode & 0o7777).toString(8)}): others can replace images, and images decide what code runs`);
  }
  let names: string[] = [];
  try {
    names = readdirSync(dir);
  } catch {
    return warnings;
  }
  for (const name of names.sort()) {
    if (!name.endsWith('.img')) continue;
    const m = mode(join(dir, name));
    if (m === undefined || !(m & GROUP_OR_OTHER_WRITE)) continue;
    warnings.push(`image ${join(dir, name)} is writable by ${who(m)} (mode 0${(m & 0o7777).toString(8)}): images decide what code runs`);
  }
  return warnings;
}

function who(mode: number): string {
  return [(mode & 0o020) ? 'its group' : '', (mode & 0o002) ? 'other users' : ''].filter(Boolean).join(' and ');
}

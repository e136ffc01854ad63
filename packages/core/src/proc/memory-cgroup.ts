// Memory cgroups of a process, v1 and v2 alike: where its memory (page cache included) is
// charged, and how much more its groups allow before they reclaim or throttle.
import { readFileSync } from 'node:fs';
import { join } from 'node:path';

/** The task's cgroup paths that matter for memory: the v1 memory hierarchy's and the v2 one's. */
export function memoryCgroups(pid: number | 'self'): { v1?: string; v2?: string } {
  const out: { v1?: string; v2?: string } = {};
  for (const line of readFileSync(`/proc/${pid}/cgroup`, 'utf8').split('\n')) {
    const [id, controllers, path] = [line.slice(0, line.indexOf(':')), line.slice(line.indexOf(':') + 1, line.lastIndexOf(':')), line.slice(line.lastIndexOf(':') + 1)];
    if (id === '0' && controllers === '') out.v2 = path;
    else if (controllers.split(',').includes('memory')) out.v1 = path;
  }
  return out;
}

/** Where the cgroup v2 hierarchy and the v1 memory hierarchy are mounted (mountinfo fields 5 and 9+). */
function cgroupMounts(): { v2?: string; v1Memory?: string } {
  const out: { v2?: string; v1Memory?: string } = {};
  for (const line of readFileSync('/proc/self/mountinfo', 'utf8').split('\n')) {
    const [left, right] = line.split(' - ');
    if (!left || !right) continue;
    const mountPoint = left.split(' ')[4]!;
    const [type, , options = ''] = right.split(' ');
    if (type === 'cgroup2') out.v2 ??= mountPoint;
    else if (type === 'cgroup' && options.split(',').includes('memory')) out.v1Memory ??= mountPoint;
  }
  return out;
}

/**
 * Bytes `pid`'s memory cgroups allow it to add before one of them reaches its limit: the
 * smallest limit - usage over every level of the v2 hierarchy (memory.max, memory.current) and of
 * the v1 memory hierarchy (memory.limit_in_bytes, memory.usage_in_bytes). Infinity when no level
 * has a limit; 0 when a hierarchy has a memory controller whose files cannot be read (assume the
 * worst).
 */
export function memoryHeadroom(pid: number | 'self'): number {
  const groups = memoryCgroups(pid);
  const mounts = cgroupMounts();
  const headroom = (mount: string | undefined, path: string | undefined, limitFile: string, usageFile: string, unlimited: (text: string) => boolean): number => {
    if (path === undefined) return Infinity; // this hierarchy has no memory controller for the process
    if (mount === undefined) return 0; // it has one we cannot read
    let least = Infinity;
    for (let at = path; ; at = at.slice(0, at.lastIndexOf('/')) || '/') {
      let limit: string | undefined;
      try {
        limit = readFileSync(join(mount, at, limitFile), 'utf8').trim();
      } catch {
        /* the controller is not enabled at this level (or it is the root): no limit here */
      }
      if (limit !== undefined && !unlimited(limit)) {
        let usage = Infinity; // a limit whose usage cannot be read leaves no room
        try {
          usage = Number(readFileSync(join(mount, at, usageFile), 'utf8').trim());
        } catch { /* as said */ }
        least = Math.min(least, Math.max(0, Number(limit) - usage));
      }
      if (at === '/') return least;
    }
  };
  return Math.min(
    headroom(mounts.v2, groups.v2, 'memory.max', 'memory.current', (t) => t === 'max'),
    headroom(mounts.v1Memory, groups.v1, 'memory.limit_in_bytes', 'memory.usage_in_bytes', (t) => BigInt(t) >= 1n << 62n),
  );
}

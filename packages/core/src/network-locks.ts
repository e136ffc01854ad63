// Network locks that dumps leave for their restore (see dump.ts, stage network-lock), seen and
// removed from outside: a dump whose images will never be restored, or a dumper killed
// mid-dump, leaves its connections locked (soccr's nft set or iptables rules, `holder=<run id>`).
import { join } from 'node:path';
import { ImageReader } from '@criu-ts/images';
import { cleanupNetworkLocks, listLocksSync, type ConnectionKey, type ListedLock } from '@criu-ts/soccr';

export type { ConnectionKey, ListedLock };

/** Every lock in this network namespace (criu-ts's dumps' and soccr users'), from every usable backend. */
export function listNetworkLocks(): ListedLock[] {
  const out: ListedLock[] = [];
  for (const backend of ['nft', 'iptables'] as const) {
    try {
      out.push(...listLocksSync(backend));
    } catch {
      /* backend not usable here */
    }
  }
  return out;
}

/** The run id a dump wrote in its inventory (the holder of its locks). */
export function dumpRunId(imagesDir: string): string {
  const reader = ImageReader.open(join(imagesDir, 'inventory.img'));
  try {
    const [entry] = [...reader.entries()];
    const id = (entry?.message as { dump_criu_run_id?: string } | undefined)?.dump_criu_run_id;
    if (!id) throw new Error(`${join(imagesDir, 'inventory.img')} names no dump run (dump_criu_run_id)`);
    return id;
  } finally {
    reader.close();
  }
}

/**
 * Removes locks: those of soccr users that are gone (always), those held for the images in
 * `imagesDir` (their connections then meet RST from this host: restore those images no more),
 * or every lock (`all`). Returns the connections unlocked.
 */
export async function releaseNetworkLocks(options: { imagesDir?: string; all?: boolean } = {}): Promise<ConnectionKey[]> {
  const holder = options.imagesDir !== undefined ? dumpRunId(options.imagesDir) : undefined;
  return cleanupNetworkLocks({ ...(options.all ? { all: true } : {}), ...(holder ? { holder } : {}) });
}

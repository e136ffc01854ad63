// `criu-ts cleanup`: network locks left behind (criu has no such command; criu-ts's locks are
// held for a dump's images until their restore, see README).
import { listNetworkLocks, releaseConnectionsOf, releaseNetworkLocks } from '@criu-ts/core';
import { resolve } from 'node:path';
import { UsageError, type CommandIo } from './command-io.js';

const HELP = `usage: criu-ts cleanup [--list] [-D DIR | --all] [-t PID]

Network locks (nftables set elements or iptables rules) that keep peers' packets away from
TCP connections without an owner:
  --list        print every lock and who holds it, remove nothing
  (no option)   remove the locks of soccr users that are gone
  -D DIR        also remove the locks held for the dump in DIR (it can no longer be restored
                with its connections)
  --all         remove every lock
  -t PID        a process whose dumper was killed mid-dump: its TCP connections leave repair
                mode and are unlocked
`;

export async function runCleanup(argv: string[], io: CommandIo): Promise<number> {
  let list = false;
  let all = false;
  let imagesDir: string | undefined;
  let pid: number | undefined;
  for (let i = 0; i < argv.length; i++) {
    const a = argv[i]!;
    if (a === '-h' || a === '--help') return io.print(HELP), 0;
    else if (a === '--list') list = true;
    else if (a === '--all') all = true;
    else if (a === '-D' || a === '--images-dir') imagesDir = argv[++i] ?? '';
    else if (a.startsWith('--images-dir=')) imagesDir = a.slice('--images-dir='.length);
    else if (a === '-t' || a === '--tree') {
      const v = argv[++i] ?? '';
      if (!/^\d+$/.test(v)) throw new UsageError(`cleanup: ${a} takes a PID, not ${JSON.stringify(v)}`, HELP);
      pid = Number(v);
    }
    else throw new UsageError(`cleanup: unknown option ${a}`, HELP);
  }
  if (imagesDir === '') throw new UsageError('cleanup: -D needs a directory', HELP);
  const show = (l: ReturnType<typeof listNetworkLocks>[number]) =>
    `${l.backend} ${l.key.remote.address}:${l.key.remote.port} -> ${l.key.local.address}:${l.key.local.port} ${l.holder !== undefined ? `held for dump ${l.holder}` : l.owner !== undefined ? `owner pid ${l.owner}` : 'no owner'}`;
  if (list) {
    for (const l of listNetworkLocks()) io.print(show(l));
    return 0;
  }
  if (pid !== undefined) {
    for (const k of releaseConnectionsOf(pid)) io.print(`released ${k.local.address}:${k.local.port} <-> ${k.remote.address}:${k.remote.port} of process ${pid}`);
  }
  const removed = await releaseNetworkLocks({ all, ...(imagesDir !== undefined ? { imagesDir: resolve(imagesDir) } : {}) });
  for (const k of removed) io.print(`unlocked ${k.remote.address}:${k.remote.port} -> ${k.local.address}:${k.local.port}`);
  return 0;
}

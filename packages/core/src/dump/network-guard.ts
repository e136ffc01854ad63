// The network state of a dump that dies outright: put back by native/build/dump-guard.
//
// A dump of established TCP connections locks them with firewall rules and puts their sockets in
// repair mode (inet-sockets.ts). Every failure of the dump undoes that (dump.ts's rollback), but
// a criu-ts killed with SIGKILL runs nothing: its tasks cure themselves (compel's return chains)
// and would run on with connections that neither send nor receive. So, before freezing, the dump
// starts dump-guard with a pipe whose write end only it holds; it writes the PIDs whose
// connections it locks, and 'd' once it no longer needs the guard (after its own release, or once
// the images are complete). If criu-ts dies first, the guard sees EOF and runs
// release-after-death.js: releaseDeadDump (network-locks.ts) for those PIDs and this dump's run id.
// Connections the dump took out of a listener's accept queue exist only in criu-ts: each is sent
// to the guard (with the listener) as soon as it is taken, so that they outlive a killed criu-ts
// and go back into their queue.
import { existsSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { nativeDir } from '@criu-ts/compel';
import { AF_UNIX, close, sendmsg, SOCK, socketpair, write, type Fd } from '@criu-ts/sys';

// child_process on first use, not at import: loading it (with the net and dgram modules it pulls
// in) costs the criu-ts command ~4 ms of start-up, and a plain dump never spawns anything.
const childProcess = () => process.getBuiltinModule('node:child_process');

export interface NetworkGuard {
  /** The processes whose connections are about to be locked. */
  covers(pids: readonly number[]): void;
  /** A connection taken from `listener`'s accept queue: the guard holds both until the dump is done. */
  holdsQueued(listener: Fd, connection: Fd): void;
  /** criu-ts undid what it did, or the dump is complete: the guard exits without acting. */
  disarm(): void;
}

/** Where release-after-death.js is: beside this module, or in the workspace when criu-ts runs bundled. */
function releaseScript(): string | undefined {
  const candidates = [
    fileURLToPath(new URL('./release-after-death.js', import.meta.url)),
    join(resolve(nativeDir(), '..'), 'packages', 'core', 'dist', 'src', 'dump', 'release-after-death.js'),
  ];
  return candidates.find((p) => existsSync(p));
}

/**
 * Starts the guard for the dump with run id `runId` into `imagesDir`. Returns null when it cannot
 * run (not built, or the script not found): the dump then works as before, and only `criu-ts
 * cleanup` can release a killed dump's connections.
 */
export function armNetworkGuard(imagesDir: string, runId: string): NetworkGuard | null {
  const guard = join(nativeDir(), 'build', 'dump-guard');
  const script = releaseScript();
  if (!existsSync(guard) || script === undefined) return null;
  // A unix stream socket rather than a pipe: it also carries descriptors (holdsQueued).
  const [readEnd, writeEnd] = socketpair(AF_UNIX, SOCK.STREAM);
  try {
    const child = childProcess().spawn(guard, [process.execPath, script, imagesDir, runId], { stdio: [readEnd, 'ignore', 'ignore'], detached: true });
    child.on('error', () => { /* reported by the dump itself if it matters: the guard is best effort */ });
    child.unref();
  } catch {
    close(writeEnd);
    return null;
  } finally {
    close(readEnd);
  }
  let open: Fd | null = writeEnd;
  const send = (text: string) => {
    if (open === null) return;
    try {
      write(open, Buffer.from(text));
    } catch { /* the guard is gone: nothing to tell it */ }
  };
  return {
    covers: (pids) => send(`${pids.join(' ')} `),
    holdsQueued: (listener, connection) => {
      if (open === null) return;
      try {
        sendmsg(open, Buffer.from('Q'), [listener, connection]);
      } catch { /* the guard is gone: nothing to tell it */ }
    },
    disarm: () => {
      send('d');
      if (open !== null) close(open);
      open = null;
    },
  };
}

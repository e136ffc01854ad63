#!/usr/bin/env node
// Removes network-lock leftovers of @criu-ts/soccr in the current network
// namespace: locks whose owner process is gone (default), or all of them.
//   criu-ts-soccr-cleanup [--all] [--drop-table] [--list]
// Run it inside another namespace with `ip netns exec NAME criu-ts-soccr-cleanup`.
import { cleanupNetworkLocks, NetworkLock } from '@criu-ts/soccr';

const args = new Set(process.argv.slice(2));
for (const a of args) {
  if (!['--all', '--drop-table', '--list', '--help'].includes(a)) {
    console.error(`criu-ts-soccr-cleanup: unknown option ${a}`);
    process.exit(2);
  }
}
if (args.has('--help')) {
  console.log('usage: criu-ts-soccr-cleanup [--all] [--drop-table] [--list]');
  process.exit(0);
}
const fmt = (a) => (a.family === 6 ? `[${a.address}]:${a.port}` : `${a.address}:${a.port}`);
if (args.has('--list')) {
  const lock = await NetworkLock.open();
  for (const l of await lock.list()) console.log(`locked ${fmt(l.local)} <- ${fmt(l.remote)} owner ${l.owner ?? '?'}`);
  await lock.close();
  process.exit(0);
}
const removed = await cleanupNetworkLocks({ all: args.has('--all'), dropTable: args.has('--drop-table') });
for (const k of removed) console.log(`removed ${fmt(k.local)} <- ${fmt(k.remote)}`);
console.log(`${removed.length} lock(s) removed`);

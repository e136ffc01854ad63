// Run by native/build/dump-guard once the criu-ts that started it died mid-dump (network-guard.ts):
//   node release-after-death.js IMAGES_DIR RUN_ID "PID PID ... Q<listener fd>:<connection fd> ..."
// The Q pairs are descriptors the guard held and this process inherited: connections the dump
// had taken out of a listener's accept queue, with that listener, in queue order.
import { releaseDeadDump } from '../network-locks.js';

const [imagesDir, runId, held] = process.argv.slice(2);
if (imagesDir !== undefined && runId !== undefined) {
  const tokens = (held ?? '').split(/\s+/).filter(Boolean);
  const pids = tokens.filter((t) => /^\d+$/.test(t)).map(Number);
  const queued = tokens.flatMap((t) => {
    const m = /^Q(\d+):(\d+)$/.exec(t);
    return m ? [{ listener: Number(m[1]), connection: Number(m[2]) }] : [];
  });
  releaseDeadDump(imagesDir, runId, pids, queued);
}

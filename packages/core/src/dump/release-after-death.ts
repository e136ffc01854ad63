// Run by native/build/dump-guard once the criu-ts that started it died mid-dump (network-guard.ts):
//   node release-after-death.js IMAGES_DIR RUN_ID "PID PID ..."
import { releaseDeadDump } from '../network-locks.js';

const [imagesDir, runId, pids] = process.argv.slice(2);
if (imagesDir !== undefined && runId !== undefined) {
  releaseDeadDump(imagesDir, runId, (pids ?? '').split(/\s+/).filter(Boolean).map(Number));
}

// Checks every image of a dump as the other readers see it: @criu-ts/images re-encodes each one
// byte-identically from its crit JSON, and Debian's crit (where installed; CI installs it)
// decodes each one.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { readdirSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageReader, imageFromCritJson, imageToCritJson } from '@criu-ts/images';

function critJson(path: string): unknown {
  const reader = ImageReader.open(path);
  try {
    return imageToCritJson(reader);
  } finally {
    reader.close();
  }
}

/** Every image of `dir` but raw pages and packet rings (no crit knows the latter): byte-identical round trip, and `crit decode` reads it. */
export function checkImagesRoundTrip(dir: string): void {
  const crit = !spawnSync('crit', ['-h']).error;
  if (!crit && process.env.CI) throw new Error('crit missing in CI');
  for (const name of readdirSync(dir).filter((n) => !n.startsWith('pages-') && !n.startsWith('packet-ring-'))) {
    const path = join(dir, name);
    expect(Buffer.from(imageFromCritJson(critJson(path), path)).equals(readFileSync(path)), `${name} re-encodes byte-identically`).to.equal(true);
    if (crit) {
      const r = spawnSync('crit', ['decode', '-i', path]);
      expect(r.status, `crit decode ${name}: ${r.stderr}`).to.equal(0);
    }
  }
}

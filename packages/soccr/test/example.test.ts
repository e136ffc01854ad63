// The zero-downtime proxy example, run for real: clients keep streaming
// through the proxy while it is replaced several times.
import { expect } from 'chai';
import { execFile } from 'node:child_process';
import { fileURLToPath } from 'node:url';
import { dirname, join } from 'node:path';
import { isRoot } from './helpers.js';

const demo = join(dirname(fileURLToPath(import.meta.url)), '..', '..', 'examples', 'zero-downtime-proxy', 'demo.mjs');

describe('soccr example: zero-downtime proxy', function () {
  this.timeout(120_000);
  before(function () {
    if (!isRoot) this.skip(); // TCP_REPAIR and netfilter need root; CI runs as root
  });
  it('replaces the proxy 4 times under traffic without a reset or a lost byte', async () => {
    const out = await new Promise<string>((resolve, reject) => {
      execFile(process.execPath, [demo, '--clients', '8', '--replacements', '4', '--seconds-between', '0.2'], { timeout: 100_000 }, (err, stdout, stderr) =>
        err ? reject(new Error(`${err.message}\n${stdout}\n${stderr}`)) : resolve(stdout),
      );
    });
    expect(out).to.match(/^OK: 8 clients, 4 proxy replacements/m);
  });
});

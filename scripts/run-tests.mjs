// Runs every compiled mocha test of the workspace and prints the totals line
// CI reads ("N passed, N failed, N skipped"); mocha's own summary is not read by CI.
import Mocha from 'mocha';
import { readdirSync, statSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

function collect(dir, out) {
  if (!existsSync(dir)) return out;
  for (const name of readdirSync(dir).sort()) {
    const full = join(dir, name);
    if (statSync(full).isDirectory()) collect(full, out);
    else if (name.endsWith('.test.js')) out.push(full);
  }
  return out;
}

const files = [];
for (const pkg of readdirSync(join(root, 'packages')).sort()) {
  collect(join(root, 'packages', pkg, 'dist', 'test'), files);
}
collect(join(root, 'tests', 'dist'), files);
const grep = process.argv[2];

const mocha = new Mocha({ reporter: 'spec', timeout: 120_000, ...(grep ? { grep } : {}) });
for (const file of files) mocha.addFile(file);
await mocha.loadFilesAsync();
const runner = mocha.run((failures) => {
  const { passes = 0, pending = 0 } = runner.stats ?? {};
  console.log(`\n${passes} passed, ${failures} failed, ${pending} skipped`);
  process.exitCode = failures > 0 || passes === 0 ? 1 : 0;
});

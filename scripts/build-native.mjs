// Builds the C parts (native/: parasite blob, restore stub; tests/: the small
// programs the end-to-end tests checkpoint) with the system C compiler.
// Each folder owns a Makefile; this script only finds the compiler and runs them,
// so that a missing compiler is reported once, clearly, instead of as a make error.
import { execFileSync, spawnSync } from 'node:child_process';
import { existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const folders = ['native', 'tests'].filter((dir) => existsSync(join(root, dir, 'Makefile')));
if (folders.length === 0) process.exit(0);

const compiler = process.env.CC ?? 'cc';
if (spawnSync(compiler, ['--version'], { stdio: 'ignore' }).status !== 0) {
  console.error(
    `criu-ts: no C compiler found (tried '${compiler}'). The parasite blob, the restore stub and the ` +
      `test programs are C. Install one (Debian: apt-get install gcc make) or set CC.`,
  );
  process.exit(1);
}
for (const dir of folders) {
  execFileSync('make', ['-s', '-C', join(root, dir), `CC=${compiler}`], { stdio: 'inherit' });
}

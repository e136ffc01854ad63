// Bundles the criu-ts command into one ES module (packages/cli/dist/criu-ts.mjs).
// Why: Node resolves and compiles each of the ~100 modules behind the command separately, which
// costs about 50 ms of every invocation; one bundled file loads in a fraction of that, and the
// dump path has a start-up budget. Native addons (koffi) and lazily required modules (zod) stay
// outside the bundle and are resolved from node_modules at run time.
import { build } from 'esbuild';
import { chmodSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'packages', 'cli', 'dist');
const outfile = join(outdir, 'criu-ts.mjs');
await build({
  // Split: the checkpoint commands (ptrace, koffi) are dynamic imports in their own chunk, so
  // the image commands start without loading them.
  entryPoints: { 'criu-ts': join(root, 'packages', 'cli', 'dist', 'src', 'bin.js') },
  outdir,
  outExtension: { '.js': '.mjs' },
  splitting: true,
  chunkNames: 'chunks/[name]-[hash]',
  bundle: true,
  platform: 'node',
  format: 'esm',
  target: 'node20',
  external: ['koffi', 'zod'],
  // The entry's own "#!/usr/bin/env node" line is kept by esbuild.
  // Modules bundled from CommonJS packages may call require(); give them one.
  banner: { js: "import { createRequire as __criuTsCreateRequire } from 'node:module'; const require = __criuTsCreateRequire(import.meta.url);" },
  logLevel: 'warning',
});
chmodSync(outfile, 0o755);

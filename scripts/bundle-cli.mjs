// Builds the criu-ts command: packages/cli/dist/criu-ts.cjs (the bin) and the program it loads,
// packages/cli/dist/criu-ts-bundle.cjs.
//
// Why this shape (start-up is part of every `criu-ts dump`; numbers from bench/cli-startup.mjs):
// - One bundle: Node resolves, reads and compiles each module separately, ~100 of them behind
//   the command.
// - CommonJS, not ES modules: Node 20 has no compile cache for either, but vm.Script takes a V8
//   code cache (`cachedData`) and runs CommonJS-shaped code; the launcher (src/launcher.ts,
//   src/code-cache.ts) keeps one cache per command under /run/criu-ts. An ES module entry would
//   also cost the ES module loader itself.
// - The bundle file is one function expression `(exports, require, module, __filename, __dirname,
//   __criuTsImportMetaUrl) => ...` that vm.Script compiles as is (no concatenation at run time);
//   `import.meta.url` of the bundled modules becomes that parameter (the bundle's own URL, as
//   the chunks' URLs were before: code that finds native/ walks up from it).
// - Whitespace and syntax minified, names kept (stack traces stay readable): a third less to
//   read and scan at every start.
// - Still lazy: modules reached only through `await import()` (dump, restore, check, demo,
//   cleanup and what only they use, koffi included) are evaluated when that command runs.
// Native addons (koffi) and lazily required modules (zod) stay outside the bundle and are resolved
// from node_modules at run time.
import { build } from 'esbuild';
import { createHash } from 'node:crypto';
import { chmodSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const outdir = join(root, 'packages', 'cli', 'dist');
const bundleFile = join(outdir, 'criu-ts-bundle.cjs');
const launcherFile = join(outdir, 'criu-ts.cjs');

// Left by the ES module build this replaces.
rmSync(join(outdir, 'chunks'), { recursive: true, force: true });

await build({
  entryPoints: [join(outdir, 'src', 'main.js')],
  outfile: bundleFile,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  external: ['koffi', 'zod'],
  define: { 'import.meta.url': '__criuTsImportMetaUrl' },
  banner: { js: '(function (exports, require, module, __filename, __dirname, __criuTsImportMetaUrl) {' },
  footer: { js: '})' },
  minifyWhitespace: true,
  minifySyntax: true,
  logLevel: 'warning',
});
// The bin's first lines, read by both sh and Node. Run as a program, /bin/sh drops
// NODE_EXTRA_CA_CERTS and execs Node on this same file: Node 20 reads and parses that
// certificate file (and its whole built-in root store) at every start, before any script, which
// takes ~40 ms on the reference VM, where it is set for the npm registry; criu-ts makes no TLS
// connection. Node skips the `#!` line and sees a string followed by a comment on the second.
// Run as `node criu-ts.cjs`, the shell line is never read and the environment is left alone.
const LAUNCHER_HEADER = [
  '#!/bin/sh',
  '":" //; unset NODE_EXTRA_CA_CERTS; exec node "$0" "$@"',
  '// (the line above is for /bin/sh: see scripts/bundle-cli.mjs)',
].join('\n');

const bundleId = createHash('sha256').update(readFileSync(bundleFile)).digest('hex').slice(0, 32);

await build({
  stdin: {
    contents: `import { launch } from './src/launcher.js';\nlaunch(__dirname + '/criu-ts-bundle.cjs', ${JSON.stringify(bundleId)});\n`,
    resolveDir: outdir,
    sourcefile: 'criu-ts-entry.js',
  },
  outfile: launcherFile,
  bundle: true,
  platform: 'node',
  format: 'cjs',
  target: 'node20',
  banner: { js: LAUNCHER_HEADER },
  logLevel: 'warning',
});
chmodSync(launcherFile, 0o755);

// For scripts and tests that run `node .../dist/criu-ts.mjs` (the bin before): the same command,
// after an ES module load of this file.
const compat = join(outdir, 'criu-ts.mjs');
writeFileSync(compat, "#!/usr/bin/env node\n// The criu-ts command through its old name; dist/criu-ts.cjs starts faster.\nimport { createRequire } from 'node:module';\ncreateRequire(import.meta.url)('./criu-ts.cjs');\n");
chmodSync(compat, 0o755);

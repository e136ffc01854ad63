// The criu-ts command as installed (dist/criu-ts.cjs, built from this module by
// scripts/bundle-cli.mjs): loads the bundled program through its code cache and runs the command
// line. A CommonJS entry on purpose: an ES module entry costs Node 20 its module loader (~10 ms
// of a ~130 ms `criu-ts --help` on the reference VM) before the first line runs.
import { cacheClass, defaultCacheDir, loadBundle } from './code-cache.js';

export function launch(bundle: string, bundleId: string): void {
  const argv = process.argv.slice(2);
  const loaded = loadBundle({ bundle, bundleId, cacheClass: cacheClass(argv), cacheDir: defaultCacheDir() });
  if (process.env.CRIU_TS_CODE_CACHE_DEBUG) process.stderr.write(`criu-ts: code cache ${loaded.cache}\n`);
  // Taken at exit, after a successful run: by then V8 has compiled every function this command
  // needed. A failed run (often a usage error) ran too little of it to be worth keeping.
  process.on('exit', (code) => {
    if (code === 0) loaded.saveIfNeeded();
  });
  loaded.exports.run(argv).then((code) => {
    process.exitCode = code;
  });
}

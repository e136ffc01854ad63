// The criu-ts bin's first lines (scripts/bundle-cli.mjs): run as a program, /bin/sh drops
// NODE_EXTRA_CA_CERTS and execs Node on the same file with the arguments untouched; run as
// `node criu-ts.cjs`, the file is plain JavaScript and the environment stays as it was.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { mkdtempSync, rmSync, statSync, symlinkSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const here = dirname(fileURLToPath(import.meta.url));
const BIN = resolve(here, '..', '..', 'dist', 'criu-ts.cjs');
// Node 20 warns on every start when this file cannot be read: the warning shows whether the
// variable reached Node.
const MISSING_CERTS = '/nonexistent/criu-ts-launcher-test.pem';
const CERTS_WARNING = 'Ignoring extra certs';

describe('cli: the criu-ts bin as installed', function () {
  this.timeout(30_000);
  let dir: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'criu-ts-launcher-'));
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const env = { ...process.env, NODE_EXTRA_CA_CERTS: MISSING_CERTS, CRIU_TS_CODE_CACHE: 'off' };

  it('is executable and starts Node without NODE_EXTRA_CA_CERTS', function () {
    expect(statSync(BIN).mode & 0o111, 'executable bits').to.equal(0o111);
    const direct = spawnSync(BIN, ['--version'], { encoding: 'utf8', env });
    expect(direct.status, direct.stderr).to.equal(0);
    expect(direct.stdout).to.match(/^Version: \d+\.\d+\.\d+/);
    expect(direct.stderr).not.to.include(CERTS_WARNING);
    // The same file given to Node: the variable is Node's to read, and it does.
    const viaNode = spawnSync(process.execPath, [BIN, '--version'], { encoding: 'utf8', env });
    expect(viaNode.status, viaNode.stderr).to.equal(0);
    expect(viaNode.stdout).to.equal(direct.stdout);
    expect(viaNode.stderr).to.include(CERTS_WARNING);
  });

  it('passes every argument through unchanged, also through a symlink as npm installs bins', function () {
    const link = join(dir, 'criu-ts');
    symlinkSync(BIN, link);
    // Spaces, a quote, a dollar sign and a glob character: what a shell would mangle if the
    // launcher line did not quote them.
    const odd = join(dir, `no such dir`, `a b$HOME '*'.img`);
    for (const program of [BIN, link]) {
      const r = spawnSync(program, ['decode', '-i', odd], { encoding: 'utf8', env });
      expect(r.status, `${program}: ${r.stderr}`).to.equal(1);
      expect(r.stderr).to.include(`'${odd}'`);
      expect(r.stderr).not.to.include(CERTS_WARNING);
    }
  });
});

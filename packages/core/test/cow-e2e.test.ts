// Private memory still shared copy on write after fork: tests/bin/cow-keeper (a root, two
// children and a grandchild sharing a 64 MiB buffer, of which a child unmapped a page, a region
// one child grew in place and the program's .data, each process having rewritten some pages
// after fork) dumped and restored
// twice, by the library and by the CLI. The processes check their contents and that their
// writes stay private; the test reads the page frames (/proc/PID/pagemap, root sees PFNs) to
// check that the pages the processes did not rewrite are one physical page again after the
// restore, and the rewritten ones each their own.
import { expect } from 'chai';
import { spawnSync } from 'node:child_process';
import { closeSync, existsSync, openSync, readSync, rmSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { dumpSync, restoreSync } from '@criu-ts/core';
import { ourStubs, sleepMs } from './restore-helpers.js';
import { rootWithSubreaper, TEST_BIN, TreeKeeper } from './programs.js';

const CLI = resolve(TEST_BIN, '..', '..', 'packages', 'cli', 'dist', 'criu-ts.cjs');
const PAGE = 4096n;
const PFN_MASK = (1n << 55n) - 1n;
const PRESENT = 1n << 63n;
const GROW_PAGES = 8 * 256;
const DATA_PAGES = 16;

function criuTs(...args: string[]): void {
  const r = spawnSync(process.execPath, [CLI, ...args], { encoding: 'utf8', timeout: 60_000 });
  expect(r.status, `criu-ts ${args.join(' ')}: ${r.stderr}`).to.equal(0);
}

/** Page frame of each page of `pages` pages at `addr` in `pid` (0n: not present). */
function frames(pid: number, addr: bigint, pages: number): bigint[] {
  const buf = Buffer.alloc(pages * 8);
  const fd = openSync(`/proc/${pid}/pagemap`, 'r');
  try {
    for (let done = 0; done < buf.length;) {
      const n = readSync(fd, buf, done, buf.length - done, Number((addr / PAGE) * 8n) + done);
      if (n === 0) throw new Error(`/proc/${pid}/pagemap ended early`);
      done += n;
    }
  } finally {
    closeSync(fd);
  }
  return Array.from({ length: pages }, (_, i) => {
    const e = buf.readBigUInt64LE(i * 8);
    return e & PRESENT ? e & PFN_MASK : 0n;
  });
}

/**
 * The sharing a restore must give back (see tests/cow-keeper.c for who rewrote what). A child
 * holds, equal, what its parent holds and shares that page; siblings that both kept the page
 * their parent rewrote after fork have a copy each (CRIU restores them so too: a page is shared
 * with the parent, not between siblings).
 */
function expectSharing(keeper: TreeKeeper, layout: { buf: bigint; pages: number; grow: bigint; data: bigint; data2: bigint }, round: number): void {
  const [r, c1, g, c2] = keeper.pids.map((pid) => frames(pid, layout.buf, layout.pages));
  const wrong: string[] = [];
  const want = (cond: boolean, what: string) => {
    if (!cond && wrong.length < 10) wrong.push(what);
  };
  for (let i = 0; i < layout.pages; i++) {
    const [a, b, c, d] = [r![i]!, c1![i]!, g![i]!, c2![i]!];
    const at = `round ${round}, page ${i}`;
    if (i === 0) {
      want(b === 0n && c === 0n && a !== 0n && a === d, `${at}: unmapped in C1 and G, shared by R and C2`);
      continue;
    }
    switch (i % 64) {
      case 3: want(a !== b && b === c && d !== a && b !== 0n, `${at}: R's own copy, C1 and G share theirs`); break;
      case 5: want(b === c && b !== a && a === d && a !== 0n, `${at}: C1 and G share their copy, R and C2 the first one`); break;
      case 7: want(d !== a && a === b && b === c && d !== 0n, `${at}: C2's own copy`); break;
      case 9: want(d === 0n && a === b && b === c && a !== 0n, `${at}: dropped in C2, shared by the others`); break;
      case 11: want(c !== b && a === b && c !== 0n, `${at}: G's own copy`); break;
      default: want(a !== 0n && a === b && b === c && c === d, `${at}: one page for all four (${a} ${b} ${c} ${d})`);
    }
  }
  const [gr, gc1, gg, gc2] = keeper.pids.map((pid, s) => frames(pid, layout.grow, s === 3 ? 2 * GROW_PAGES : GROW_PAGES));
  for (let i = 0; i < GROW_PAGES; i++) {
    want(gr![i] !== 0n && gr![i] === gc1![i] && gc1![i] === gg![i] && gg![i] === gc2![i], `round ${round}, grown area page ${i}: one page for all four`);
    want(gc2![GROW_PAGES + i] !== 0n, `round ${round}, grown area page ${GROW_PAGES + i} present in C2`);
  }
  const [dr, dc1, dg, dc2] = keeper.pids.map((pid) => frames(pid, layout.data, DATA_PAGES));
  for (let i = 0; i < DATA_PAGES; i++) {
    const at = `round ${round}, .data page ${i}`;
    want(dr![i] !== 0n && dr![i] === dc2![i], `${at}: R and C2 share it`);
    if (i === 3) want(dc1![i] === dg![i] && dc1![i] !== dr![i], `${at}: C1 and G share their copy`);
    else want(dc1![i] === dr![i] && dg![i] === dr![i], `${at}: one page for all four`);
  }
  // R's own copy; the others the program file's page, dropped from what they inherited.
  const [d2r, d2c1, d2g, d2c2] = keeper.pids.map((pid) => frames(pid, layout.data2, 1)[0]!);
  want(d2r !== 0n && d2c1 !== d2r && d2c1 === d2g && d2g === d2c2, `round ${round}, .data page written by R after fork: R's copy, dropped in the others (the file's page again)`);
  expect(wrong, 'page frames').to.deep.equal([]);
}

describe('core: private memory shared copy on write after fork', function () {
  this.timeout(180_000);
  rootWithSubreaper();
  let keeper: TreeKeeper | undefined;
  before(function () {
    if (!existsSync(join(TEST_BIN, 'cow-keeper'))) throw new Error('tests/bin/cow-keeper is missing: run npm run build');
    if (!existsSync(CLI)) throw new Error(`${CLI} is missing: run npm run build`);
  });
  afterEach(() => {
    keeper?.cleanup();
    keeper = undefined;
  });

  it('comes back with every process\'s contents and its unmodified pages physically shared (library, then CLI)', function () {
    keeper = new TreeKeeper('cow-keeper');
    const [bufHex, pages, growHex, dataHex, data2Hex] = keeper.lines().find((l) => l.startsWith('layout '))!.split(' ').slice(1);
    const layout = { buf: BigInt(`0x${bufHex}`), pages: Number(pages), grow: BigInt(`0x${growHex}`), data: BigInt(`0x${dataHex}`), data2: BigInt(`0x${data2Hex}`) };
    const untouched = keeper.check();
    expect(untouched.failures, 'before any dump').to.deep.equal([]);
    for (let round = 0; round < 2; round++) {
      if (round === 0) {
        keeper.dump();
        const r = restoreSync({ imagesDir: keeper.images, detached: true });
        expect(r.pid).to.equal(keeper.root);
        expect(r.warnings).to.deep.equal([]);
        // Every page but those rewritten after fork (5 in 64) stays shared in each of the three children.
        expect(r.pagesSharedBytes, 'bytes left shared').to.be.greaterThan(3 * 64 * 2 ** 20 * (59 / 64) * 0.99);
      } else {
        rmSync(keeper.images, { recursive: true, force: true });
        criuTs('dump', '-t', String(keeper.root), '-D', keeper.images);
        keeper.waitGone();
        criuTs('restore', '-d', '-D', keeper.images);
      }
      expect(ourStubs()).to.deep.equal([]);
      expectSharing(keeper, layout, round);
      sleepMs(10);
      const { failures, done } = keeper.check();
      expect(failures, `round ${round}`).to.deep.equal([]);
      expect(done).to.equal('done 0');
    }
  });
});

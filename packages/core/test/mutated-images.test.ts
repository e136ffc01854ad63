// Images are untrusted input. Property: restore of a mutated image set (criu-ts's own dumps of
// state-keeper and tree-keeper, and CRIU 4.2's dumps in ../shared/criu-images) ends in a
// RestoreError (one that names the image file or field when the images are refused), never in
// another exception, a hang, or a process left behind: after every case no task with a dumped
// PID or TID exists and no stub runs. A mutation restore does not notice (a byte nobody reads)
// may restore a process; it is killed and counted.
//
// Mutations: bytes flipped, a file cut short, one field of one entry set to an odd value (0, -1,
// limits, neighbours, another PID, a path that does not exist), an entry dropped or repeated.
// Each case is a fresh directory of symlinks to the pristine images but for the mutated file.
// String values never become existing paths: restored processes must not write anywhere real.
import { expect } from 'chai';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import fc from 'fast-check';
import { RestoreError, restoreSync } from '@criu-ts/core';
import { ImageReader, ImageWriter, kindForFileName, type DecodedMessage, type EntryPayload } from '@criu-ts/images';
import { isRoot, killQuietly, ourStubs } from './restore-helpers.js';
import { becomeSubreaper, StateKeeper, TreeKeeper } from './programs.js';
import { dumpedIds, expectIdsFree } from './reliability-helpers.js';

const FIXTURES = new URL('../../../../../shared/criu-images', import.meta.url).pathname;

interface Pristine {
  readonly name: string;
  readonly dir: string;
  readonly files: readonly string[];
  /** Every PID and TID the set's pstree.img lists (empty when it cannot be read). */
  readonly ids: readonly number[];
}

function pristine(name: string, dir: string): Pristine {
  const files = readdirSync(dir).filter((f) => f.endsWith('.img')).sort();
  let ids: number[] = [];
  try {
    const { pids, tids } = dumpedIds(dir);
    ids = [...pids, ...tids];
  } catch { /* a fixture without a readable pstree: nothing to look for */ }
  return { name, dir, files, ids };
}

type Leaf = { readonly holder: Record<string, unknown> | unknown[]; readonly key: string | number; readonly value: unknown };

/** Every scalar of a decoded message (numbers, bigints, strings, booleans, bytes), with where it sits. */
function leaves(message: unknown, out: Leaf[] = []): Leaf[] {
  if (Array.isArray(message)) {
    message.forEach((v, i) => (typeof v === 'object' && v !== null && !(v instanceof Uint8Array) ? leaves(v, out) : out.push({ holder: message, key: i, value: v })));
  } else if (message && typeof message === 'object' && !(message instanceof Uint8Array)) {
    for (const [k, v] of Object.entries(message)) {
      if (v && typeof v === 'object' && !(v instanceof Uint8Array)) leaves(v, out);
      else out.push({ holder: message as Record<string, unknown>, key: k, value: v });
    }
  }
  return out;
}

/** An odd value of the same type as `value`; `pick` chooses which, `pids` are PIDs of the set. */
function oddValue(value: unknown, pick: number, pids: readonly number[]): unknown {
  if (typeof value === 'number') {
    const choices = [0, 1, -1, 2 ** 31 - 1, 2 ** 32 - 1, value + 1, value - 1, value * 4096, pids[pick % Math.max(1, pids.length)] ?? 1, (pick * 2654435761) >>> 0];
    return choices[pick % choices.length];
  }
  if (typeof value === 'bigint') {
    const choices = [0n, 1n, (1n << 63n) - 1n, (1n << 64n) - 1n, value + 4096n, value - 4096n, value ^ (1n << 40n), value + 1n, BigInt(pick) << 12n];
    return choices[pick % choices.length];
  }
  if (typeof value === 'string') {
    const choices = ['', 'relative/name', '/nonexistent/criu-ts-mutation', `${value}.criu-ts-mutated`, 'x'.repeat(5000), `${value}\u0000tail`];
    return choices[pick % choices.length];
  }
  if (typeof value === 'boolean') return !value;
  if (value instanceof Uint8Array) {
    const choices = [new Uint8Array(0), value.subarray(0, value.length >> 1), new Uint8Array(value.length + 7).fill(0xff)];
    return choices[pick % choices.length];
  }
  return undefined;
}

type Mutation =
  | { kind: 'flip'; flips: Array<[number, number]> }
  | { kind: 'cut'; at: number }
  | { kind: 'field'; leaf: number; pick: number; remove: boolean }
  | { kind: 'drop-entry' | 'repeat-entry'; entry: number };

const mutationArb: fc.Arbitrary<Mutation> = fc.oneof(
  fc.record({ kind: fc.constant('flip' as const), flips: fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 6 }) }),
  fc.record({ kind: fc.constant('cut' as const), at: fc.nat() }),
  fc.record({ kind: fc.constant('field' as const), leaf: fc.nat(), pick: fc.nat(), remove: fc.boolean() }),
  fc.record({ kind: fc.constant('field' as const), leaf: fc.nat(), pick: fc.nat(), remove: fc.constant(false) }),
  fc.record({ kind: fc.constantFrom('drop-entry' as const, 'repeat-entry' as const), entry: fc.nat() }),
);

/** Writes the mutated `file` of `set` into `out`; false when the mutation cannot be encoded (skipped). */
function writeMutated(set: Pristine, file: string, m: Mutation, out: string): boolean {
  const src = join(set.dir, file);
  if (m.kind === 'flip' || m.kind === 'cut' || file.startsWith('pages-')) {
    const bytes = Buffer.from(readFileSync(src));
    if (bytes.length === 0) return false;
    if (m.kind === 'flip' && !file.startsWith('pages-')) for (const [at, v] of m.flips) bytes[at % bytes.length] = v;
    const cut = m.kind === 'cut' ? m.at % bytes.length : file.startsWith('pages-') ? (bytes.length >> 1) & ~4095 : bytes.length;
    writeFileSync(out, bytes.subarray(0, cut));
    return true;
  }
  const kind = kindForFileName(file);
  if (!kind) return false;
  let entries: Array<{ message: DecodedMessage; payload?: EntryPayload }>;
  const reader = ImageReader.open(src);
  try {
    entries = [...reader.entries()].map((e) => ({ message: structuredClone(e.message), ...(e.payload ? { payload: structuredClone(e.payload) } : {}) }));
  } finally {
    reader.close();
  }
  if (entries.length === 0) return false;
  if (m.kind === 'drop-entry') entries.splice(m.entry % entries.length, 1);
  else if (m.kind === 'repeat-entry') entries.splice(m.entry % entries.length, 0, entries[m.entry % entries.length]!);
  else if (m.kind === 'field') {
    const all = entries.flatMap((e) => leaves(e.message));
    if (all.length === 0) return false;
    const leaf = all[m.leaf % all.length]!;
    const pids = set.ids as number[];
    if (m.remove && !Array.isArray(leaf.holder)) delete (leaf.holder as Record<string, unknown>)[leaf.key as string];
    else {
      const v = oddValue(leaf.value, m.pick, pids);
      if (v === undefined) return false;
      (leaf.holder as Record<string | number, unknown>)[leaf.key] = v;
    }
  }
  try {
    const w = ImageWriter.create(out, kind);
    for (const e of entries) w.append(e.message, e.payload);
    w.finish();
    return true;
  } catch {
    return false; // the codec refuses the value (out of range for the field): not an image
  }
}

/** Every PID a (possibly mutated) pstree.img lists, when it can be read. */
function pidsIn(dir: string): number[] {
  try {
    const { pids, tids } = dumpedIds(dir);
    return [...pids, ...tids].filter((p) => Number.isInteger(p) && p > 1 && p !== process.pid && p < 1 << 22);
  } catch {
    return [];
  }
}


describe('reliability: restore of mutated image sets (property)', function () {
  this.timeout(600_000);
  let work: string;
  let keeper: StateKeeper | undefined;
  let tree: TreeKeeper | undefined;
  const sets: Pristine[] = [];

  before(function () {
    if (!isRoot()) this.skip(); // stated reason: restore needs ptrace, clone3 set_tid and PR_SET_MM_MAP
    if (!existsSync(FIXTURES)) throw new Error(`${FIXTURES} is missing: the CRIU 4.2 fixtures must be beside this checkout`);
    becomeSubreaper();
    work = mkdtempSync(join(tmpdir(), 'criu-ts-mutate-'));
    keeper = new StateKeeper();
    keeper.dump();
    sets.push(pristine('state-keeper', keeper.images));
    tree = new TreeKeeper();
    tree.dump();
    sets.push(pristine('tree-keeper', tree.images));
  });
  after(() => {
    keeper?.cleanup();
    tree?.cleanup();
    if (work) rmSync(work, { recursive: true, force: true });
    if (isRoot()) becomeSubreaper(false);
  });

  /** Refusals that name no image file or field, by message shape (reported together at the end). */
  const unnamed = new Map<string, string>();

  function runCase(set: Pristine, fileIndex: number, m: Mutation, caseNo: number, stats: Record<string, number>): void {
    const file = set.files[fileIndex % set.files.length]!;
    const dir = join(work, `case-${caseNo}`);
    mkdirSync(dir);
    try {
      for (const f of readdirSync(set.dir)) if (f !== file) symlinkSync(join(set.dir, f), join(dir, f));
      if (!writeMutated(set, file, m, join(dir, file))) {
        stats.skipped = (stats.skipped ?? 0) + 1;
        return;
      }
      const what = `${set.name} ${file} ${JSON.stringify(m)}`;
      // PIDs some other process of this machine holds are not ours to watch (restore must refuse them).
      const ids = [...new Set([...set.ids, ...pidsIn(dir)])].filter((id) => !existsSync(`/proc/${id}`));
      const started = Date.now();
      try {
        const r = restoreSync({ imagesDir: dir, detached: true, timeoutMs: 5000 });
        stats.restored = (stats.restored ?? 0) + 1;
        for (const pid of r.pids) killQuietly(pid);
      } catch (error) {
        if (!(error instanceof RestoreError)) throw new Error(`${what}: not a RestoreError: ${(error as Error)?.stack ?? String(error)}`);
        stats[error.stage] = (stats[error.stage] ?? 0) + 1;
        if (process.env.CRIU_TS_MUTATION_DEBUG) console.log(`${what}: ${error.message}`);
        if (error.stage === 'read-images' || error.stage === 'validate') {
          const named = /\.img\b|images directory/.test(error.message) || error.evidence.file !== undefined || /PID \d+|process \d+|thread \d+/.test(error.message);
          if (!named) unnamed.set(error.message.replace(/\d+/g, 'N'), `${what}: ${error.message}`);
        }
      }
      expect(Date.now() - started, `${what}: restore time (ms)`).to.be.below(20_000);
      expectIdsFree(ids, what, 5000);
      expect(ourStubs(), `${what}: stubs`).to.deep.equal([]);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  }

  it("criu-ts's own dumps (state-keeper, tree-keeper): only RestoreErrors, nothing left running", function () {
    const stats: Record<string, number> = {};
    let caseNo = 0;
    const deadline = Date.now() + Number(process.env.CRIU_TS_MUTATION_SECONDS ?? 90) * 1000;
    fc.assert(
      fc.property(fc.nat(), fc.nat(), mutationArb, (setIndex, fileIndex, m) => {
        if (Date.now() > deadline) return; // bounded in time as well as in count
        runCase(sets[setIndex % sets.length]!, fileIndex, m, caseNo++, stats);
      }),
      // CRIU_TS_MUTATION_RUNS / CRIU_TS_MUTATION_SEED explore further by hand; CI runs the fixed ones.
      { numRuns: Number(process.env.CRIU_TS_MUTATION_RUNS ?? 600), seed: Number(process.env.CRIU_TS_MUTATION_SEED ?? 9009), endOnFailure: true },
    );
    console.log(`      own dumps: ${caseNo} cases ${JSON.stringify(stats)}`);
    expect([...unnamed.values()], 'refusals that name no image file or field').to.deep.equal([]);
    expect((stats.validate ?? 0) + (stats['read-images'] ?? 0)).to.be.greaterThan(100);
  });

  it('CRIU 4.2 fixtures (../shared/criu-images): only RestoreErrors, nothing started', function () {
    const fixtures = readdirSync(FIXTURES).filter((d) => existsSync(join(FIXTURES, d, 'pstree.img'))).sort().map((d) => pristine(d, join(FIXTURES, d)));
    expect(fixtures.length).to.be.greaterThan(30);
    const stats: Record<string, number> = {};
    let caseNo = 0;
    // Each fixture as it is first: refused (its programs and files are not on this machine) or restored.
    for (const set of fixtures) runCase(set, 0, { kind: 'flip', flips: [] }, caseNo++, stats);
    const deadline = Date.now() + 120_000;
    fc.assert(
      fc.property(fc.nat(), fc.nat(), mutationArb, (setIndex, fileIndex, m) => {
        if (Date.now() > deadline) return;
        runCase(fixtures[setIndex % fixtures.length]!, fileIndex, m, caseNo++, stats);
      }),
      { numRuns: 1500, seed: 4242, endOnFailure: true },
    );
    console.log(`      fixtures: ${caseNo} cases ${JSON.stringify(stats)}`);
    expect([...unnamed.values()], 'refusals that name no image file or field').to.deep.equal([]);
  });
});

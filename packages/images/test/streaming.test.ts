// The streaming writer and reader, and the pagemap + pages iterator.
import { expect } from 'chai';
import { mkdtempSync, readFileSync, readdirSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { ImageReader, ImageWriter, PagesReader, PAGE_SIZE, PE_PARENT, PE_PRESENT, kindForFileName } from '@criu-ts/images';
import { HAVE_FIXTURES, IMAGES_ROOT } from './fixtures.js';

describe('images: streaming reader/writer and pages', function () {
  let dir: string;
  beforeEach(() => (dir = mkdtempSync(join(tmpdir(), 'criu-ts-img-'))));
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('writes entries one at a time to a 0600 file and reads them back in order, payloads included', function () {
    const path = join(dir, 'pipes-data.img');
    const writer = ImageWriter.create(path, kindForFileName(path)!);
    const payloads = [Buffer.from('hello'), Buffer.alloc(0), Buffer.alloc(300_000, 7)];
    payloads.forEach((bytes, i) => writer.append({ pipe_id: 100 + i, bytes: bytes.length, size: 65536 }, { type: 'bytes', bytes }));
    writer.finish({ sync: true });
    expect(statSync(path).mode & 0o777).to.equal(0o600);
    const reader = ImageReader.open(path);
    const entries = [...reader.entries()];
    reader.close();
    expect(entries.map((e) => e.message.pipe_id)).to.deep.equal([100, 101, 102]);
    entries.forEach((e, i) => {
      expect(e.payload?.type).to.equal('bytes');
      expect(Buffer.compare(Buffer.from((e.payload as { bytes: Uint8Array }).bytes), payloads[i]!)).to.equal(0);
    });
    // Offsets point at each entry's length prefix.
    const raw = readFileSync(path);
    for (const e of entries) expect(raw.readUInt32LE(e.offset)).to.be.greaterThan(0);
  });

  it('iterates a pagemap with present and parent runs over a pages file without loading it', function () {
    const pagemapPath = join(dir, 'pagemap-42.img');
    const writer = ImageWriter.create(pagemapPath, kindForFileName(pagemapPath)!);
    writer.append({ pages_id: 7 });
    const runs = [
      { vaddr: 0x7f0000000000n, nr: 3, flags: PE_PRESENT },
      { vaddr: 0x7f0000010000n, nr: 2, flags: PE_PARENT },
      { vaddr: 0x7f0000020000n, nr: 1, flags: PE_PRESENT },
    ];
    for (const r of runs) writer.append({ vaddr: r.vaddr, compat_nr_pages: 0, flags: r.flags, nr_pages: BigInt(r.nr) });
    writer.finish();
    const pages = Buffer.alloc(4 * PAGE_SIZE);
    for (let p = 0; p < 4; p++) pages.fill(0x10 + p, p * PAGE_SIZE, (p + 1) * PAGE_SIZE);
    writeFileSync(join(dir, 'pages-7.img'), pages);

    const reader = PagesReader.open(pagemapPath);
    const seen = [...reader.runs()];
    expect(seen.map((r) => [r.vaddr, r.nrPages, r.flags])).to.deep.equal(runs.map((r) => [r.vaddr, r.nr, r.flags]));
    expect(seen[0]!.pages).to.include({ offset: 0, length: 3 * PAGE_SIZE });
    expect(seen[1]!.pages).to.equal(undefined);
    expect(seen[2]!.pages).to.include({ offset: 3 * PAGE_SIZE, length: PAGE_SIZE });
    expect(reader.read(seen[2]!)[0]).to.equal(0x13);
    reader.close();
  });

  it('refuses a pagemap that needs more pages than the pages file has', function () {
    const pagemapPath = join(dir, 'pagemap-1.img');
    const writer = ImageWriter.create(pagemapPath, kindForFileName(pagemapPath)!);
    writer.append({ pages_id: 1 });
    writer.append({ vaddr: 0x1000n, compat_nr_pages: 0, flags: PE_PRESENT, nr_pages: 2n });
    writer.finish();
    writeFileSync(join(dir, 'pages-1.img'), Buffer.alloc(PAGE_SIZE));
    const reader = PagesReader.open(pagemapPath);
    expect(() => [...reader.runs()]).to.throw(/needs 8192 bytes at offset 0 but the pages file has 4096/);
    reader.close();
  });

  it('fixtures: the present runs of every pagemap add up to its pages file exactly', function () {
    if (!HAVE_FIXTURES) this.skip(); // stated reason: ../shared/criu-images is not beside this checkout
    let checked = 0;
    for (const d of ['caps00', 'maps00', 'mprotect00', 'pthread00']) {
      for (const f of readdirSync(join(IMAGES_ROOT, d)).sort().filter((n) => n.startsWith('pagemap-'))) {
        const reader = PagesReader.open(join(IMAGES_ROOT, d, f));
        let bytes = 0;
        for (const run of reader.runs()) bytes += run.pages?.length ?? 0;
        expect(bytes, `${d}/${f}`).to.equal(reader.pagesSize);
        reader.close();
        checked++;
      }
    }
    expect(checked).to.be.greaterThan(4);
  });
});

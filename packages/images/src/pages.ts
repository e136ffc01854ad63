// Memory contents: pagemap-N.img lists runs of pages (address, count, flags) and pages-M.img
// holds the bytes of the runs that are PE_PRESENT, back to back in pagemap order, no magic.
//
//   pagemap-N.img:  [head: pages_id=M] [vaddr A, 3 pages, PRESENT] [vaddr B, 2 pages, PARENT] [vaddr C, 1 page, PRESENT]
//   pages-M.img:    | A: 3 * 4096 bytes | C: 4096 bytes |
//
// PagesReader walks the runs and gives each present run as a byte range of the pages file
// (fd + offset + length), so a restorer can preadv/splice it into place; nothing loads the whole
// pages file. `read()` fetches one run's bytes when a caller does want them in memory.
import { closeSync, fstatSync, openSync, readSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { ImageFormatError } from './errors.js';
import { ImageReader } from './io/reader.js';

export const PAGE_SIZE = 4096;

/** Pagemap entry flags (pagemap_entry.flags). */
export const PE_PARENT = 1 << 0;
export const PE_LAZY = 1 << 1;
export const PE_PRESENT = 1 << 2;

export interface PageRun {
  readonly vaddr: bigint;
  readonly nrPages: number;
  readonly flags: number;
  /** Where the run's bytes are in the pages file; absent for runs kept in the parent image. */
  readonly pages?: { readonly fd: number; readonly offset: number; readonly length: number };
}

export class PagesReader {
  private constructor(
    private readonly pagemap: ImageReader,
    private readonly pagesFd: number,
    readonly pagesFile: string,
    readonly pagesSize: number,
    readonly pagesId: number,
  ) {}

  /** Opens `pagemap-N.img` (or `pagemap-shmem-N.img`) and the pages file its head names. */
  static open(pagemapPath: string): PagesReader {
    const pagemap = ImageReader.open(pagemapPath);
    try {
      if (pagemap.kind.name !== 'PAGEMAP') {
        throw new ImageFormatError({ file: pagemapPath, reason: 'magic-mismatch', detail: `expected a pagemap image, found ${pagemap.kind.name}` });
      }
      const first = pagemap.entries().next();
      if (first.done) {
        throw new ImageFormatError({ file: pagemapPath, reason: 'truncated', offset: pagemap.dataOffset, detail: 'no pagemap head entry' });
      }
      const pagesId = Number(first.value.message.pages_id);
      const pagesFile = join(dirname(pagemapPath), `pages-${pagesId}.img`);
      const fd = openSync(pagesFile, 'r');
      return new PagesReader(pagemap, fd, pagesFile, fstatSync(fd).size, pagesId);
    } catch (error) {
      pagemap.close();
      throw error;
    }
  }

  /** Runs in pagemap order. Throws if a present run lies beyond the end of the pages file. */
  *runs(): Generator<PageRun> {
    let offset = 0;
    for (const entry of this.pagemap.entries()) {
      if (entry.index === 0) continue;
      const m = entry.message;
      const nrPages = Number(m.nr_pages ?? m.compat_nr_pages ?? 0);
      // Images from before pagemap flags existed mark parent pages with in_parent only.
      const flags = m.flags !== undefined ? Number(m.flags) : m.in_parent === true ? PE_PARENT : PE_PRESENT;
      const vaddr = BigInt(m.vaddr as bigint);
      if (flags & PE_PRESENT) {
        const length = nrPages * PAGE_SIZE;
        if (offset + length > this.pagesSize) {
          throw new ImageFormatError({
            file: this.pagesFile, reason: 'truncated', offset, entryIndex: entry.index,
            detail: `pagemap entry ${entry.index} needs ${length} bytes at offset ${offset} but the pages file has ${this.pagesSize}`,
          });
        }
        yield { vaddr, nrPages, flags, pages: { fd: this.pagesFd, offset, length } };
        offset += length;
      } else {
        yield { vaddr, nrPages, flags };
      }
    }
  }

  /** The bytes of one present run. */
  read(run: PageRun, into: Uint8Array = new Uint8Array(run.pages?.length ?? 0)): Uint8Array {
    if (!run.pages) throw new Error('run has no pages in this image (it is in the parent image)');
    let done = 0;
    while (done < run.pages.length) {
      const n = readSync(this.pagesFd, into, done, run.pages.length - done, run.pages.offset + done);
      if (n === 0) break;
      done += n;
    }
    return into.subarray(0, done);
  }

  close(): void {
    this.pagemap.close();
    closeSync(this.pagesFd);
  }
}

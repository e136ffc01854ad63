// Bad input gets a typed ImageFormatError naming file, entry, offset and reason; nothing else
// happens. Bytes are corrupted on purpose, and a property test mutates fixtures at random.
import { expect } from 'chai';
import fc from 'fast-check';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ImageFormatError, ImageReader, imageFromCritJson, imageToCritJson, parseJsonExact, type ImageFormatReason,
} from '@criu-ts/images';
import { HAVE_FIXTURES, IMAGES_ROOT } from './fixtures.js';

function expectFormatError(action: () => unknown, reason: ImageFormatReason): ImageFormatError {
  try {
    action();
  } catch (error) {
    expect(error, String(error)).to.be.instanceOf(ImageFormatError);
    const e = error as ImageFormatError;
    expect(e.reason, e.message).to.equal(reason);
    return e;
  }
  throw new Error(`expected an ImageFormatError (${reason}) but nothing was thrown`);
}

const decodeAll = (bytes: Uint8Array, name: string) => imageToCritJson(ImageReader.fromBytes(bytes, name), { pretty: true });

function u32(n: number): Buffer {
  const b = Buffer.alloc(4);
  b.writeUInt32LE(n >>> 0);
  return b;
}

describe('images: bad input', function () {
  before(function () {
    if (!HAVE_FIXTURES) this.skip(); // stated reason: ../shared/criu-images is not beside this checkout
  });
  const fixture = (dir: string, file: string) => readFileSync(join(IMAGES_ROOT, dir, file));

  it('a truncated entry names the entry index and its offset', function () {
    const bytes = fixture('caps00', 'core-66.img');
    const cut = bytes.subarray(0, bytes.length - 10);
    const e = expectFormatError(() => decodeAll(cut, 'core-66.img'), 'length-beyond-end');
    expect(e.file).to.equal('core-66.img');
    expect(e.entryIndex).to.equal(0);
    expect(e.offset).to.equal(8);
    expect(e.message).to.match(/core-66\.img, entry 0, offset 8: length-beyond-end/);
  });

  it('stray bytes after the last entry are a truncated length prefix', function () {
    const bytes = Buffer.concat([fixture('caps00', 'pstree.img'), Buffer.from([1, 2])]);
    const e = expectFormatError(() => decodeAll(bytes, 'pstree.img'), 'truncated');
    expect(e.entryIndex).to.equal(2);
  });

  it('a file too short for its magic is truncated', function () {
    expectFormatError(() => decodeAll(Buffer.from([0x19, 0x43]), 'core-1.img'), 'truncated');
  });

  it('an unknown magic is refused, with the value', function () {
    const bytes = Buffer.concat([u32(0x54564319), u32(0x12345678), u32(0)]);
    const e = expectFormatError(() => decodeAll(bytes, '<stdin>'), 'unknown-magic');
    expect(e.value).to.equal('0x12345678');
  });

  it('a file whose name and magic disagree is refused', function () {
    const e = expectFormatError(() => decodeAll(fixture('caps00', 'core-66.img'), 'mm-66.img'), 'magic-mismatch');
    expect(e.detail).to.match(/MM/);
  });

  it('a length prefix beyond the end of the file', function () {
    const bytes = Buffer.concat([u32(0x54564319), u32(0x55053847), u32(0x7fffffff), Buffer.alloc(16)]);
    const e = expectFormatError(() => decodeAll(bytes, 'core-9.img'), 'length-beyond-end');
    expect(e.value).to.equal(String(0x7fffffff));
    expect(e.offset).to.equal(8);
  });

  it('garbage protobuf is refused as such', function () {
    // Wire type 7 does not exist.
    const body = Buffer.from([0x0f, 0xff, 0xff]);
    const bytes = Buffer.concat([u32(0x54564319), u32(0x50273030), u32(body.length), body]);
    const e = expectFormatError(() => decodeAll(bytes, 'pstree.img'), 'bad-protobuf');
    expect(e.entryIndex).to.equal(0);
  });

  it('a missing required field is named by path', function () {
    // pstree_entry with only ppid (field 2): pid (field 1) and the rest are required.
    const body = Buffer.from([0x10, 0x01]);
    const bytes = Buffer.concat([u32(0x54564319), u32(0x50273030), u32(body.length), body]);
    const e = expectFormatError(() => decodeAll(bytes, 'pstree.img'), 'missing-required-field');
    expect(e.field).to.equal('pid');
  });

  it('a payload size beyond the end of the file (fifo data)', function () {
    const bytes = fixture('fifo', 'fifo-data.img');
    const e = expectFormatError(() => decodeAll(bytes.subarray(0, bytes.length - 3), 'fifo-data.img'), 'length-beyond-end');
    expect(e.field).to.equal('bytes');
    expect(e.entryIndex).to.equal(0);
  });

  it('JSON of the wrong shape is reported by its path', function () {
    const json = parseJsonExact(
      JSON.stringify({ magic: 'PSTREE', entries: [{ pid: 1, ppid: 0, pgid: 1, sid: 1 }, { pid: 'x', ppid: 0, pgid: 1, sid: 1 }] }),
    );
    const e = expectFormatError(() => imageFromCritJson(json, 'in.json'), 'bad-json');
    expect(e.entryIndex).to.equal(1);
    expect(e.field).to.equal('pid');
    expect(e.detail).to.match(/expected an integer/);
  });

  it('JSON with a value out of range, an unknown field, a bad enum, a bad magic name', function () {
    const cases: Array<[unknown, RegExp]> = [
      [{ magic: 'PSTREE', entries: [{ pid: 2 ** 32, ppid: 0, pgid: 1, sid: 1 }] }, /out of range for uint32/],
      [{ magic: 'PSTREE', entries: [{ pid: 1, ppid: 0, pgid: 1, sid: 1, pidd: 3 }] }, /pidd/],
      [{ magic: 'CORE', entries: [{ mtype: 'VAX' }] }, /VAX/],
      [{ magic: 'NOPE', entries: [] }, /unknown image magic name/],
      [{ magic: 'PSTREE' }, /entries/],
      [{ magic: 'PSTREE', entries: [{ pid: 1 }] }, /lacks required field ppid/],
    ];
    for (const [json, message] of cases) {
      const e = expectFormatError(() => imageFromCritJson(json, 'in.json'), 'bad-json');
      expect(e.message).to.match(message);
    }
  });

  it('property: mutated fixture bytes only ever give ImageFormatError, and quickly', function () {
    this.timeout(120_000);
    const samples = [
      ['caps00', 'core-66.img'], ['caps00', 'mm-66.img'], ['caps00', 'pagemap-66.img'], ['pipe00', 'pipes-data.img'],
      ['socket-tcp', 'tcp-stream-3e5b0.img'], ['unlink_fstat00', 'ghost-file-1.img'], ['caps00', 'inventory.img'],
      ['sockets01', 'sk-queues.img'], ['pty00', 'tty-data.img'], ['caps00', 'files.img'], ['caps00', 'stats-dump'],
    ].map(([d, f]) => ({ name: f!, bytes: fixture(d!, f!) }));
    let errors = 0;
    fc.assert(
      fc.property(
        fc.constantFrom(...samples),
        fc.array(fc.tuple(fc.nat(), fc.integer({ min: 0, max: 255 })), { minLength: 1, maxLength: 8 }),
        fc.option(fc.nat(), { nil: undefined }),
        ({ name, bytes }, flips, cutAt) => {
          const mutated = Buffer.from(bytes);
          for (const [at, value] of flips) mutated[at % mutated.length] = value;
          const input = cutAt === undefined ? mutated : mutated.subarray(0, cutAt % (mutated.length + 1));
          const started = Date.now();
          try {
            decodeAll(input, name);
          } catch (error) {
            if (!(error instanceof ImageFormatError)) throw error;
            errors++;
          }
          expect(Date.now() - started, 'decode time of one mutated image (ms)').to.be.below(2000);
        },
      ),
      { numRuns: 3000, seed: 4242 },
    );
    // Most mutations hit something; some flip bytes that do not matter. Both kinds happened.
    expect(errors).to.be.greaterThan(100);
  });
});

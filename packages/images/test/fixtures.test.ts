// Every CRIU 4.2 fixture decodes, re-encodes to the same bytes, and gives the JSON crit 4.2
// printed for it (plain and --pretty); `x DIR ...` prints what crit printed.
import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import {
  ImageReader, explore, imageFromCritJson, imageToCritJson, imageToCritJsonText, parseJsonExact, pyJsonStringify, EXPLORE_VIEWS,
} from '@criu-ts/images';
import { HAVE_FIXTURES, IMAGES_ROOT, JSON_ROOT, fixtureDirs, fixtureImages } from './fixtures.js';

function decodeText(bytes: Uint8Array, path: string, pretty: boolean): string {
  const reader = ImageReader.fromBytes(bytes, path);
  return pyJsonStringify(imageToCritJson(reader, { pretty }), pretty ? 4 : undefined);
}

/** The same through the entry-by-entry text path the CLI uses. */
function decodeStreamed(bytes: Uint8Array, path: string, pretty: boolean): string {
  return [...imageToCritJsonText(ImageReader.fromBytes(bytes, path), { pretty })].join('');
}

describe('images: CRIU 4.2 fixtures', function () {
  before(function () {
    if (!HAVE_FIXTURES) this.skip(); // stated reason: ../shared/criu-images is not beside this checkout
  });

  let checkedFiles = 0;
  let checkedJson = 0;
  for (const dir of fixtureDirs()) {
    it(`${dir}: every image decodes, round-trips byte for byte and matches crit 4.2's JSON`, function () {
      for (const file of fixtureImages(dir)) {
        const path = join(IMAGES_ROOT, dir, file);
        const bytes = readFileSync(path);
        for (const pretty of [false, true]) {
          const text = decodeText(bytes, path, pretty);
          const reference = join(JSON_ROOT, dir, `${file}${pretty ? '.pretty' : ''}.json`);
          if (existsSync(reference)) {
            const want = readFileSync(reference, 'utf8');
            expect(text, `${dir}/${file} ${pretty ? '--pretty' : 'plain'}`).to.equal(want);
            expect(decodeStreamed(bytes, path, pretty), `${dir}/${file} ${pretty ? '--pretty' : 'plain'}, streamed`).to.equal(want);
            checkedJson++;
          }
          const again = imageFromCritJson(parseJsonExact(text), reference, file);
          expect(Buffer.compare(Buffer.from(again), bytes), `${dir}/${file} re-encoded from ${pretty ? 'pretty' : 'plain'} JSON`).to.equal(0);
        }
        checkedFiles++;
      }
    });

    for (const view of EXPLORE_VIEWS) {
      const reference = join(JSON_ROOT, dir, `x-${view}.txt`);
      if (!existsSync(reference)) continue;
      it(`${dir}: x ${view} prints what crit 4.2 printed`, function () {
        const lines = explore(join(IMAGES_ROOT, dir), view);
        expect(lines.join('\n') + '\n').to.equal(readFileSync(reference, 'utf8'));
      });
    }
  }

  it('covered the whole fixture set', function () {
    // 44 dumps; a smaller count means fixtures went missing silently.
    expect(fixtureDirs().length).to.be.at.least(44);
    expect(checkedFiles).to.be.at.least(700);
    expect(checkedJson).to.be.at.least(1500);
  });

  for (const dir of ['zombie00', 'sigpending']) {
    it(`${dir}: x fds|mems|rss work on a dump with zombies, where crit 4.2 fails`, function () {
      const pids = explore(join(IMAGES_ROOT, dir), 'ps').slice(1).map((l) => l.trim().split(/\s+/)[0]);
      expect(pids.length).to.be.greaterThan(1);
      for (const view of ['fds', 'mems', 'rss'] as const) {
        const lines = explore(join(IMAGES_ROOT, dir), view);
        // Every task of the tree is listed, the living root with its details.
        for (const pid of pids) expect(lines, `${view} lists ${pid}`).to.include(pid);
        expect(lines.length).to.be.greaterThan(pids.length);
      }
      expect(explore(join(IMAGES_ROOT, dir), 'fds').join('\n')).to.match(/cwd: \//);
      expect(explore(join(IMAGES_ROOT, dir), 'mems').join('\n')).to.match(/\[vdso\]/);
    });
  }
});

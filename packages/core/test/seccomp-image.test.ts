// seccomp.img as CRIU 4.2 lays it out, written by dump and read back by restore (no privileges).
import { expect } from 'chai';
import { seccompImage, type ThreadSeccomp } from '../src/dump/seccomp.js';
import { resolveSeccomp } from '../src/restore/image-set.js';
import { RestoreError } from '@criu-ts/core';

type Msg = Record<string, any>; // eslint-disable-line @typescript-eslint/no-explicit-any

const program = (tag: number) => Buffer.from([6, 0, 0, 0, tag, 0, 0xff, 0x7f]); // one BPF_RET instruction
const filter = (...tags: number[]): ThreadSeccomp => ({ mode: 2, filters: tags.map((t) => ({ program: program(t), flags: 0 })) });

/** The chain restore installs for `tid`, as tags (oldest first). */
function restored(image: { entry: Msg; threadFields: Map<number, Msg> }, tid: number): number[] | undefined {
  const fields = image.threadFields.get(tid)!;
  const chain = resolveSeccomp(`core-${tid}.img`, fields.seccomp_mode, fields.seccomp_filter, (image.entry.seccomp_filters ?? []) as Msg[]);
  return chain?.filters.map((f) => f.program[4]!);
}

describe('core: seccomp.img layout', () => {
  it('threads with different chains: each chain newest first, seccomp_filter at its oldest, prev to the next newer; restore gets them back oldest first', () => {
    const image = seccompImage([[{ tid: 20, seccomp: filter(1, 2, 3) }, { tid: 10, seccomp: filter(1) }], [{ tid: 30, seccomp: { mode: 1, filters: [] } }]]);
    const filters = image.entry.seccomp_filters as Msg[];
    // By TID: 10 first ([1]), then 20 ([3, 2, 1], newest first).
    expect(filters.map((f) => Buffer.from(f.filter)[4])).to.deep.equal([1, 3, 2, 1]);
    expect(filters.map((f) => f.prev)).to.deep.equal([undefined, undefined, 1, 2]);
    expect(filters.map((f) => f.flags)).to.deep.equal([0, 0, 0, 0]);
    expect(image.threadFields.get(10)).to.deep.equal({ seccomp_mode: 2, seccomp_filter: 0 });
    expect(image.threadFields.get(20)).to.deep.equal({ seccomp_mode: 2, seccomp_filter: 3 });
    expect(image.threadFields.get(30)).to.deep.equal({ seccomp_mode: 1 });
    expect(restored(image, 20)).to.deep.equal([1, 2, 3]);
    expect(restored(image, 10)).to.deep.equal([1]);
    expect(restored(image, 30)).to.deep.equal([]);
  });

  it('every thread with the leader\'s chain: written once with SECCOMP_FILTER_FLAG_TSYNC, the other threads without seccomp state', () => {
    const image = seccompImage([[{ tid: 5, seccomp: filter(7, 8) }, { tid: 6, seccomp: filter(7, 8) }]]);
    expect((image.entry.seccomp_filters as Msg[]).map((f) => f.flags)).to.deep.equal([1, 1]);
    expect(image.threadFields.get(6)).to.deep.equal({});
    expect(restored(image, 5)).to.deep.equal([7, 8]);
    expect(restored(image, 6)).to.equal(undefined);
  });

  it('no seccomp anywhere: an empty entry, as CRIU writes it', () => {
    const image = seccompImage([[{ tid: 5, seccomp: { mode: 0, filters: [] } }]]);
    expect(image.entry).to.deep.equal({});
    expect(image.threadFields.get(5)).to.deep.equal({});
  });

  it('refuses a loop, an index outside the image, a partial instruction and a listener flag', () => {
    const ok = { filter: program(1) };
    expect(() => resolveSeccomp('core-1.img', 2, 1, [ok, { ...ok, prev: 1 }])).to.throw(RestoreError, /does not point back/);
    expect(() => resolveSeccomp('core-1.img', 2, 2, [ok])).to.throw(RestoreError, /index 2 is not in seccomp.img \(1 filters\)/);
    expect(() => resolveSeccomp('core-1.img', 2, 0, [{ filter: program(1).subarray(0, 5) }])).to.throw(RestoreError, /5 bytes is not a classic BPF program/);
    expect(() => resolveSeccomp('core-1.img', 2, 0, [{ ...ok, flags: 8 }])).to.throw(RestoreError, /flags 0x8 cannot be restored/);
    expect(() => resolveSeccomp('core-1.img', 3, 0, [ok])).to.throw(RestoreError, /unknown seccomp mode 3/);
  });
});

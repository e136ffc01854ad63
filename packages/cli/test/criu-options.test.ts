// criu's option spellings, and refusals that name the option.
import { expect } from 'chai';
import { parseCriuOptions, parseSize } from '../src/commands/criu-options.js';
import { UsageError } from '../src/commands/command-io.js';

const parse = (...argv: string[]) => parseCriuOptions('dump', argv, 'usage');

describe('cli: criu option parsing', function () {
  it('long, long=value, short, attached short values and bundled flags', function () {
    const p = parse('-t', '42', '--images-dir=/tmp/x', '-W/tmp/w', '-Rj', '--pidfile', 'p', '-o', 'dump.log');
    expect(p.values.get('tree')).to.equal('42');
    expect(p.values.get('images-dir')).to.equal('/tmp/x');
    expect(p.values.get('work-dir')).to.equal('/tmp/w');
    expect(p.values.get('leave-running')).to.equal(true);
    expect(p.values.get('shell-job')).to.equal(true);
    expect(p.values.get('pidfile')).to.equal('p');
    expect(p.values.get('log-file')).to.equal('dump.log');
  });

  it('verbosity: default 2, -v, -vv, -vvvv, -v4, --verbosity=1', function () {
    expect(parse().verbosity).to.equal(2);
    expect(parse('-v').verbosity).to.equal(3);
    expect(parse('-vv').verbosity).to.equal(4);
    expect(parse('-v4').verbosity).to.equal(4);
    expect(parse('--verbosity=1').verbosity).to.equal(1);
    expect(() => parse('-vx')).to.throw(UsageError, /number/);
  });

  it('refuses unknown options and options it cannot honour, naming them', function () {
    expect(() => parse('--frobnicate')).to.throw(UsageError, /unknown option --frobnicate/);
    expect(() => parse('-Z')).to.throw(UsageError, /unknown option -Z/);
    expect(parse('--link-remap').values.has('link-remap')).to.equal(true);
    expect(parse('--tcp-established', '--tcp-close', '--skip-in-flight').values.has('skip-in-flight')).to.equal(true);
    expect(() => parse('--track-mem')).to.throw(UsageError, /--track-mem is not supported yet/);
    expect(() => parse('--prev-images-dir=../p')).to.throw(UsageError, /--prev-images-dir is not supported yet/);
    expect(() => parse('--manage-cgroups=full')).to.throw(UsageError, /manage-cgroups=full/);
    expect(parse('--manage-cgroups=none').values.get('manage-cgroups')).to.equal('none');
    expect(() => parse('-t')).to.throw(UsageError, /needs a value/);
    expect(() => parse('--leave-running=yes')).to.throw(UsageError, /takes no value/);
  });

  it('sizes with K/M/G suffixes', function () {
    expect(parseSize('1M', '--ghost-limit', '')).to.equal(1 << 20);
    expect(parseSize('4096', '--ghost-limit', '')).to.equal(4096);
    expect(() => parseSize('lots', '--ghost-limit', '')).to.throw(UsageError);
  });
});

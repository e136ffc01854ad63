// The "lock:" lines of /proc/PID/fdinfo/N as criu-ts reads them (no privileges needed): every
// kind CRIU 4.2 saves, with CRIU's own kind numbers, and the states that are refused.
import { expect } from 'chai';
import { FILE_LOCK_FLAG, fileLocks } from '../src/dump/files/locks.js';

const fdinfo = (...locks: string[]) => `pos:\t0\nflags:\t0120000\nmnt_id:\t26\nino:\t2204961\n${locks.map((l) => `lock:\t${l}\n`).join('')}`;

describe('core: file lock lines of fdinfo', function () {
  it('reads leases (kernel 6.18 lines) with CRIU\'s FL_LEASE 8 and the lease type', function () {
    expect(fileLocks(fdinfo('1: LEASE  ACTIVE    READ 24998 fe:00:2204961 0 EOF'), 'fd 3')).to.deep.equal([
      { flag: 8, type: 0, holder: 24998, device: 'fe:00', inode: '2204961', start: 0n, len: 0n },
    ]);
    expect(fileLocks(fdinfo('1: LEASE  ACTIVE    WRITE 24998 fe:00:2204977 0 EOF'), 'fd 4')[0]).to.include({ flag: FILE_LOCK_FLAG.LEASE, type: 1 });
  });

  it('numbers kinds as CRIU does (POSIX 1, FLOCK 2, OFD 4), not as the kernel\'s fl_flags', function () {
    const got = fileLocks(fdinfo(
      '1: POSIX  ADVISORY  WRITE 100 fe:00:12 10 29',
      '2: FLOCK  ADVISORY  READ 100 fe:00:12 0 EOF',
      '3: OFDLCK ADVISORY  READ -1 fe:00:12 0 EOF',
    ), 'fd 5');
    expect(got.map((l) => [l.flag, l.type, l.start, l.len])).to.deep.equal([[1, 1, 10n, 20n], [2, 0, 0n, 0n], [4, 0, 0n, 0n]]);
  });

  it('reads a lease being broken as CRIU records it: LEASE_BREAKING (4) | the type it goes down to', function () {
    expect(fileLocks(fdinfo('1: LEASE  BREAKING  UNLCK 24998 fe:00:2204961 0 EOF'), 'fd 3')[0]).to.include({ flag: 8, type: 4 | 2 });
    expect(fileLocks(fdinfo('1: LEASE  BREAKING  READ 24998 fe:00:2204961 0 EOF'), 'fd 3')[0]).to.include({ flag: 8, type: 4 | 0 });
  });

  it('refuses other kinds and states, naming the fd', function () {
    expect(() => fileLocks(fdinfo('1: DELEG  ACTIVE    READ 1 fe:00:1 0 EOF'), 'fd 3 of process 7 (/tmp/x)')).to.throw(/^fd 3 of process 7 \(\/tmp\/x\) holds a DELEG lock; only flock, POSIX and OFD locks and leases/);
    expect(() => fileLocks(fdinfo('1: LEASE  BREAKER   READ 1 fe:00:1 0 EOF'), 'fd 3')).to.throw(/^fd 3 holds a lease in state BREAKER/);
    expect(() => fileLocks(fdinfo('1: POSIX  MANDATORY WRITE 1 fe:00:1 0 EOF'), 'fd 3')).to.throw(/MANDATORY POSIX lock/);
  });
});

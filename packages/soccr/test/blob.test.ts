// The compact binary form: round trips, and every kind of damage is refused
// with the field and offset at fault (no privileges needed).
import { expect } from 'chai';
import { crc32 } from 'node:zlib';
import { decodeState, encodeState, SoccrError, TcpState, type TcpConnectionState } from '@criu-ts/soccr';
import { sock } from '@criu-ts/sys';

function sample(family: 4 | 6): TcpConnectionState {
  return {
    state: TcpState.ESTABLISHED,
    local: family === 4 ? { family, address: '10.231.0.1', port: 8080 } : { family, address: 'fd00:231::1', port: 8080, flowinfo: 0, scopeId: 0 },
    remote: family === 4 ? { family, address: '10.231.0.2', port: 40000 } : { family, address: 'fd00:231::2', port: 40000, flowinfo: 0, scopeId: 0 },
    sendSeq: 0xfffffff0,
    recvSeq: 12345,
    recvQueue: Buffer.from('unread by the application'),
    sendQueue: Buffer.from('sent-but-unacked|never-sent'),
    unsentLength: 10,
    mssClamp: 65483,
    optionMask: 7,
    sndWscale: 7,
    rcvWscale: 10,
    timestamp: 987654321,
    window: { sndWl1: 1, sndWnd: 2, maxWindow: 3, rcvWnd: 4, rcvWup: 5 },
    nodelay: true,
    cork: false,
    reuseaddr: true,
  };
}

function refix(b: Buffer): Buffer {
  b.writeUInt32LE(crc32(b.subarray(0, b.length - 4)) >>> 0, b.length - 4);
  return b;
}

function codeOf(f: () => unknown): { code?: string; field?: unknown } {
  try {
    f();
  } catch (e) {
    if (e instanceof SoccrError) return { code: e.code, field: e.evidence['field'] };
    throw e;
  }
  return {};
}

describe('soccr compact binary form', () => {
  for (const f of [4, 6] as const) {
    it(`round-trips an IPv${f} state`, () => {
      const s = sample(f);
      expect(decodeState(encodeState(s))).to.deep.equal(s);
    });
  }

  it('refuses a truncated blob at every length', () => {
    const b = encodeState(sample(4));
    for (let n = 0; n < b.length; n++) {
      expect(codeOf(() => decodeState(b.subarray(0, n))).code, `length ${n}`).to.equal('BAD_BLOB');
    }
  });

  it('names the field: magic, version, header length, lengths, unsent, crc, family', () => {
    const good = encodeState(sample(6));
    const cases: [string, (b: Buffer) => void, string][] = [
      ['magic', (b) => b.write('XOCR', 0), 'magic'],
      ['version', (b) => b.writeUInt16LE(99, 4), 'version'],
      ['header length', (b) => b.writeUInt16LE(10, 6), 'header length'],
      ['queue lengths', (b) => b.writeUInt32LE(1 << 20, 104), 'queue lengths'],
      ['unsent', (b) => refix(b).writeUInt32LE(9999, 112), 'unsent length'],
      ['family', (b) => (b[9] = 5), 'family'],
    ];
    for (const [name, damage, field] of cases) {
      const b = Buffer.from(good);
      damage(b);
      if (name === 'family' || name === 'unsent') refix(b);
      expect(codeOf(() => decodeState(b)), name).to.deep.equal({ code: 'BAD_BLOB', field });
    }
    const flipped = Buffer.from(good);
    flipped[150]! ^= 1;
    expect(codeOf(() => decodeState(flipped))).to.deep.equal({ code: 'BAD_BLOB', field: 'crc32' });
  });

  it('parses and prints IPv6 addresses (RFC 5952)', () => {
    for (const [text, canon] of [
      ['::1', '::1'],
      ['fd00:0:0:0:0:0:0:1', 'fd00::1'],
      ['::ffff:10.1.2.3', '::ffff:10.1.2.3'],
      ['2001:db8:0:0:1:0:0:1', '2001:db8::1:0:0:1'],
      ['1:2:3:4:5:6:7:8', '1:2:3:4:5:6:7:8'],
      ['::', '::'],
    ]) {
      expect(sock.formatIPv6(sock.parseIPv6(text!))).to.equal(canon);
    }
    expect(() => sock.parseIPv6('1::2::3')).to.throw(RangeError);
    expect(() => sock.parseIPv4('1.2.3.256')).to.throw(RangeError);
  });
});

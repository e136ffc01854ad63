// CRIU image form: our state through a real tcp-stream image and back, and
// CRIU 4.2's own dumps (shared fixtures) read into states.
import { expect } from 'chai';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { ImageReader } from '@criu-ts/images';
import {
  decodeTcpStreamImage,
  encodeTcpStreamImage,
  fromImageForm,
  toImageForm,
  TcpState,
  SoccrError,
  type TcpConnectionState,
} from '@criu-ts/soccr';

// DESIGN.md: real CRIU 4.2 dumps live next to the checkout, in ../shared/criu-images.
const fixtures = join(process.cwd(), '..', 'shared', 'criu-images');

function sample(family: 4 | 6): TcpConnectionState {
  return {
    state: TcpState.FIN_WAIT1,
    local: family === 4 ? { family, address: '127.0.0.1', port: 8880 } : { family, address: 'fd00:231::1', port: 8880, flowinfo: 0, scopeId: 0 },
    remote: family === 4 ? { family, address: '127.0.0.1', port: 45446 } : { family, address: 'fd00:231::2', port: 45446, flowinfo: 0, scopeId: 0 },
    sendSeq: 241124701,
    recvSeq: 353080459,
    recvQueue: Buffer.from('in'),
    sendQueue: Buffer.from('out-acked?|unsent'),
    unsentLength: 6,
    mssClamp: 65495,
    optionMask: 7,
    sndWscale: 10,
    rcvWscale: 10,
    timestamp: 2852106696,
    window: { sndWl1: 353080459, sndWnd: 65536, maxWindow: 65536, rcvWnd: 65483, rcvWup: 353080459 },
    nodelay: true,
    cork: false,
    reuseaddr: true,
  };
}

describe('soccr CRIU image form', () => {
  for (const f of [4, 6] as const) {
    it(`IPv${f}: state -> tcp-stream image bytes + inet_sk_entry -> state`, () => {
      const s = sample(f);
      const bytes = encodeTcpStreamImage(s);
      const back = decodeTcpStreamImage(bytes);
      const { inetSk } = toImageForm(s);
      expect(fromImageForm({ ...back, inetSk })).to.deep.equal(s);
    });
  }

  it('stores addresses as CRIU does (127.0.0.1 is [0x0100007f])', () => {
    const { inetSk } = toImageForm(sample(4));
    expect(inetSk['src_addr']).to.deep.equal([0x0100007f]);
    expect(inetSk['family']).to.equal(2);
  });

  it('reads the connections of CRIU 4.2 dumps (socket-tcp, socket-tcpbuf)', function () {
    if (!existsSync(fixtures)) this.skip(); // the shared CRIU 4.2 fixtures are not in this checkout
    let n = 0;
    for (const dir of ['socket-tcp', 'socket-tcpbuf']) {
      const files = ImageReader.open(join(fixtures, dir, 'files.img'));
      for (const e of files.entries()) {
        const isk = e.message['isk'] as Record<string, unknown> | undefined;
        if (!isk || isk['state'] !== TcpState.ESTABLISHED) continue;
        const path = join(fixtures, dir, `tcp-stream-${Number(isk['ino']).toString(16)}.img`);
        if (!existsSync(path)) continue;
        const img = ImageReader.open(path);
        const entry = [...img.entries()][0]!;
        const p = entry.payload as { type: 'tcp-queues'; inq: Uint8Array; outq: Uint8Array };
        const s = fromImageForm({ tcpStream: entry.message, queues: p, inetSk: isk });
        expect(s.local.address).to.equal('127.0.0.1');
        expect(s.recvQueue.length).to.equal(Number(entry.message['inq_len']));
        expect(s.sendQueue.length).to.equal(Number(entry.message['outq_len']));
        // And our writer gives CRIU's bytes back for the same state.
        expect(Buffer.from(encodeTcpStreamImage(s)).equals(readFileSync(path)), `${path} re-encoded byte for byte`).to.equal(true);
        n++;
      }
    }
    expect(n, 'connections found').to.be.greaterThan(0);
  });

  it('refuses a non-TCP or wrong-family inet entry and mismatched queues', () => {
    const f = toImageForm(sample(4));
    const err = (g: () => unknown) => {
      try {
        g();
      } catch (e) {
        return (e as SoccrError).code;
      }
      return undefined;
    };
    expect(err(() => fromImageForm({ ...f, inetSk: { ...f.inetSk, proto: 17 } }))).to.equal('NOT_TCP');
    expect(err(() => fromImageForm({ ...f, inetSk: { ...f.inetSk, family: 1 } }))).to.equal('FAMILY_MISMATCH');
    expect(err(() => fromImageForm({ ...f, queues: { ...f.queues, inq: new Uint8Array(5) } }))).to.equal('BAD_STATE');
  });
});

// Zero-downtime proxy demo: an echo server behind the proxy, clients that
// stream data and check every echoed byte, and the proxy process replaced
// several times while they do.
//   node demo.mjs [--clients 10] [--replacements 5] [--seconds-between 0.3]
// Exits 0 and prints "OK" when no client saw a reset and every byte came back.
import { spawn } from 'node:child_process';
import net from 'node:net';
import { createHash } from 'node:crypto';
import { tmpdir } from 'node:os';
import { join, dirname } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { createInterface } from 'node:readline';

const here = dirname(fileURLToPath(import.meta.url));
const { values: o } = parseArgs({
  options: {
    clients: { type: 'string', default: '10' },
    replacements: { type: 'string', default: '5' },
    'seconds-between': { type: 'string', default: '0.3' },
  },
});
const nClients = Number(o.clients);
const nRepl = Number(o.replacements);
const gap = Number(o['seconds-between']) * 1000;
const control = join(tmpdir(), `zdt-proxy-${process.pid}.sock`);
const children = [];

function start(script, args) {
  const p = spawn(process.execPath, [join(here, script), ...args], { stdio: ['ignore', 'pipe', 'inherit'] });
  children.push(p);
  const rl = createInterface({ input: p.stdout });
  const first = new Promise((res, rej) => {
    rl.once('line', (l) => res(JSON.parse(l)));
    p.once('exit', (c) => rej(new Error(`${script} exited with ${c}`)));
  });
  return { p, first };
}
const bounded = (pr, ms, what) => Promise.race([pr, new Promise((_, rej) => setTimeout(() => rej(new Error(`timeout: ${what}`)), ms))]);

let failed = false;
try {
  const echo = start('echo-server.mjs', ['127.0.0.1', '0']);
  const { port: echoPort } = await bounded(echo.first, 10_000, 'echo server');
  const proxyArgs = (takeover) => ['--listen', '127.0.0.1:0', '--upstream', `127.0.0.1:${echoPort}`, '--control', control, ...(takeover ? ['--takeover'] : [])];
  let proxy = start('proxy.mjs', proxyArgs(false));
  const { port } = await bounded(proxy.first, 10_000, 'proxy');

  const clients = [];
  for (let i = 0; i < nClients; i++) {
    const s = net.connect(port, '127.0.0.1');
    const c = { s, sent: createHash('sha256'), got: createHash('sha256'), sentN: 0, gotN: 0, errors: [] };
    s.on('data', (d) => {
      c.got.update(d);
      c.gotN += d.length;
    });
    s.on('error', (e) => c.errors.push(e.code ?? e.message));
    await new Promise((r) => s.once('connect', r));
    clients.push(c);
  }
  let n = 0;
  const traffic = setInterval(() => {
    for (const c of clients) {
      const m = createHash('sha512').update(`${n++}`).digest();
      c.sent.update(m);
      c.sentN += m.length;
      c.s.write(m);
    }
  }, 1);

  for (let r = 1; r <= nRepl; r++) {
    await new Promise((res) => setTimeout(res, gap));
    // The successor listens on the same port (SO_REUSEPORT) before it takes over.
    const next = start('proxy.mjs', ['--listen', `127.0.0.1:${port}`, '--upstream', `127.0.0.1:${echoPort}`, '--control', control, '--takeover']);
    const oldExit = new Promise((res) => proxy.p.once('exit', res));
    await bounded(next.first, 20_000, 'successor ready');
    await bounded(oldExit, 20_000, 'old proxy exit');
    proxy = next;
    console.log(`replacement ${r}/${nRepl}: proxy is now pid ${next.p.pid}`);
  }
  await new Promise((res) => setTimeout(res, gap));
  clearInterval(traffic);
  for (let i = 0; i < 3000 && clients.some((c) => c.gotN < c.sentN); i++) await new Promise((res) => setTimeout(res, 10));
  for (const [i, c] of clients.entries()) {
    const ok = c.errors.length === 0 && c.gotN === c.sentN && c.got.digest('hex') === c.sent.digest('hex');
    if (!ok) {
      failed = true;
      console.log(`client ${i}: sent ${c.sentN} got ${c.gotN} errors ${c.errors.join(',')}`);
    }
    c.s.destroy();
  }
  console.log(failed ? 'FAILED' : `OK: ${nClients} clients, ${nRepl} proxy replacements, ${clients[0].sentN} bytes echoed per client, no reset, no loss`);
} catch (e) {
  failed = true;
  console.log(`FAILED: ${e.message}`);
} finally {
  for (const c of children) c.kill();
}
process.exit(failed ? 1 : 0);

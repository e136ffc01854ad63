// A plain TCP echo server: the upstream behind the proxy.
//   node echo-server.mjs <host> <port>   (port 0: pick one; prints {"port":N})
import net from 'node:net';

const [host = '127.0.0.1', port = '0'] = process.argv.slice(2);
const srv = net.createServer({ allowHalfOpen: true }, (s) => {
  s.on('data', (d) => s.write(d));
  s.on('end', () => s.end());
  s.on('error', (e) => console.error(`echo: ${e.message}`));
});
srv.listen(Number(port), host, () => console.log(JSON.stringify({ port: srv.address().port })));

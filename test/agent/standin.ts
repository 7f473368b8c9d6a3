// A stand-in for `celer serve` in the agent's own tests: the same flags and the same HTTP contract
// (dataplane/server/status.ts: /livez /readyz /status /metrics), no storage. Prints one line per
// listening address, like the real server. --exit-after-ms N exits with status 3 after N ms
// (to exercise crash reporting); --not-ready keeps /readyz at 503.
import http from 'node:http';
import net from 'node:net';
import { mkdirSync, writeFileSync } from 'node:fs';
import path from 'node:path';

function flag(name: string): string | undefined {
  const args = process.argv.slice(2);
  for (let i = 0; i < args.length; i++) {
    const a = args[i] as string;
    if (a === `--${name}`) return args[i + 1];
    if (a.startsWith(`--${name}=`)) return a.slice(name.length + 3);
  }
  return undefined;
}
const has = (name: string): boolean => process.argv.includes(`--${name}`);

function hostPort(s: string): { host: string; port: number } {
  const i = s.lastIndexOf(':');
  return { host: s.slice(0, i) || '0.0.0.0', port: Number(s.slice(i + 1)) };
}

const dataDir = flag('data-dir') ?? '.';
mkdirSync(dataDir, { recursive: true });
const listen = hostPort(flag('listen') ?? '127.0.0.1:0');
const httpAddr = hostPort(flag('http') ?? '127.0.0.1:0');
const nodeId = process.env.CELER_NODE_ID ?? process.env.HOSTNAME ?? 'standin';
let requests = 0;

const client = net.createServer((s) => s.end());
client.listen(listen.port, listen.host, () => {
  const a = client.address() as net.AddressInfo;
  console.log(`listening client ${a.address}:${a.port}`);
  const server = http.createServer((req, res) => {
    requests++;
    const url = req.url ?? '/';
    if (url === '/livez') res.end('ok');
    else if (url === '/readyz') {
      res.statusCode = has('not-ready') ? 503 : 200;
      res.end(has('not-ready') ? 'not ready: stand-in told so' : 'ready');
    } else if (url === '/status') {
      const h = server.address() as net.AddressInfo;
      res.setHeader('content-type', 'application/json');
      res.end(
        JSON.stringify({
          nodeId,
          version: process.env.CELER_VERSION ?? '0.0.0-standin',
          role: 'standalone',
          epoch: 0,
          leaseExpiresAtMs: null,
          leader: null,
          listen: { client: `${a.address}:${a.port}`, grpc: null, http: `${h.address}:${h.port}` },
          ready: !has('not-ready'),
          numShards: 1,
          routing: 'id',
          shards: [{ shard: 0, state: 'serving', writeSeq: '0', commitSeq: '0' }],
          peer: null,
          env: Object.fromEntries(Object.entries(process.env).filter(([k]) => k.startsWith('CELER_') || k === 'HOSTNAME' || k === 'KUBECONFIG')),
          dataDir: path.resolve(dataDir),
          argv: process.argv.slice(2),
        }),
      );
    } else if (url === '/metrics') {
      res.setHeader('content-type', 'text/plain; version=0.0.4');
      res.end(`# HELP celer_standin_requests_total HTTP requests served.\n# TYPE celer_standin_requests_total counter\nceler_standin_requests_total ${requests}\n`);
    } else {
      res.statusCode = 404;
      res.end('not found');
    }
  });
  server.listen(httpAddr.port, httpAddr.host, () => {
    const h = server.address() as net.AddressInfo;
    console.log(`listening http ${h.address}:${h.port}`);
    writeFileSync(path.join(dataDir, 'standin-started'), `${process.pid}\n`, { flag: 'a' });
  });
});

const exitAfter = flag('exit-after-ms');
if (exitAfter !== undefined) setTimeout(() => process.exit(3), Number(exitAfter));
process.on('SIGTERM', () => {
  console.log('SIGTERM: shutting down');
  process.exit(0);
});

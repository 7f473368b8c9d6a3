// `celer cluster status` against two tiny HTTP servers serving canned /status documents.
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { test } from 'node:test';
import { fileURLToPath } from 'node:url';
import { promisify } from 'node:util';
import type { NodeStatus } from '../server/status.ts';
import { clusterStatus, httpFromClient, parseHttpAddrs, peerHttpAddress } from './cluster-status.ts';

type T = { after: (fn: () => Promise<void> | void) => void };

/** An HTTP server answering GET /status with whatever `body()` returns (404 elsewhere). */
async function statusServer(t: T, body: () => unknown): Promise<{ address: string; port: number; hits: () => number; close: () => Promise<void> }> {
  let hits = 0;
  const server = http.createServer((req, res) => {
    if (req.url !== '/status') {
      res.writeHead(404).end();
      return;
    }
    hits++;
    res.writeHead(200, { 'content-type': 'application/json' }).end(JSON.stringify(body()));
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const port = (server.address() as AddressInfo).port;
  let closed = false;
  const close = async (): Promise<void> => {
    if (closed) return;
    closed = true;
    server.closeAllConnections();
    await new Promise<void>((resolve) => server.close(() => resolve()));
  };
  t.after(close);
  return { address: `127.0.0.1:${port}`, port, hits: () => hits, close };
}

/** A port nothing listens on. */
async function deadHttp(): Promise<string> {
  const s = http.createServer();
  await new Promise<void>((resolve) => s.listen(0, '127.0.0.1', resolve));
  const port = (s.address() as AddressInfo).port;
  await new Promise<void>((resolve) => s.close(() => resolve()));
  return `127.0.0.1:${port}`;
}

function shard(n: number, placed: number, durable: number, committed: number) {
  return { shard: n, state: 'serving' as const, writeSeq: String(durable), commitSeq: String(committed), placedSeq: String(placed), durableSeq: String(durable), committedSeq: String(committed) };
}

/** A canned /status: `http` is the node's own HTTP port, its client port is one below (the convention). */
function status(o: { nodeId: string; role: NodeStatus['role']; httpPort: number; peerHttpPort: number | null; leaderClientPort: number | null }): NodeStatus {
  const client = `127.0.0.1:${o.httpPort - 1}`;
  const isLeader = o.role === 'leader';
  return {
    nodeId: o.nodeId,
    version: '0.1.0',
    role: o.role,
    epoch: 7,
    leaseExpiresAtMs: isLeader ? 1_800_000_000_000 : null,
    leaseRemainingMs: isLeader ? 1450 : 2900,
    leader: o.leaderClientPort === null ? null : `127.0.0.1:${o.leaderClientPort}`,
    listen: { client, grpc: null, http: `127.0.0.1:${o.httpPort}` },
    ready: true,
    numShards: 2,
    routing: 'id',
    shards: isLeader ? [shard(0, 120, 119, 118), shard(1, 40, 40, 40)] : [shard(0, 119, 119, 118), shard(1, 40, 40, 39)],
    peer: {
      address: '127.0.0.1:9999',
      client: o.peerHttpPort === null ? null : `127.0.0.1:${o.peerHttpPort - 1}`,
      connected: true,
      lagRecords: isLeader ? 1 : null,
    },
    ...(isLeader ? { s3Fallback: { active: false, batches: 3 } } : {}),
  };
}

/** Two nodes, n1 leading, each naming the other as its peer. */
async function cluster(t: T) {
  let aPort = 0;
  let bPort = 0;
  const a = await statusServer(t, () => status({ nodeId: 'n1', role: 'leader', httpPort: aPort, peerHttpPort: bPort, leaderClientPort: aPort - 1 }));
  const b = await statusServer(t, () => status({ nodeId: 'n2', role: 'follower', httpPort: bPort, peerHttpPort: aPort, leaderClientPort: aPort - 1 }));
  aPort = a.port;
  bPort = b.port;
  return { a, b };
}

async function run(args: { addrs: string[]; json?: boolean }): Promise<{ code: number; lines: string[] }> {
  const lines: string[] = [];
  const code = await clusterStatus({ addrs: args.addrs, json: args.json ?? false, timeoutMs: 5_000, out: (l) => lines.push(l) });
  return { code, lines };
}

test('one HTTP address: the peer is found from status.peer.client (HTTP = client port + 1) and both views are printed', async (t) => {
  const { a, b } = await cluster(t);
  const { code, lines } = await run({ addrs: [a.address] });
  assert.equal(code, 0);
  assert.equal(b.hits(), 1, 'the peer was asked');
  const text = lines.join('\n');
  const n1 = lines.find((l) => l.startsWith('n1 '))!;
  const n2 = lines.find((l) => l.startsWith('n2 '))!;
  assert.match(n1, new RegExp(`^n1 +${a.address} +leader +7 +127\\.0\\.0\\.1:${a.port - 1} +1450 +yes +connected +1 +off \\(3 batches\\)$`));
  assert.match(n2, new RegExp(`^n2 +${b.address} \\(peer\\) +follower +7 +127\\.0\\.0\\.1:${a.port - 1} +2900 +yes +connected +- +-$`));
  assert.match(text, /^shard +n1 placed\/durable\/committed +n2 placed\/durable\/committed$/m);
  assert.match(text, /^0 +120\/119\/118 +119\/119\/118$/m);
  assert.match(text, /^1 +40\/40\/40 +40\/40\/39$/m);
});

test('A,B: both are asked as given, nothing is derived', async (t) => {
  const { a, b } = await cluster(t);
  const { code, lines } = await run({ addrs: [b.address, a.address] });
  assert.equal(code, 0);
  assert.equal(a.hits(), 1);
  assert.equal(b.hits(), 1);
  assert.ok(lines.findIndex((l) => l.startsWith('n2 ')) < lines.findIndex((l) => l.startsWith('n1 ')), 'in the order given');
  assert.ok(!lines.join('\n').includes('(peer)'));
});

test('--json prints both raw /status documents', async (t) => {
  const { a, b } = await cluster(t);
  const { code, lines } = await run({ addrs: [a.address], json: true });
  assert.equal(code, 0);
  const doc = JSON.parse(lines.join('\n')) as { http: string; source: string; status: NodeStatus | null }[];
  assert.deepEqual(
    doc.map((d) => [d.http, d.source, d.status?.nodeId]),
    [
      [a.address, 'given', 'n1'],
      [b.address, 'peer', 'n2'],
    ],
  );
  assert.equal(doc[0]!.status!.shards[0]!.placedSeq, '120');
  assert.deepEqual(doc[1]!.status!.peer, { address: '127.0.0.1:9999', client: `127.0.0.1:${a.port - 1}`, connected: true, lagRecords: null });
});

test('a peer that does not answer is printed as unreachable; the exit status stays 0', async (t) => {
  const { a, b } = await cluster(t);
  await b.close();
  const { code, lines } = await run({ addrs: [a.address] });
  assert.equal(code, 0);
  assert.match(lines.join('\n'), new RegExp(`^\\? +${b.address} \\(peer\\) +unreachable: ECONNREFUSED$`, 'm'));
  assert.ok(lines.some((l) => l.startsWith('n1 ')));
});

test('no node answers: both unreachable, exit status 1', async () => {
  const [x, y] = [await deadHttp(), await deadHttp()];
  const { code, lines } = await run({ addrs: [x, y] });
  assert.equal(code, 1);
  assert.equal(lines.filter((l) => /unreachable/.test(l)).length, 2);
  const json = await run({ addrs: [x], json: true });
  assert.equal(json.code, 1);
  assert.deepEqual(JSON.parse(json.lines.join('\n')), [{ http: x, source: 'given', status: null, error: 'ECONNREFUSED' }]);
});

test('an answer that is not a /status document counts as no answer', async (t) => {
  const s = await statusServer(t, () => ({ hello: 'world' }));
  const { code, lines } = await run({ addrs: [s.address] });
  assert.equal(code, 1);
  assert.match(lines.join('\n'), /unreachable: the answer is not a Celer \/status document/);
});

test('a follower whose status lacks peer.client still finds the leader by status.leader; a standalone node says it has no peer', async (t) => {
  let aPort = 0;
  const a = await statusServer(t, () => status({ nodeId: 'n1', role: 'leader', httpPort: aPort, peerHttpPort: null, leaderClientPort: aPort - 1 }));
  aPort = a.port;
  const f = status({ nodeId: 'n2', role: 'follower', httpPort: 7501, peerHttpPort: null, leaderClientPort: aPort - 1 });
  assert.equal(peerHttpAddress(f), a.address);
  // The leader without peer.client cannot name the follower's HTTP address: said, with the way out.
  const { lines } = await run({ addrs: [a.address] });
  assert.match(lines.join('\n'), /HTTP address is not known from this node's status; pass --addr A,B/);

  const solo = await statusServer(t, () => ({ ...status({ nodeId: 's', role: 'standalone', httpPort: 7401, peerHttpPort: null, leaderClientPort: null }), peer: null }));
  const r = await run({ addrs: [solo.address] });
  assert.equal(r.code, 0);
  assert.match(r.lines.join('\n'), /no peer: this node runs standalone/);
});

test('address helpers: the HTTP convention, IPv6, and bad --addr values', () => {
  assert.equal(httpFromClient('10.0.0.2:7400'), '10.0.0.2:7401');
  assert.equal(httpFromClient('[::1]:7400'), '[::1]:7401');
  assert.equal(httpFromClient('nonsense'), undefined);
  assert.deepEqual(parseHttpAddrs('a:1, b:2'), ['a:1', 'b:2']);
  assert.throws(() => parseHttpAddrs(''), /--addr needs HOST:PORT/);
  assert.throws(() => parseHttpAddrs('a:1,b'), /"b" is not HOST:PORT/);
});

test('the CLI: `celer cluster status --addr A` prints the table; a bad subcommand is a usage error', async (t) => {
  const { a } = await cluster(t);
  const main = fileURLToPath(new URL('./main.ts', import.meta.url));
  const run = promisify(execFile);
  const ok = await run(process.execPath, [main, 'cluster', 'status', '--addr', a.address]);
  assert.match(ok.stdout, /^n1 +/m);
  assert.match(ok.stdout, /^n2 +/m);
  await assert.rejects(run(process.execPath, [main, 'cluster', 'nope']), (e: { code?: number; stderr?: string }) => e.code === 2 && /expected "cluster status"/.test(e.stderr ?? ''));
  const help = await run(process.execPath, [main, '--help']);
  assert.match(help.stdout, /celer cluster status/);
});

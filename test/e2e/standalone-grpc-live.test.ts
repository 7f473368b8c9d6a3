// gRPC Subscribe and Watch against a real node: an org subscription resumes from a checkpoint with
// nothing skipped or repeated, an aggregate subscription switches from history to the tail with no
// gap, a watch notifies after commit, a cancelled call stops reading, and bad requests are 9100.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, type CelerClient } from '@celer/client';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PROTO_LOADER_OPTIONS, PROTO_PATH } from '../../dataplane/server/grpc.ts';
import { GRPC_LIVE_STREAMS_PER_CONNECTION_MAX } from '../../dataplane/constants.ts';
import { removeDir, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';

const te = new TextEncoder();
const td = new TextDecoder();
const ev = (text: string) => ({ type: 'G', data: te.encode(text) });
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

type Msg = Record<string, unknown>;
type Stub = Record<string, (req: unknown, cb?: (e: grpc.ServiceError | null, r: Msg) => void) => grpc.ClientReadableStream<Msg>>;
interface PbSubscribed {
  key: { org: string; type: string; id: string };
  batch: { fromVersion: string; toVersion: string; position: { shard: number; seq: string }; events: { version: string; data: Buffer }[] };
  op: string;
  checkpoint?: string;
}

let node: CelerProcess;
let dir: string;
let client: CelerClient;
let g: Stub;

before(async () => {
  dir = await tempDir('celer-e2e-grpc-live-');
  node = await startCeler(dir, ['--shards', '2', '--routing', 'id', '--grpc', '127.0.0.1:0']);
  client = await connect(node.native, { clientId: 1 });
  const def = await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { celer: { v1: { EventStore: grpc.ServiceClientConstructor } } };
  g = new pkg.celer.v1.EventStore(node.grpc!, grpc.credentials.createInsecure()) as unknown as Stub;
});

after(async () => {
  (g as unknown as grpc.Client | undefined)?.close();
  await client?.close();
  await node?.stop();
  await removeDir(dir);
});

/** The batches of a Subscribe call until `enough` holds of them (then cancelled), or its error. */
function take(req: unknown, enough: (got: PbSubscribed[]) => boolean): Promise<PbSubscribed[]> {
  const stream = g.Subscribe!(req);
  const got: PbSubscribed[] = [];
  return new Promise((resolve, reject) => {
    stream.on('data', (m: Msg) => {
      got.push(...(m.batches as PbSubscribed[]));
      if (enough(got)) {
        stream.cancel();
        resolve(got);
      }
    });
    stream.on('error', (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? resolve(got) : reject(e)));
    stream.on('end', () => resolve(got));
  });
}

const texts = (bs: PbSubscribed[]): string[] => bs.map((b) => td.decode(b.batch.events[0]!.data));

test('gRPC Subscribe (org): history then the tail, and a resume from a checkpoint skips and repeats nothing', async () => {
  const org = 801;
  for (let i = 0; i < 6; i++) await client.append({ org, type: 1, id: i }, [ev(String(i))]);
  const writer = (async () => {
    await sleep(300);
    for (let i = 6; i < 9; i++) await client.append({ org, type: 1, id: i }, [ev(String(i))]);
  })();
  const all = await take({ org: String(org) }, (got) => got.length >= 9);
  await writer;
  assert.deepEqual(texts(all).sort(), ['0', '1', '2', '3', '4', '5', '6', '7', '8']);
  assert.ok(all.every((b) => b.op === 'write' && typeof b.checkpoint === 'string' && b.checkpoint.startsWith('c1:')));
  // From the fourth batch's checkpoint: exactly the five after it (shards interleave as their
  // pages arrive, so the order holds per shard).
  const rest = await take({ org: String(org), fromCheckpoint: all[3]!.checkpoint }, (got) => got.length >= 5);
  assert.deepEqual(texts(rest).sort(), texts(all.slice(4)).sort());
  const perShard = (bs: PbSubscribed[], shard: number): string[] => texts(bs.filter((b) => b.batch.position.shard === shard));
  for (const shard of [0, 1]) assert.deepEqual(perShard(rest, shard), perShard(all.slice(4), shard));
  // Another org's writes are not in it.
  await client.append({ org: org + 1, type: 1, id: 1 }, [ev('other')]);
  await client.append({ org, type: 1, id: 20 }, [ev('9')]);
  const last = await take({ org: String(org), fromCheckpoint: all[8]!.checkpoint }, (got) => got.length >= 1);
  assert.deepEqual(texts(last), ['9']);
});

test('gRPC Subscribe (key): from a version, across the switch from history to the tail with no gap', async () => {
  const key = { org: '802', type: '1', id: '5' };
  for (let v = 1; v <= 4; v++) await client.append({ org: 802, type: 1, id: 5 }, [ev(`v${v}`)]);
  const writer = (async () => {
    await sleep(300);
    for (let v = 5; v <= 7; v++) await client.append({ org: 802, type: 1, id: 5 }, [ev(`v${v}`)]);
  })();
  const got = await take({ key, fromVersion: '2' }, (bs) => bs.length >= 6);
  await writer;
  assert.deepEqual(
    got.map((b) => b.batch.fromVersion),
    ['2', '3', '4', '5', '6', '7'],
  );
  assert.deepEqual(texts(got), ['v2', 'v3', 'v4', 'v5', 'v6', 'v7']);
  assert.ok(got.every((b) => b.key.id === '5'));
});

test('gRPC Watch: a write after the watch started is notified after commit, with its versions', async () => {
  const stream = g.Watch!({ org: '803' });
  const first = new Promise<Msg>((resolve, reject) => {
    stream.once('data', (m: Msg) => resolve(m));
    stream.on('error', (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? undefined : reject(e)));
  });
  await sleep(300);
  const r = await client.append({ org: 803, type: 2, id: 9 }, [ev('a'), ev('b')]);
  const m = await first;
  stream.cancel();
  assert.equal(m.op, 'write');
  assert.deepEqual(m.key, { org: '803', type: '2', id: '9' });
  assert.equal(m.fromVersion, '1');
  assert.equal(m.toVersion, '2');
  assert.deepEqual(m.position, { shard: r.position.shard, seq: String(r.position.seq) });
});

test('gRPC Subscribe and Watch: bad requests are 9100 with a message naming the problem', async () => {
  const failure = (method: 'Subscribe' | 'Watch', req: unknown): Promise<grpc.ServiceError> =>
    new Promise((resolve, reject) => {
      const s = g[method]!(req);
      s.on('data', () => reject(new Error(`${method} ${JSON.stringify(req)} streamed data`)));
      s.on('error', (e: grpc.ServiceError) => resolve(e));
      s.on('end', () => reject(new Error(`${method} ${JSON.stringify(req)} ended without an error`)));
    });
  const cases: ['Subscribe' | 'Watch', unknown, RegExp][] = [
    ['Subscribe', {}, /key, or org/],
    ['Subscribe', { key: { org: '1', type: '1', id: '1' }, org: '1' }, /not both/],
    ['Subscribe', { org: '1', fromCheckpoint: 'nope' }, /checkpoint "nope" is not valid/],
    ['Subscribe', { org: '1', fromVersion: '3' }, /from_checkpoint/],
    ['Watch', { type: '1' }, /key, or org/],
    ['Watch', { org: '1', maxLatencyMs: 20_000 }, /maxLatencyMs/],
  ];
  for (const [method, req, message] of cases) {
    const e = await failure(method, req);
    assert.equal(e.code, grpc.status.INVALID_ARGUMENT, `${method} ${JSON.stringify(req)}: ${e.message}`);
    assert.equal(e.metadata.get('celer-code')[0], '9100');
    assert.match(e.details, message);
  }
});

test('gRPC Subscribe: a cancelled call stops reading the feed on the node', async () => {
  const metrics = async (): Promise<number> => {
    const text = await (await fetch(`http://${node.http}/metrics`)).text();
    const line = text.split('\n').find((l) => l.startsWith('celer_feed_waits '));
    assert.ok(line !== undefined, 'no celer_feed_waits gauge');
    return Number(line.split(' ')[1]);
  };
  /** Polls the gauge until it reads `n` (a long poll out when its call ended returns within its wait, 5 s). */
  const until = async (n: number): Promise<number> => {
    let v = await metrics();
    for (let i = 0; i < 80 && v !== n; i++) {
      await sleep(100);
      v = await metrics();
    }
    return v;
  };
  assert.equal(await until(0), 0, 'feed waits of the earlier tests still out');
  const streams = Array.from({ length: 5 }, () => g.Subscribe!({ org: '804' }));
  for (const s of streams) s.on('error', () => {});
  // Each org subscription waits at the tail of both shards.
  assert.equal(await until(10), 10);
  for (const s of streams) s.cancel();
  assert.equal(await until(0), 0, 'cancelled subscriptions still read the feed');
  // And nothing asks again: it stays 0 past another poll interval.
  await sleep(5_500);
  assert.equal(await metrics(), 0);
});

test('gRPC Subscribe: a reader that stops reading is dropped with 2012 and resumes from detail.resumeFrom, losing nothing', async () => {
  const org = 805;
  const stream = g.Subscribe!({ org: String(org) });
  const got: PbSubscribed[] = [];
  stream.on('data', (m: Msg) => got.push(...(m.batches as PbSubscribed[])));
  const failed = new Promise<grpc.ServiceError>((resolve) => stream.on('error', (e: grpc.ServiceError) => resolve(e)));
  await sleep(300);
  // The reader stops reading: HTTP/2 flow control holds the node's writes, and what the tail
  // brings queues in the node for this call, SUBSCRIPTION_QUEUE_BATCHES_DEFAULT (10 000) at most.
  stream.pause();
  const TOTAL = 12_000;
  let n = 0;
  await Promise.all(
    Array.from({ length: 32 }, async () => {
      for (let i = n++; i < TOTAL; i = n++) await client.append({ org, type: 1, id: i }, [ev(String(i))]);
    }),
  );
  stream.resume();
  const e = await failed;
  assert.equal(e.metadata.get('celer-code')[0], '2012', e.message);
  assert.match(e.details, /was dropped: its consumer fell \d+ batches/);
  const detail = JSON.parse(String(e.metadata.get('celer-detail')[0])) as { resumeFrom?: string };
  assert.ok(detail.resumeFrom?.startsWith('c1:'), `no resumeFrom in ${JSON.stringify(detail)}`);
  const before = got.length;
  assert.ok(before < TOTAL, `all ${before} batches arrived before the drop`);
  const rest = await take({ org: String(org), fromCheckpoint: detail.resumeFrom }, (bs) => before + bs.length >= TOTAL);
  const seen = [...texts(got), ...texts(rest)];
  assert.equal(new Set(seen).size, seen.length, 'a batch came twice');
  assert.equal(seen.length, TOTAL);
});

test('gRPC: live streams per connection are bounded (GRPC_LIVE_STREAMS_PER_CONNECTION_MAX), with 2012 naming the limit', async () => {
  // The streams the tests before cancelled end on the node a moment after the cancel arrives.
  await sleep(1_000);
  const open = Array.from({ length: GRPC_LIVE_STREAMS_PER_CONNECTION_MAX }, (_, i) => (i % 2 === 0 ? g.Watch!({ org: '806' }) : g.SubscribeShard!({ shard: 0, org: '806' })));
  const errors: grpc.ServiceError[] = [];
  for (const s of open) s.on('error', (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? undefined : errors.push(e)));
  try {
    await sleep(1_000);
    assert.deepEqual(errors, []);
    const refused = await new Promise<grpc.ServiceError>((resolve, reject) => {
      const s = g.Subscribe!({ org: '806' });
      s.on('error', (e: grpc.ServiceError) => resolve(e));
      s.on('data', () => reject(new Error('a stream past the limit streamed data')));
      setTimeout(() => {
        s.cancel();
        reject(new Error('a stream past the limit was taken'));
      }, 3_000);
    });
    assert.equal(refused.metadata.get('celer-code')[0], '2012');
    assert.match(refused.details, /GRPC_LIVE_STREAMS_PER_CONNECTION_MAX 256/);
  } finally {
    for (const s of open) s.cancel();
  }
  // Once they end, the connection takes new ones (SubscribeShard's long polls end within 5 s).
  for (let i = 0; ; i++) {
    const got = await new Promise<'ok' | grpc.ServiceError>((resolve) => {
      const s = g.Watch!({ org: '806' });
      s.on('error', (e: grpc.ServiceError) => resolve(e.code === grpc.status.CANCELLED ? 'ok' : e));
      setTimeout(() => s.cancel(), 300);
    });
    if (got === 'ok') break;
    assert.ok(i < 30, `still refused: ${got.message}`);
    await sleep(300);
  }
});

// The shard feed and what is built on it (SPEC §4: readShard, subscribeShard, subscribe, watch)
// against a real `celer serve --standalone` process, with writers running concurrently.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { BadRequestError, connect, ServerBusyError, SubscriberTooSlowError, type CelerClient, type SubscribedBatch } from '@celer/client';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { PROTO_LOADER_OPTIONS, PROTO_PATH } from '../../dataplane/server/grpc.ts';
import { spawn } from 'node:child_process';
import { CELER, removeDir, runCeler, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';
import { prng } from '../lib/prng.ts';

const te = new TextEncoder();
const td = new TextDecoder();
const ev = (type: string, text = type) => ({ type, data: te.encode(text) });
let node: CelerProcess;
let dir: string;
let client: CelerClient;
const SHARDS = 3;

before(async () => {
  dir = await tempDir('celer-e2e-feed-');
  node = await startCeler(dir, ['--shards', String(SHARDS), '--routing', 'id', '--grpc', '127.0.0.1:0']);
  client = await connect(node.native, { clientId: 1 });
});

after(async () => {
  await client?.close();
  await node?.stop();
  await removeDir(dir);
});

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));

test('readShard returns every committed batch of a shard in position order, filtered by org and type, page by page', async () => {
  const org = 700;
  for (let i = 0; i < 30; i++) await client.append({ org, type: 1 + (i % 2), id: i }, [ev('E', `${i}`), ev('F', `${i}`)]);
  const seen = new Map<number, bigint[]>();
  for (let s = 0; s < SHARDS; s++) {
    let from = 1n;
    const seqs: bigint[] = [];
    for (;;) {
      const page = await client.readShard(s, { from, maxBytes: 200, org });
      assert.equal(page.numShards, SHARDS);
      for (const b of page.batches) {
        assert.equal(b.position.shard, s);
        assert.equal(b.key.org, BigInt(org));
        assert.equal(Number(b.key.id) % SHARDS, s, 'routing by id');
        assert.equal(b.events.length, 2);
        assert.equal(td.decode(b.events[0]!.data), String(b.key.id));
        seqs.push(b.position.seq);
      }
      if (page.next > page.committedSeq) break;
      assert.ok(page.next > from, 'a page moves forward');
      from = page.next;
    }
    for (let i = 1; i < seqs.length; i++) assert.ok(seqs[i]! > seqs[i - 1]!, 'position order');
    seen.set(s, seqs);
  }
  assert.equal([...seen.values()].reduce((n, a) => n + a.length, 0), 30);
  // org + type: only type 2 (the odd ids).
  let typed = 0;
  for (let s = 0; s < SHARDS; s++) {
    const page = await client.readShard(s, { org, type: 2, maxBytes: 1 << 20 });
    for (const b of page.batches) {
      assert.equal(b.key.type, 2n);
      typed++;
    }
  }
  assert.equal(typed, 15);
});

test('readShard refuses a shard that does not exist and a wait beyond the limit, with 9100', async () => {
  await assert.rejects(client.readShard(SHARDS), (e: unknown) => e instanceof BadRequestError && e.code === 9100 && /does not exist/.test(e.message));
  await assert.rejects(client.readShard(0, { waitMs: 60_000 }), (e: unknown) => e instanceof BadRequestError && e.code === 9100);
});

test('a long poll at the tail returns as soon as the next batch commits', async () => {
  const tip = await client.readShard(0, { from: Number.MAX_SAFE_INTEGER });
  const from = tip.committedSeq + 1n;
  const waiting = client.readShard(0, { from, waitMs: 8_000 });
  await sleep(50);
  const w = await client.append({ org: 701, type: 1, id: 0 }, [ev('Woke')]);
  const page = await waiting;
  assert.equal(page.batches.length, 1);
  assert.deepEqual(page.batches[0]!.position, w.position);
  // Nothing new: the wait ends at its bound with an empty page.
  const empty = await client.readShard(0, { from: page.next, waitMs: 100 });
  assert.equal(empty.batches.length, 0);
});

test('subscribeShard follows the tail: with writers running it delivers exactly what readShard finds afterwards', async () => {
  const start = (await client.readShard(1, { from: Number.MAX_SAFE_INTEGER })).committedSeq + 1n;
  const got: bigint[] = [];
  const sub = (async () => {
    for await (const b of client.subscribeShard(1, { from: start, pollWaitMs: 200 })) {
      got.push(b.position.seq);
      if (got.length === 40) break;
    }
  })();
  for (let i = 0; i < 40; i++) await client.append({ org: 702, type: 1, id: 1 + 3 * (i % 5) }, [ev('T', String(i))]);
  await sub;
  const all: bigint[] = [];
  let from = start;
  while (all.length < 40) {
    const page = await client.readShard(1, { from });
    all.push(...page.batches.map((b) => b.position.seq));
    from = page.next;
  }
  assert.deepEqual(got, all.slice(0, 40));
});

test('subscribe(key): catch-up then live under concurrent writes, no gap and no duplicate (random interleavings)', async () => {
  const seeds = Number(process.env.CELER_FEED_SEEDS ?? 12);
  for (let seed = 1; seed <= seeds; seed++) {
    const r = prng(seed);
    const key = { org: 703, type: 1, id: 1000 + seed };
    const writer = await connect(node.native, { clientId: 50 + seed });
    let version = 0;
    const total = 20 + Math.floor(r() * 40);
    const before = Math.floor(r() * total);
    const write = async (n: number): Promise<void> => {
      while (version < n) {
        const k = Math.min(n - version, 1 + Math.floor(r() * 3));
        await writer.append(key, Array.from({ length: k }, (_, i) => ev('V', String(version + i + 1))));
        version += k;
        if (r() < 0.3) await sleep(Math.floor(r() * 4));
      }
    };
    await write(before);
    const from = 1 + Math.floor(r() * Math.max(1, before + 5));
    const versions: number[] = [];
    const sub = (async () => {
      if (from > total) return;
      for await (const b of client.subscribe(key, { from, pollWaitMs: 200 })) {
        for (const e of b.events) {
          assert.equal(td.decode(e.data), String(e.version), `seed ${seed}: payload of version ${e.version}`);
          versions.push(Number(e.version));
        }
        if (versions.length > 0 && versions[versions.length - 1]! >= total) break;
      }
    })();
    await write(total);
    await sub;
    await writer.close();
    const want = Array.from({ length: Math.max(0, total - from + 1) }, (_, i) => from + i);
    assert.deepEqual(versions, want, `seed ${seed} (from ${from}, ${before} before the subscription, ${total} in all): replay with CELER_FEED_SEEDS`);
  }
});

test('subscribe(org): a subscriber that disconnects, and one that resumes after a node restart, get every batch exactly once, in order per shard, while writers keep writing', async () => {
  const org = 704;
  const writes = 120;
  let written = 0;
  const writer = await connect(node.native, { clientId: 90 });
  const writing = (async () => {
    for (; written < writes; written++) await writer.append({ org, type: 1, id: written % 7 }, [ev('W', String(written))]);
  })();
  const delivered: SubscribedBatch[] = [];
  let checkpoint: string | undefined;
  // Three sessions of the subscriber, each on a new connection, each breaking off mid-stream.
  for (const stopAt of [25, 60]) {
    const c = await connect(node.native, { clientId: 2 });
    for await (const b of c.subscribe({ org }, { ...(checkpoint === undefined ? {} : { from: checkpoint }), pollWaitMs: 200 })) {
      delivered.push(b);
      checkpoint = b.checkpoint;
      if (delivered.length === stopAt) break;
    }
    await c.close();
  }
  await writing;
  await writer.close();
  // The node restarts; the checkpoint still holds.
  await client.close();
  await node.stop();
  node = await startCeler(dir, ['--shards', String(SHARDS), '--routing', 'id']);
  client = await connect(node.native, { clientId: 1 });
  for await (const b of client.subscribe({ org }, { from: checkpoint!, pollWaitMs: 200 })) {
    delivered.push(b);
    if (delivered.length === writes) break;
  }
  const texts = delivered.map((b) => Number(td.decode(b.events[0]!.data)));
  assert.equal(new Set(texts).size, writes, 'no batch twice');
  assert.deepEqual([...texts].sort((a, b) => a - b), Array.from({ length: writes }, (_, i) => i), 'no batch missing');
  const last = new Map<number, bigint>();
  for (const b of delivered) {
    assert.ok(b.position.seq > (last.get(b.position.shard) ?? 0n), 'commit order per shard');
    last.set(b.position.shard, b.position.seq);
  }
  // One aggregate's batches come in version order.
  const byKey = new Map<bigint, bigint>();
  for (const b of delivered) {
    assert.equal(b.fromVersion, (byKey.get(b.key.id) ?? 0n) + 1n);
    byKey.set(b.key.id, b.toVersion);
  }
});

/** Every batch once and in order per shard: the texts of `delivered` are exactly 0..n-1. */
function assertExactlyOnce(delivered: SubscribedBatch[], n: number): void {
  const texts = delivered.map((b) => Number(td.decode(b.events[0]!.data)));
  assert.equal(new Set(texts).size, texts.length, 'no batch twice');
  assert.deepEqual([...texts].sort((a, b) => a - b), Array.from({ length: n }, (_, i) => i), 'no batch missing');
  const last = new Map<number, bigint>();
  for (const b of delivered) {
    assert.ok(b.position.seq > (last.get(b.position.shard) ?? 0n), 'commit order per shard');
    last.set(b.position.shard, b.position.seq);
  }
}

test('a subscriber that falls behind the live tail past its queue is dropped with SubscriberTooSlowError (2012); resumed from its checkpoint it gets every batch exactly once; the writer is never held', async () => {
  const org = 710;
  const writes = 400;
  const queueBatches = 20;
  const writer = await connect(node.native, { clientId: 91 });
  const sub = await connect(node.native, { clientId: 3 });
  const delivered: SubscribedBatch[] = [];
  // Subscribed before the first write: live from the start.
  const it = sub.subscribe({ org }, { queueBatches, pollWaitMs: 200 });
  const first = it.next();
  let written = 0;
  const writing = (async () => {
    for (; written < writes; written++) await writer.append({ org, type: 1, id: written % 11 }, [ev('W', String(written))]);
  })();
  let dropped: SubscriberTooSlowError | undefined;
  try {
    const r = await first;
    assert.equal(r.done, false);
    delivered.push(r.value!);
    // A consumer slower than the writer: 20 ms a batch.
    for (;;) {
      const n = await it.next();
      if (n.done === true) break;
      delivered.push(n.value);
      if (delivered.length === writes) break;
      await sleep(20);
    }
  } catch (e) {
    if (!(e instanceof SubscriberTooSlowError)) throw e;
    dropped = e;
  }
  assert.ok(dropped !== undefined, `the slow subscriber was not dropped (it took ${delivered.length} of ${writes} batches, its queue holds ${queueBatches})`);
  assert.ok(dropped instanceof ServerBusyError);
  assert.equal(dropped.code, 2012);
  assert.ok((dropped.detail.queuedBatches ?? 0) > queueBatches, `queued ${dropped.detail.queuedBatches}`);
  assert.equal(typeof dropped.resumeFrom, 'string');
  assert.equal(dropped.resumeFrom, delivered[delivered.length - 1]!.checkpoint, 'it resumes right after the last batch its consumer took');
  assert.match(dropped.message, /was dropped: its consumer fell \d+ batches .* behind the live tail.*subscribe again with from: 'c1:/);
  assert.ok(delivered.length < writes);
  await writing;
  assert.equal(written, writes, 'the writer wrote everything while the subscriber lagged');
  await writer.close();
  // Resumed from the checkpoint (a new connection, as after a restart): the rest, exactly once.
  const again = await connect(node.native, { clientId: 4 });
  for await (const b of again.subscribe({ org }, { from: dropped.resumeFrom as string, pollWaitMs: 200 })) {
    delivered.push(b);
    if (delivered.length >= writes) break;
  }
  await again.close();
  await sub.close();
  assertExactlyOnce(delivered, writes);
});

test('catching up goes at the consumer\'s pace: a history far larger than the queue is read without a drop, then the tail follows', async () => {
  const org = 711;
  const history = 300;
  const writer = await connect(node.native, { clientId: 92 });
  for (let i = 0; i < history; i++) await writer.append({ org, type: 1, id: i % 5 }, [ev('H', String(i))]);
  const delivered: SubscribedBatch[] = [];
  // Pages of about 10 batches, a queue of 10, a consumer that sleeps 1 ms a batch: a read ahead
  // of the consumer while catching up would overflow the queue within a few pages.
  for await (const b of client.subscribe({ org }, { queueBatches: 10, maxBytes: 1500, pollWaitMs: 200 })) {
    delivered.push(b);
    if (delivered.length === history) {
      void (async () => {
        for (let i = history; i < history + 30; i++) await writer.append({ org, type: 1, id: i % 5 }, [ev('T', String(i))]);
      })();
    }
    if (delivered.length === history + 30) break;
    await sleep(1);
  }
  await writer.close();
  assertExactlyOnce(delivered, history + 30);
});

/** celer_requests_total{op="read_shard",result="ok"} of the node. */
async function feedReads(): Promise<number> {
  const text = await (await fetch(`http://${node.http}/metrics`)).text();
  const m = /^celer_requests_total\{op="read_shard",result="ok"\} (\d+)/m.exec(text);
  return m === null ? 0 : Number(m[1]);
}

test('subscriptions of one client share their feed reads (one request per page for all of them), and the shared batches are frozen', async () => {
  const subscribers = 12;
  const writes = 60;
  const run = async (org: number, shared: boolean): Promise<number> => {
    const clients = shared ? [await connect(node.native, { clientId: 5 })] : await Promise.all(Array.from({ length: subscribers }, (_, j) => connect(node.native, { clientId: 100 + j })));
    const before = await feedReads();
    const got: SubscribedBatch[][] = [];
    const subs = Array.from({ length: subscribers }, async (_, j) => {
      const mine: SubscribedBatch[] = [];
      got.push(mine);
      for await (const b of clients[j % clients.length]!.subscribe({ org }, { pollWaitMs: 300 })) {
        mine.push(b);
        if (mine.length === writes) break;
      }
    });
    const writer = await connect(node.native, { clientId: 93 });
    for (let i = 0; i < writes; i++) await writer.append({ org, type: 1, id: i % 9 }, [ev('S', String(i))]);
    await Promise.all(subs);
    await writer.close();
    const reads = (await feedReads()) - before;
    for (const mine of got) assertExactlyOnce(mine, writes);
    const b = got[0]![0]!;
    assert.throws(() => {
      (b.events as unknown as unknown[]).push({});
    }, TypeError, 'the events of a delivered batch are frozen');
    await Promise.all(clients.map((c) => c.close()));
    return reads;
  };
  const alone = await run(712, false);
  const together = await run(713, true);
  console.log(`feed reads for ${subscribers} subscribers and ${writes} writes: ${alone} on their own clients, ${together} sharing one`);
  assert.ok(together * 3 < alone, `sharing one client took ${together} reads, on their own clients ${alone}`);
});

test('subscribe refuses a checkpoint it did not make', async () => {
  const it = client.subscribe({ org: 1 }, { from: 'c1:1.2' });
  await assert.rejects(it.next(), (e: unknown) => e instanceof BadRequestError && /names 2 shards and this cluster has 3/.test(e.message));
});

test('watch: one notification per change after commit, per aggregate in order, none twice; coalesced within maxLatencyMs', async () => {
  const org = 705;
  const notes: { id: bigint; from: bigint; to: bigint }[] = [];
  const ready = client.watch({ org }, { pollWaitMs: 200, maxLatencyMs: 30 });
  const first = ready.next(); // the watch starts at the tail now
  await sleep(100);
  const writes = 60;
  const w = (async () => {
    for (let i = 0; i < writes; i++) await client.append({ org, type: 1, id: i % 4 }, [ev('N')]);
  })();
  const collect = (async () => {
    let r = await first;
    let covered = 0;
    while (!r.done) {
      const n = r.value;
      if (n.op === 'write') {
        notes.push({ id: n.key.id, from: n.fromVersion, to: n.toVersion });
        covered += Number(n.toVersion - n.fromVersion + 1n);
        if (covered >= writes) break;
      }
      r = await ready.next();
    }
    await ready.return(undefined);
  })();
  await w;
  await collect;
  const tip = new Map<bigint, bigint>();
  for (const n of notes) {
    assert.equal(n.from, (tip.get(n.id) ?? 0n) + 1n, `aggregate ${n.id}: notifications follow each other`);
    tip.set(n.id, n.to);
  }
  for (let id = 0n; id < 4n; id++) assert.equal(tip.get(id), 15n);
  // A watch on one key sees only that key.
  const one = client.watch({ key: { org, type: 1, id: 2 } }, { pollWaitMs: 200 });
  const next = one.next();
  await sleep(50);
  await client.append({ org, type: 1, id: 3 }, [ev('Other')]);
  await client.append({ org, type: 1, id: 2 }, [ev('Mine')]);
  const got = await next;
  assert.ok(!got.done && got.value.op === 'write');
  if (got.value.op === 'write') {
    assert.equal(got.value.key.id, 2n);
    assert.equal(got.value.fromVersion, 16n);
  }
  await one.return(undefined);
});

test('gRPC ReadShard and SubscribeShard: the same feed, the stream follows the tail', async () => {
  const def = await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(def) as unknown as { celer: { v1: { EventStore: grpc.ServiceClientConstructor } } };
  const g = new pkg.celer.v1.EventStore(node.grpc!, grpc.credentials.createInsecure()) as unknown as Record<string, (req: unknown, cb?: (e: grpc.ServiceError | null, r: Record<string, unknown>) => void) => grpc.ClientReadableStream<Record<string, unknown>>>;
  try {
    const org = 706;
    for (let i = 0; i < 6; i++) await client.append({ org, type: 1, id: 3 * i }, [ev('G', String(i))]);
    const page = await new Promise<Record<string, unknown>>((resolve, reject) => g.ReadShard!({ shard: 0, org: String(org) }, (e, r) => (e ? reject(e) : resolve(r))));
    const batches = page.batches as { key: { id: string }; batch: { position: { seq: string }; events: { data: Buffer }[] } }[];
    assert.equal(batches.length, 6);
    assert.deepEqual(batches.map((b) => td.decode(b.batch.events[0]!.data)), ['0', '1', '2', '3', '4', '5']);
    assert.equal(page.numShards, SHARDS);
    // The stream: from the tail on, it delivers the next writes.
    const stream = g.SubscribeShard!({ shard: 0, from: String(page.next), org: String(org) });
    const got: string[] = [];
    const done = new Promise<void>((resolve, reject) => {
      stream.on('data', (m: Record<string, unknown>) => {
        for (const b of m.batches as { batch: { events: { data: Buffer }[] } }[]) got.push(td.decode(b.batch.events[0]!.data));
        if (got.length >= 3) {
          stream.cancel();
          resolve();
        }
      });
      stream.on('error', (e: grpc.ServiceError) => (e.code === grpc.status.CANCELLED ? resolve() : reject(e)));
    });
    for (let i = 6; i < 9; i++) await client.append({ org, type: 1, id: 3 * i }, [ev('G', String(i))]);
    await done;
    assert.deepEqual(got, ['6', '7', '8']);
    // A filter that cannot be served is a 9100 (INVALID_ARGUMENT).
    const bad = await new Promise<grpc.ServiceError>((resolve) => g.ReadShard!({ shard: 0, type: '1' }, (e) => resolve(e!)));
    assert.equal(bad.code, grpc.status.INVALID_ARGUMENT);
  } finally {
    (g as unknown as grpc.Client).close();
  }
});

test('CLI: celer subscribe into a pipe whose reader goes away (| head) exits 0 without a stack trace', async () => {
  const org = 708;
  for (let i = 0; i < 3; i++) await client.append({ org, type: 1, id: i }, [ev('P', String(i))]);
  const p = spawn(CELER, ['subscribe', '--addr', node.native, String(org)], { stdio: ['ignore', 'pipe', 'pipe'] });
  let stderr = '';
  p.stderr.on('data', (d: Buffer) => (stderr += d.toString()));
  const exited = new Promise<number | null>((resolve) => p.on('exit', (code) => resolve(code)));
  // Read the first line, then close the pipe as `head -1` does.
  await new Promise<void>((resolve) => p.stdout.once('data', () => resolve()));
  p.stdout.destroy();
  // The next batches it prints meet the closed pipe.
  let code: number | null | undefined;
  void exited.then((c) => (code = c));
  for (let i = 0; code === undefined && i < 50; i++) {
    await client.append({ org, type: 1, id: 100 + i }, [ev('P', 'more')]);
    await sleep(100);
  }
  if (code === undefined) p.kill('SIGKILL');
  assert.equal(await exited, 0, `exit ${String(code)}; stderr: ${stderr}`);
  assert.doesNotMatch(stderr, /EPIPE|Unhandled|at /);
});

test('CLI: celer subscribe ORG prints batches with checkpoints and resumes from one; celer watch KEY prints a change', async () => {
  const org = 707;
  for (let i = 0; i < 5; i++) await client.append({ org, type: 1, id: i }, [ev('C', String(i))]);
  const first = await runCeler(['subscribe', '--addr', node.native, String(org), '--count', '3']);
  assert.equal(first.code, 0, first.stderr);
  const lines = first.stdout.trim().split('\n').map((l) => JSON.parse(l) as { checkpoint: string; events: { data: string }[] });
  assert.equal(lines.length, 3);
  const rest = await runCeler(['subscribe', '--addr', node.native, String(org), '--from', lines[2]!.checkpoint, '--count', '2']);
  assert.equal(rest.code, 0, rest.stderr);
  const all = [...lines, ...rest.stdout.trim().split('\n').map((l) => JSON.parse(l) as { events: { data: string }[] })];
  assert.deepEqual(all.map((b) => b.events[0]!.data).sort(), ['0', '1', '2', '3', '4']);
  // watch starts at the tail: keep writing until the command has seen one change and exited.
  const watching = runCeler(['watch', '--addr', node.native, `${org}/1/9`, '--count', '1']);
  let exited = false;
  void watching.then(() => (exited = true));
  for (let i = 0; !exited && i < 100; i++) {
    await client.append({ org, type: 1, id: 9 }, [ev('W')]);
    await sleep(100);
  }
  const w = await watching;
  assert.equal(w.code, 0, w.stderr);
  const note = JSON.parse(w.stdout.trim()) as { key: string; op: string; fromVersion: string };
  assert.equal(note.key, `${org}/1/9`);
  assert.equal(note.op, 'write');
  const bad = await runCeler(['watch', '--addr', node.native, '1/2/3/4']);
  assert.notEqual(bad.code, 0);
  assert.match(bad.stderr, /neither KEY/);
});

// The native protocol server's bounds per connection, over a real socket.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { connect, type Socket } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeError, encodeFrame, encodeReadShardRequest, encodeWriteRequest, Expect, FeedFilter, FrameDecoder, Op, type Frame } from '../../client/wire.ts';
import { waitUntil } from '../../test/e2e/lib/wait.ts';
import { CONNECTION_REQUESTS_IN_FLIGHT_MAX, FEED_WAITS_PER_CONNECTION_MAX } from '../constants.ts';
import { openDataMeta } from '../storage/meta.ts';
import type { Dispatcher, DispatchResult } from './dispatch.ts';
import { splitHostPort, startNativeServer, type NativeServerHandle } from './native.ts';
import { Router } from './router.ts';

/** A Dispatcher that holds every request until the test releases it, and answers with its body. */
class HoldingDispatcher implements Dispatcher {
  /** Request bodies in the order they were dispatched. */
  readonly seen: Uint8Array[] = [];
  private held: (() => void)[] = [];
  maxHeld = 0;
  get holding(): number {
    return this.held.length;
  }
  dispatch(_op: number, body: Uint8Array): Promise<DispatchResult> {
    const copy = body.slice();
    this.seen.push(copy);
    return new Promise((resolve) => {
      this.held.push(() => resolve({ op: Op.Pong, body: copy }));
      this.maxHeld = Math.max(this.maxHeld, this.held.length);
    });
  }
  releaseAll(): void {
    const h = this.held;
    this.held = [];
    for (const f of h) f();
  }
}

function open(address: string): Promise<{ socket: Socket; frames: Frame[] }> {
  const { host, port } = splitHostPort(address);
  return new Promise((resolve, reject) => {
    const socket = connect({ host, port });
    const decoder = new FrameDecoder();
    const frames: Frame[] = [];
    socket.on('data', (d: Buffer) => frames.push(...decoder.push(d)));
    socket.once('error', reject);
    socket.once('connect', () => resolve({ socket, frames }));
  });
}

function indexBody(i: number): Uint8Array {
  const b = new Uint8Array(4);
  new DataView(b.buffer).setUint32(0, i, true);
  return b;
}

const indexOf = (body: Uint8Array): number => new DataView(body.buffer, body.byteOffset, body.length).getUint32(0, true);

test('one connection never has more than CONNECTION_REQUESTS_IN_FLIGHT_MAX requests in flight; the rest wait in arrival order and every one is answered', async () => {
  const fake = new HoldingDispatcher();
  const server = await startNativeServer(fake, '127.0.0.1:0', () => {});
  const { socket, frames } = await open(server.address);
  try {
    const total = CONNECTION_REQUESTS_IN_FLIGHT_MAX + 1500;
    const all = new Uint8Array(total * 13);
    for (let i = 0; i < total; i++) all.set(encodeFrame(i + 1, Op.Ping, indexBody(i)), i * 13);
    socket.write(all);
    // Release in waves: each time the server has dispatched all it may (the bound, or the rest),
    // answer them; it must then read and dispatch the next ones.
    while (fake.seen.length < total) {
      await waitUntil(
        `a full wave of dispatched requests (seen ${fake.seen.length} of ${total}, holding ${fake.holding})`,
        () => fake.holding >= CONNECTION_REQUESTS_IN_FLIGHT_MAX || fake.seen.length === total,
      );
      fake.releaseAll();
    }
    fake.releaseAll();
    await waitUntil(`all ${total} responses (got ${frames.length})`, () => frames.length === total);
    assert.equal(fake.maxHeld, CONNECTION_REQUESTS_IN_FLIGHT_MAX, 'requests in flight on the connection reached the bound and never passed it');
    assert.deepEqual(
      fake.seen.map(indexOf),
      Array.from({ length: total }, (_, i) => i),
      'requests were dispatched in the order they were sent',
    );
    const answered = new Map(frames.map((f) => [f.correlationId, indexOf(f.body)]));
    assert.equal(answered.size, total, 'one answer per request');
    for (let i = 0; i < total; i++) assert.equal(answered.get(i + 1), i, `request ${i + 1} got its own answer`);
  } finally {
    socket.destroy();
    fake.releaseAll();
    await server.close();
  }
});

test('another connection is not held back by one at its bound', async () => {
  const fake = new HoldingDispatcher();
  const server = await startNativeServer(fake, '127.0.0.1:0', () => {});
  const a = await open(server.address);
  const b = await open(server.address);
  try {
    const frames = Array.from({ length: CONNECTION_REQUESTS_IN_FLIGHT_MAX + 10 }, (_, i) => encodeFrame(i + 1, Op.Ping, indexBody(i)));
    a.socket.write(Buffer.concat(frames));
    await waitUntil('connection A at its bound', () => fake.holding === CONNECTION_REQUESTS_IN_FLIGHT_MAX);
    b.socket.write(encodeFrame(1, Op.Ping, indexBody(999_999)));
    await waitUntil('connection B dispatched', () => fake.seen.some((s) => indexOf(s) === 999_999));
    fake.releaseAll();
    await waitUntil('connection B answered', () => b.frames.length === 1);
    assert.equal(indexOf(b.frames[0]!.body), 999_999);
  } finally {
    a.socket.destroy();
    b.socket.destroy();
    fake.releaseAll();
    await server.close();
  }
});

test('feed long polls beyond FEED_WAITS_PER_CONNECTION_MAX get 2012 at once; other requests on the connection still go through; an answered poll frees its place', async () => {
  const fake = new HoldingDispatcher();
  const server = await startNativeServer(fake, '127.0.0.1:0', () => {});
  const { socket, frames } = await open(server.address);
  const poll = (id: number, waitMs: number) =>
    encodeFrame(id, Op.ReadShard, encodeReadShardRequest({ shard: 0, from: 1n, maxBytes: 0, waitMs, filter: FeedFilter.None, key: { org: 0n, type: 0n, id: 0n }, headersOnly: true }));
  try {
    const polls = Array.from({ length: FEED_WAITS_PER_CONNECTION_MAX + 3 }, (_, i) => poll(i + 1, 10_000));
    socket.write(Buffer.concat(polls));
    await waitUntil('the refused polls answered', () => frames.length === 3);
    assert.equal(fake.holding, FEED_WAITS_PER_CONNECTION_MAX, 'the bound reached the dispatcher, no more');
    for (const f of frames) {
      assert.equal(f.op, Op.Error);
      const e = decodeError(f.body);
      assert.equal(e.code, 2012);
      assert.equal(e.detail.limit, 'FEED_WAITS_PER_CONNECTION_MAX');
      assert.ok(f.correlationId > FEED_WAITS_PER_CONNECTION_MAX, 'the ones past the bound');
    }
    // A poll that does not wait, and a ping, are not long polls: dispatched.
    socket.write(Buffer.concat([poll(9001, 0), encodeFrame(9002, Op.Ping, indexBody(7))]));
    await waitUntil('both dispatched', () => fake.holding === FEED_WAITS_PER_CONNECTION_MAX + 2);
    fake.releaseAll();
    await waitUntil('every held request answered', () => frames.length === 3 + FEED_WAITS_PER_CONNECTION_MAX + 2);
    socket.write(poll(9003, 10_000));
    await waitUntil('a new long poll dispatched after the others were answered', () => fake.holding === 1);
  } finally {
    socket.destroy();
    fake.releaseAll();
    await server.close();
  }
});

// A real Router and shard worker behind the native server.
let dir: string;
let router: Router;
let server: NativeServerHandle;

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'celer-native-'));
  openDataMeta(dir, { numShards: 1, routing: 'id' }, { numShards: 1, routing: 'id' });
  router = await Router.start({
    dataDir: dir,
    numShards: 1,
    routing: 'id',
    workers: 1,
    segmentBytes: 4 * 1024 * 1024,
    memoryBudgetBytes: 8 * 1024 * 1024,
    unsafeNoDirectIo: false,
    forceSyncIo: false,
    log: () => {},
  });
});

after(async () => {
  await server?.close();
  await router?.close();
  await rm(dir, { recursive: true, force: true });
});

test('a connection that goes away with requests in flight leaves nothing held: the node gets back to 0 bytes in flight', async () => {
  let dispatched = 0;
  const conn: { socket?: Socket } = {};
  const results: Promise<DispatchResult>[] = [];
  // The client disconnects as soon as the server has taken its first request, so every later one
  // is in flight (or waiting on the connection) when the connection goes.
  const watching: Dispatcher = {
    dispatch(op, body) {
      if (dispatched++ === 0) conn.socket?.destroy();
      const r = router.dispatch(op, body);
      results.push(r);
      return r;
    },
  };
  server = await startNativeServer(watching, '127.0.0.1:0', () => {});
  const c = await open(server.address);
  conn.socket = c.socket;
  const te = new TextEncoder();
  const frames = Array.from({ length: 500 }, (_, i) =>
    encodeFrame(
      i + 1,
      Op.Write,
      encodeWriteRequest({ clientId: 1n, writes: [{ key: { org: 1n, type: 1n, id: BigInt(i) }, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [{ type: 'T', data: te.encode(`event ${i}`) }] }] }),
    ),
  );
  c.socket.write(Buffer.concat(frames));
  await waitUntil('the client to be gone', () => c.socket.destroyed);
  await Promise.all(results);
  await waitUntil('every request taken to be answered', () => router.requestsInFlight === 0);
  assert.ok(dispatched > 0, 'the server took requests before the client went away');
  assert.equal(results.length, dispatched);
  assert.equal(router.bytesInFlight, 0);
  // And the node still serves a new connection.
  const again = await open(server.address);
  again.socket.write(frames[0]!);
  await waitUntil('an answer on a new connection', () => again.frames.length === 1);
  assert.equal(again.frames[0]!.op, Op.WriteOk);
  again.socket.destroy();
});

test('a dispatcher that throws synchronously answers that request with an internal error; the server and the connection live on', async () => {
  let calls = 0;
  const throwing: Dispatcher = {
    dispatch(op, body) {
      if (calls++ === 0) throw new RangeError('Maximum call stack size exceeded');
      return Promise.resolve({ op: Op.Pong, body: body.slice() });
    },
  };
  const logs: string[] = [];
  const s = await startNativeServer(throwing, '127.0.0.1:0', (m) => logs.push(m));
  const { socket, frames } = await open(s.address);
  try {
    socket.write(Buffer.concat([encodeFrame(1, Op.Ping, indexBody(1)), encodeFrame(2, Op.Ping, indexBody(2))]));
    await waitUntil('both answered', () => frames.length === 2);
    const first = frames.find((f) => f.correlationId === 1)!;
    assert.equal(first.op, Op.Error);
    assert.match(decodeError(first.body).message, /internal error: Maximum call stack/);
    assert.equal(frames.find((f) => f.correlationId === 2)!.op, Op.Pong);
    assert.ok(logs.some((l) => /internal error/.test(l)));
  } finally {
    socket.destroy();
    await s.close();
  }
});

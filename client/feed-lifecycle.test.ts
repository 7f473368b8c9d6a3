// The life of a subscription iterator (client/feed.ts) against a fake FeedSend: what it asks of
// the server while its consumer is away, how return() ends it, and what its pages let a consumer do.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { subscribeKey, subscribeOrg, subscribeShard, watch, type FeedSend, type ShardBatch, type SubscribeOrgFilter, type SubscribeOrgOptions, type SubscribeShardOptions } from './feed.ts';
import { EncryptingClient } from './encryption.ts';
import type { CelerClient } from './client.ts';
import { SubscriberTooSlowError } from './errors.ts';
import { FakeShard, fakeSend, KEY, sleep, within } from './fake-feed.ts';
import type { Batch } from './types.ts';

const POLL_MS = 50;
const key = { org: KEY.org, type: KEY.type, id: KEY.id };
const nothingRead = async function* (): AsyncGenerator<Batch> {};
/** The encrypting() wrapper over subscriptions on `send` (its batches carry no sealed events, so no key is asked for). */
const encryptingOver = (send: FeedSend): EncryptingClient =>
  new EncryptingClient(
    { subscribeShard: (shard: number, o: SubscribeShardOptions) => subscribeShard(send, shard, o), subscribe: (f: SubscribeOrgFilter, o: SubscribeOrgOptions) => subscribeOrg(send, f, o) } as unknown as CelerClient,
    { getKey: () => Promise.resolve(null), forget: () => Promise.resolve() },
  );

// A consumer that stops pulling without return() (an abandoned loop, a forgotten iterator) must
// not make the client long-poll the server for ever: every poll holds one of a shard's waiters.
test('a subscription whose consumer stopped pulling stops asking the server, and goes on when it pulls again', async () => {
  const shard = new FakeShard();
  shard.commit({});
  const { send, requests } = fakeSend((req) => shard.answer(req));
  const sub = subscribeShard(send, 0, { pollWaitMs: POLL_MS });
  try {
    assert.equal(((await sub.next()).value as ShardBatch).position.seq, 1n);
    // The consumer is away. Its subscription is live at a quiet tail: polls time out every POLL_MS.
    await sleep(2_000);
    const asked = requests.length;
    await sleep(600);
    assert.equal(requests.length, asked, `${requests.length - asked} feed requests in 600 ms with nobody pulling`);
    // It comes back: nothing was lost, and the tail is followed again.
    shard.commit({});
    const r = await within(sub.next(), 1_000);
    assert.notEqual(r, 'pending', 'the consumer came back and got nothing');
    assert.equal(((r as IteratorResult<ShardBatch>).value as ShardBatch).position.seq, 2n);
  } finally {
    await sub.return();
  }
});

test('a consumer waiting at a quiet tail keeps its subscription polling, and gets the next commit', async () => {
  const shard = new FakeShard();
  const { send, requests } = fakeSend((req) => shard.answer(req));
  const sub = subscribeOrg(send, { org: KEY.org }, { pollWaitMs: POLL_MS });
  try {
    const waiting = sub.next();
    await sleep(2_000);
    const asked = requests.length;
    await sleep(300);
    assert.ok(requests.length > asked, 'a waiting consumer stopped polling');
    shard.commit({});
    const r = await within(waiting, 1_000);
    assert.notEqual(r, 'pending');
    assert.equal(((r as IteratorResult<ShardBatch>).value as ShardBatch).position.seq, 1n);
  } finally {
    await sub.return();
  }
});

// return() while a next() waits must end both at once: a for-await that breaks out from another
// task (a timeout, a shutdown) or a client closing a consumer's iterator would hang otherwise.
for (const [name, open] of [
  ['watch', (send: FeedSend) => watch(send, { key }, { pollWaitMs: POLL_MS })],
  ['watch of an org', (send: FeedSend) => watch(send, { org: KEY.org }, { pollWaitMs: POLL_MS })],
  ['subscribe(key)', (send: FeedSend) => subscribeKey(send, nothingRead, key, { pollWaitMs: POLL_MS })],
  ['encrypting(): subscribeShard', (send: FeedSend) => encryptingOver(send).subscribeShard(0, { pollWaitMs: POLL_MS })],
  ['encrypting(): subscribe(org)', (send: FeedSend) => encryptingOver(send).subscribe({ org: KEY.org }, { pollWaitMs: POLL_MS })],
] as [string, (send: FeedSend) => AsyncGenerator<unknown, void, undefined>][]) {
  test(`${name}: return() while a next() waits at a quiet tail ends both, and asks no more`, async () => {
    const shard = new FakeShard();
    const { send, requests } = fakeSend((req) => shard.answer(req));
    const it = open(send);
    const waiting = it.next();
    await sleep(200);
    assert.deepEqual(await within(it.return(undefined), 500), { value: undefined, done: true }, 'return() did not settle');
    assert.deepEqual(await within(waiting, 500), { value: undefined, done: true }, 'the waiting next() did not end');
    const asked = requests.length;
    await sleep(4 * POLL_MS);
    assert.ok(requests.length <= asked + 1, `${requests.length - asked} feed requests after return()`);
    assert.deepEqual(await within(it.next(), 200), { value: undefined, done: true });
  });
}

test('a dropped watcher is told to watch again from the tail, not given a position it cannot resume from', async () => {
  const shard = new FakeShard();
  const { send } = fakeSend((req) => shard.answer(req));
  const w = watch(send, { org: KEY.org }, { pollWaitMs: POLL_MS, queueBatches: 1 });
  try {
    const first = w.next();
    await sleep(20);
    shard.commit({});
    assert.equal(((await first).value as { op: string }).op, 'write');
    // Busy while three more pages of changes arrive: past a queue of 1 batch.
    for (let i = 0; i < 3; i++) {
      shard.commit({ key: { ...KEY, id: BigInt(10 + i) } });
      await sleep(20);
    }
    const e = await w.next().then(
      () => assert.fail('a watcher past its queue was not dropped'),
      (x: unknown) => x,
    );
    assert.ok(e instanceof SubscriberTooSlowError, String(e));
    assert.equal(e.resumeFrom, undefined);
    assert.doesNotMatch(e.message, /subscribe again/);
    assert.match(e.message, /watch again/);
  } finally {
    await w.return();
  }
});

test("return() clears a watcher's maxLatencyMs pause: no timer keeps the process alive", async () => {
  const shard = new FakeShard();
  const { send, requests } = fakeSend((req) => shard.answer(req));
  const timers = (): number => process.getActiveResourcesInfo().filter((r) => r === 'Timeout').length;
  const before = timers();
  const w = watch(send, { key }, { pollWaitMs: POLL_MS, maxLatencyMs: 10_000 });
  const first = w.next();
  await sleep(20);
  shard.commit({});
  await first;
  // The shard is asked again only after maxLatencyMs: a timer is set for that.
  const asked = requests.length;
  await w.return();
  await sleep(20);
  assert.equal(requests.length, asked);
  assert.equal(timers(), before, 'a timer is left after return()');
});

test('a shared page is frozen through its events, schemaVersion included', async () => {
  const shard = new FakeShard();
  shard.commit({ events: [{ type: 't', data: new Uint8Array([1]), schemaMajor: 1, schemaMinor: 2 }] });
  const { send } = fakeSend((req) => shard.answer(req));
  const sub = subscribeOrg(send, { org: KEY.org }, { pollWaitMs: POLL_MS });
  try {
    const b = (await sub.next()).value as ShardBatch;
    const ev = b.events[0]!;
    assert.deepEqual(ev.schemaVersion, { major: 1, minor: 2 });
    assert.ok(Object.isFrozen(ev) && Object.isFrozen(ev.schemaVersion), 'schemaVersion of a shared event can be changed by one subscriber under the others');
  } finally {
    await sub.return();
  }
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from './clock.ts';
import { BUCKET_BURST, ITEM_BACKOFF_BASE_MS, ITEM_BACKOFF_MAX_MS, WorkQueue } from './workqueue.ts';

test('a key added twice before it is taken is processed once', async () => {
  const q = new WorkQueue(new ManualClock());
  q.add('ns/a');
  q.add('ns/a');
  q.add('ns/b');
  assert.equal(q.length, 2);
  assert.equal(await q.get(), 'ns/a');
  assert.equal(await q.get(), 'ns/b');
  assert.equal(q.length, 0);
});

test('a key re-added while it is processed is queued again only after done()', async () => {
  const q = new WorkQueue(new ManualClock());
  q.add('ns/a');
  const key = await q.get();
  q.add('ns/a');
  assert.equal(q.length, 0, 'not handed to a second worker while processing');
  q.done(key!);
  assert.equal(q.length, 1);
  assert.equal(await q.get(), 'ns/a');
});

test('a waiting worker receives a key as soon as it is added', async () => {
  const q = new WorkQueue(new ManualClock());
  const pending = q.get();
  q.add('ns/a');
  assert.equal(await pending, 'ns/a');
});

test('retries back off exponentially per key and forget() resets the backoff', () => {
  const clock = new ManualClock();
  const q = new WorkQueue(clock);
  const delays: number[] = [];
  for (let i = 0; i < 5; i++) {
    delays.push(q.nextRetryDelayMs('ns/a'));
    q.addRateLimited('ns/a');
    clock.advance(10_000);
  }
  assert.deepEqual(delays, [5, 10, 20, 40, 80].map((x) => (x / 5) * ITEM_BACKOFF_BASE_MS));
  q.forget('ns/a');
  assert.equal(q.nextRetryDelayMs('ns/a'), ITEM_BACKOFF_BASE_MS);
});

test('the per-key backoff stops growing at its maximum', () => {
  const clock = new ManualClock();
  const q = new WorkQueue(clock);
  for (let i = 0; i < 40; i++) q.addRateLimited('ns/a');
  assert.equal(q.nextRetryDelayMs('ns/a'), ITEM_BACKOFF_MAX_MS);
});

test('a rate-limited key comes back only after its delay has passed', async () => {
  const clock = new ManualClock();
  const q = new WorkQueue(clock);
  q.addRateLimited('ns/a');
  q.addRateLimited('ns/a');
  assert.equal(q.length, 0);
  clock.advance(ITEM_BACKOFF_BASE_MS - 1);
  assert.equal(q.length, 0);
  clock.advance(1);
  assert.equal(q.length, 1, 'the earlier schedule wins');
  assert.equal(await q.get(), 'ns/a');
});

test('the shared token bucket slows retries once the burst is spent', () => {
  const q = new WorkQueue(new ManualClock());
  for (let i = 0; i < BUCKET_BURST; i++) q.nextRetryDelayMs(`ns/k${i}`);
  assert.ok(q.nextRetryDelayMs('ns/other') >= 100, 'the 101st retry within a second waits for a token at 10 per second');
});

test('addAfter keeps the earliest schedule for a key', () => {
  const clock = new ManualClock();
  const q = new WorkQueue(clock);
  q.addAfter('ns/a', 5_000);
  q.addAfter('ns/a', 1_000);
  q.addAfter('ns/a', 9_000);
  clock.advance(1_000);
  assert.equal(q.length, 1);
  clock.advance(10_000);
  assert.equal(clock.pendingTimers(), 0);
});

test('shutDown releases waiting workers with null and refuses new keys', async () => {
  const q = new WorkQueue(new ManualClock());
  const pending = q.get();
  q.shutDown();
  assert.equal(await pending, null);
  q.add('ns/a');
  assert.equal(await q.get(), null);
});

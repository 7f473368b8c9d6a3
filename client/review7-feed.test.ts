// review7: the Follower iterator of client/feed.ts (subscribeShard, subscribe(org), watch) against
// a fake FeedSend that answers ReadShard requests with pages built by hand.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { subscribeOrg, subscribeShard, watch, type FeedSend } from './feed.ts';
import { BadRequestError, SubscriberTooSlowError } from './errors.ts';
import { FakeShard, fakeSend, KEY, never, sleep, within } from './fake-feed.ts';

// An async generator that throws ends: the next next() answers { done: true }. The Follower keeps
// its setup promise, rejected, and every later next() awaits it again and throws again.
test('review7: next() after the setup of a subscription failed is done, not the same error again', async () => {
  const { send } = fakeSend(() => never());
  const sub = subscribeOrg(send, {} as never);
  await assert.rejects(sub.next(), BadRequestError);
  assert.deepEqual(await sub.next(), { value: undefined, done: true });

  const shard = subscribeShard(send, -1);
  await assert.rejects(shard.next(), BadRequestError);
  assert.deepEqual(await shard.next(), { value: undefined, done: true });
});

// return() before the first next(): the subscription is over; a next() after it still runs the
// setup (the probe request of subscribe(org)) before it answers done.
test('review7: next() after return() sends no request', async () => {
  let sent = 0;
  const send: FeedSend = async () => {
    sent++;
    return never();
  };
  const sub = subscribeOrg(send, { org: 1n });
  await sub.return();
  assert.deepEqual(await within(sub.next(), 200), { value: undefined, done: true });
  assert.equal(sent, 0);
});

// The consumer is waiting in next() with nothing queued; the live tail's next page has more
// batches than queueBatches. Nothing is queued "for" the consumer — it takes the page at once —
// yet arrived() counts the page before the consumer has had a chance and drops the subscription.
test('review7: a live page larger than queueBatches reaching a waiting consumer is delivered, not a drop', async () => {
  const { send } = fakeSend((req, n) => {
    if (n === 1) return { next: 1n, committed: 0n }; // at the tip: live
    if (n === 2) return sleep(20).then(() => ({ next: 6n, committed: 5n, batches: [1n, 2n, 3n, 4n, 5n].map((seq) => ({ seq })) }));
    return never();
  });
  const sub = subscribeShard(send, 0, { queueBatches: 3 });
  const got: bigint[] = [];
  try {
    for (let i = 0; i < 5; i++) {
      const r = await sub.next();
      assert.equal(r.done, false);
      got.push(r.value!.position.seq);
    }
  } finally {
    await sub.return();
  }
  assert.deepEqual(got, [1n, 2n, 3n, 4n, 5n]);
});

// An org subscription of a quiet org on a busy shard: every commit of another org wakes the long
// poll and answers an empty page (filtered out, `next` advanced). At the live tail those pages are
// read ahead and queued while the consumer is busy, and an empty page counts 0 against
// queueBatches, so the queue grows without bound (and is never dropped).
test('review7: empty pages read ahead at the live tail do not queue without bound', async () => {
  let seq = 1n;
  const { send, requests } = fakeSend(async (req, n) => {
    if (n === 1) return { next: 2n, committed: 1n, batches: [{ seq: 1n }] }; // one batch, at the tip: live
    await new Promise((r) => setImmediate(r));
    seq = req.from; // another org committed req.from: filtered out
    return { next: req.from + 1n, committed: req.from };
  });
  const sub = subscribeOrg(send, { org: 1n }, { queueBatches: 100 });
  try {
    const first = await sub.next();
    assert.equal(first.value!.position.seq, 1n);
    // The consumer is busy with its batch for a while.
    await sleep(300);
    const queued = (sub as unknown as { queue: unknown[] }).queue.length;
    assert.ok(requests.length > 500, `requests ${requests.length}`);
    assert.ok(queued <= 100, `${queued} pages queued for a consumer with queueBatches 100 (shard at ${seq})`);
  } finally {
    await sub.return();
  }
});

// The same for watch with heartbeats: a watcher that was busy for a while gets one heartbeat per
// empty page read meanwhile, all stale, in a burst (before the change: at most one).
test('review7: a busy watcher does not get a burst of stale heartbeats', async () => {
  let answering = true;
  const { send } = fakeSend(async (req) => {
    if (!answering) return never();
    await new Promise((r) => setImmediate(r));
    return { next: req.from + 1n, committed: req.from };
  });
  const w = watch(send, { org: 5n }, { heartbeats: true });
  try {
    const first = await w.next();
    assert.equal((first.value as { op: string }).op, 'heartbeat');
    await sleep(200);
    answering = false;
    let burst = 0;
    for (;;) {
      const r = await within(w.next(), 50);
      if (r === 'pending') break;
      burst++;
      if (burst > 1000) break;
    }
    assert.ok(burst <= 2, `${burst} heartbeats queued while the watcher was busy`);
  } finally {
    void w.return();
  }
});

// watch coalesces the changes of one aggregate that one page brings. Before the change a watcher
// asked again only once its consumer took the last notification, so whatever committed while the
// consumer was busy came in one page: one notification. Now the tail is read ahead page by page
// (one per commit here) and each page is its own notification: a busy watcher gets one
// notification per commit (and, past queueBatches, is dropped with no position to resume from).
test('review7: changes of one aggregate committed while the watcher is busy are coalesced', async () => {
  const shard = new FakeShard();
  const { send } = fakeSend((req) => shard.answer(req), { next: 0n, committed: 0n });
  const w = watch(send, { key: { org: KEY.org, type: KEY.type, id: KEY.id } }, { pollWaitMs: 200 });
  const writer = (async () => {
    await sleep(20);
    shard.commit({ fromVersion: 1n, toVersion: 1n });
  })();
  try {
    const first = (await w.next()).value as { fromVersion: bigint; toVersion: bigint };
    assert.deepEqual([first.fromVersion, first.toVersion], [1n, 1n]);
    // The consumer is busy with that notification while versions 2..40 commit one by one.
    for (let v = 2n; v <= 40n; v++) {
      shard.commit({ fromVersion: v, toVersion: v });
      await sleep(2);
    }
    await sleep(20);
    const got: [bigint, bigint][] = [];
    for (;;) {
      const r = await within(w.next(), 100);
      if (r === 'pending' || r.done) break;
      const n = r.value as { fromVersion: bigint; toVersion: bigint };
      got.push([n.fromVersion, n.toVersion]);
      if (n.toVersion >= 40n) break;
    }
    assert.deepEqual(got, [[2n, 40n]]);
  } finally {
    await writer;
    void w.return();
  }
});

void SubscriberTooSlowError;

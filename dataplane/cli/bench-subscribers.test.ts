// The pure parts of `celer bench --subscribers`: flag parsing, the shared ack log, the latency
// reservoir, the printed lines and the medians over rounds. No timing assertions.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BenchResult } from './bench.ts';
import { formatDeliveryMedians, type RoundRun } from './bench-rounds.ts';
import { AckLog, formatDelivery, parseSubscriberCounts, Reservoir, SUBSCRIBERS_MAX, subscribersName, type DeliveryReport } from './bench-subscribers.ts';

test('--subscribers takes one count or distinct counts to compare', () => {
  assert.deepEqual(parseSubscriberCounts('0'), [0]);
  assert.deepEqual(parseSubscriberCounts('100'), [100]);
  assert.deepEqual(parseSubscriberCounts('0,100'), [0, 100]);
  assert.deepEqual(parseSubscriberCounts(' 0 , 10,100'), [0, 10, 100]);
  assert.throws(() => parseSubscriberCounts(''), /takes N or N,M/);
  assert.throws(() => parseSubscriberCounts('-1'), /takes N or N,M/);
  assert.throws(() => parseSubscriberCounts('1.5'), /takes N or N,M/);
  assert.throws(() => parseSubscriberCounts('0,,1'), /takes N or N,M/);
  assert.throws(() => parseSubscriberCounts('100,100'), /twice/);
  assert.throws(() => parseSubscriberCounts(String(SUBSCRIBERS_MAX + 1)), /above 1000/);
  assert.equal(subscribersName(100), 'subs=100');
});

test('the ack log finds a version while its slot holds it, and tells "not yet" from "reused"', () => {
  const log = new AckLog(3, 4);
  assert.equal(log.lookup(1, 1), -1, 'nothing recorded: not acked yet');
  log.record(1, 1, 10.5);
  log.record(1, 2, 11.25);
  assert.equal(log.lookup(1, 1), 10.5);
  assert.equal(log.lookup(1, 2), 11.25);
  assert.equal(log.lookup(1, 3), -1, 'version 3 not acked yet');
  assert.equal(log.lookup(0, 1), -1, 'other writers are apart');
  log.record(1, 5, 20); // the slot of version 1 (5 mod 4)
  assert.equal(log.lookup(1, 1), -2, 'slot reused by a later version');
  assert.equal(log.lookup(1, 5), 20);
  assert.equal(log.lookup(3, 1), -2, 'no such writer');
  assert.equal(log.lookup(-1, 1), -2);
  assert.equal(log.lookup(1.5, 1), -2);
  assert.equal(log.lookup(1, 0), -2, 'versions start at 1');
  // Another thread's view over the same memory sees the same.
  const other = new AckLog(3, 4, log.shared);
  assert.equal(other.lookup(1, 5), 20);
  other.record(2, 7, 30);
  assert.equal(log.lookup(2, 7), 30);
});

test('the reservoir keeps every value until full, then a sample; the max is of every value', () => {
  const r = new Reservoir(1000);
  assert.deepEqual(r.summary(), { count: 0, p50: 0, p99: 0, max: 0 });
  for (let i = 1; i <= 100; i++) r.add(i);
  assert.deepEqual(r.summary(), { count: 100, p50: 51, p99: 100, max: 100 });
  const small = new Reservoir(10);
  for (let i = 0; i < 10_000; i++) small.add(i % 100);
  small.add(5000);
  const s = small.summary();
  assert.equal(s.count, 10_001);
  assert.equal(s.max, 5000);
  assert.ok(s.p50 >= 0 && s.p50 <= 5000);
  const negative = new Reservoir(10);
  negative.add(-3);
  assert.equal(negative.summary().max, -3, 'the max of negative values is one of them, not 0');
});

const report = (over: Partial<DeliveryReport> = {}): DeliveryReport => ({
  subscribers: 3,
  slowMs: 50,
  connections: 3,
  from: 'c1:10.20',
  acked: 1000,
  delivered: [40, 1000, 1000],
  nice: 0,
  drops: [3, 0, 0],
  dropMessage: 'subscribe to org 7 was dropped: …',
  afterAck: { count: 1800, p50: 1.5, p99: 12.25, max: 40 },
  beforeAck: 18,
  unmatched: 0,
  afterPlacement: { count: 1800, p50: 4, p99: 15, max: 41 },
  slowBehindAtStop: 962,
  drainMs: 120,
  quietMs: 9000,
  quiet: true,
  missing: 0,
  errors: [],
  ...over,
});

test('the printed lines name the latency, the counts and the slow subscriber', () => {
  const lines = formatDelivery(report());
  assert.equal(lines[0], 'subscribers 3 (1 slow, 50 ms/batch) over 3 connection(s) in a worker thread, from the tail (c1:10.20)');
  assert.match(lines[1]!, /^subscribers 3: delivered p50 1\.50 ms p99 12\.3 ms max 40\.0 ms after the writer's ack \(1800 deliveries to 2 fast subscribers in the window, 1 in 8 of each one's; 1\.0% before the ack, counted as 0\); p50 4\.00 ms p99 15\.0 ms max 41\.0 ms after the server placed the write$/);
  assert.equal(lines[2], 'subscribers 3: fast subscribers received 1000..1000 batches of 1000 acknowledged writes, all of them 0.1 s after the writers stopped');
  assert.equal(lines[3], 'subscribers 3: slow subscriber 962 batches behind when the writers stopped (received 40 of 1000 by the end)');
  assert.equal(lines[4], 'subscribers 3: slow subscriber dropped 3 time(s) for falling behind the tail, each time resumed from its checkpoint');
  assert.equal(lines[5], 'subscribers 3: fast subscribers dropped: 0 of 2');
  assert.equal(lines[6], 'subscribers 3: first drop: subscribe to org 7 was dropped: …');
  assert.equal(lines[7], 'subscribers 3: the node had answered every page read still out for them 9.0 s after the writers stopped (the next run starts after that)');
  assert.equal(lines.length, 8);
  assert.equal(formatDelivery(report({ nice: 19 }))[0], 'subscribers 3 (1 slow, 50 ms/batch) over 3 connection(s) in a worker thread at nice 19, from the tail (c1:10.20)');
  assert.match(formatDelivery(report({ nice: 'EACCES' }))[0]!, /in a worker thread \(nice not set: EACCES\), from/);
  const fastDropped = formatDelivery(report({ drops: [1, 2, 0] }));
  assert.equal(fastDropped[5], 'subscribers 3: fast subscribers dropped: 1 of 2 (2 drops in all)');
});

test('a node still reading pages for the subscribers when the wait ends prints a warning', () => {
  const lines = formatDelivery(report({ quiet: false, quietMs: 310_000 }));
  assert.equal(lines[7], 'WARNING: the node was still reading pages for the subscribers 310 s after the writers stopped; a next run competes with that work');
});

test('a fast subscriber short after the drain, or failed, prints a warning', () => {
  const lines = formatDelivery(report({ delivered: [40, 1000, 990], missing: 1, errors: ['subscriber 2 failed: boom'] }));
  assert.match(lines[2]!, /received 990\.\.1000 batches of 1000 acknowledged writes, 1 short after the 0\.1 s drain/);
  assert.match(lines[8]!, /^WARNING: 1 of 2 fast subscribers did not receive every acknowledged write/);
  assert.equal(lines[9], 'WARNING: subscriber 2 failed: boom');
});

test('no write of the window delivered by the end: said so, no latency figures', () => {
  const lines = formatDelivery(report({ delivered: [40, 300, 310], missing: 2, afterAck: { count: 0, p50: 0, p99: 0, max: 0 }, afterPlacement: { count: 0, p50: 0, p99: 0, max: 0 } }));
  assert.equal(lines[1], 'subscribers 3: delivered: no write acknowledged in the measured window reached a fast subscriber by the end of the drain (no latency to report)');
  assert.match(lines[2]!, /received 300\.\.310 batches of 1000 acknowledged writes, 2 short/);
  const some = formatDelivery(report({ delivered: [40, 300, 1000], missing: 1 }));
  assert.match(some[1]!, /after the server placed the write \(of the batches that arrived by the end: the rest took longer\)$/);
});

test('one subscriber is the slow one: no fast latency line', () => {
  const lines = formatDelivery(report({ subscribers: 1, delivered: [40], drops: [0], dropMessage: undefined, afterAck: { count: 0, p50: 0, p99: 0, max: 0 } }));
  assert.equal(lines.length, 4);
  assert.match(lines[1]!, /^subscribers 1: slow subscriber 962 batches behind/);
});

const result = (writesPerSecond: number, delivery?: DeliveryReport): BenchResult => ({
  writes: writesPerSecond * 6,
  seconds: 6,
  writesPerSecond,
  errors: 0,
  conflicts: 0,
  latencyMs: { p50: 1, p90: 1, p99: 2, p999: 2, max: 2 },
  ...(delivery ? { delivery } : {}),
});

test('medians over rounds of the delivery figures, per subscriber count that had subscribers', () => {
  const d = (p50: number, p99: number, lag: number): DeliveryReport =>
    report({ afterAck: { count: 10, p50, p99, max: p99 }, afterPlacement: { count: 10, p50: p50 + 2, p99: p99 + 2, max: p99 + 2 }, slowBehindAtStop: lag });
  const runs: RoundRun[] = [
    { round: 1, system: 'subs=0', result: result(100) },
    { round: 1, system: 'subs=3', result: result(90, d(1, 10, 500)) },
    { round: 2, system: 'subs=3', result: result(95, d(3, 30, 700)) },
    { round: 2, system: 'subs=0', result: result(105) },
    { round: 3, system: 'subs=0', result: result(101) },
    { round: 3, system: 'subs=3', result: result(99, d(2, 20, 600)) },
  ];
  const none = report({ afterAck: { count: 0, p50: 0, p99: 0, max: 0 }, missing: 2, slowBehindAtStop: 900 });
  const short = [...runs.slice(0, 5), { round: 3, system: 'subs=3', result: result(99, none) }];
  assert.match(formatDeliveryMedians(short, ['subs=3'])[0]!, /\(per round p99 10\.0–30\.0; 2 of 3 rounds, in the others no write of the window arrived by the end\)/);
  assert.deepEqual(formatDeliveryMedians(runs, ['subs=0', 'subs=3']), [
    "subs=3 (medians of 3 rounds): delivered p50 2.00 ms p99 20.0 ms after the writer's ack (per round p99 10.0–30.0); " +
      'p50 4.00 ms p99 22.0 ms after the server placed the write; slow subscriber (50 ms/batch) 600 batches behind when the writers stopped; ' +
      'the node answered their last page reads 9.0 s after the writers stopped; ' +
      '0 fast subscriber run(s) short after the drain, 0 subscriber error(s)',
  ]);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from './clock.ts';
import { LEASE_DURATION_MS, LeaderElector, RENEW_DEADLINE_MS, RETRY_PERIOD_MS, type LeaseApi, type LeaseRecord } from './leader-election.ts';

/** An in-memory Lease with resourceVersion conflicts, and a switch to make the API fail. */
class FakeLeaseApi implements LeaseApi {
  record: LeaseRecord | null = null;
  rv = 0;
  failing = false;
  async get(): Promise<LeaseRecord | null> {
    if (this.failing) throw new Error('apiserver unavailable');
    return this.record === null ? null : { ...this.record };
  }
  async create(r: LeaseRecord): Promise<boolean> {
    if (this.failing) throw new Error('apiserver unavailable');
    if (this.record !== null) return false;
    this.record = { ...r, resourceVersion: String(++this.rv) };
    return true;
  }
  async update(r: LeaseRecord): Promise<boolean> {
    if (this.failing) throw new Error('apiserver unavailable');
    if (this.record === null || r.resourceVersion !== this.record.resourceVersion) return false;
    this.record = { ...r, resourceVersion: String(++this.rv) };
    return true;
  }
}

const settle = async () => { for (let i = 0; i < 10; i++) await new Promise((r) => setImmediate(r)); };

function elector(api: LeaseApi, clock: ManualClock, identity: string, log: string[]) {
  return new LeaderElector({
    api, clock, identity,
    onStartedLeading: () => log.push(`${identity}:start`),
    onStoppedLeading: () => log.push(`${identity}:stop`),
  });
}

async function advance(clock: ManualClock, ms: number): Promise<void> {
  for (let t = 0; t < ms; t += 500) {
    clock.advance(500);
    await settle();
  }
}

test('the first candidate creates the lease and leads; the second waits', async () => {
  const clock = new ManualClock(1_000_000);
  const api = new FakeLeaseApi();
  const log: string[] = [];
  const a = elector(api, clock, 'a', log);
  const b = elector(api, clock, 'b', log);
  a.start();
  await settle();
  b.start();
  await advance(clock, 20_000);
  assert.deepEqual(log, ['a:start']);
  assert.equal(api.record?.holder, 'a');
  assert.equal(b.state, 'candidate');
  await a.stop();
  await b.stop();
});

test('a candidate takes over only after the record stays unchanged for a full lease duration', async () => {
  const clock = new ManualClock(1_000_000);
  const api = new FakeLeaseApi();
  api.record = { holder: 'dead', leaseDurationSeconds: LEASE_DURATION_MS / 1000, acquireTime: 'x', renewTime: 'y', transitions: 2, resourceVersion: '1' };
  const log: string[] = [];
  const b = elector(api, clock, 'b', log);
  b.start();
  await advance(clock, LEASE_DURATION_MS - RETRY_PERIOD_MS);
  assert.deepEqual(log, []);
  await advance(clock, 2 * RETRY_PERIOD_MS);
  assert.deepEqual(log, ['b:start']);
  assert.equal(api.record?.transitions, 3);
  await b.stop();
});

test('a leader that cannot renew within the renew deadline stops leading', async () => {
  const clock = new ManualClock(1_000_000);
  const api = new FakeLeaseApi();
  const log: string[] = [];
  const a = elector(api, clock, 'a', log);
  a.start();
  await settle();
  api.failing = true;
  await advance(clock, RENEW_DEADLINE_MS - RETRY_PERIOD_MS);
  assert.equal(a.state, 'leader');
  await advance(clock, 2 * RETRY_PERIOD_MS);
  assert.equal(a.state, 'candidate');
  assert.deepEqual(log, ['a:start', 'a:stop']);
  assert.ok(RENEW_DEADLINE_MS < LEASE_DURATION_MS, 'it stops before anyone else may take over');
  await a.stop();
});

test('a released lease is taken by the next candidate without waiting out the TTL', async () => {
  const clock = new ManualClock(1_000_000);
  const api = new FakeLeaseApi();
  const log: string[] = [];
  const a = elector(api, clock, 'a', log);
  const b = elector(api, clock, 'b', log);
  a.start();
  await settle();
  b.start();
  await settle();
  await a.stop();
  assert.equal(api.record?.holder, '');
  await advance(clock, RETRY_PERIOD_MS);
  assert.deepEqual(log, ['a:start', 'a:stop', 'b:start']);
  await b.stop();
});

test('timings that break the election invariants are refused', () => {
  const api = new FakeLeaseApi();
  const clock = new ManualClock();
  const noop = () => {};
  assert.throws(() => new LeaderElector({ api, clock, identity: 'x', leaseDurationMs: 5_000, renewDeadlineMs: 5_000, onStartedLeading: noop, onStoppedLeading: noop }), RangeError);
  assert.throws(() => new LeaderElector({ api, clock, identity: 'x', retryPeriodMs: 9_000, onStartedLeading: noop, onStoppedLeading: noop }), RangeError);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from './clock.ts';
import { LEASE_DURATION_MS, LEASE_REQUEST_TIMEOUT_MS, LeaderElector, RENEW_DEADLINE_MS, RETRY_PERIOD_MS, type LeaseApi, type LeaseRecord } from './leader-election.ts';

/** An in-memory Lease with resourceVersion conflicts, and a switch to make the API fail. */
class FakeLeaseApi implements LeaseApi {
  record: LeaseRecord | null = null;
  rv = 0;
  failing = false;
  /** Calls never answer (a hung connection to the apiserver); counts calls made while hung. */
  hanging = false;
  hungCalls = 0;
  async get(): Promise<LeaseRecord | null> {
    if (this.hanging) {
      this.hungCalls += 1;
      return new Promise<never>(() => {});
    }
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
    if (this.hanging) {
      this.hungCalls += 1;
      return new Promise<never>(() => {});
    }
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

test('a leader whose renew call hangs stops leading at its renew deadline, before anyone may take over', async () => {
  const clock = new ManualClock(1_000_000);
  const api = new FakeLeaseApi();
  const log: string[] = [];
  const a = elector(api, clock, 'a', log);
  a.start();
  await settle();
  assert.equal(a.state, 'leader');
  api.hanging = true;
  await advance(clock, RENEW_DEADLINE_MS + RETRY_PERIOD_MS);
  assert.equal(a.state, 'candidate');
  assert.deepEqual(log, ['a:start', 'a:stop']);
  // A takeover needs the record unchanged for a full lease duration after a's last renew.
  assert.ok(RENEW_DEADLINE_MS + LEASE_REQUEST_TIMEOUT_MS <= LEASE_DURATION_MS);
  await a.stop();
});

test('a hung lease call is abandoned after the request timeout and the next attempt goes ahead', async () => {
  const clock = new ManualClock(1_000_000);
  const api = new FakeLeaseApi();
  const log: string[] = [];
  const errors: unknown[] = [];
  const b = new LeaderElector({
    api, clock, identity: 'b', onStartedLeading: () => log.push('b:start'), onStoppedLeading: () => log.push('b:stop'),
    onError: (err) => errors.push(err),
  });
  api.hanging = true;
  b.start();
  await advance(clock, 3 * (LEASE_REQUEST_TIMEOUT_MS + RETRY_PERIOD_MS));
  assert.ok(api.hungCalls >= 2, `retried after abandoning the hung call (${api.hungCalls} calls)`);
  assert.ok(errors.some((e) => e instanceof Error && /did not answer within/.test(e.message)));
  api.hanging = false;
  await advance(clock, LEASE_REQUEST_TIMEOUT_MS + RETRY_PERIOD_MS);
  assert.deepEqual(log, ['b:start']);
  await b.stop();
});

test('an attempt in flight when stop() releases the lease does not take it back', async () => {
  const clock = new ManualClock(1_000_000);
  const api = new FakeLeaseApi();
  const log: string[] = [];
  const a = elector(api, clock, 'a', log);
  a.start();
  await settle();
  // The next renewal's get is slow; stop() releases the lease meanwhile.
  let answer: () => void = () => {};
  const realGet = api.get.bind(api);
  api.get = () => new Promise((resolve) => { answer = () => resolve(realGet()); });
  clock.advance(RETRY_PERIOD_MS);
  await settle();
  await a.stop();
  assert.equal(api.record?.holder, '');
  answer();
  await settle();
  assert.equal(api.record?.holder, '', 'the released lease stays released');
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

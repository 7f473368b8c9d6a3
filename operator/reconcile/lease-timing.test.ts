import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { LeaseSpec } from '../api/types.ts';
import { handoverTtlMs, leaseFlags, leaseInvariantsHold, nextLeaseStep, safeTogether } from './lease-timing.ts';

const slow: LeaseSpec = { leaseTtlMs: 3000, renewDeadlineMs: 2000, renewIntervalMs: 500, maxClockDriftMs: 200 };
const fast: LeaseSpec = { leaseTtlMs: 1500, renewDeadlineMs: 1000, renewIntervalMs: 250, maxClockDriftMs: 200 };

test('a shorter TTL first shortens the renew deadline with the old TTL kept', () => {
  const step = nextLeaseStep(slow, fast, true);
  assert.equal(step.done, false);
  assert.deepEqual(step.effective, { leaseTtlMs: 3000, renewDeadlineMs: 1000, renewIntervalMs: 250, maxClockDriftMs: 200 });
  const last = nextLeaseStep(step.effective, fast, true);
  assert.deepEqual(last, { effective: fast, done: true });
});

test('a longer TTL is published before the renew deadline grows', () => {
  const step = nextLeaseStep(fast, slow, true);
  assert.deepEqual(step.effective, { leaseTtlMs: 3000, renewDeadlineMs: 1000, renewIntervalMs: 250, maxClockDriftMs: 200 });
  assert.deepEqual(nextLeaseStep(step.effective, slow, true), { effective: slow, done: true });
});

test('the next lease step waits while pods still run the previous step', () => {
  assert.deepEqual(nextLeaseStep(slow, fast, false), { effective: slow, done: false });
});

test('a fresh cluster starts directly on the target timings', () => {
  assert.deepEqual(nextLeaseStep(null, fast, false), { effective: fast, done: true });
});

test('a change that is safe next to the old timings goes in one step', () => {
  const shorterInterval = { ...fast, renewIntervalMs: 100 };
  assert.deepEqual(nextLeaseStep(fast, shorterInterval, true), { effective: shorterInterval, done: true });
});

test('every lease step is safe next to the timings before it, over many random changes', () => {
  // A deterministic LCG keeps the test reproducible; the seed is in the failure message.
  let seed = 12345;
  const rand = (lo: number, hi: number): number => {
    seed = (seed * 1103515245 + 12345) % 2 ** 31;
    return lo + (seed % (hi - lo + 1));
  };
  const randomLease = (drift: number): LeaseSpec => {
    const renewIntervalMs = rand(50, 2000);
    const renewDeadlineMs = renewIntervalMs * 2 + rand(0, 5000);
    return { renewIntervalMs, renewDeadlineMs, maxClockDriftMs: drift, leaseTtlMs: renewDeadlineMs + drift + rand(1, 5000) };
  };
  for (let i = 0; i < 2000; i++) {
    const drift = rand(0, 1000);
    const from = randomLease(drift);
    const to = randomLease(drift);
    let current = from;
    for (let steps = 0; ; steps++) {
      assert.ok(steps < 3, `more than two steps from ${JSON.stringify(from)} to ${JSON.stringify(to)}`);
      const next = nextLeaseStep(current, to, true);
      assert.ok(leaseInvariantsHold(next.effective), `step breaks invariants: ${JSON.stringify(next.effective)}`);
      assert.ok(safeTogether(current, next.effective), `unsafe step ${JSON.stringify(current)} -> ${JSON.stringify(next.effective)}`);
      current = next.effective;
      if (next.done) break;
    }
    assert.deepEqual(current, to);
  }
});

test('a planned handover waits drift plus one renew interval, never more than the TTL', () => {
  assert.equal(handoverTtlMs(fast), 450);
  assert.equal(handoverTtlMs({ leaseTtlMs: 600, renewDeadlineMs: 300, renewIntervalMs: 150, maxClockDriftMs: 500 }), 600);
});

test('lease flags carry every timing in milliseconds', () => {
  assert.deepEqual(leaseFlags(fast), ['--lease-ttl-ms', '1500', '--renew-deadline-ms', '1000', '--renew-interval-ms', '250', '--max-clock-drift-ms', '200']);
});

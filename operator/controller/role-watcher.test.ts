import { test } from 'node:test';
import assert from 'node:assert/strict';
import { ManualClock } from './clock.ts';
import { ROLE_POLL_CONCURRENCY, ROLE_POLL_INTERVAL_MS, ROLE_POLL_TIMEOUT_MS, RoleWatcher, type RoleTarget } from './role-watcher.ts';

test('the role watcher enqueues a cluster only when a reachable node changes role or epoch', async () => {
  const roles = new Map<string, { role: string; epoch: number } | Error>([
    ['u0', { role: 'leader', epoch: 3 }], ['u1', { role: 'follower', epoch: 3 }], ['v0', { role: 'leader', epoch: 1 }],
  ]);
  const targets: RoleTarget[] = [
    { cluster: 'ns/a', pod: 'a-0', url: 'u0' }, { cluster: 'ns/a', pod: 'a-1', url: 'u1' }, { cluster: 'ns/b', pod: 'b-0', url: 'v0' },
  ];
  const changed: string[] = [];
  const w = new RoleWatcher({
    clock: new ManualClock(), targets: () => targets,
    fetchRole: async (url) => {
      const r = roles.get(url)!;
      if (r instanceof Error) throw r;
      return r;
    },
    onChange: (c) => changed.push(c),
  });
  w.start();
  await w.pollOnce();
  assert.deepEqual(changed, [], 'the first answers are a baseline');
  await w.pollOnce();
  assert.deepEqual(changed, [], 'nothing moved');
  roles.set('u0', new Error('connect ECONNREFUSED'));
  await w.pollOnce();
  assert.deepEqual(changed, [], 'an unanswered node is no news');
  roles.set('u1', { role: 'leader', epoch: 4 });
  await w.pollOnce();
  assert.deepEqual(changed, ['ns/a']);
  roles.set('u0', { role: 'follower', epoch: 4 });
  roles.set('v0', { role: 'leader', epoch: 2 });
  await w.pollOnce();
  assert.deepEqual(changed, ['ns/a', 'ns/a', 'ns/b']);
  w.stop();
});

test('the role watcher keeps at most ROLE_POLL_CONCURRENCY calls in flight, passes its timeout, and never overlaps rounds', async () => {
  const clock = new ManualClock();
  let inFlight = 0;
  let maxInFlight = 0;
  let calls = 0;
  const timeouts = new Set<number>();
  const release: (() => void)[] = [];
  const targets = Array.from({ length: 3 * ROLE_POLL_CONCURRENCY }, (_, i) => ({ cluster: `ns/c${i}`, pod: `c${i}-0`, url: `u${i}` }));
  const w = new RoleWatcher({
    clock, targets: () => targets,
    fetchRole: async (_url, timeoutMs) => {
      calls += 1;
      timeouts.add(timeoutMs);
      inFlight += 1;
      maxInFlight = Math.max(maxInFlight, inFlight);
      await new Promise<void>((r) => release.push(r));
      inFlight -= 1;
      return { role: 'follower', epoch: 1 };
    },
    onChange: () => {},
  });
  w.start();
  clock.advance(ROLE_POLL_INTERVAL_MS);
  await new Promise((r) => setImmediate(r));
  assert.equal(inFlight, ROLE_POLL_CONCURRENCY);
  // A round still in flight: the clock moving on starts no second round.
  clock.advance(10 * ROLE_POLL_INTERVAL_MS);
  await new Promise((r) => setImmediate(r));
  assert.equal(calls, ROLE_POLL_CONCURRENCY);
  while (w.rounds === 0) {
    release.splice(0).forEach((r) => r());
    await new Promise((r) => setImmediate(r));
  }
  assert.equal(calls, targets.length);
  assert.equal(maxInFlight, ROLE_POLL_CONCURRENCY);
  assert.deepEqual([...timeouts], [ROLE_POLL_TIMEOUT_MS]);
  assert.ok(ROLE_POLL_TIMEOUT_MS < ROLE_POLL_INTERVAL_MS);
  w.stop();
  release.splice(0).forEach((r) => r());
});

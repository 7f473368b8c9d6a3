import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EVENT_MEMORY_MAX, EVENT_REPEAT_MS, EventDedup } from './event-dedup.ts';

test('an identical event passes once per window and again after it', () => {
  const d = new EventDedup();
  assert.equal(d.admit('uid/FollowerCaughtUp/lag 3', 0), true);
  assert.equal(d.admit('uid/FollowerCaughtUp/lag 3', EVENT_REPEAT_MS - 1), false);
  assert.equal(d.admit('uid/FollowerCaughtUp/lag 2', 1), true);
  assert.equal(d.admit('uid/FollowerCaughtUp/lag 3', EVENT_REPEAT_MS), true);
});

test('the memory of events is bounded and forgets the oldest first', () => {
  const d = new EventDedup();
  for (let i = 0; i <= EVENT_MEMORY_MAX; i++) d.admit(`k${i}`, 0);
  assert.equal(d.admit('k0', 1), true, 'the oldest was forgotten');
  assert.equal(d.admit(`k${EVENT_MEMORY_MAX}`, 1), false);
});

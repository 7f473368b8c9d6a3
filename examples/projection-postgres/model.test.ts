// The read model's fold over a feed that carries tombstones: a trim changes nothing, a delete marks
// the row deleted, a write after it (allowRecreate) starts fresh totals with its versions going on,
// and a batch that does not continue the aggregate is refused.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { ShardBatch } from '@celer/client';
import { fold, type Summary } from './model.ts';

const te = new TextEncoder();
const key = { org: 1n, type: 2n, id: 3n };
let seq = 0n;
function batch(op: ShardBatch['op'], fromVersion: bigint, amounts: number[] = [], minVersion = 1n): ShardBatch {
  seq++;
  return {
    key,
    op,
    minVersion,
    fromVersion,
    toVersion: fromVersion + BigInt(amounts.length) - 1n,
    position: { shard: 0, seq },
    clientId: 0n,
    serverTimestampMs: 0,
    events: amounts.map((a, i) => ({ version: fromVersion + BigInt(i), type: 'Deposited', data: te.encode(JSON.stringify({ amount: a })) })),
  };
}

test('fold: writes add up, a trim changes nothing, a delete marks the row, a recreating write starts fresh totals', () => {
  let s: Summary | undefined = fold(undefined, batch('write', 1n, [5, 7]));
  s = fold(s, batch('write', 3n, [1]));
  assert.deepEqual([s.version, s.eventCount, s.batchCount, s.amountTotal, s.deleted], [3n, 3n, 2n, 13n, false]);
  const trimmed = fold(s, batch('trim', 4n, [], 3n));
  assert.deepEqual(trimmed, s, 'a trim takes no version and changes no total');
  const deleted = fold(trimmed, batch('delete', 4n, [], 4n));
  assert.deepEqual([deleted.version, deleted.amountTotal, deleted.deleted], [3n, 13n, true]);
  const back = fold(deleted, batch('write', 4n, [100]));
  assert.deepEqual([back.version, back.eventCount, back.batchCount, back.amountTotal, back.deleted], [4n, 1n, 1n, 100n, false]);
  assert.throws(() => fold(back, batch('write', 6n, [1])), /do not continue the read model's version 4/);
  assert.throws(() => fold(undefined, batch('delete', 1n)), /does not have/);
});

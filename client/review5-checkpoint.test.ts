// review5: checkpoint strings (client/feed.ts decodeCheckpoint) that are not valid are 9100.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { BadRequestError } from './errors.ts';
import { decodeCheckpoint } from './feed.ts';

// subscribe({ org }, { from }) passes `from` to decodeCheckpoint; a caller that passes a position
// number (or a bigint, or null from JSON) where the checkpoint string goes gets a TypeError
// ("cp.slice is not a function") from the message builder instead of the BadRequestError (9100)
// the check right there was written to throw.
test('review5: a checkpoint that is not a string is a BadRequestError, not a TypeError', () => {
  for (const cp of [12, 12n, null, { seqs: [1] }]) {
    assert.throws(() => decodeCheckpoint(cp as unknown as string, 1), (e: unknown) => e instanceof BadRequestError && e.code === 9100, String(cp));
  }
  assert.throws(() => decodeCheckpoint('c1:1.2', 1), BadRequestError);
  assert.throws(() => decodeCheckpoint('c1:-1', 1), BadRequestError);
  assert.deepEqual(decodeCheckpoint('c1:0.7', 2), [0n, 7n]);
});

// The feed tail's bounds and cuts: the oldest records go past bytesMax (never the newest), a read
// from before what it holds is null (the caller reads the log), and dropAbove removes exactly the
// records after a seq, so a seq re-placed after a cut is never served from the old record.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { RecordAt } from '../storage/segment-set.ts';
import { FeedTail } from './feed-tail.ts';

const rec = (firstSeq: number, batchCount: number, length: number, tag = ''): RecordAt =>
  ({ bytes: new TextEncoder().encode(tag), header: { firstSeq, batchCount, length }, segment: 1, offset: firstSeq }) as unknown as RecordAt;
const seqs = (rs: RecordAt[] | null) => rs?.map((r) => r.header.firstSeq) ?? null;

test('feed tail: bounded by bytes, oldest first; reads from the record holding `from`, up to `to` and maxBytes', () => {
  const t = new FeedTail(300);
  for (let i = 0; i < 10; i++) t.placed(rec(1 + i * 2, 2, 100)); // seqs 1-2, 3-4, …, 19-20
  assert.equal(t.read(14, 20, 1 << 20), null, 'only the last three records (seqs 15..20) are held');
  assert.deepEqual(seqs(t.read(16, 20, 1 << 20)), [15, 17, 19], 'from inside a record: that record first');
  assert.deepEqual(seqs(t.read(15, 18, 1 << 20)), [15, 17], 'nothing after `to`');
  assert.deepEqual(seqs(t.read(15, 20, 150)), [15, 17], 'about maxBytes, at least one record');
  assert.equal(t.read(21, 30, 1 << 20), null, 'beyond the newest record');
  const big = new FeedTail(10);
  big.placed(rec(1, 1, 500));
  assert.deepEqual(seqs(big.read(1, 1, 1)), [1], 'the newest record stays even when alone over the bound');
});

test('feed tail: dropAbove cuts the records after a seq; what is placed after the cut is what is read', () => {
  const t = new FeedTail(1 << 20);
  t.placed(rec(1, 1, 10, 'a'));
  t.placed(rec(2, 2, 10, 'old'));
  t.placed(rec(4, 1, 10, 'old'));
  t.dropAbove(2); // the record 2-3 straddles the cut: it goes too
  assert.deepEqual(seqs(t.read(1, 10, 1 << 20)), [1]);
  t.placed(rec(2, 1, 10, 'new'));
  const got = t.read(2, 2, 1 << 20)!;
  assert.equal(new TextDecoder().decode(got[0]!.bytes), 'new');
});

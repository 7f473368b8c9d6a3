// review5: checkRecord is the gate for records from disk and from a replication peer: whatever it
// accepts, batchesOf must be able to walk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { initHashing, ZERO_HASH } from './checksum.ts';
import { BatchOp, batchesOf, checkRecord, encodeRecord } from './record.ts';

await initHashing();

// Format 3 added minVersion (u64). checkRecord checks it is not 0 but not that it fits 2^53, while
// batchesOf reads it with u64() that throws RangeError above 2^53: a record the leader (or a
// damaged-but-CRC-valid copy) sends with such a minVersion is placed by the replica
// (Shard.placeReplicated only calls checkRecord and keysOf), and every later cold load, read and
// feed page of that shard throws a RangeError (not a CorruptionError: the shard never reports 9200).
test('review5: checkRecord refuses a format-3 batch whose minVersion is above 2^53 (batchesOf would throw)', () => {
  const rec = encodeRecord({
    shard: 0,
    firstSeq: 1,
    epoch: 0,
    nodeId: new Uint8Array(16),
    vouchedEnd: 0,
    timestampMs: 0,
    prevHash: ZERO_HASH,
    clientId: 1n,
    batches: [{ key: new Uint8Array(48), fromVersion: 1, clientSeq: 0n, eventCount: 0, prevSeq: 0, eventsBytes: 0, writeEvents: () => {}, op: BatchOp.Trim, flags: 0, minVersion: 2 ** 60 }],
  });
  const c = checkRecord(rec, 0, rec.length);
  if (c.ok) {
    assert.doesNotThrow(() => [...batchesOf(rec, c.header)], 'checkRecord accepted a record batchesOf cannot walk');
  }
});

// Record formats: format 3 (batch op, flags, minVersion) is written; format 2 records, from data
// directories written before deletes and trims, still read as writes with nothing trimmed.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { crc32c, initHashing } from './checksum.ts';
import { BATCH_DELETED, BATCH_RECREATABLE, BatchOp, RECORD_FORMAT, RECORD_HEADER_BYTES, batchesOf, checkRecord, encodeRecord, type BatchInput } from './record.ts';

await initHashing();

const events = new Uint8Array([0, 1, 65, 0, 0, 0, 2, 7, 8]);
const key = (i: number) => Uint8Array.from({ length: 48 }, (_, j) => (j === 47 ? i : 0));
const write = (i: number, fromVersion: number): BatchInput => ({ key: key(i), fromVersion, clientSeq: 5n, eventCount: 1, prevSeq: 0, eventsBytes: events.length, writeEvents: (d, at) => d.set(events, at) });
const rec = (batches: BatchInput[]) =>
  encodeRecord({ shard: 0, firstSeq: 10, epoch: 1, nodeId: new Uint8Array(16), vouchedEnd: 0, timestampMs: 1, prevHash: new Uint8Array(32), clientId: 3n, batches });

/** The same record in format 2: batch headers without their last 16 bytes. */
function asFormat2(r: Uint8Array, batches: number): Uint8Array {
  const parts: Uint8Array[] = [r.subarray(0, RECORD_HEADER_BYTES)];
  let p = RECORD_HEADER_BYTES;
  for (let i = 0; i < batches; i++) {
    const n = new DataView(r.buffer, r.byteOffset).getUint32(p + 76);
    parts.push(r.subarray(p, p + 80), r.subarray(p + 96, p + 96 + n));
    p += 96 + n;
  }
  parts.push(new Uint8Array(4));
  const len = parts.reduce((a, b) => a + b.length, 0);
  const out = new Uint8Array(len);
  let at = 0;
  for (const x of parts) {
    out.set(x, at);
    at += x.length;
  }
  const v = new DataView(out.buffer);
  out[17] = 2;
  v.setUint32(4, len);
  v.setUint32(len - 4, len);
  v.setUint32(0, crc32c(out.subarray(4)));
  return out;
}

test('format 3 carries each batch op, flags and minVersion; a delete or trim has no events', () => {
  const r = rec([
    write(1, 4),
    { key: key(2), fromVersion: 8, clientSeq: 0n, eventCount: 0, prevSeq: 3, eventsBytes: 0, writeEvents: () => {}, op: BatchOp.Delete, flags: BATCH_DELETED | BATCH_RECREATABLE, minVersion: 8 },
    { key: key(3), fromVersion: 3, clientSeq: 0n, eventCount: 0, prevSeq: 0, eventsBytes: 0, writeEvents: () => {}, op: BatchOp.Trim, minVersion: 2 },
  ]);
  const c = checkRecord(r, 0, r.length);
  assert.ok(c.ok && !('incomplete' in c));
  assert.equal(c.header.format, RECORD_FORMAT);
  assert.deepEqual(
    [...batchesOf(r, c.header)].map((b) => [b.seq, b.op, b.flags, b.minVersion, b.fromVersion, b.toVersion, b.events.length]),
    [
      [10, BatchOp.Write, 0, 1, 4, 4, events.length],
      [11, BatchOp.Delete, 3, 8, 8, 7, 0],
      [12, BatchOp.Trim, 0, 2, 3, 2, 0],
    ],
  );
});

test('a format 2 record reads as writes with nothing trimmed or deleted', () => {
  const r2 = asFormat2(rec([write(1, 4), write(2, 1)]), 2);
  const c = checkRecord(r2, 0, r2.length);
  assert.ok(c.ok && !('incomplete' in c), 'why' in c ? c.why : 'incomplete');
  assert.equal(c.header.format, 2);
  const bs = [...batchesOf(r2, c.header)];
  assert.deepEqual(bs.map((b) => [b.op, b.flags, b.minVersion, b.fromVersion, b.clientSeq]), [[BatchOp.Write, 0, 1, 4, 5n], [BatchOp.Write, 0, 1, 1, 5n]]);
  assert.deepEqual([...bs[1]!.events], [...events]);
});

test('malformed format 3 batches are refused: unknown op, unknown flags, a write without events, minVersion 0', () => {
  const cases: [string, (v: DataView) => void][] = [
    ['unknown op', (v) => v.setUint8(RECORD_HEADER_BYTES + 80, 9)],
    ['unknown flags', (v) => v.setUint8(RECORD_HEADER_BYTES + 81, 0x80)],
    ['without events', (v) => v.setUint8(RECORD_HEADER_BYTES + 80, BatchOp.Delete)],
    ['minVersion 0', (v) => v.setBigUint64(RECORD_HEADER_BYTES + 88, 0n)],
  ];
  for (const [why, damage] of cases) {
    const r = rec([write(1, 1)]);
    const v = new DataView(r.buffer);
    damage(v);
    v.setUint32(0, crc32c(r.subarray(4)));
    const c = checkRecord(r, 0, r.length);
    assert.ok(!c.ok && 'why' in c && c.why.includes(why.split(' ').pop()!), `${why}: ${JSON.stringify(c)}`);
  }
  const newer = rec([write(1, 1)]);
  newer[17] = 4;
  new DataView(newer.buffer).setUint32(0, crc32c(newer.subarray(4)));
  const c = checkRecord(newer, 0, newer.length);
  assert.ok(!c.ok && 'why' in c && /newer Celer/.test(c.why));
});

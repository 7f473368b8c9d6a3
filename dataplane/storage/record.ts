// The log record: one committed write (one or more batches, one per aggregate) of one shard.
//
// Layout (big-endian, like the wire):
//   0   u32  CRC32C of bytes [4, length)
//   4   u32  length of the whole record, trailer included
//   8   u8   kind (1 = write)
//   9   u8   reserved (0)
//   10  u16  batch count
//   12  u32  vouched end: when this record was placed, every byte of its segment before this
//            offset was already durable. Recovery uses it to tell damage to committed data from a
//            torn tail (scan.ts): a valid record after a bad one that vouches past it proves the
//            bad one had been durable.
//   16  u64  seq of the first batch (batch i has seq + i): the record's position
//   24  u64  server timestamp, ms
//   32  32B  BLAKE3 of the previous record's bytes (the audit chain; zeros for the first)
//   64  u128 clientId
//   80  batches, each:
//         0   48B  key (org, type, id; 16 B each)
//         48  u64  fromVersion
//         56  u64  clientSeq (0 = no deduplication)
//         64  u32  event count
//         68  u32  previous batch of this aggregate: segment index (NO_LINK = none)
//         72  u32  ... its record's offset in that segment
//         76  u16  ... its index inside that record
//         78  u16  reserved (0)
//         80  u32  bytes of events
//         84  events, encoded exactly as on the wire (client/wire.ts writeEvent)
//   length-4  u32 length again (trailer), so the log can be walked backwards.
//
// The hash of a record covers all of its bytes, including the previous record's hash, so every
// record commits to the whole history of its shard before it.
import { Reader, Writer } from '../../client/wire.ts';
import { crc32c, HASH_BYTES } from './checksum.ts';

export const RECORD_KIND_WRITE = 1;
export const RECORD_HEADER_BYTES = 80;
export const BATCH_HEADER_BYTES = 84;
export const RECORD_TRAILER_BYTES = 4;
export const NO_LINK = 0xffff_ffff;

/** Where a batch lives: segment index, record offset in the segment, batch index in the record. */
export interface BatchLoc {
  segment: number;
  offset: number;
  index: number;
}

export interface BatchInput {
  /** The 48 key bytes (org | type | id, big-endian). */
  key: Uint8Array;
  fromVersion: number;
  clientSeq: bigint;
  eventCount: number;
  prev: BatchLoc | null;
  /** Encoded events (wire encoding). */
  events: Uint8Array;
}

export interface RecordInput {
  firstSeq: number;
  /** Offset in the record's segment below which everything was durable when it was placed. */
  vouchedEnd: number;
  timestampMs: number;
  prevHash: Uint8Array;
  clientId: bigint;
  batches: BatchInput[];
}

export function recordSize(batches: readonly { events: Uint8Array }[]): number {
  let n = RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES;
  for (const b of batches) n += BATCH_HEADER_BYTES + b.events.length;
  return n;
}

/** Encodes a record into `w` at its current position; returns the record's bytes (a view). */
export function encodeRecord(w: Writer, r: RecordInput): Uint8Array {
  const start = w.pos;
  const len = recordSize(r.batches);
  w.ensure(len);
  w.u32(0); // CRC, patched below
  w.u32(len);
  w.u8(RECORD_KIND_WRITE);
  w.u8(0);
  w.u16(r.batches.length);
  w.u32(r.vouchedEnd);
  w.u64n(r.firstSeq);
  w.u64n(r.timestampMs);
  w.bytes(r.prevHash);
  w.u128(r.clientId);
  for (const b of r.batches) {
    w.bytes(b.key);
    w.u64n(b.fromVersion);
    w.u64(b.clientSeq);
    w.u32(b.eventCount);
    w.u32(b.prev?.segment ?? NO_LINK);
    w.u32(b.prev?.offset ?? 0);
    w.u16(b.prev?.index ?? 0);
    w.u16(0);
    w.u32(b.events.length);
    w.bytes(b.events);
  }
  w.u32(len);
  const bytes = w.buf.subarray(start, start + len);
  w.view.setUint32(start, crc32c(bytes.subarray(4)));
  return bytes;
}

export interface RecordHeader {
  length: number;
  vouchedEnd: number;
  batchCount: number;
  firstSeq: number;
  timestampMs: number;
  prevHash: Uint8Array;
  clientId: bigint;
}

export type RecordCheck =
  | { ok: true; header: RecordHeader }
  | { ok: false; why: string };

/**
 * Checks the record that starts at `at` in `buf` (length, CRC, kind, trailer, batch layout).
 * `available` is how many bytes of `buf` from `at` are present; a record longer than that is
 * reported as `incomplete` so the caller can read more.
 */
export function checkRecord(buf: Uint8Array, at: number, available: number): RecordCheck | { ok: false; incomplete: number } {
  if (available < 8) return { ok: false, incomplete: 8 };
  const v = new DataView(buf.buffer, buf.byteOffset + at, available);
  const length = v.getUint32(4);
  if (length === 0 && v.getUint32(0) === 0) return { ok: false, why: 'end of data (zeros)' };
  if (length < RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES) return { ok: false, why: `record length ${length} is below the minimum` };
  if (length > available) return { ok: false, incomplete: length };
  const stored = v.getUint32(0);
  const actual = crc32c(buf.subarray(at + 4, at + length));
  if (stored !== actual) return { ok: false, why: `checksum mismatch (stored ${hex32(stored)}, computed ${hex32(actual)})` };
  if (buf[at + 8] !== RECORD_KIND_WRITE) return { ok: false, why: `unknown record kind ${buf[at + 8]}` };
  if (v.getUint32(length - 4) !== length) return { ok: false, why: 'trailer length does not match the header' };
  const r = new Reader(buf, at + 10, at + length - RECORD_TRAILER_BYTES);
  try {
    const batchCount = r.u16('batch count');
    const vouchedEnd = r.u32('vouched end');
    const firstSeq = r.u64n('seq');
    const timestampMs = r.u64n('timestamp');
    const prevHash = r.bytes(HASH_BYTES, 'previous hash');
    const clientId = r.u128('clientId');
    for (let i = 0; i < batchCount; i++) {
      r.pos += BATCH_HEADER_BYTES - 4;
      const n = r.u32('events length');
      r.bytes(n, 'events');
    }
    r.done('the record');
    return { ok: true, header: { length, vouchedEnd, batchCount, firstSeq, timestampMs, prevHash, clientId } };
  } catch (e) {
    return { ok: false, why: `malformed record: ${(e as Error).message}` };
  }
}

function hex32(n: number): string {
  return '0x' + n.toString(16).padStart(8, '0');
}

/** A batch inside a checked record (views into the record's bytes). */
export interface BatchView {
  index: number;
  seq: number;
  key: Uint8Array;
  fromVersion: number;
  toVersion: number;
  clientSeq: bigint;
  eventCount: number;
  prev: BatchLoc | null;
  events: Uint8Array;
}

/** Walks the batches of a record that checkRecord accepted. */
export function* batchesOf(rec: Uint8Array, header: RecordHeader): Generator<BatchView> {
  const r = new Reader(rec, RECORD_HEADER_BYTES, header.length - RECORD_TRAILER_BYTES);
  for (let i = 0; i < header.batchCount; i++) {
    const key = r.bytes(48, 'key');
    const fromVersion = r.u64n('fromVersion');
    const clientSeq = r.u64('clientSeq');
    const eventCount = r.u32('eventCount');
    const segment = r.u32('prev segment');
    const offset = r.u32('prev offset');
    const index = r.u16('prev index');
    r.u16('reserved');
    const events = r.bytes(r.u32('events length'), 'events');
    yield {
      index: i,
      seq: header.firstSeq + i,
      key,
      fromVersion,
      toVersion: fromVersion + eventCount - 1,
      clientSeq,
      eventCount,
      prev: segment === NO_LINK ? null : { segment, offset, index },
      events,
    };
  }
}

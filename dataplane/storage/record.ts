// The log record, format 3: one committed write (one or more batches, one per aggregate) of one
// shard. Format 2 (the same without the batch's op, flags and minVersion) is still read.
//
// Layout (big-endian):
//   0   u32  CRC32C of bytes [4, length)
//   4   u32  length of the whole record, trailer included (≤ RECORD_BYTES_MAX)
//   8   u64  vouched end (LOCAL: where this copy lies, not hashed): when this record was placed,
//            every byte of its segment before this offset was already durable. Recovery uses it
//            to tell damage to durable data from a torn tail (scan.ts).
//   --- the logical record: bytes [16, length-4), the only bytes the chain hash covers ---
//   16  u8   kind (1 = write)
//   17  u8   record format (3; 2 is read too)
//   18  u16  batch count
//   20  u32  shard
//   24  u64  seq of the first batch (batch i has seq + i): the record's position
//   32  u64  epoch of the writer (0 standalone)
//   40  u64  server timestamp, ms
//   48  16B  id of the node that wrote it (a UUID)
//   64  u128 clientId
//   80  32B  chain hash of the previous record (zeros for the first)
//   112 batches, each:
//         0   48B  key (org, type, id; 16 B each)
//         48  u64  fromVersion
//         56  u64  clientSeq (0 = no deduplication)
//         64  u32  event count
//         68  u64  seq of the previous batch of this aggregate (0 = none): a logical link, so a
//                  copy of the log on another node links the same way
//         76  u32  bytes of events
//         80  u8   op: 0 write, 1 delete (a tombstone), 2 trim          (format 3; format 2: 0)
//         81  u8   flags, the aggregate after this batch: 1 deleted, 2 may be recreated
//         82  6B   zeros
//         88  u64  minVersion, the aggregate's first readable version after this batch (format 2: 1)
//         96  events in the disk encoding (event-codec.ts); a delete or trim has none
//       (a delete or trim has fromVersion = the aggregate's version + 1 and no events: it takes a
//        seq but no version, so versions never rewind and the batch chain stays unbroken)
//   length-4  u32 length again (trailer), so the log can be walked backwards.
//
// The chain hash of a record is BLAKE3 over its logical bytes, which include the previous record's
// hash: every record commits to the whole history of its shard, and any node holding the same
// records computes the same hashes, wherever in its files they lie.
import { crc32c, blake3, HASH_BYTES } from './checksum.ts';

export const RECORD_KIND_WRITE = 1;
export const RECORD_FORMAT = 3;
/** The format before batch ops: read, never written. */
export const RECORD_FORMAT_V2 = 2;
export const RECORD_HEADER_BYTES = 112;
export const BATCH_HEADER_BYTES = 96;
const BATCH_HEADER_BYTES_V2 = 80;

/** What a batch does to its aggregate. */
export const BatchOp = { Write: 0, Delete: 1, Trim: 2 } as const;
export type BatchOpCode = (typeof BatchOp)[keyof typeof BatchOp];
/** Batch flags: the aggregate's state after the batch. */
export const BATCH_DELETED = 1;
export const BATCH_RECREATABLE = 2;
const BATCH_FLAGS_KNOWN = BATCH_DELETED | BATCH_RECREATABLE;
export const RECORD_TRAILER_BYTES = 4;
/** Start of the hashed (logical) part of a record. */
export const RECORD_LOGICAL_START = 16;
/** Largest record: 64 MiB. Lengths are u32 on disk; this bound keeps every offset arithmetic exact. */
export const RECORD_BYTES_MAX = 64 * 1024 * 1024;
export const NODE_ID_BYTES = 16;

export interface BatchInput {
  /** The 48 key bytes (org | type | id, big-endian). */
  key: Uint8Array;
  fromVersion: number;
  clientSeq: bigint;
  eventCount: number;
  /** Seq of the aggregate's previous batch, 0 when this is its first. */
  prevSeq: number;
  /** Length of the batch's events in the disk encoding. */
  eventsBytes: number;
  /** Writes exactly `eventsBytes` bytes of disk-encoded events at `dst[at..]`. */
  writeEvents(dst: Uint8Array, at: number): void;
  /** Default write. */
  op?: BatchOpCode;
  /** BATCH_DELETED | BATCH_RECREATABLE: the aggregate after this batch; default 0. */
  flags?: number;
  /** The aggregate's first readable version after this batch; default 1. */
  minVersion?: number;
}

export interface RecordInput {
  shard: number;
  firstSeq: number;
  epoch: number;
  nodeId: Uint8Array;
  vouchedEnd: number;
  timestampMs: number;
  prevHash: Uint8Array;
  clientId: bigint;
  batches: readonly BatchInput[];
}

export function recordSize(batches: readonly { eventsBytes: number }[]): number {
  let n = RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES;
  for (const b of batches) n += BATCH_HEADER_BYTES + b.eventsBytes;
  return n;
}

function setU128(v: DataView, at: number, x: bigint): void {
  v.setBigUint64(at, x >> 64n);
  v.setBigUint64(at + 8, x & 0xffff_ffff_ffff_ffffn);
}

/** Encodes a record into a new exact-size buffer. */
export function encodeRecord(r: RecordInput): Uint8Array {
  const len = recordSize(r.batches);
  if (len > RECORD_BYTES_MAX) throw new RangeError(`a record of ${len} bytes exceeds the ${RECORD_BYTES_MAX}-byte maximum`);
  const buf = new Uint8Array(len);
  const v = new DataView(buf.buffer);
  v.setUint32(4, len);
  v.setBigUint64(8, BigInt(r.vouchedEnd));
  buf[16] = RECORD_KIND_WRITE;
  buf[17] = RECORD_FORMAT;
  v.setUint16(18, r.batches.length);
  v.setUint32(20, r.shard);
  v.setBigUint64(24, BigInt(r.firstSeq));
  v.setBigUint64(32, BigInt(r.epoch));
  v.setBigUint64(40, BigInt(r.timestampMs));
  buf.set(r.nodeId.subarray(0, NODE_ID_BYTES), 48);
  setU128(v, 64, r.clientId);
  buf.set(r.prevHash, 80);
  let at = RECORD_HEADER_BYTES;
  for (const b of r.batches) {
    buf.set(b.key, at);
    v.setBigUint64(at + 48, BigInt(b.fromVersion));
    v.setBigUint64(at + 56, b.clientSeq);
    v.setUint32(at + 64, b.eventCount);
    v.setBigUint64(at + 68, BigInt(b.prevSeq));
    v.setUint32(at + 76, b.eventsBytes);
    buf[at + 80] = b.op ?? BatchOp.Write;
    buf[at + 81] = b.flags ?? 0;
    v.setBigUint64(at + 88, BigInt(b.minVersion ?? 1));
    b.writeEvents(buf, at + BATCH_HEADER_BYTES);
    at += BATCH_HEADER_BYTES + b.eventsBytes;
  }
  v.setUint32(len - 4, len);
  v.setUint32(0, crc32c(buf.subarray(4)));
  return buf;
}

/** The chain hash of a checked record: BLAKE3 of its logical bytes (never of where it lies). */
export function recordHash(rec: Uint8Array, length: number): Uint8Array {
  return blake3(rec.subarray(RECORD_LOGICAL_START, length - RECORD_TRAILER_BYTES));
}

/** Rewrites the local part of a record (its vouched end) and its CRC, in place. The hash is unchanged. */
export function relocateRecord(rec: Uint8Array, vouchedEnd: number): void {
  const v = new DataView(rec.buffer, rec.byteOffset, rec.byteLength);
  v.setBigUint64(8, BigInt(vouchedEnd));
  v.setUint32(0, crc32c(rec.subarray(4, v.getUint32(4))));
}

export interface RecordHeader {
  length: number;
  /** RECORD_FORMAT or RECORD_FORMAT_V2: the batch header layout. */
  format: number;
  vouchedEnd: number;
  batchCount: number;
  shard: number;
  firstSeq: number;
  epoch: number;
  timestampMs: number;
  nodeId: Uint8Array;
  prevHash: Uint8Array;
  clientId: bigint;
}

export type RecordCheck =
  | { ok: true; header: RecordHeader }
  | { ok: false; why: string };

function u64(v: DataView, at: number): number {
  const x = v.getBigUint64(at);
  if (x > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError(`a 64-bit field at ${at} holds ${x}, above 2^53`);
  return Number(x);
}

/**
 * Checks the record that starts at `at` in `buf` (length, CRC, kind, format, trailer, batch
 * layout). `available` is how many bytes of `buf` from `at` are present; a record longer than that
 * is reported as `incomplete` so the caller can read more.
 */
export function checkRecord(buf: Uint8Array, at: number, available: number): RecordCheck | { ok: false; incomplete: number } {
  if (available < 8) return { ok: false, incomplete: 8 };
  const v = new DataView(buf.buffer, buf.byteOffset + at, available);
  const length = v.getUint32(4);
  if (length === 0 && v.getUint32(0) === 0) return { ok: false, why: 'end of data (zeros)' };
  if (length < RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES) return { ok: false, why: `record length ${length} is below the minimum` };
  if (length > RECORD_BYTES_MAX) return { ok: false, why: `record length ${length} is above the maximum ${RECORD_BYTES_MAX}` };
  if (length > available) return { ok: false, incomplete: length };
  const stored = v.getUint32(0);
  const actual = crc32c(buf.subarray(at + 4, at + length));
  if (stored !== actual) return { ok: false, why: `checksum mismatch (stored ${hex32(stored)}, computed ${hex32(actual)})` };
  if (buf[at + 16] !== RECORD_KIND_WRITE) return { ok: false, why: `unknown record kind ${buf[at + 16]}` };
  const format = buf[at + 17]!;
  if (format !== RECORD_FORMAT && format !== RECORD_FORMAT_V2) {
    return { ok: false, why: `record format ${format}; this version reads formats ${RECORD_FORMAT_V2} and ${RECORD_FORMAT}${format > RECORD_FORMAT ? ' (written by a newer Celer: upgrade this node)' : ''}` };
  }
  const bh = format === RECORD_FORMAT ? BATCH_HEADER_BYTES : BATCH_HEADER_BYTES_V2;
  if (v.getUint32(length - 4) !== length) return { ok: false, why: 'trailer length does not match the header' };
  try {
    const batchCount = v.getUint16(18);
    let p = RECORD_HEADER_BYTES;
    for (let i = 0; i < batchCount; i++) {
      if (p + bh > length - RECORD_TRAILER_BYTES) return { ok: false, why: `malformed record: batch ${i} header runs past the record` };
      if (format === RECORD_FORMAT) {
        const op = v.getUint8(p + 80);
        const flags = v.getUint8(p + 81);
        if (op > BatchOp.Trim) return { ok: false, why: `malformed record: batch ${i} has unknown op ${op}` };
        if ((flags & ~BATCH_FLAGS_KNOWN) !== 0) return { ok: false, why: `malformed record: batch ${i} has unknown flags 0x${flags.toString(16)}` };
        if ((op === BatchOp.Write) !== (v.getUint32(p + 64) > 0)) return { ok: false, why: `malformed record: batch ${i} is a ${op === BatchOp.Write ? 'write without events' : 'delete or trim with events'}` };
        if (v.getBigUint64(p + 88) === 0n) return { ok: false, why: `malformed record: batch ${i} has minVersion 0` };
        u64(v, p + 88);
      }
      // The fields batchesOf reads as numbers (it throws above 2^53): refused here instead.
      u64(v, p + 48);
      u64(v, p + 68);
      p += bh + v.getUint32(p + 76);
    }
    if (p !== length - RECORD_TRAILER_BYTES) return { ok: false, why: `malformed record: batches end at ${p}, the record at ${length - RECORD_TRAILER_BYTES}` };
    return {
      ok: true,
      header: {
        length,
        format,
        vouchedEnd: u64(v, 8),
        batchCount,
        shard: v.getUint32(20),
        firstSeq: u64(v, 24),
        epoch: u64(v, 32),
        timestampMs: u64(v, 40),
        nodeId: buf.subarray(at + 48, at + 64),
        prevHash: buf.subarray(at + 80, at + 80 + HASH_BYTES),
        clientId: (v.getBigUint64(64) << 64n) | v.getBigUint64(72),
      },
    };
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
  /** Seq of the aggregate's previous batch, 0 = none. */
  prevSeq: number;
  /** Disk-encoded events. */
  events: Uint8Array;
  op: BatchOpCode;
  /** BATCH_DELETED | BATCH_RECREATABLE: the aggregate after this batch. */
  flags: number;
  /** The aggregate's first readable version after this batch. */
  minVersion: number;
}

/** Walks the batches of a record that checkRecord accepted. */
export function* batchesOf(rec: Uint8Array, header: RecordHeader): Generator<BatchView> {
  const v = new DataView(rec.buffer, rec.byteOffset, header.length);
  const v3 = header.format === RECORD_FORMAT;
  const bh = v3 ? BATCH_HEADER_BYTES : BATCH_HEADER_BYTES_V2;
  let p = RECORD_HEADER_BYTES;
  for (let i = 0; i < header.batchCount; i++) {
    const fromVersion = u64(v, p + 48);
    const eventCount = v.getUint32(p + 64);
    const n = v.getUint32(p + 76);
    yield {
      index: i,
      seq: header.firstSeq + i,
      key: rec.subarray(p, p + 48),
      fromVersion,
      toVersion: fromVersion + eventCount - 1,
      clientSeq: v.getBigUint64(p + 56),
      eventCount,
      prevSeq: u64(v, p + 68),
      events: rec.subarray(p + bh, p + bh + n),
      op: v3 ? (v.getUint8(p + 80) as BatchOpCode) : BatchOp.Write,
      flags: v3 ? v.getUint8(p + 81) : 0,
      minVersion: v3 ? u64(v, p + 88) : 1,
    };
    p += bh + n;
  }
}

/** The keys of a checked record's batches (views). */
export function keysOf(rec: Uint8Array, header: RecordHeader): Uint8Array[] {
  const v = new DataView(rec.buffer, rec.byteOffset, header.length);
  const bh = header.format === RECORD_FORMAT ? BATCH_HEADER_BYTES : BATCH_HEADER_BYTES_V2;
  const out: Uint8Array[] = [];
  let p = RECORD_HEADER_BYTES;
  for (let i = 0; i < header.batchCount; i++) {
    out.push(rec.subarray(p, p + 48));
    p += bh + v.getUint32(p + 76);
  }
  return out;
}

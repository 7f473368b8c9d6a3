// Segment files, format 2: one shard's log is a sequence of preallocated files `NNNNNNNNNN.seg`
// (segment index, from 1). The first 4 KiB block is the header, the last 4 KiB block the footer
// (written when the segment is sealed); records are packed back to back between them. A record
// never spans two segments. A segment's size is its own (stored in its header): changing
// --segment-mb affects new segments only.
//
// A new segment is made under a temporary name (`NNNNNNNNNN.seg.new`, zero-filled ahead of time so
// a full disk is found before any write needs it), gets its header, and only then is renamed into
// place (and the directory synced). So a `.seg` file always has a header: one whose header block is
// all zeros has been damaged, and the shard is refused.
//
// Header block (big-endian):
//   0   u32  CRC32C of bytes [4, HEADER_USED_BYTES)
//   4   u32  magic "CELR"
//   8   u16  format version (2)
//   10  u16  routing (0 org, 1 type, 2 id)
//   12  u32  shard
//   16  u32  number of shards
//   20  u32  segment index
//   24  u64  seq of the first record in this segment
//   32  32B  chain hash of the record before this segment (the link across files)
//   64  u64  segment size in bytes (the file's size)
//   72  u64  durable end: every record before this offset is durable. Written with the next group
//            commit (it lags one group) so a crash during an fdatasync never leaves it pointing at
//            data that did not reach the disk.
//   80  u64  seq of the last batch before the durable end
//   88  u64  ack barrier: the highest seq acknowledged to a client when this header was written
//            (records at or below it were acknowledged and must never be discarded)
//   96  u64  truncated at: non-zero while a truncateAfter is in progress — nothing at or after this
//            offset, and no later segment, belongs to the log
//
// Footer block (big-endian), at sizeBytes - 4096, written once when the segment is sealed; it
// vouches for the segment's content so startup need not re-read it:
//   0   u32  CRC32C of bytes [4, FOOTER_USED_BYTES)
//   4   u32  magic "CEND"
//   8   u16  format version (2)
//   12  u32  segment index
//   16  u64  seq of the first record
//   24  u64  seq of the last batch (first - 1 when empty)
//   32  32B  chain hash of the last record (the next segment's header must link to it)
//   64  u64  end of the records
//   72  u32  record count
//   76  u32  CRC32C of the sidecar index's summary (segment-index.ts)
//   80  u32  byte length of that summary
import { join } from 'node:path';
import { crc32c, HASH_BYTES } from './checksum.ts';
import { SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES } from '../constants.ts';

export const SEGMENT_MAGIC = 0x43454c52; // "CELR"
export const FOOTER_MAGIC = 0x43454e44; // "CEND"
export const SEGMENT_FORMAT = 2;
export const SEGMENT_FOOTER_BYTES = 4096;
const HEADER_USED_BYTES = 104;
const FOOTER_USED_BYTES = 84;

export const ROUTING_CODES = { org: 0, type: 1, id: 2 } as const;
export type Routing = keyof typeof ROUTING_CODES;

export interface SegmentHeader {
  routing: number;
  shard: number;
  numShards: number;
  index: number;
  firstSeq: number;
  prevHash: Uint8Array;
  sizeBytes: number;
  durableEnd: number;
  durableSeq: number;
  ackedSeq: number;
  truncatedAt: number;
}

export interface SegmentFooter {
  index: number;
  firstSeq: number;
  lastSeq: number;
  lastHash: Uint8Array;
  recordsEnd: number;
  records: number;
  summaryCrc: number;
  summaryBytes: number;
}

export function segmentFileName(index: number): string {
  return String(index).padStart(10, '0') + '.seg';
}

export function segmentPath(dir: string, index: number): string {
  return join(dir, segmentFileName(index));
}

/** Where a segment is built before it is renamed into place. */
export function newSegmentPath(dir: string, index: number): string {
  return segmentPath(dir, index) + '.new';
}

export function parseSegmentFileName(name: string): number | null {
  const m = /^(\d{10})\.seg$/.exec(name);
  return m ? Number(m[1]) : null;
}

/** Offset where records end at the latest: the footer block. */
export function dataLimit(sizeBytes: number): number {
  return sizeBytes - SEGMENT_FOOTER_BYTES;
}

function safe(v: DataView, at: number): number {
  const x = v.getBigUint64(at);
  return x > BigInt(Number.MAX_SAFE_INTEGER) ? Number.NaN : Number(x);
}

/** Writes the header into `block` (a SEGMENT_HEADER_BYTES buffer; the rest stays zero). */
export function encodeSegmentHeader(block: Uint8Array, h: SegmentHeader): void {
  block.fill(0, 0, HEADER_USED_BYTES);
  const v = new DataView(block.buffer, block.byteOffset, SEGMENT_HEADER_BYTES);
  v.setUint32(4, SEGMENT_MAGIC);
  v.setUint16(8, SEGMENT_FORMAT);
  v.setUint16(10, h.routing);
  v.setUint32(12, h.shard);
  v.setUint32(16, h.numShards);
  v.setUint32(20, h.index);
  v.setBigUint64(24, BigInt(h.firstSeq));
  block.set(h.prevHash, 32);
  v.setBigUint64(64, BigInt(h.sizeBytes));
  v.setBigUint64(72, BigInt(h.durableEnd));
  v.setBigUint64(80, BigInt(h.durableSeq));
  v.setBigUint64(88, BigInt(h.ackedSeq));
  v.setBigUint64(96, BigInt(h.truncatedAt));
  v.setUint32(0, crc32c(block.subarray(4, HEADER_USED_BYTES)));
}

export type HeaderParse = { ok: true; header: SegmentHeader } | { ok: false; zero: boolean; oldFormat: boolean; why: string };

export function decodeSegmentHeader(block: Uint8Array): HeaderParse {
  if (block.length < HEADER_USED_BYTES) return { ok: false, zero: false, oldFormat: false, why: 'header block is short' };
  if (block.subarray(0, HEADER_USED_BYTES).every((b) => b === 0)) return { ok: false, zero: true, oldFormat: false, why: 'header block is all zeros' };
  const v = new DataView(block.buffer, block.byteOffset, HEADER_USED_BYTES);
  if (v.getUint32(4) !== SEGMENT_MAGIC) return { ok: false, zero: false, oldFormat: false, why: 'not a Celer segment (bad magic)' };
  const format = v.getUint16(8);
  if (format !== SEGMENT_FORMAT) {
    return { ok: false, zero: false, oldFormat: format < SEGMENT_FORMAT, why: `segment format ${format}; this version of Celer reads format ${SEGMENT_FORMAT}` };
  }
  if (v.getUint32(0) !== crc32c(block.subarray(4, HEADER_USED_BYTES))) return { ok: false, zero: false, oldFormat: false, why: 'header checksum mismatch' };
  const h: SegmentHeader = {
    routing: v.getUint16(10),
    shard: v.getUint32(12),
    numShards: v.getUint32(16),
    index: v.getUint32(20),
    firstSeq: safe(v, 24),
    prevHash: block.slice(32, 32 + HASH_BYTES),
    sizeBytes: safe(v, 64),
    durableEnd: safe(v, 72),
    durableSeq: safe(v, 80),
    ackedSeq: safe(v, 88),
    truncatedAt: safe(v, 96),
  };
  for (const [k, x] of Object.entries(h)) if (typeof x === 'number' && !Number.isSafeInteger(x)) return { ok: false, zero: false, oldFormat: false, why: `header field ${k} is out of range` };
  if (h.sizeBytes < SEGMENT_HEADER_BYTES + SEGMENT_FOOTER_BYTES || h.sizeBytes > SEGMENT_BYTES_MAX || h.durableEnd < SEGMENT_HEADER_BYTES || h.durableEnd > dataLimit(h.sizeBytes)) {
    return { ok: false, zero: false, oldFormat: false, why: `header offsets are inconsistent (size ${h.sizeBytes}, durable end ${h.durableEnd})` };
  }
  return { ok: true, header: h };
}

export function encodeSegmentFooter(block: Uint8Array, f: SegmentFooter): void {
  block.fill(0, 0, FOOTER_USED_BYTES);
  const v = new DataView(block.buffer, block.byteOffset, SEGMENT_FOOTER_BYTES);
  v.setUint32(4, FOOTER_MAGIC);
  v.setUint16(8, SEGMENT_FORMAT);
  v.setUint32(12, f.index);
  v.setBigUint64(16, BigInt(f.firstSeq));
  v.setBigUint64(24, BigInt(f.lastSeq));
  block.set(f.lastHash, 32);
  v.setBigUint64(64, BigInt(f.recordsEnd));
  v.setUint32(72, f.records);
  v.setUint32(76, f.summaryCrc);
  v.setUint32(80, f.summaryBytes);
  v.setUint32(0, crc32c(block.subarray(4, FOOTER_USED_BYTES)));
}

export type FooterParse = { ok: true; footer: SegmentFooter } | { ok: false; zero: boolean; why: string };

export function decodeSegmentFooter(block: Uint8Array): FooterParse {
  if (block.length < FOOTER_USED_BYTES) return { ok: false, zero: false, why: 'footer block is short' };
  if (block.subarray(0, FOOTER_USED_BYTES).every((b) => b === 0)) return { ok: false, zero: true, why: 'no footer (the segment was not sealed)' };
  const v = new DataView(block.buffer, block.byteOffset, FOOTER_USED_BYTES);
  if (v.getUint32(0) !== crc32c(block.subarray(4, FOOTER_USED_BYTES))) return { ok: false, zero: false, why: 'footer checksum mismatch' };
  if (v.getUint32(4) !== FOOTER_MAGIC || v.getUint16(8) !== SEGMENT_FORMAT) return { ok: false, zero: false, why: 'not a format-2 segment footer' };
  const f: SegmentFooter = {
    index: v.getUint32(12),
    firstSeq: safe(v, 16),
    lastSeq: safe(v, 24),
    lastHash: block.slice(32, 32 + HASH_BYTES),
    recordsEnd: safe(v, 64),
    records: v.getUint32(72),
    summaryCrc: v.getUint32(76),
    summaryBytes: v.getUint32(80),
  };
  if (!Number.isSafeInteger(f.firstSeq) || !Number.isSafeInteger(f.lastSeq) || !Number.isSafeInteger(f.recordsEnd)) return { ok: false, zero: false, why: 'footer fields are out of range' };
  return { ok: true, footer: f };
}

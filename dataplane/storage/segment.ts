// Segment files: one shard's log is a sequence of preallocated, fixed-size files
// `NNNNNNNNNN.seg` (segment index, from 1). Each starts with a 4 KiB header block; records are
// packed back to back after it. A record never spans two segments.
//
// Header block (big-endian):
//   0   u32  CRC32C of bytes [4, HEADER_USED_BYTES)
//   4   u32  magic "CELR"
//   8   u16  format version
//   10  u16  routing (0 org, 1 type, 2 id)
//   12  u32  shard
//   16  u32  number of shards
//   20  u32  segment index
//   24  u64  seq of the first record in this segment
//   32  32B  hash of the record before this segment (chain link across files)
//   64  u64  committed end: records before this offset are known durable. It lags one group
//            commit behind (it is written together with the next group) so that a crash in the
//            middle of an fdatasync can never make it point past data that did not reach disk.
//   72  u64  seq of the last record before committed end (0 = none)
//   80  u32  segment size in bytes
import { join } from 'node:path';
import { crc32c, HASH_BYTES } from './checksum.ts';
import { SEGMENT_HEADER_BYTES } from '../constants.ts';

export const SEGMENT_MAGIC = 0x43454c52; // "CELR"
export const SEGMENT_FORMAT = 1;
const HEADER_USED_BYTES = 84;

export const ROUTING_CODES = { org: 0, type: 1, id: 2 } as const;
export type Routing = keyof typeof ROUTING_CODES;

export interface SegmentHeader {
  routing: number;
  shard: number;
  numShards: number;
  index: number;
  firstSeq: number;
  prevHash: Uint8Array;
  committedEnd: number;
  committedSeq: number;
  sizeBytes: number;
}

export function segmentFileName(index: number): string {
  return String(index).padStart(10, '0') + '.seg';
}

export function segmentPath(dir: string, index: number): string {
  return join(dir, segmentFileName(index));
}

export function parseSegmentFileName(name: string): number | null {
  const m = /^(\d{10})\.seg$/.exec(name);
  return m ? Number(m[1]) : null;
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
  v.setBigUint64(64, BigInt(h.committedEnd));
  v.setBigUint64(72, BigInt(h.committedSeq));
  v.setUint32(80, h.sizeBytes);
  v.setUint32(0, crc32c(block.subarray(4, HEADER_USED_BYTES)));
}

export type HeaderParse = { ok: true; header: SegmentHeader } | { ok: false; zero: boolean; why: string };

export function decodeSegmentHeader(block: Uint8Array): HeaderParse {
  if (block.length < HEADER_USED_BYTES) return { ok: false, zero: false, why: 'header block is short' };
  if (block.subarray(0, HEADER_USED_BYTES).every((b) => b === 0)) return { ok: false, zero: true, why: 'header block is all zeros' };
  const v = new DataView(block.buffer, block.byteOffset, HEADER_USED_BYTES);
  if (v.getUint32(0) !== crc32c(block.subarray(4, HEADER_USED_BYTES))) return { ok: false, zero: false, why: 'header checksum mismatch' };
  if (v.getUint32(4) !== SEGMENT_MAGIC) return { ok: false, zero: false, why: 'not a Celer segment (bad magic)' };
  if (v.getUint16(8) !== SEGMENT_FORMAT) return { ok: false, zero: false, why: `unsupported segment format ${v.getUint16(8)}` };
  return {
    ok: true,
    header: {
      routing: v.getUint16(10),
      shard: v.getUint32(12),
      numShards: v.getUint32(16),
      index: v.getUint32(20),
      firstSeq: Number(v.getBigUint64(24)),
      prevHash: block.slice(32, 32 + HASH_BYTES),
      committedEnd: Number(v.getBigUint64(64)),
      committedSeq: Number(v.getBigUint64(72)),
      sizeBytes: v.getUint32(80),
    },
  };
}

// The forward scan of one segment, shared by crash recovery (at shard open) and `celer verify`:
// every record's CRC32C, its seq (gapless), and its link in the BLAKE3 chain.
//
// Where the scan stops decides what the stop means:
//   - before the header's committed end: committed data is damaged → corruption (refuse);
//   - at or after it: the tail of a group commit that was cut short → torn tail (discard).
import { GROUP_COMMIT_BYTES_MAX, SCAN_CHUNK_BYTES, SEGMENT_HEADER_BYTES } from '../constants.ts';
import { blake3, equalBytes, hex } from './checksum.ts';
import { checkRecord, RECORD_HEADER_BYTES, RECORD_TRAILER_BYTES, type RecordHeader } from './record.ts';
import type { SegmentHeader } from './segment.ts';

/** Anything that can read a byte range of a file. */
export interface ByteSource {
  read(offset: number, length: number): Promise<Uint8Array>;
}

export interface ScanStart {
  seq: number;
  prevHash: Uint8Array;
}

export interface ScanResult {
  /** Offset just past the last good record. */
  end: number;
  /** Seq the next record would get. */
  nextSeq: number;
  /** Hash of the last good record (or the start hash when there is none). */
  tipHash: Uint8Array;
  records: number;
  /** Why the scan stopped before the end of the file, with the offset, if it did. */
  stop: { offset: number; why: string } | null;
  /** True when the stop lies inside the committed region: the data is damaged. */
  corrupt: boolean;
}

export type RecordVisitor = (rec: Uint8Array, header: RecordHeader, offset: number) => void;

/**
 * Scans one segment. A sealed segment (`sealed`) is read only up to its header's committed end,
 * which sealing wrote exactly: bytes after it (say, a torn tail that rotation sealed over) are not
 * part of the log.
 */
export async function scanSegment(
  src: ByteSource,
  seg: SegmentHeader,
  start: ScanStart,
  visit: RecordVisitor,
  sealed = false,
): Promise<ScanResult> {
  const limit = sealed ? Math.min(seg.committedEnd, seg.sizeBytes) : seg.sizeBytes;
  let offset = SEGMENT_HEADER_BYTES;
  let seq = start.seq;
  let tip = start.prevHash;
  let records = 0;
  let chunk: Uint8Array = new Uint8Array(0);
  let chunkAt = offset;
  const stopAt = async (why: string): Promise<ScanResult> => {
    let corrupt = offset < seg.committedEnd;
    if (!corrupt) {
      const v = await vouchAfter(src, offset, limit);
      if (v !== null && v.vouchedEnd > offset) {
        corrupt = true;
        why += `; the valid record at offset ${v.at} was written after this one was durable (it vouches for offsets below ${v.vouchedEnd})`;
      }
    }
    return { end: offset, nextSeq: seq, tipHash: tip, records, stop: { offset, why }, corrupt };
  };
  while (offset < limit) {
    let rel = offset - chunkAt;
    if (rel + 8 > chunk.length) {
      chunk = await src.read(offset, Math.min(SCAN_CHUNK_BYTES, limit - offset));
      chunkAt = offset;
      rel = 0;
      if (chunk.length < 8) break;
    }
    let c = checkRecord(chunk, rel, chunk.length - rel);
    if (!c.ok && 'incomplete' in c) {
      if (offset + c.incomplete > limit) return stopAt(`record length ${c.incomplete} runs past the end of the segment`);
      chunk = await src.read(offset, Math.max(c.incomplete, Math.min(SCAN_CHUNK_BYTES, limit - offset)));
      chunkAt = offset;
      rel = 0;
      c = checkRecord(chunk, 0, chunk.length);
      if (!c.ok && 'incomplete' in c) return stopAt('record is cut off by the end of the file');
    }
    if (!c.ok) {
      if ('why' in c && c.why === 'end of data (zeros)') {
        return { end: offset, nextSeq: seq, tipHash: tip, records, stop: null, corrupt: offset < seg.committedEnd };
      }
      return stopAt((c as { why: string }).why);
    }
    const h = c.header;
    if (h.firstSeq !== seq) return stopAt(`record has seq ${h.firstSeq}, expected ${seq}`);
    if (!equalBytes(h.prevHash, tip)) return stopAt(`chain broken: record links to ${hex(h.prevHash).slice(0, 16)}…, previous record hashes to ${hex(tip).slice(0, 16)}…`);
    const rec = chunk.subarray(rel, rel + h.length);
    visit(rec, h, offset);
    tip = blake3(rec);
    seq += h.batchCount;
    offset += h.length;
    records++;
  }
  return { end: offset, nextSeq: seq, tipHash: tip, records, stop: null, corrupt: offset < seg.committedEnd };
}

/** How far past a stop the scan looks for a vouching record: one group commit and a block. */
const VOUCH_SEARCH_BYTES = GROUP_COMMIT_BYTES_MAX + 4096;

/**
 * After a bad record at `at` whose length field still holds together, walks the records after it
 * (CRC checks only) and returns the highest vouched end among them. Damage that left the length
 * intact (a flipped bit in a payload) is then told apart from a torn group commit: a record placed
 * after `at` was durable vouches for it; a torn group's records cannot.
 */
async function vouchAfter(src: ByteSource, at: number, limit: number): Promise<{ at: number; vouchedEnd: number } | null> {
  const end = Math.min(limit, at + VOUCH_SEARCH_BYTES);
  if (end - at < 8) return null;
  const buf = await src.read(at, end - at);
  const len = buf.length >= 8 ? new DataView(buf.buffer, buf.byteOffset, buf.length).getUint32(4) : 0;
  if (len < RECORD_HEADER_BYTES + RECORD_TRAILER_BYTES || len > buf.length) return null;
  if (new DataView(buf.buffer, buf.byteOffset, buf.length).getUint32(len - 4) !== len) return null;
  let p = len;
  let best: { at: number; vouchedEnd: number } | null = null;
  while (p + 8 <= buf.length) {
    const c = checkRecord(buf, p, buf.length - p);
    if (!c.ok) break;
    if (best === null || c.header.vouchedEnd > best.vouchedEnd) best = { at: at + p, vouchedEnd: c.header.vouchedEnd };
    p += c.header.length;
  }
  return best;
}

// The forward scan of one segment, shared by crash recovery (at shard open) and `celer verify`:
// every record's CRC32C, its seq (gapless), and its link in the BLAKE3 chain.
//
// Where the scan stops decides what the stop means:
//   - before the header's durable end, or at a seq at or below its ack barrier: durable,
//     acknowledged data is damaged → corruption (refuse);
//   - after both: the tail of a group commit that was cut short → torn tail (discard), unless a
//     valid record after it vouches that it had been durable.
import { GROUP_COMMIT_BYTES_MAX, SCAN_CHUNK_BYTES, SEGMENT_HEADER_BYTES } from '../constants.ts';
import { equalBytes, hex } from './checksum.ts';
import { checkRecord, recordHash, RECORD_HEADER_BYTES, RECORD_TRAILER_BYTES, type RecordHeader } from './record.ts';
import { dataLimit, type SegmentHeader } from './segment.ts';

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
 * Scans one segment. A sealed segment is read only up to `sealedEnd` (its footer's records end,
 * which sealing wrote exactly): bytes after it are not part of the log. A truncation in progress
 * (header `truncatedAt`) ends the log there too.
 */
export async function scanSegment(
  src: ByteSource,
  seg: SegmentHeader,
  start: ScanStart,
  visit: RecordVisitor,
  sealedEnd: number | null = null,
): Promise<ScanResult> {
  let limit = sealedEnd ?? dataLimit(seg.sizeBytes);
  if (seg.truncatedAt > 0) limit = Math.min(limit, seg.truncatedAt);
  const committedEnd = sealedEnd ?? Math.min(seg.durableEnd, limit);
  let offset = SEGMENT_HEADER_BYTES;
  let seq = start.seq;
  let tip = start.prevHash;
  let records = 0;
  let chunk: Uint8Array = new Uint8Array(0);
  let chunkAt = offset;
  const stopAt = async (why: string): Promise<ScanResult> => {
    let corrupt = offset < committedEnd || seq <= seg.ackedSeq;
    if (corrupt && offset >= committedEnd) why += `; seq ${seq} is at or below the ack barrier ${seg.ackedSeq} (it was acknowledged)`;
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
        if (offset < committedEnd || seq <= seg.ackedSeq) return stopAt('zeros where durable records must be');
        return { end: offset, nextSeq: seq, tipHash: tip, records, stop: null, corrupt: false };
      }
      return stopAt((c as { why: string }).why);
    }
    const h = c.header;
    if (h.firstSeq !== seq) return stopAt(`record has seq ${h.firstSeq}, expected ${seq}`);
    if (!equalBytes(h.prevHash, tip)) return stopAt(`chain broken: record links to ${hex(h.prevHash).slice(0, 16)}…, previous record hashes to ${hex(tip).slice(0, 16)}…`);
    const rec = chunk.subarray(rel, rel + h.length);
    visit(rec, h, offset);
    tip = recordHash(rec, h.length);
    seq += h.batchCount;
    offset += h.length;
    records++;
  }
  if (offset < committedEnd || seq <= seg.ackedSeq) return stopAt('the segment ends before its durable records do');
  return { end: offset, nextSeq: seq, tipHash: tip, records, stop: null, corrupt: false };
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

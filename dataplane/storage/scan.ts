// The forward scan of one segment, shared by crash recovery (at shard open) and `celer verify`:
// every record's CRC32C, its seq (gapless), and its link in the BLAKE3 chain.
//
// Where the scan stops decides what the stop means:
//   - before the header's committed end: committed data is damaged → corruption (refuse);
//   - at or after it: the tail of a group commit that was cut short → torn tail (discard).
import { SCAN_CHUNK_BYTES, SEGMENT_HEADER_BYTES } from '../constants.ts';
import { blake3, equalBytes, hex } from './checksum.ts';
import { checkRecord, type RecordHeader } from './record.ts';
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

export async function scanSegment(
  src: ByteSource,
  seg: SegmentHeader,
  start: ScanStart,
  visit: RecordVisitor,
): Promise<ScanResult> {
  let offset = SEGMENT_HEADER_BYTES;
  let seq = start.seq;
  let tip = start.prevHash;
  let records = 0;
  let chunk: Uint8Array = new Uint8Array(0);
  let chunkAt = offset;
  const stopAt = (why: string): ScanResult => ({
    end: offset,
    nextSeq: seq,
    tipHash: tip,
    records,
    stop: { offset, why },
    corrupt: offset < seg.committedEnd,
  });
  while (offset < seg.sizeBytes) {
    let rel = offset - chunkAt;
    if (rel + 8 > chunk.length) {
      chunk = await src.read(offset, Math.min(SCAN_CHUNK_BYTES, seg.sizeBytes - offset));
      chunkAt = offset;
      rel = 0;
      if (chunk.length < 8) break;
    }
    let c = checkRecord(chunk, rel, chunk.length - rel);
    if (!c.ok && 'incomplete' in c) {
      if (offset + c.incomplete > seg.sizeBytes) return stopAt(`record length ${c.incomplete} runs past the end of the segment`);
      chunk = await src.read(offset, Math.max(c.incomplete, Math.min(SCAN_CHUNK_BYTES, seg.sizeBytes - offset)));
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

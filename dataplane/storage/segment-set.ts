// A shard's segments, in order, and everything that reads them: a record at a location, the
// record holding a seq (O(log n): segments by first seq in memory, then the segment's seq index),
// records forward from a seq, and the newest batch of a key (bloom, key index, backward scan on a
// hash collision). Owned by the shard's ShardLog on its worker thread; reads only durable data.
import { FEED_READ_CHUNK_BYTES, SCAN_CHUNK_BYTES, SEGMENT_HEADER_BYTES } from '../constants.ts';
import { hash52 } from './bloom.ts';
import type { SegmentFile } from './disk.ts';
import { CorruptionError } from './errors.ts';
import { batchesOf, checkRecord, RECORD_HEADER_BYTES, type BatchView, type RecordHeader } from './record.ts';
import { scanSegment } from './scan.ts';
import { SidecarDamagedError, type ActiveIndex, type SealedIndex } from './segment-index.ts';
import type { SegmentFooter, SegmentHeader } from './segment.ts';

export interface Segment {
  index: number;
  file: SegmentFile;
  path: string;
  header: SegmentHeader;
  sizeBytes: number;
  /** Durable end: every byte before it is on disk (fdatasync returned). */
  end: number;
  /** Highest byte ever written into the file by this process or a torn group before it. */
  writtenHigh: number;
  /** Bytes of the last, partial 4 KiB block before `end` (rewritten by the next group commit). */
  tail: Uint8Array;
  firstSeq: number;
  /** Last durable seq in this segment (firstSeq - 1 when empty). */
  lastSeq: number;
  /** In memory while active (and for a sealed segment whose sidecar could not be written)... */
  active: ActiveIndex | null;
  /** ...in the sidecar once sealed. */
  sealed: SealedIndex | null;
  footer: SegmentFooter | null;
}

export interface RecordRead {
  bytes: Uint8Array;
  header: RecordHeader;
}

export interface RecordAt extends RecordRead {
  segment: number;
  offset: number;
}

export class SegmentSet {
  /** Segment index → segment. */
  readonly map = new Map<number, Segment>();
  /** Segment indexes, ascending (for locating a seq). */
  order: number[] = [];
  private readonly shard: number;
  private readonly log: (msg: string) => void;

  constructor(shard: number, log: (msg: string) => void) {
    this.shard = shard;
    this.log = log;
  }


  /** Reads and checks the durable record at a location. Throws CorruptionError when it fails its checks. */
  async readRecord(segment: number, offset: number): Promise<RecordRead> {
    const seg = this.map.get(segment);
    if (seg === undefined || offset >= seg.end || offset < SEGMENT_HEADER_BYTES) throw new CorruptionError(`shard ${this.shard}: no durable record at segment ${segment} offset ${offset}`);
    let buf = await seg.file.read(offset, Math.min(4096, seg.end - offset));
    let c = checkRecord(buf, 0, buf.length);
    if (!c.ok && 'incomplete' in c && offset + c.incomplete <= seg.end) {
      buf = await seg.file.read(offset, c.incomplete);
      c = checkRecord(buf, 0, buf.length);
    }
    if (!c.ok) {
      const why = 'why' in c ? c.why : 'record is cut off';
      throw new CorruptionError(`shard ${this.shard} segment ${segment} offset ${offset}: ${why}`);
    }
    // A copy: the aligned read buffer is larger than the record, and caches must hold only the record.
    const bytes = buf.slice(0, c.header.length);
    const again = checkRecord(bytes, 0, bytes.length);
    if (!again.ok) throw new CorruptionError(`shard ${this.shard} segment ${segment} offset ${offset}: record changed while copied`);
    return { bytes, header: again.header };
  }

  /** The segment holding `seq` (binary search over the segments' first seqs). */
  private segmentOf(seq: number): Segment | null {
    let lo = 0;
    let hi = this.order.length - 1;
    if (hi < 0) return null;
    if (seq < this.map.get(this.order[0]!)!.firstSeq) return null;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.map.get(this.order[mid]!)!.firstSeq <= seq) lo = mid;
      else hi = mid - 1;
    }
    return this.map.get(this.order[lo]!)!;
  }

  /**
   * Where the durable record holding `seq` lies: segment, offset and the record's first seq.
   * O(log n): segments by first seq in memory, then the segment's seq index (in memory while
   * active, one sidecar page read once sealed). Null when `seq` is not durable.
   */
  async locate(seq: number, durableSeq: number): Promise<{ segment: number; offset: number; firstSeq: number } | null> {
    if (seq < 1 || seq > durableSeq) return null;
    const seg = this.segmentOf(seq);
    if (seg === null || seq > seg.lastSeq) return null;
    let r: { offset: number; firstSeq: number } | null = null;
    if (seg.active !== null) r = seg.active.locate(seq);
    else if (seg.sealed !== null) {
      try {
        r = await seg.sealed.locate(seq);
      } catch (e) {
        if (!(e instanceof SidecarDamagedError)) throw e;
        this.log(`shard ${this.shard}: ${e.message}; scanning segment ${seg.index} instead`);
        r = await this.scanForSeq(seg, seq);
      }
    }
    return r === null ? null : { segment: seg.index, offset: r.offset, firstSeq: r.firstSeq };
  }

  private async scanForSeq(seg: Segment, seq: number): Promise<{ offset: number; firstSeq: number } | null> {
    let found: { offset: number; firstSeq: number } | null = null;
    await scanSegment(seg.file, seg.header, { seq: seg.firstSeq, prevHash: seg.header.prevHash }, (_rec, h, offset) => {
      if (h.firstSeq <= seq && seq < h.firstSeq + h.batchCount) found = { offset, firstSeq: h.firstSeq };
    }, seg.end);
    return found;
  }

  /**
   * Durable records from the one holding `fromSeq`, in order, up to `toSeq` (inclusive) and about
   * `maxBytes` (at least one record). Found in O(log n), then read forward.
   */
  async readFrom(fromSeq: number, toSeq: number, maxBytes: number, durableSeq: number): Promise<RecordAt[]> {
    const out: RecordAt[] = [];
    const start = await this.locate(fromSeq, durableSeq);
    if (start === null) return out;
    let segIdx = start.segment;
    let offset = start.offset;
    let bytes = 0;
    let chunk: Uint8Array | null = null;
    let chunkSeg = -1;
    let chunkAt = 0;
    for (;;) {
      const seg = this.map.get(segIdx);
      if (seg === undefined) break;
      if (offset >= seg.end) {
        segIdx++;
        offset = SEGMENT_HEADER_BYTES;
        continue;
      }
      // One read for many small records: a chunk from here, records cut out of it (copies, checked).
      if (chunk === null || chunkSeg !== segIdx || offset < chunkAt || offset + 8 > chunkAt + chunk.length) {
        chunk = await seg.file.read(offset, Math.min(FEED_READ_CHUNK_BYTES, seg.end - offset));
        chunkSeg = segIdx;
        chunkAt = offset;
      }
      const rel = offset - chunkAt;
      const len = new DataView(chunk.buffer, chunk.byteOffset + rel, 8).getUint32(4);
      let r: RecordRead;
      if (len >= RECORD_HEADER_BYTES && rel + len <= chunk.length) {
        const bytes = chunk.slice(rel, rel + len);
        const c = checkRecord(bytes, 0, len);
        if (!c.ok) throw new CorruptionError(`shard ${this.shard} segment ${segIdx} offset ${offset}: ${'why' in c ? c.why : 'record is cut off'}`);
        r = { bytes, header: c.header };
      } else {
        r = await this.readRecord(segIdx, offset);
      }
      if (r.header.firstSeq > toSeq) break;
      out.push({ ...r, segment: segIdx, offset });
      bytes += r.header.length;
      offset += r.header.length;
      if (bytes >= maxBytes) break;
    }
    return out;
  }

  /**
   * Finds the newest durable batch of `key`, newest segment first, skipping segments whose bloom
   * rules the key out.
   */
  async findLatest(key: Uint8Array): Promise<{ segment: number; offset: number; batch: BatchView; header: RecordHeader } | null> {
    for (let i = this.order.length - 1; i >= 0; i--) {
      const seg = this.map.get(this.order[i]!)!;
      const bloom = seg.active?.bloom ?? seg.sealed?.bloom;
      if (bloom !== undefined && !bloom.mayContain(key)) continue;
      const h = hash52(key);
      let offset: number | null = -1;
      if (seg.active !== null) offset = seg.active.keys.get(h) ?? null;
      else if (seg.sealed !== null) {
        try {
          offset = await seg.sealed.lookupKey(h);
        } catch (e) {
          if (!(e instanceof SidecarDamagedError)) throw e;
          offset = -1;
        }
      }
      if (offset === null) continue; // the index says the key is not in this segment
      if (offset >= 0) {
        const r = await this.readRecord(seg.index, offset);
        let match: BatchView | null = null;
        for (const b of batchesOf(r.bytes, r.header)) if (sameKey(b.key, key)) match = b;
        if (match) return { segment: seg.index, offset, batch: match, header: r.header };
        // A 52-bit hash collision: another key owns this index entry. Scan the segment.
      }
      const found = await this.scanBackward(seg, key);
      if (found) return found;
    }
    return null;
  }

  private async scanBackward(seg: Segment, key: Uint8Array): Promise<{ segment: number; offset: number; batch: BatchView; header: RecordHeader } | null> {
    let end = seg.end;
    while (end > SEGMENT_HEADER_BYTES) {
      const from = Math.max(SEGMENT_HEADER_BYTES, end - SCAN_CHUNK_BYTES);
      const chunk = await seg.file.read(from, end - from);
      let p = end - from;
      while (p >= 4) {
        const len = new DataView(chunk.buffer, chunk.byteOffset + p - 4, 4).getUint32(0);
        if (len < RECORD_HEADER_BYTES || len > p) break;
        const start = p - len;
        const c = checkRecord(chunk, start, len);
        if (!c.ok) throw new CorruptionError(`shard ${this.shard} segment ${seg.index} offset ${from + start}: ${'why' in c ? c.why : 'bad record'}`);
        const rec = chunk.subarray(start, p);
        let match: BatchView | null = null;
        for (const b of batchesOf(rec, c.header)) if (sameKey(b.key, key)) match = b;
        if (match) {
          const r = await this.readRecord(seg.index, from + start);
          for (const b of batchesOf(r.bytes, r.header)) if (b.index === match.index) return { segment: seg.index, offset: from + start, batch: b, header: r.header };
        }
        p = start;
      }
      if (p === end - from) {
        // A single record larger than the window: read it whole.
        const len = new DataView((await seg.file.read(end - 4, 4)).slice().buffer).getUint32(0);
        if (len < RECORD_HEADER_BYTES || len > end - SEGMENT_HEADER_BYTES) throw new CorruptionError(`shard ${this.shard} segment ${seg.index}: bad record trailer before offset ${end}`);
        const r = await this.readRecord(seg.index, end - len);
        for (const b of batchesOf(r.bytes, r.header)) if (sameKey(b.key, key)) return { segment: seg.index, offset: end - len, batch: b, header: r.header };
        end -= len;
      } else {
        end = from + p;
      }
    }
    return null;
  }
}

export function sameKey(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 48; i++) if (a[i] !== b[i]) return false;
  return true;
}

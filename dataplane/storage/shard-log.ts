// One shard's append-only log: recovery at open, group commit, record reads, cold reverse scans.
// Owned by exactly one worker thread; nothing here is shared.
//
// Appends are two-phase. `place` assigns a record its seq range, its location and its link in the
// hash chain at once (in memory, when the write is validated), so later writes in the same group
// can refer to it. `flush` then writes everything placed so far with one write + fdatasync
// (group commit). Only after flush resolves is a record durable, and only then may it be acked.
import { mkdir, readdir, rm } from 'node:fs/promises';
import { GROUP_COMMIT_BYTES_MAX, HEADER_REFRESH_MS, SCAN_CHUNK_BYTES, SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES, SEGMENT_HEADER_BYTES } from '../constants.ts';
import { Bloom, hash52 } from './bloom.ts';
import { SealedIndex, sidecarPath, writeSidecar } from './segment-index.ts';
import { blake3, hex, ZERO_HASH } from './checksum.ts';
import { IO_ALIGN_BYTES, type FileIo, type SegmentFile } from './io.ts';
import { batchesOf, checkRecord, RECORD_HEADER_BYTES, type BatchLoc, type BatchView, type RecordHeader } from './record.ts';
import { scanSegment } from './scan.ts';
import { decodeSegmentHeader, encodeSegmentHeader, parseSegmentFileName, segmentPath, type SegmentHeader } from './segment.ts';

/** Committed data failed its checks: the shard must not be served. */
export class CorruptionError extends Error {
  override name = 'CorruptionError';
}

export interface ShardLogOptions {
  io: FileIo;
  dir: string;
  shard: number;
  numShards: number;
  routing: number;
  segmentBytes: number;
  log: (msg: string) => void;
}

interface Segment {
  index: number;
  file: SegmentFile;
  header: SegmentHeader;
  bloom: Bloom;
  /** Durable end: every byte before it is on disk (fdatasync returned). */
  end: number;
  /** Bytes of the last, partial 4 KiB block before `end` (rewritten by the next group commit). */
  tail: Uint8Array;
  path: string;
  /** Key hash → offset of the newest record with that key: in memory while active... */
  keys: Map<number, number> | null;
  /** ...and in the sidecar file once sealed (see segment-index.ts). */
  sealed: SealedIndex | null;
}

interface Placed {
  segment: number;
  offset: number;
  bytes: Uint8Array;
  keys: Uint8Array[];
  lastSeq: number;
  /** Set on the first record of a new segment: what that segment's header must say. */
  startsSegment: { firstSeq: number; prevHash: Uint8Array } | null;
}

export interface RecordRead {
  bytes: Uint8Array;
  header: RecordHeader;
}

function alignDown(n: number): number {
  return n - (n % IO_ALIGN_BYTES);
}
function alignUp(n: number): number {
  return Math.ceil(n / IO_ALIGN_BYTES) * IO_ALIGN_BYTES;
}

export class ShardLog {
  readonly opts: ShardLogOptions;
  private readonly segments = new Map<number, Segment>();
  private active!: Segment;
  /** Seq of the last durable record batch (0 = none). */
  durableSeq = 0;
  /** Placement cursor (ahead of the durable state by whatever is queued). */
  private placeSegment = 0;
  private placeOffset = 0;
  private placeSeq = 1;
  private placeTip: Uint8Array = ZERO_HASH;
  private queue: Placed[] = [];
  private groupBuf: Uint8Array = new Uint8Array(0);
  private headerBuf!: Uint8Array;
  private flushing = false;
  /** The committed offset last written into the active segment's header. */
  private headerEnd = 0;
  private headerAtMs = 0;
  /** Set by reserve() when the reserved record opens a new segment. */
  private pendingStart: Placed['startsSegment'] = null;

  private constructor(opts: ShardLogOptions) {
    this.opts = opts;
  }

  /** Opens (or creates) the shard's log and recovers its tail. Throws CorruptionError. */
  static async open(opts: ShardLogOptions): Promise<ShardLog> {
    const log = new ShardLog(opts);
    log.headerBuf = opts.io.allocAligned(SEGMENT_HEADER_BYTES);
    await log.recover();
    return log;
  }

  private async recover(): Promise<void> {
    const { dir, io } = this.opts;
    await mkdir(dir, { recursive: true });
    const indexes = (await readdir(dir))
      .map(parseSegmentFileName)
      .filter((n): n is number => n !== null)
      .sort((a, b) => a - b);
    // Pass 1: headers. A trailing segment that was created but never written (a crash during
    // rotation, even before its zero fill) is removed; the segment before it is the active one.
    const opened: { index: number; path: string; file: SegmentFile; h: SegmentHeader }[] = [];
    for (let i = 0; i < indexes.length; i++) {
      const index = indexes[i]!;
      const path = segmentPath(dir, index);
      if (index !== indexes[0]! + i) throw new CorruptionError(`shard ${this.opts.shard}: segment ${index} follows segment ${indexes[i - 1]}; a segment file is missing`);
      const file = await io.openSegment(path, { create: false, sizeBytes: 0 });
      const block = await file.read(0, SEGMENT_HEADER_BYTES);
      const parsed = decodeSegmentHeader(block);
      if (!parsed.ok) {
        await file.close();
        if (i === indexes.length - 1 && block.every((b) => b === 0)) {
          this.opts.log(`shard ${this.opts.shard}: removing segment ${index}, created but never written (crash during rotation)`);
          await rm(path);
          await rm(sidecarPath(path), { force: true });
          break;
        }
        for (const o of opened) await o.file.close();
        throw new CorruptionError(`shard ${this.opts.shard} segment ${index} (${path}): ${parsed.why}`);
      }
      this.checkIdentity(parsed.header, path);
      opened.push({ index, path, file, h: parsed.header });
    }
    // Pass 2: every record's CRC, seq and chain link; blooms and key indexes.
    let seq = opened[0]?.h.firstSeq ?? 1;
    let tip: Uint8Array = opened[0]?.h.prevHash ?? ZERO_HASH;
    for (let i = 0; i < opened.length; i++) {
      const { index, path, file, h } = opened[i]!;
      const sealed = i < opened.length - 1;
      const fail = async (why: string): Promise<never> => {
        for (const o of opened) await o.file.close();
        throw new CorruptionError(`shard ${this.opts.shard} segment ${index} (${path}) ${why}; committed data is damaged (run celer verify)`);
      };
      if (i > 0 && (h.firstSeq !== seq || hex(h.prevHash) !== hex(tip))) {
        await fail(`starts at seq ${h.firstSeq} but the previous segment ends before seq ${seq} (or its chain link differs)`);
      }
      const bloom = new Bloom(SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES);
      const keys = new Map<number, number>();
      const res = await scanSegment(
        file,
        h,
        { seq, prevHash: tip },
        (rec, rh, offset) => {
          for (const b of batchesOf(rec, rh)) {
            bloom.add(b.key);
            keys.set(hash52(b.key), offset);
          }
        },
        sealed,
      );
      if (res.corrupt) await fail(res.stop ? `at offset ${res.stop.offset}: ${res.stop.why}` : `committed data ends early at ${res.end}`);
      if (sealed && res.end !== h.committedEnd) await fail(`is sealed at ${h.committedEnd} but its records end at ${res.end}`);
      if (res.stop) this.opts.log(`shard ${this.opts.shard}: discarding torn tail of segment ${index} at offset ${res.stop.offset} (${res.stop.why})`);
      seq = res.nextSeq;
      tip = res.tipHash;
      const tailFrom = alignDown(res.end);
      const tail = tailFrom < res.end ? (await file.read(tailFrom, res.end - tailFrom)).slice() : new Uint8Array(0);
      const seg: Segment = { index, file, header: h, bloom, end: res.end, tail, path, keys, sealed: null };
      if (sealed) {
        // The sidecar must describe exactly this segment (it is derived data: rebuilt when not).
        seg.sealed = (await SealedIndex.load(sidecarPath(path), res.end)) ?? this.rebuildSidecar(seg);
        seg.keys = null;
      } else {
        await rm(sidecarPath(path), { force: true }); // an active segment's index lives in memory
      }
      this.segments.set(index, seg);
    }
    if (this.segments.size === 0) {
      await this.createSegment(1, 1, ZERO_HASH);
    }
    this.active = this.segments.get(Math.max(...this.segments.keys()))!;
    this.durableSeq = seq - 1;
    this.placeSeq = seq;
    this.placeTip = tip;
    this.placeSegment = this.active.index;
    this.placeOffset = this.active.end;
    // Make what recovery kept durable before serving it (a killed process may have left writes
    // the device had not flushed), and record it as committed.
    await this.commitHeader(this.active);
  }

  /** The header block of `seg` saying everything before `end` is committed (in the shared buffer). */
  private headerBlock(seg: Segment, end: number): Uint8Array {
    encodeSegmentHeader(this.headerBuf, { ...seg.header, committedEnd: end, committedSeq: this.durableSeq });
    return this.headerBuf;
  }

  /** Writes and fdatasyncs `seg`'s header with its durable end as the committed end. */
  private async commitHeader(seg: Segment): Promise<void> {
    const end = seg.end;
    await seg.file.writeAndSync([{ offset: 0, buf: this.headerBlock(seg, end) }]);
    seg.header = { ...seg.header, committedEnd: end, committedSeq: this.durableSeq };
    if (seg === this.active) {
      this.headerEnd = end;
      this.headerAtMs = performance.now();
    }
  }

  private rebuildSidecar(seg: Segment): SealedIndex {
    this.opts.log(`shard ${this.opts.shard}: rebuilding the key index of segment ${seg.index}`);
    return writeSidecar(sidecarPath(seg.path), seg.keys!, seg.end);
  }


  private checkIdentity(h: SegmentHeader, path: string): void {
    const o = this.opts;
    if (h.shard !== o.shard || h.numShards !== o.numShards || h.routing !== o.routing) {
      throw new CorruptionError(
        `${path} belongs to shard ${h.shard} of ${h.numShards} (routing code ${h.routing}); this node expects shard ${o.shard} of ${o.numShards} (routing code ${o.routing})`,
      );
    }
  }

  private async createSegment(index: number, firstSeq: number, prevHash: Uint8Array): Promise<Segment> {
    const path = segmentPath(this.opts.dir, index);
    const file = await this.opts.io.openSegment(path, { create: true, sizeBytes: this.opts.segmentBytes });
    const header: SegmentHeader = {
      routing: this.opts.routing,
      shard: this.opts.shard,
      numShards: this.opts.numShards,
      index,
      firstSeq,
      prevHash,
      committedEnd: SEGMENT_HEADER_BYTES,
      committedSeq: firstSeq - 1,
      sizeBytes: this.opts.segmentBytes,
    };
    const block = this.opts.io.allocAligned(SEGMENT_HEADER_BYTES);
    encodeSegmentHeader(block, header);
    await file.writeAndSync([{ offset: 0, buf: block }]);
    const seg: Segment = {
      index,
      file,
      header,
      bloom: new Bloom(SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES),
      end: SEGMENT_HEADER_BYTES,
      tail: new Uint8Array(0),
      path,
      keys: new Map(),
      sealed: null,
    };
    this.segments.set(index, seg);
    return seg;
  }

  /** Seq the next placed record gets. */
  get nextSeq(): number {
    return this.placeSeq;
  }

  /** Hash of the last placed record. */
  get tipHash(): Uint8Array {
    return this.placeTip;
  }

  /** Largest record that fits in a segment. */
  get recordBytesMax(): number {
    return this.opts.segmentBytes - SEGMENT_HEADER_BYTES;
  }

  get queuedRecords(): number {
    return this.queue.length;
  }

  get segmentCount(): number {
    return this.segments.size;
  }

  /**
   * Reserves the location of a record of `length` bytes and returns where it will live, its
   * first seq and the hash it must link to. Call `commitPlacement` with the encoded bytes next,
   * synchronously.
   */
  reserve(length: number): { segment: number; offset: number; firstSeq: number; prevHash: Uint8Array; vouchedEnd: number } {
    if (SEGMENT_HEADER_BYTES + length > this.opts.segmentBytes) {
      throw new RangeError(`a record of ${length} bytes does not fit in a ${this.opts.segmentBytes}-byte segment`);
    }
    if (this.placeOffset + length > this.opts.segmentBytes) {
      this.placeSegment += 1;
      this.placeOffset = SEGMENT_HEADER_BYTES;
      this.pendingStart = { firstSeq: this.placeSeq, prevHash: this.placeTip };
    }
    // What the record can vouch for: the durable end of its own segment right now.
    const vouchedEnd = this.placeSegment === this.active.index ? this.active.end : SEGMENT_HEADER_BYTES;
    return { segment: this.placeSegment, offset: this.placeOffset, firstSeq: this.placeSeq, prevHash: this.placeTip, vouchedEnd };
  }

  /** Queues the encoded record placed by the last `reserve`; `batches` = its batch count. */
  commitPlacement(bytes: Uint8Array, keys: Uint8Array[], batches: number): void {
    const lastSeq = this.placeSeq + batches - 1;
    this.queue.push({ segment: this.placeSegment, offset: this.placeOffset, bytes, keys, lastSeq, startsSegment: this.pendingStart });
    this.pendingStart = null;
    this.placeOffset += bytes.length;
    this.placeSeq += batches;
    this.placeTip = blake3(bytes);
  }

  /**
   * Writes queued records of one segment with one write + fdatasync. Returns the seq now durable,
   * or null when there was nothing to do. One flush at a time (the caller serialises).
   */
  async flush(): Promise<number | null> {
    if (this.flushing) throw new Error('flush() is already running');
    if (this.queue.length === 0) return null;
    this.flushing = true;
    try {
      const first = this.queue[0]!;
      if (first.segment !== this.active.index) {
        if (first.startsSegment === null) throw new Error('internal: record for a new segment without its start');
        await this.rotate(first.segment, first.startsSegment);
      }
      const seg = this.active;
      let n = 0;
      let bytes = 0;
      while (n < this.queue.length && this.queue[n]!.segment === seg.index && (n === 0 || bytes + this.queue[n]!.bytes.length <= GROUP_COMMIT_BYTES_MAX)) {
        bytes += this.queue[n]!.bytes.length;
        n++;
      }
      const group = this.queue.slice(0, n);
      const startOffset = group[0]!.offset;
      if (startOffset !== seg.end) throw new Error(`internal: group starts at ${startOffset}, durable end is ${seg.end}`);
      const blockStart = alignDown(startOffset);
      const endOffset = startOffset + bytes;
      // Group buffers are reused (one flush at a time): a fresh aligned buffer per fsync would be
      // garbage that V8 only collects lazily.
      const need = alignUp(endOffset) - blockStart;
      if (this.groupBuf.length < need) this.groupBuf = this.opts.io.allocAligned(Math.max(need, 2 * this.groupBuf.length));
      const buf = this.groupBuf.subarray(0, need);
      buf.fill(0, startOffset - blockStart + bytes);
      // The partial block at the tail already holds committed records: rewrite them unchanged.
      if (seg.tail.length !== startOffset - blockStart) throw new Error('internal: tail block out of step');
      buf.set(seg.tail, 0);
      let at = startOffset - blockStart;
      for (const p of group) {
        buf.set(p.bytes, at);
        at += p.bytes.length;
      }
      // The header records the previous durable end (see segment.ts on why it lags). It rides along
      // with a group at most every HEADER_REFRESH_MS: a second write per fdatasync costs ~40% of a
      // single-writer's throughput here, and the idle catch-up closes the gap when writes stop.
      const now = performance.now();
      const writes = [{ offset: blockStart, buf }];
      const refreshHeader = this.headerEnd !== seg.end && now - this.headerAtMs >= HEADER_REFRESH_MS;
      if (refreshHeader) writes.unshift({ offset: 0, buf: this.headerBlock(seg, seg.end) });
      await seg.file.writeAndSync(writes);
      if (refreshHeader) {
        this.headerEnd = seg.end;
        this.headerAtMs = now;
      }
      for (const p of group) {
        for (const k of p.keys) {
          seg.bloom.add(k);
          seg.keys?.set(hash52(k), p.offset);
        }
      }
      seg.end = endOffset;
      const tailFrom = alignDown(endOffset);
      seg.tail = buf.slice(tailFrom - blockStart, endOffset - blockStart);
      this.queue.splice(0, n);
      this.durableSeq = group[n - 1]!.lastSeq;
      return this.durableSeq;
    } finally {
      this.flushing = false;
    }
  }

  /** Brings the active segment's committed end up to the durable end (used when idle). */
  async syncHeader(): Promise<void> {
    if (this.flushing || this.queue.length > 0) return;
    const seg = this.active;
    if (this.headerEnd === seg.end) return;
    this.flushing = true;
    try {
      await this.commitHeader(seg);
    } finally {
      this.flushing = false;
    }
  }

  get headerBehind(): boolean {
    return this.headerEnd !== this.active.end;
  }

  /** Seals the active segment (its header gets its final committed end) and opens the next. */
  private async rotate(index: number, start: { firstSeq: number; prevHash: Uint8Array }): Promise<void> {
    const old = this.active;
    await this.commitHeader(old);
    if (old.keys !== null) {
      old.sealed = writeSidecar(sidecarPath(old.path), old.keys, old.end);
      old.keys = null;
    }
    this.active = await this.createSegment(index, start.firstSeq, start.prevHash);
    this.headerEnd = SEGMENT_HEADER_BYTES;
  }

  /** Reads and checks the durable record at a location. Throws CorruptionError when it fails its checks. */
  async readRecord(segment: number, offset: number): Promise<RecordRead> {
    const seg = this.segments.get(segment);
    if (seg === undefined || offset >= seg.end) throw new CorruptionError(`shard ${this.opts.shard}: no durable record at segment ${segment} offset ${offset}`);
    let buf = await seg.file.read(offset, Math.min(4096, seg.end - offset));
    let c = checkRecord(buf, 0, buf.length);
    if (!c.ok && 'incomplete' in c && offset + c.incomplete <= seg.end) {
      buf = await seg.file.read(offset, c.incomplete);
      c = checkRecord(buf, 0, buf.length);
    }
    if (!c.ok) {
      const why = 'why' in c ? c.why : 'record is cut off';
      throw new CorruptionError(`shard ${this.opts.shard} segment ${segment} offset ${offset}: ${why}`);
    }
    // A copy: the aligned read buffer is larger than the record, and caches must hold only the record.
    return { bytes: buf.slice(0, c.header.length), header: c.header };
  }

  /**
   * Finds the newest durable batch of `key`, newest segment first, skipping segments whose bloom
   * rules the key out and walking each candidate backwards record by record (trailers).
   */
  async findLatest(key: Uint8Array): Promise<{ loc: BatchLoc; batch: BatchView; header: RecordHeader } | null> {
    const indexes = [...this.segments.keys()].sort((a, b) => b - a);
    for (const index of indexes) {
      const seg = this.segments.get(index)!;
      if (!seg.bloom.mayContain(key)) continue;
      const h = hash52(key);
      const offset = seg.keys !== null ? (seg.keys.get(h) ?? null) : seg.sealed !== null ? await seg.sealed.lookup(h) : -1;
      if (offset === null) continue; // the index says the key is not in this segment
      if (offset >= 0) {
        const r = await this.readRecord(seg.index, offset);
        let match: BatchView | null = null;
        for (const b of batchesOf(r.bytes, r.header)) if (sameKey(b.key, key)) match = b;
        if (match) return { loc: { segment: seg.index, offset, index: match.index }, batch: match, header: r.header };
        // A 52-bit hash collision: another key owns this index entry. Scan the segment.
      }
      const found = await this.scanBackward(seg, key);
      if (found) return found;
    }
    return null;
  }

  private async scanBackward(seg: Segment, key: Uint8Array): Promise<{ loc: BatchLoc; batch: BatchView; header: RecordHeader } | null> {
    let end = seg.end;
    while (end > SEGMENT_HEADER_BYTES) {
      const from = Math.max(SEGMENT_HEADER_BYTES, end - SCAN_CHUNK_BYTES);
      const chunk = await seg.file.read(from, end - from);
      let p = end - from;
      while (p > 0) {
        if (p < 4) break;
        const len = new DataView(chunk.buffer, chunk.byteOffset + p - 4, 4).getUint32(0);
        if (len < RECORD_HEADER_BYTES || len > p) break;
        const start = p - len;
        const c = checkRecord(chunk, start, len);
        if (!c.ok) throw new CorruptionError(`shard ${this.opts.shard} segment ${seg.index} offset ${from + start}: ${'why' in c ? c.why : 'bad record'}`);
        const rec = chunk.subarray(start, p);
        let match: BatchView | null = null;
        for (const b of batchesOf(rec, c.header)) if (sameKey(b.key, key)) match = b;
        if (match) return { loc: { segment: seg.index, offset: from + start, index: match.index }, batch: match, header: c.header };
        p = start;
      }
      if (p === end - from) {
        // A single record larger than the window: read it whole.
        const len = new DataView((await seg.file.read(end - 4, 4)).buffer).getUint32(0);
        if (len < RECORD_HEADER_BYTES || len > end - SEGMENT_HEADER_BYTES) throw new CorruptionError(`shard ${this.opts.shard} segment ${seg.index}: bad record trailer before offset ${end}`);
        const r = await this.readRecord(seg.index, end - len);
        let match: BatchView | null = null;
        for (const b of batchesOf(r.bytes, r.header)) if (sameKey(b.key, key)) match = b;
        if (match) return { loc: { segment: seg.index, offset: end - len, index: match.index }, batch: match, header: r.header };
        end -= len;
      } else {
        end = from + p;
      }
    }
    return null;
  }

  async close(): Promise<void> {
    for (const s of this.segments.values()) await s.file.close();
    this.segments.clear();
  }
}

export function sameKey(a: Uint8Array, b: Uint8Array): boolean {
  for (let i = 0; i < 48; i++) if (a[i] !== b[i]) return false;
  return true;
}

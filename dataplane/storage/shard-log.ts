// One shard's append-only log: recovery at open, group commit, rotation with a preallocated spare,
// sealing with a footer, reads by location, by seq and by key, and truncateAfter. Owned by exactly
// one worker thread; nothing here is shared. All disk access goes through `Disk`, all time
// through `Clock` (disk.ts), so the same code runs on the simulated disk of the power-loss tests.
//
// Appends are two-phase. `reserve` + `commitPlacement` assign a record its seq range, its location
// and its link in the hash chain at once (in memory, when the write is validated): that is the
// *placed* watermark. `flush` writes everything placed so far with one write + fdatasync (group
// commit): the *durable* watermark. What the shard acknowledges (*committed*) is decided above, in
// shard.ts; the log only keeps the ack barrier it is told (`setAcked`) and makes it durable in the
// segment header.
import { GROUP_COMMIT_BYTES_MAX, HEADER_REFRESH_MS, SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES, SEGMENT_BYTES_MAX, SEGMENT_HEADER_BYTES, SPARE_RETRY_MS_MAX, SPARE_RETRY_MS_MIN } from '../constants.ts';
import { hash52 } from './bloom.ts';
import { equalBytes, hex, ZERO_HASH } from './checksum.ts';
import { isDiskFull, type Clock, type Disk, type SegmentFile } from './disk.ts';
import { IO_ALIGN_BYTES } from './io.ts';
import { keysOf, recordHash, RECORD_BYTES_MAX } from './record.ts';
import { scanSegment } from './scan.ts';
import { ActiveIndex, encodeSidecar, SealedIndex, sidecarPath } from './segment-index.ts';
import { CorruptionError, DiskFullError, FormatError, GroupWriteError, RotationFailedError, TruncateRefusedError } from './errors.ts';
import { SegmentSet, type RecordAt, type RecordRead, type Segment } from './segment-set.ts';
import {
  dataLimit,
  decodeSegmentFooter,
  decodeSegmentHeader,
  encodeSegmentFooter,
  encodeSegmentHeader,
  newSegmentPath,
  parseSegmentFileName,
  segmentPath,
  SEGMENT_FOOTER_BYTES,
  type SegmentFooter,
  type SegmentHeader,
} from './segment.ts';

export { CorruptionError, DiskFullError, FormatError, GroupWriteError, RotationFailedError, TruncateRefusedError } from './errors.ts';
export { sameKey, type RecordAt, type RecordRead } from './segment-set.ts';

export interface ShardLogOptions {
  disk: Disk;
  clock: Clock;
  dir: string;
  shard: number;
  numShards: number;
  routing: number;
  /** Size of new segments; existing ones keep the size they were made with. */
  segmentBytes: number;
  log: (msg: string) => void;
  /**
   * True when records are acknowledged at their local fdatasync (standalone): then every durable
   * record recovery finds intact was committed, and the ack barrier is the durable end. False when
   * a commit step follows the fdatasync (cluster): the barrier is what `setAcked` recorded, durable
   * in the header before the ack.
   */
  ackAtDurable: boolean;
}

interface Placed {
  segment: number;
  offset: number;
  bytes: Uint8Array;
  keys: Uint8Array[];
  firstSeq: number;
  lastSeq: number;
  /** Set on the first record of a new segment: what that segment's header must say. */
  startsSegment: { firstSeq: number; prevHash: Uint8Array } | null;
}

interface Spare {
  index: number;
  path: string;
  file: SegmentFile;
}

function alignDown(n: number): number {
  return n - (n % IO_ALIGN_BYTES);
}
function alignUp(n: number): number {
  return Math.ceil(n / IO_ALIGN_BYTES) * IO_ALIGN_BYTES;
}

/** Zero-write chunk used by truncation and torn-tail cleanup. */
const ZERO_CHUNK_BYTES = 1024 * 1024;

export class ShardLog {
  readonly opts: ShardLogOptions;
  private readonly set: SegmentSet;
  private active!: Segment;
  /** Seq of the last durable batch (0 = none). */
  durableSeq = 0;
  /** The ack barrier as told by setAcked (or the durable seq when acking at durability). */
  private ackedSeq = 0;
  /** The ack barrier as last written in a header that was fdatasync'd. */
  barrierDurableSeq = 0;
  /** Placement cursor (ahead of the durable state by whatever is queued). */
  private placeSegment = 0;
  private placeOffset = 0;
  private placeSeq = 1;
  private placeTip: Uint8Array = ZERO_HASH;
  private queue: Placed[] = [];
  private groupBuf: Uint8Array = new Uint8Array(0);
  private headerBuf!: Uint8Array;
  private flushing = false;
  /** The durable end last written into the active segment's header. */
  private headerEnd = 0;
  private headerAtMs = -Infinity;
  private pendingStart: Placed['startsSegment'] = null;
  private spare: Spare | null = null;
  private spareMaking: Promise<void> | null = null;
  private spareError: Error | null = null;
  private spareRetryMs = 0;
  private cancelSpareRetry: (() => void) | null = null;
  private closed = false;

  private constructor(opts: ShardLogOptions) {
    this.opts = opts;
    this.set = new SegmentSet(opts.shard, opts.log);
  }

  /** Opens (or creates) the shard's log and recovers its tail. Throws CorruptionError or FormatError. */
  static async open(opts: ShardLogOptions): Promise<ShardLog> {
    if (!Number.isSafeInteger(opts.segmentBytes) || opts.segmentBytes % IO_ALIGN_BYTES !== 0 || opts.segmentBytes < SEGMENT_HEADER_BYTES + SEGMENT_FOOTER_BYTES + IO_ALIGN_BYTES || opts.segmentBytes > SEGMENT_BYTES_MAX) {
      throw new RangeError(`segment size ${opts.segmentBytes} must be a multiple of ${IO_ALIGN_BYTES}, hold a header, a footer and a block, and be at most ${SEGMENT_BYTES_MAX}`);
    }
    const log = new ShardLog(opts);
    log.headerBuf = opts.disk.allocAligned(SEGMENT_HEADER_BYTES);
    try {
      await log.recover();
    } catch (e) {
      await log.close();
      throw e;
    }
    log.ensureSpare();
    return log;
  }

  private corrupt(index: number, why: string): CorruptionError {
    return new CorruptionError(`shard ${this.opts.shard} segment ${index} (${segmentPath(this.opts.dir, index)}): ${why}; durable data is damaged (run celer verify)`);
  }

  private async recover(): Promise<void> {
    const { dir, disk } = this.opts;
    await disk.mkdirp(dir);
    const names = await disk.list(dir);
    // Leftovers of an interrupted rotation or sidecar write: never part of the log.
    let cleaned = false;
    for (const n of names) {
      if (n.endsWith('.seg.new') || n.endsWith('.tmp')) {
        await disk.remove(`${dir}/${n}`);
        cleaned = true;
      }
    }
    if (cleaned) await disk.syncDir(dir);
    const indexes = names.map(parseSegmentFileName).filter((n): n is number => n !== null).sort((a, b) => a - b);
    // Headers. A .seg always has a header (segments are renamed into place after it is written),
    // so a zero or unreadable header is damage, wherever the segment is.
    const opened: { index: number; file: SegmentFile; h: SegmentHeader }[] = [];
    try {
      for (const index of indexes) {
        const file = await disk.openSegment(segmentPath(dir, index), { create: false, sizeBytes: 0 });
        opened.push({ index, file, h: null as unknown as SegmentHeader });
        const parsed = decodeSegmentHeader(await file.read(0, SEGMENT_HEADER_BYTES));
        if (!parsed.ok) {
          if (parsed.oldFormat) {
            throw new FormatError(
              `shard ${this.opts.shard}: ${segmentPath(dir, index)} is in an older storage format (${parsed.why}). ` +
                'Start the Celer version that wrote this directory, or move it aside and start on an empty data directory.',
            );
          }
          throw this.corrupt(index, parsed.zero ? 'the segment header is all zeros, but a segment file always has a header: it was wiped or damaged' : parsed.why);
        }
        this.checkIdentity(parsed.header, index);
        if (parsed.header.sizeBytes !== file.sizeBytes) throw this.corrupt(index, `its header says ${parsed.header.sizeBytes} bytes but the file has ${file.sizeBytes}`);
        opened[opened.length - 1]!.h = parsed.header;
      }
      // A truncation that did not finish: the segment that carries it ends the log (the later
      // segments it was removing may be partly gone, so this comes before the gap check).
      const cut = opened.findIndex((o) => o.h.truncatedAt > 0);
      if (cut >= 0 && cut < opened.length - 1) {
        for (const o of opened.splice(cut + 1).reverse()) {
          await o.file.close();
          await disk.remove(segmentPath(dir, o.index));
          await disk.remove(sidecarPath(segmentPath(dir, o.index)));
        }
        await disk.syncDir(dir);
        this.opts.log(`shard ${this.opts.shard}: finishing an interrupted truncation in segment ${opened[cut]!.index}`);
      }
      for (let i = 1; i < opened.length; i++) {
        if (opened[i]!.index !== opened[i - 1]!.index + 1) throw this.corrupt(opened[i]!.index, `follows segment ${opened[i - 1]!.index}; a segment file is missing`);
      }
      let seq = opened[0]?.h.firstSeq ?? 1;
      let tip: Uint8Array = opened[0]?.h.prevHash ?? ZERO_HASH;
      for (let i = 0; i < opened.length; i++) {
        const { index, file, h } = opened[i]!;
        if (h.firstSeq !== seq || !equalBytes(h.prevHash, tip)) {
          throw this.corrupt(index, `starts at seq ${h.firstSeq} linking to ${hex(h.prevHash).slice(0, 16)}…, but the log before it ends before seq ${seq} with hash ${hex(tip).slice(0, 16)}…`);
        }
        const last = i === opened.length - 1;
        const fp = h.truncatedAt > 0 ? ({ ok: false, zero: true, why: '' } as const) : decodeSegmentFooter(await file.read(h.sizeBytes - SEGMENT_FOOTER_BYTES, SEGMENT_FOOTER_BYTES));
        if (!fp.ok && !fp.zero) throw this.corrupt(index, `footer: ${fp.why}`);
        if (!fp.ok && !last) throw this.corrupt(index, 'is followed by another segment but was never sealed (no footer)');
        const seg: Segment = {
          index,
          file,
          path: segmentPath(dir, index),
          header: h,
          sizeBytes: h.sizeBytes,
          end: SEGMENT_HEADER_BYTES,
          writtenHigh: SEGMENT_HEADER_BYTES,
          tail: new Uint8Array(0),
          firstSeq: h.firstSeq,
          lastSeq: h.firstSeq - 1,
          active: null,
          sealed: null,
          footer: null,
        };
        if (fp.ok) {
          // Sealed: the footer vouches for the content; the records are not re-read.
          const f = fp.footer;
          if (f.index !== index || f.firstSeq !== h.firstSeq || f.lastSeq < h.firstSeq - 1 || f.recordsEnd < SEGMENT_HEADER_BYTES || f.recordsEnd > dataLimit(h.sizeBytes)) {
            throw this.corrupt(index, 'its footer does not describe this segment');
          }
          seg.footer = f;
          seg.end = seg.writtenHigh = f.recordsEnd;
          seg.lastSeq = f.lastSeq;
          seg.sealed = await SealedIndex.load(disk, sidecarPath(seg.path), f.summaryBytes, f.summaryCrc, SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES);
          if (seg.sealed === null) await this.rebuildSealed(seg, { seq, prevHash: tip });
          seq = f.lastSeq + 1;
          tip = f.lastHash;
        } else {
          // The active segment: every record is checked (CRC, seq, chain) and indexed.
          const idx = new ActiveIndex(SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES);
          const res = await scanSegment(file, h, { seq, prevHash: tip }, (rec, rh, offset) => {
            const keys = keysOf(rec, rh);
            idx.add(rh.firstSeq, offset, keys.map(hash52), keys.map((k) => k.slice()));
          });
          if (res.corrupt) throw this.corrupt(index, res.stop ? `at offset ${res.stop.offset}: ${res.stop.why}` : `durable data ends early at ${res.end}`);
          seg.active = idx;
          seg.end = res.end;
          seg.lastSeq = res.nextSeq - 1;
          seg.writtenHigh = res.end;
          if (res.stop) this.opts.log(`shard ${this.opts.shard}: discarding torn tail of segment ${index} at offset ${res.stop.offset} (${res.stop.why})`);
          // What an interrupted group left behind (torn or whole, after a dropped sector) must not
          // be read back later as part of the log: the window one group can span is zeroed if
          // anything is there. A truncation in progress zeroes the rest of the segment.
          const window = Math.min(dataLimit(h.sizeBytes), alignUp(res.end) + GROUP_COMMIT_BYTES_MAX + IO_ALIGN_BYTES);
          if (h.truncatedAt > 0) seg.writtenHigh = h.sizeBytes;
          else if (window > res.end && (await file.read(res.end, window - res.end)).some((b) => b !== 0)) seg.writtenHigh = window;
          seq = res.nextSeq;
          tip = res.tipHash;
          const tailFrom = alignDown(res.end);
          seg.tail = tailFrom < res.end ? (await file.read(tailFrom, res.end - tailFrom)).slice() : new Uint8Array(0);
        }
        this.set.map.set(index, seg);
      }
      this.set.order = [...this.set.map.keys()].sort((a, b) => a - b);
      this.durableSeq = seq - 1;
      this.placeSeq = seq;
      this.placeTip = tip;
      this.durableTip = tip;
      const lastSeg = this.set.order.length > 0 ? this.set.map.get(this.set.order[this.set.order.length - 1]!)! : null;
      const headerAcked = lastSeg?.header.ackedSeq ?? 0;
      this.ackedSeq = this.opts.ackAtDurable ? this.durableSeq : Math.min(headerAcked, this.durableSeq);
      this.barrierDurableSeq = this.ackedSeq;
      if (lastSeg === null || lastSeg.footer !== null) {
        // No segment yet, or the last one was sealed just before a crash: open the next one.
        const index = (lastSeg?.index ?? 0) + 1;
        await this.makeSpare(index);
        this.active = await this.activateSpare(seq, tip);
      } else {
        this.active = lastSeg;
        if (this.active.writtenHigh > this.active.end) await this.zeroFrom(this.active, this.active.end, this.active.writtenHigh);
      }
      this.placeSegment = this.active.index;
      this.placeOffset = this.active.end;
      // Make what recovery kept durable before serving it, and record it in the header.
      await this.commitHeader(this.active);
    } catch (e) {
      for (const o of opened) if (!this.set.map.has(o.index)) await o.file.close().catch(() => {});
      throw e;
    }
  }

  /** A sealed segment whose sidecar is missing or damaged: check every record, rebuild the sidecar. */
  private async rebuildSealed(seg: Segment, start: { seq: number; prevHash: Uint8Array }): Promise<void> {
    const f = seg.footer!;
    this.opts.log(`shard ${this.opts.shard}: rebuilding the index of segment ${seg.index} (sidecar missing or damaged)`);
    const idx = new ActiveIndex(SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES);
    const res = await scanSegment(seg.file, seg.header, start, (rec, rh, offset) => {
      const keys = keysOf(rec, rh);
      idx.add(rh.firstSeq, offset, keys.map(hash52), keys.map((k) => k.slice()));
    }, f.recordsEnd);
    if (res.corrupt || res.stop) throw this.corrupt(seg.index, res.stop ? `at offset ${res.stop.offset}: ${res.stop.why}` : 'records end early');
    if (res.end !== f.recordsEnd || res.nextSeq - 1 !== f.lastSeq || !equalBytes(res.tipHash, f.lastHash) || res.records !== f.records) {
      throw this.corrupt(seg.index, `its records (end ${res.end}, last seq ${res.nextSeq - 1}) differ from what its footer vouches for (end ${f.recordsEnd}, last seq ${f.lastSeq})`);
    }
    try {
      seg.sealed = await SealedIndex.write(this.opts.disk, sidecarPath(seg.path), encodeSidecar(idx, seg.index, f.recordsEnd, seg.firstSeq), SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES);
    } catch (e) {
      this.opts.log(`shard ${this.opts.shard}: could not write the index of segment ${seg.index} (${(e as Error).message}); keeping it in memory`);
      seg.active = idx;
    }
  }

  /** The header block of `seg` saying its durable records end at its durable end (in the shared buffer). */
  private headerBlock(seg: Segment): Uint8Array {
    encodeSegmentHeader(this.headerBuf, { ...seg.header, durableEnd: seg.end, durableSeq: seg.lastSeq, ackedSeq: this.ackedSeq, truncatedAt: 0 });
    return this.headerBuf;
  }

  /** Writes and fdatasyncs `seg`'s header with its durable end and the current barrier. */
  private async commitHeader(seg: Segment): Promise<void> {
    const end = seg.end;
    const acked = this.ackedSeq;
    const block = this.headerBlock(seg);
    const h = decodeSegmentHeader(block);
    await seg.file.writeAndSync([{ offset: 0, buf: block }]);
    if (h.ok) seg.header = h.header;
    if (seg === this.active) {
      this.headerEnd = end;
      this.headerAtMs = this.opts.clock.monoMs();
      this.barrierDurableSeq = Math.max(this.barrierDurableSeq, acked);
    }
  }

  private checkIdentity(h: SegmentHeader, index: number): void {
    const o = this.opts;
    if (h.shard !== o.shard || h.numShards !== o.numShards || h.routing !== o.routing || h.index !== index) {
      throw new CorruptionError(
        `${segmentPath(o.dir, index)} belongs to shard ${h.shard} of ${h.numShards} (routing code ${h.routing}, segment ${h.index}); this node expects shard ${o.shard} of ${o.numShards} (routing code ${o.routing}, segment ${index})`,
      );
    }
  }

  // -------------------------------------------------------------------------------------------
  // The spare segment: made ahead of need, so a full disk refuses writes instead of failing them.

  /** Starts making the next segment in the background unless it exists or is being made. */
  private ensureSpare(): void {
    if (this.closed || this.spare !== null || this.spareMaking !== null) return;
    const index = this.active.index + 1;
    this.spareMaking = this.makeSpare(index)
      .then(() => {
        this.spareError = null;
        this.spareRetryMs = 0;
      })
      .catch((e: Error) => {
        if (this.spareError === null || this.spareError.message !== e.message) {
          this.opts.log(`shard ${this.opts.shard}: cannot make the next segment (${e.message})${isDiskFull(e) ? '; writes that need it get 2008 until space is freed' : ''}`);
        }
        this.spareError = e;
        this.spareRetryMs = Math.min(SPARE_RETRY_MS_MAX, Math.max(SPARE_RETRY_MS_MIN, this.spareRetryMs * 2));
        this.cancelSpareRetry = this.opts.clock.after(this.spareRetryMs, () => {
          this.cancelSpareRetry = null;
          this.ensureSpare();
        });
      })
      .finally(() => {
        this.spareMaking = null;
      });
  }

  private async makeSpare(index: number): Promise<void> {
    const path = newSegmentPath(this.opts.dir, index);
    await this.opts.disk.remove(path);
    let file: SegmentFile | null = null;
    try {
      file = await this.opts.disk.openSegment(path, { create: true, sizeBytes: this.opts.segmentBytes });
    } catch (e) {
      await this.opts.disk.remove(path).catch(() => {});
      throw e;
    }
    if (this.closed) {
      await file.close();
      return;
    }
    this.spare = { index, path, file };
  }

  /** Turns the spare into the active segment: header first, then the rename, then the directory sync. */
  private async activateSpare(firstSeq: number, prevHash: Uint8Array): Promise<Segment> {
    const sp = this.spare;
    if (sp === null) throw new Error('internal: no spare segment to activate');
    const header: SegmentHeader = {
      routing: this.opts.routing,
      shard: this.opts.shard,
      numShards: this.opts.numShards,
      index: sp.index,
      firstSeq,
      prevHash,
      sizeBytes: sp.file.sizeBytes,
      durableEnd: SEGMENT_HEADER_BYTES,
      durableSeq: firstSeq - 1,
      ackedSeq: this.ackedSeq,
      truncatedAt: 0,
    };
    encodeSegmentHeader(this.headerBuf, header);
    await sp.file.writeAndSync([{ offset: 0, buf: this.headerBuf }]);
    const path = segmentPath(this.opts.dir, sp.index);
    await this.opts.disk.rename(sp.path, path);
    await this.opts.disk.syncDir(this.opts.dir);
    this.spare = null;
    const seg: Segment = {
      index: sp.index,
      file: sp.file,
      path,
      header,
      sizeBytes: sp.file.sizeBytes,
      end: SEGMENT_HEADER_BYTES,
      writtenHigh: SEGMENT_HEADER_BYTES,
      tail: new Uint8Array(0),
      firstSeq,
      lastSeq: firstSeq - 1,
      active: new ActiveIndex(SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES),
      sealed: null,
      footer: null,
    };
    this.set.map.set(seg.index, seg);
    this.set.order.push(seg.index);
    this.headerEnd = SEGMENT_HEADER_BYTES;
    return seg;
  }

  // -------------------------------------------------------------------------------------------
  // Placement and group commit

  /** Seq the next placed record gets. */
  get nextSeq(): number {
    return this.placeSeq;
  }

  /** Seq of the last placed batch: the placed watermark. */
  get placedSeq(): number {
    return this.placeSeq - 1;
  }

  /** Hash of the last placed record. */
  get tipHash(): Uint8Array {
    return this.placeTip;
  }

  /** Largest record that fits in a new segment. */
  get recordBytesMax(): number {
    return Math.min(RECORD_BYTES_MAX, dataLimit(this.opts.segmentBytes) - SEGMENT_HEADER_BYTES);
  }

  get queuedRecords(): number {
    return this.queue.length;
  }

  get segmentCount(): number {
    return this.set.map.size;
  }

  /** Why the next segment cannot be made right now (null when it can or is being made). */
  get spareProblem(): Error | null {
    return this.spare === null ? this.spareError : null;
  }

  /**
   * Reserves the location of a record of `length` bytes and returns where it will live, its
   * first seq and the hash it must link to. Call `commitPlacement` with the encoded bytes next,
   * synchronously. Throws DiskFullError (nothing placed) when it needs a new segment that the
   * disk has no room for.
   */
  reserve(length: number): { segment: number; offset: number; firstSeq: number; prevHash: Uint8Array; vouchedEnd: number } {
    if (length > this.recordBytesMax) throw new RangeError(`a record of ${length} bytes does not fit in a ${this.opts.segmentBytes}-byte segment`);
    const cur = this.set.map.get(this.placeSegment);
    const limit = cur !== undefined ? dataLimit(cur.sizeBytes) : dataLimit(this.opts.segmentBytes);
    let segment = this.placeSegment;
    let offset = this.placeOffset;
    let start: Placed['startsSegment'] = null;
    if (offset + length > limit) {
      if (this.spare === null && this.spareError !== null) {
        const e = this.spareError;
        throw isDiskFull(e)
          ? new DiskFullError(`shard ${this.opts.shard}: the disk is full: no room for the next ${(this.opts.segmentBytes / 1048576).toFixed(this.opts.segmentBytes % 1048576 === 0 ? 0 : 2)} MiB segment (${e.message}); writes resume by themselves once space is freed`)
          : new DiskFullError(`shard ${this.opts.shard}: cannot make the next segment: ${e.message}; writes resume once it can be made`, { diskFull: false });
      }
      segment += 1;
      offset = SEGMENT_HEADER_BYTES;
      start = { firstSeq: this.placeSeq, prevHash: this.placeTip };
    }
    this.pendingStart = start;
    this.pendingSegment = segment;
    this.pendingOffset = offset;
    // What the record can vouch for: the durable end of its own segment right now.
    const vouchedEnd = segment === this.active.index ? this.active.end : SEGMENT_HEADER_BYTES;
    return { segment, offset, firstSeq: this.placeSeq, prevHash: this.placeTip, vouchedEnd };
  }
  private pendingSegment = 0;
  private pendingOffset = 0;

  /** Queues the encoded record placed by the last `reserve`; `batches` = its batch count. */
  commitPlacement(bytes: Uint8Array, keys: Uint8Array[], batches: number): void {
    const firstSeq = this.placeSeq;
    const lastSeq = firstSeq + batches - 1;
    this.placeSegment = this.pendingSegment;
    this.placeOffset = this.pendingOffset;
    this.queue.push({ segment: this.placeSegment, offset: this.placeOffset, bytes, keys, firstSeq, lastSeq, startsSegment: this.pendingStart });
    this.pendingStart = null;
    this.placeOffset += bytes.length;
    this.placeSeq += batches;
    this.placeTip = recordHash(bytes, bytes.length);
  }

  /**
   * Forgets every placed record that is not durable (after a write that could not reach the
   * disk): the placement cursor goes back to the durable end. The caller fails their writes.
   */
  discardQueued(): void {
    this.queue = [];
    this.pendingStart = null;
    this.placeSegment = this.active.index;
    this.placeOffset = this.active.end;
    this.placeSeq = this.durableSeq + 1;
    this.placeTip = this.durableTip;
  }

  /**
   * After a GroupWriteError: overwrites everything after the durable end with zeros and
   * fdatasyncs, so the failed group's bytes can never be read back as part of the log. Only when
   * this succeeds may that group be reported as not stored.
   */
  async eraseUndurable(): Promise<void> {
    if (this.flushing) throw new Error('internal: eraseUndurable during a flush');
    this.flushing = true;
    try {
      const seg = this.active;
      await this.zeroFrom(seg, seg.end, Math.max(seg.writtenHigh, alignUp(seg.end)));
    } finally {
      this.flushing = false;
    }
  }

  /** Hash of the last durable record. */
  private durableTip: Uint8Array = ZERO_HASH;

  /** Records the ack barrier: every seq ≤ `seq` has been (or is about to be) acknowledged. */
  setAcked(seq: number): void {
    if (seq > this.durableSeq) throw new Error(`internal: ack barrier ${seq} above the durable seq ${this.durableSeq}`);
    if (seq > this.ackedSeq) this.ackedSeq = seq;
  }

  /** The ack barrier: records at or below it are never truncated. */
  get barrierSeq(): number {
    return this.ackedSeq;
  }

  /**
   * Writes queued records of one segment with one write + fdatasync. Returns the seq now durable,
   * or null when there was nothing to do. One flush at a time (the caller serialises). `onWrite`
   * is called with the group's last seq just before its write is issued (a cluster leader streams
   * the group to the follower then, so the two fdatasyncs overlap).
   */
  async flush(onWrite?: (lastSeq: number) => void): Promise<number | null> {
    if (this.flushing) throw new Error('flush() is already running');
    if (this.queue.length === 0) return null;
    this.flushing = true;
    try {
      const first = this.queue[0]!;
      if (first.segment !== this.active.index) {
        if (first.startsSegment === null) throw new Error('internal: record for a new segment without its start');
        await this.rotate(first.startsSegment);
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
      if (endOffset > dataLimit(seg.sizeBytes)) throw new Error(`internal: group ends at ${endOffset}, past the data area of segment ${seg.index}`);
      // Group buffers are reused (one flush at a time).
      const need = alignUp(endOffset) - blockStart;
      if (this.groupBuf.length < need) this.groupBuf = this.opts.disk.allocAligned(Math.max(need, 2 * this.groupBuf.length));
      const buf = this.groupBuf.subarray(0, need);
      buf.fill(0, startOffset - blockStart + bytes);
      // The partial block at the tail already holds durable records: rewrite them unchanged.
      if (seg.tail.length !== startOffset - blockStart) throw new Error('internal: tail block out of step');
      buf.set(seg.tail, 0);
      let at = startOffset - blockStart;
      for (const p of group) {
        buf.set(p.bytes, at);
        at += p.bytes.length;
      }
      // The header records the previous durable end (see segment.ts on why it lags). Under load it
      // rides along at most every HEADER_REFRESH_MS (a second write per fdatasync is costly); a new
      // ack barrier that acknowledgements wait for rides along at once.
      const now = this.opts.clock.monoMs();
      const acked = this.ackedSeq;
      const writes = [{ offset: blockStart, buf }];
      const refreshHeader = (this.headerEnd !== seg.end && now - this.headerAtMs >= HEADER_REFRESH_MS) || (!this.opts.ackAtDurable && acked > this.barrierDurableSeq);
      if (refreshHeader) writes.unshift({ offset: 0, buf: this.headerBlock(seg) });
      seg.writtenHigh = Math.max(seg.writtenHigh, alignUp(endOffset));
      onWrite?.(group[n - 1]!.lastSeq);
      try {
        await seg.file.writeAndSync(writes);
      } catch (e) {
        throw new GroupWriteError(`the write of ${n} records to segment ${seg.index} failed: ${(e as Error).message}`, e);
      }
      if (refreshHeader) {
        this.headerEnd = seg.end;
        this.headerAtMs = now;
        this.barrierDurableSeq = Math.max(this.barrierDurableSeq, acked);
      }
      for (const p of group) seg.active!.add(p.firstSeq, p.offset, p.keys.map(hash52), p.keys);
      seg.end = endOffset;
      seg.lastSeq = group[n - 1]!.lastSeq;
      const tailFrom = alignDown(endOffset);
      seg.tail = buf.slice(tailFrom - blockStart, endOffset - blockStart);
      this.queue.splice(0, n);
      this.durableSeq = seg.lastSeq;
      this.durableTip = recordHash(group[n - 1]!.bytes, group[n - 1]!.bytes.length);
      if (this.opts.ackAtDurable) this.ackedSeq = this.durableSeq;
      return this.durableSeq;
    } finally {
      this.flushing = false;
    }
  }

  /** Brings the active segment's header up to the durable end and the ack barrier (used when idle). */
  async syncHeader(): Promise<void> {
    if (this.flushing || this.queue.length > 0) return;
    const seg = this.active;
    if (this.headerEnd === seg.end && this.barrierDurableSeq >= this.ackedSeq) return;
    this.flushing = true;
    try {
      await this.commitHeader(seg);
    } finally {
      this.flushing = false;
    }
  }

  get headerBehind(): boolean {
    return this.headerEnd !== this.active.end || this.barrierDurableSeq < this.ackedSeq;
  }

  get busy(): boolean {
    return this.flushing;
  }

  /** Seals the active segment (sidecar, then footer + final header) and activates the spare. */
  private async rotate(start: { firstSeq: number; prevHash: Uint8Array }): Promise<void> {
    if (this.spare === null) {
      if (this.spareMaking === null) this.ensureSpare();
      if (this.spareMaking !== null) await this.spareMaking;
      if (this.spare === null) {
        const e = this.spareError;
        // Nothing of the group was written: the writes can be refused as not stored.
        throw new DiskFullError(
          e !== null && isDiskFull(e)
            ? `shard ${this.opts.shard}: the disk is full: no room for the next segment (${e.message}); writes resume by themselves once space is freed`
            : `shard ${this.opts.shard}: the next segment could not be made (${e?.message ?? 'unknown'}); writes resume once it can be made`,
          { diskFull: e === null || isDiskFull(e) },
        );
      }
    }
    try {
      await this.sealAndActivate(start);
    } catch (e) {
      throw new RotationFailedError(`shard ${this.opts.shard}: rotating to a new segment failed: ${(e as Error).message}`, e);
    }
  }

  private async sealAndActivate(start: { firstSeq: number; prevHash: Uint8Array }): Promise<void> {
    const old = this.active;
    const enc = encodeSidecar(old.active!, old.index, old.end, old.firstSeq);
    let sealed: SealedIndex | null = null;
    try {
      sealed = await SealedIndex.write(this.opts.disk, sidecarPath(old.path), enc, SEGMENT_BLOOM_BITS, SEGMENT_BLOOM_HASHES);
    } catch (e) {
      // Derived data: without it the index stays in memory, and the next start rebuilds it.
      this.opts.log(`shard ${this.opts.shard}: could not write the index of segment ${old.index} (${(e as Error).message}); keeping it in memory`);
    }
    const footer: SegmentFooter = {
      index: old.index,
      firstSeq: old.firstSeq,
      lastSeq: old.lastSeq,
      lastHash: start.prevHash,
      recordsEnd: old.end,
      records: old.active!.count,
      summaryCrc: enc.summaryCrc,
      summaryBytes: enc.summaryBytes,
    };
    const fblock = this.opts.disk.allocAligned(SEGMENT_FOOTER_BYTES);
    encodeSegmentFooter(fblock, footer);
    await old.file.writeAndSync([
      { offset: 0, buf: this.headerBlock(old) },
      { offset: old.sizeBytes - SEGMENT_FOOTER_BYTES, buf: fblock },
    ]);
    old.footer = footer;
    if (sealed !== null) {
      old.sealed = sealed;
      old.active = null;
    }
    old.tail = new Uint8Array(0);
    this.active = await this.activateSpare(start.firstSeq, start.prevHash);
    this.ensureSpare();
  }

  // -------------------------------------------------------------------------------------------
  // Reads (segment-set.ts)

  /** Reads and checks the durable record at a location. Throws CorruptionError when it fails its checks. */
  readRecord(segment: number, offset: number): Promise<RecordRead> {
    return this.set.readRecord(segment, offset);
  }

  /** Where the durable record holding `seq` lies (segment, offset, its first seq); null when not durable. */
  locate(seq: number): Promise<{ segment: number; offset: number; firstSeq: number } | null> {
    return this.set.locate(seq, this.durableSeq);
  }

  /** Durable records from the one holding `fromSeq`, in order, up to `toSeq`, about `maxBytes` (at least one). */
  readFrom(fromSeq: number, toSeq: number, maxBytes: number): Promise<RecordAt[]> {
    return this.set.readFrom(fromSeq, toSeq, maxBytes, this.durableSeq);
  }

  /** The newest durable batch of `key`, or null. */
  findLatest(key: Uint8Array): ReturnType<SegmentSet['findLatest']> {
    return this.set.findLatest(key);
  }

  // -------------------------------------------------------------------------------------------
  // truncateAfter

  /**
   * Durably removes every record after `seq` (a speculative tail): `seq` must end a record, be at or
   * above the ack barrier, and nothing may be queued or flushing. The log must be reopened after it
   * (ShardLog.open), which rebuilds every index exactly as if those records had never been written.
   */
  async truncateAfter(seq: number): Promise<void> {
    if (this.flushing || this.queue.length > 0) throw new Error('internal: truncateAfter while writes are queued or flushing');
    if (seq < this.ackedSeq) {
      throw new TruncateRefusedError(`shard ${this.opts.shard}: refusing to truncate after seq ${seq}: records up to seq ${this.ackedSeq} were acknowledged (the ack barrier)`);
    }
    if (seq >= this.durableSeq) return;
    const at = await this.locate(seq + 1);
    if (at === null) throw new Error(`internal: seq ${seq + 1} is durable but cannot be located`);
    if (at.firstSeq !== seq + 1) throw new RangeError(`shard ${this.opts.shard}: seq ${seq} is inside a record (which starts at seq ${at.firstSeq}); truncate at a record boundary`);
    this.flushing = true;
    try {
      const seg = this.set.map.get(at.segment)!;
      const lastIndex = this.set.order[this.set.order.length - 1]!;
      // 1. Mark the cut in the segment's header: from here on, recovery ends the log there.
      encodeSegmentHeader(this.headerBuf, {
        ...seg.header,
        durableEnd: Math.min(seg.header.durableEnd, at.offset),
        durableSeq: Math.min(seg.header.durableSeq, seq),
        ackedSeq: this.ackedSeq,
        truncatedAt: at.offset,
      });
      await seg.file.writeAndSync([{ offset: 0, buf: this.headerBuf }]);
      seg.lastSeq = seq;
      // 2. Later segments, and this one's sidecar, go.
      for (let i = lastIndex; i > at.segment; i--) {
        const s = this.set.map.get(i)!;
        await s.file.close();
        this.set.map.delete(i);
        await this.opts.disk.remove(s.path);
        await this.opts.disk.remove(sidecarPath(s.path));
      }
      if (this.spare !== null) {
        await this.spare.file.close();
        await this.opts.disk.remove(this.spare.path);
        this.spare = null;
      }
      await this.opts.disk.remove(sidecarPath(seg.path));
      await this.opts.disk.syncDir(this.opts.dir);
      // 3. Zero what lay after the cut (footer included), so no old record can be read back.
      const to = seg.footer !== null ? seg.sizeBytes : Math.max(seg.writtenHigh, alignUp(seg.end));
      await this.zeroFrom(seg, at.offset, to);
      // 4. The cut is complete.
      seg.end = at.offset;
      seg.footer = null;
      seg.header = { ...seg.header, durableEnd: Math.min(seg.header.durableEnd, at.offset) };
      encodeSegmentHeader(this.headerBuf, { ...seg.header, durableEnd: at.offset, durableSeq: seq, ackedSeq: this.ackedSeq, truncatedAt: 0 });
      await seg.file.writeAndSync([{ offset: 0, buf: this.headerBuf }]);
      this.opts.log(`shard ${this.opts.shard}: truncated after seq ${seq} (removed seqs ${seq + 1}..${this.durableSeq})`);
    } finally {
      this.flushing = false;
    }
  }

  /** Writes zeros over [from, to) of a segment (the partial block at `from` keeps its prefix), then fdatasync. */
  private async zeroFrom(seg: Segment, from: number, to: number): Promise<void> {
    const blockStart = alignDown(from);
    let at = blockStart;
    const end = alignUp(to);
    const writes: { offset: number; buf: Uint8Array }[] = [];
    if (from > blockStart) {
      const head = this.opts.disk.allocAligned(IO_ALIGN_BYTES);
      head.set((await seg.file.read(blockStart, from - blockStart)).subarray(0, from - blockStart));
      writes.push({ offset: blockStart, buf: head });
      at += IO_ALIGN_BYTES;
    }
    const zeros = this.opts.disk.allocAligned(ZERO_CHUNK_BYTES);
    while (at < end) {
      const len = Math.min(ZERO_CHUNK_BYTES, end - at);
      writes.push({ offset: at, buf: zeros.subarray(0, len) });
      at += len;
      if (writes.length >= 16) {
        await seg.file.writeAndSync(writes.splice(0));
      }
    }
    if (writes.length > 0) await seg.file.writeAndSync(writes);
    seg.writtenHigh = from;
    const tailFrom = alignDown(from);
    seg.tail = tailFrom < from ? (await seg.file.read(tailFrom, from - tailFrom)).slice() : new Uint8Array(0);
  }

  async close(): Promise<void> {
    this.closed = true;
    this.cancelSpareRetry?.();
    if (this.spareMaking !== null) await this.spareMaking.catch(() => {});
    if (this.spare !== null) {
      await this.spare.file.close();
      this.spare = null;
    }
    for (const s of this.set.map.values()) await s.file.close();
    this.set.map.clear();
  }
}

// Per-segment indexes: "where is the newest record of this aggregate in this segment?" (key index,
// behind a bloom filter) and "where is the record holding seq S?" (seq index, for reads by
// position and for following an aggregate's prevSeq links), each answered in O(log n).
//
// The active segment keeps them in memory (ActiveIndex: typed arrays for seqs and offsets, a Map
// of 52-bit key hash → newest record offset, a bloom). When a segment is sealed they are written
// beside it as `NNNNNNNNNN.idx` and only a summary stays in memory (SealedIndex). The sidecar is
// derived data, rebuilt from the segment when missing or damaged; its summary's CRC is stored in
// the segment's footer, so a sidecar that loads at startup is the one the segment was sealed with.
//
// Sidecar layout (big-endian):
//   summary: 0 u32 CRC32C of summary bytes [4, summaryBytes) | 4 u32 magic "CID2" | 8 u32 segment
//            index | 12 u32 record count | 16 u32 key count | 20 u32 bloom bytes | 24 u32 key pages
//            | 28 u32 seq pages | 32 u64 records end | 40 u64 first seq | 48..64 zero
//            | bloom bits | key fences (u64 first hash of each key page) | seq fences (u64 first
//            seq of each seq page)
//   pages, from the first 4 KiB boundary after the summary: key pages, then seq pages; each page
//   holds up to 341 entries of 12 bytes (u64 hash | u32 offset, sorted by hash; or u64 first seq |
//   u32 offset, in log order) and ends with the CRC32C of its first 4092 bytes.
import { crc32c } from './checksum.ts';
import { Bloom } from './bloom.ts';
import type { Disk } from './disk.ts';

const IDX_MAGIC = 0x43494432; // "CID2"
const SUMMARY_HEADER_BYTES = 64;
const PAGE_BYTES = 4096;
const ENTRY_BYTES = 12;
const ENTRIES_PER_PAGE = 341;

export function sidecarPath(segmentPath: string): string {
  return segmentPath.replace(/\.seg$/, '.idx');
}

/** A sidecar page failed its CRC: the caller falls back to scanning the segment. */
export class SidecarDamagedError extends Error {
  override name = 'SidecarDamagedError';
}

/** The active segment's indexes, in memory. */
export class ActiveIndex {
  readonly bloom: Bloom;
  readonly keys = new Map<number, number>();
  private seqs = new Float64Array(1024);
  private offs = new Float64Array(1024);
  count = 0;

  constructor(bloomBits: number, bloomHashes: number) {
    this.bloom = new Bloom(bloomBits, bloomHashes);
  }

  /** Adds a record (records arrive in log order). */
  add(firstSeq: number, offset: number, keyHashes: readonly number[], keys: readonly Uint8Array[]): void {
    if (this.count === this.seqs.length) {
      const s = new Float64Array(this.count * 2);
      s.set(this.seqs);
      this.seqs = s;
      const o = new Float64Array(this.count * 2);
      o.set(this.offs);
      this.offs = o;
    }
    this.seqs[this.count] = firstSeq;
    this.offs[this.count] = offset;
    this.count++;
    for (let i = 0; i < keys.length; i++) {
      this.bloom.add(keys[i]!);
      this.keys.set(keyHashes[i]!, offset);
    }
  }

  /** Offset of the record that holds `seq`, or null when it is before this segment's first. */
  locate(seq: number): { offset: number; firstSeq: number } | null {
    const i = lastAtOrBelow(this.seqs, this.count, seq);
    return i < 0 ? null : { offset: this.offs[i]!, firstSeq: this.seqs[i]! };
  }

  /** Every record as [firstSeq, offset], in log order. */
  entries(): [number, number][] {
    const out: [number, number][] = [];
    for (let i = 0; i < this.count; i++) out.push([this.seqs[i]!, this.offs[i]!]);
    return out;
  }

  /** Bytes held (for memory accounting). */
  get bytes(): number {
    return this.bloom.bytes + this.seqs.byteLength * 2 + this.keys.size * 40;
  }
}

function lastAtOrBelow(a: Float64Array, n: number, x: number): number {
  let lo = 0;
  let hi = n - 1;
  if (n === 0 || x < a[0]!) return -1;
  while (lo < hi) {
    const mid = (lo + hi + 1) >> 1;
    if (a[mid]! <= x) lo = mid;
    else hi = mid - 1;
  }
  return lo;
}

/** The deterministic bytes of a sidecar for `idx` (same index → same bytes, so the same CRC). */
export function encodeSidecar(idx: ActiveIndex, segIndex: number, recordsEnd: number, firstSeq: number): { bytes: Uint8Array; summaryBytes: number; summaryCrc: number } {
  const keys = [...idx.keys.entries()].sort((a, b) => a[0] - b[0]);
  const seqs = idx.entries();
  const keyPages = Math.ceil(keys.length / ENTRIES_PER_PAGE);
  const seqPages = Math.ceil(seqs.length / ENTRIES_PER_PAGE);
  const bloomBytes = new Uint8Array(idx.bloom.bits.buffer, idx.bloom.bits.byteOffset, idx.bloom.bits.byteLength);
  const summaryBytes = SUMMARY_HEADER_BYTES + bloomBytes.length + 8 * (keyPages + seqPages);
  const pagesAt = Math.ceil(summaryBytes / PAGE_BYTES) * PAGE_BYTES;
  const buf = new Uint8Array(pagesAt + PAGE_BYTES * (keyPages + seqPages));
  const v = new DataView(buf.buffer);
  v.setUint32(4, IDX_MAGIC);
  v.setUint32(8, segIndex);
  v.setUint32(12, seqs.length);
  v.setUint32(16, keys.length);
  v.setUint32(20, bloomBytes.length);
  v.setUint32(24, keyPages);
  v.setUint32(28, seqPages);
  v.setBigUint64(32, BigInt(recordsEnd));
  v.setBigUint64(40, BigInt(firstSeq));
  buf.set(bloomBytes, SUMMARY_HEADER_BYTES);
  let fence = SUMMARY_HEADER_BYTES + bloomBytes.length;
  const writePages = (entries: [number, number][], firstPage: number): void => {
    for (let p = 0; p * ENTRIES_PER_PAGE < entries.length; p++) {
      const base = pagesAt + (firstPage + p) * PAGE_BYTES;
      const n = Math.min(ENTRIES_PER_PAGE, entries.length - p * ENTRIES_PER_PAGE);
      for (let i = 0; i < n; i++) {
        const [a, off] = entries[p * ENTRIES_PER_PAGE + i]!;
        v.setBigUint64(base + i * ENTRY_BYTES, BigInt(a));
        v.setUint32(base + i * ENTRY_BYTES + 8, off);
      }
      v.setUint32(base + PAGE_BYTES - 4, crc32c(buf.subarray(base, base + PAGE_BYTES - 4)));
      v.setBigUint64(fence, BigInt(entries[p * ENTRIES_PER_PAGE]![0]));
      fence += 8;
    }
  };
  writePages(keys, 0);
  writePages(seqs, keyPages);
  const summaryCrc = crc32c(buf.subarray(4, summaryBytes));
  v.setUint32(0, summaryCrc);
  return { bytes: buf, summaryBytes, summaryCrc };
}

/** A sealed segment's indexes: the summary in memory, pages read on demand. */
export class SealedIndex {
  readonly bloom: Bloom;
  readonly disk: Disk;
  readonly path: string;
  readonly keyCount: number;
  readonly recordCount: number;
  readonly keyFences: Float64Array;
  readonly seqFences: Float64Array;
  readonly pagesAt: number;
  private constructor(disk: Disk, path: string, bloom: Bloom, keyCount: number, recordCount: number, keyFences: Float64Array, seqFences: Float64Array, pagesAt: number) {
    this.disk = disk;
    this.path = path;
    this.bloom = bloom;
    this.keyCount = keyCount;
    this.recordCount = recordCount;
    this.keyFences = keyFences;
    this.seqFences = seqFences;
    this.pagesAt = pagesAt;
  }

  /** Writes an encoded sidecar (encodeSidecar) durably and returns its index, parsed from the bytes in hand. */
  static async write(disk: Disk, path: string, enc: { bytes: Uint8Array; summaryBytes: number }, bloomBits: number, bloomHashes: number): Promise<SealedIndex> {
    await disk.writeFileDurable(path, enc.bytes);
    const loaded = SealedIndex.parse(disk, path, enc.bytes.subarray(0, enc.summaryBytes), bloomBits, bloomHashes);
    if (loaded === null) throw new Error(`internal: the sidecar just encoded for ${path} does not parse`);
    return loaded;
  }

  /** Loads a sidecar's summary; null when missing, damaged or not the one the footer vouches for. */
  static async load(disk: Disk, path: string, summaryBytes: number, summaryCrc: number, bloomBits: number, bloomHashes: number): Promise<SealedIndex | null> {
    let buf: Uint8Array;
    try {
      buf = await disk.readRange(path, 0, summaryBytes);
    } catch {
      return null;
    }
    if (buf.length !== summaryBytes || buf.length < SUMMARY_HEADER_BYTES) return null;
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (v.getUint32(0) !== summaryCrc || crc32c(buf.subarray(4)) !== summaryCrc) return null;
    return SealedIndex.parse(disk, path, buf, bloomBits, bloomHashes);
  }

  private static parse(disk: Disk, path: string, summary: Uint8Array, bloomBits: number, bloomHashes: number): SealedIndex | null {
    const v = new DataView(summary.buffer, summary.byteOffset, summary.byteLength);
    if (v.getUint32(4) !== IDX_MAGIC) return null;
    const recordCount = v.getUint32(12);
    const keyCount = v.getUint32(16);
    const bloomBytes = v.getUint32(20);
    const keyPages = v.getUint32(24);
    const seqPages = v.getUint32(28);
    const bloom = new Bloom(bloomBits, bloomHashes);
    if (bloom.bytes !== bloomBytes || summary.length !== SUMMARY_HEADER_BYTES + bloomBytes + 8 * (keyPages + seqPages)) return null;
    new Uint8Array(bloom.bits.buffer).set(summary.subarray(SUMMARY_HEADER_BYTES, SUMMARY_HEADER_BYTES + bloomBytes));
    const fences = (at: number, n: number): Float64Array => {
      const f = new Float64Array(n);
      for (let i = 0; i < n; i++) f[i] = Number(v.getBigUint64(at + 8 * i));
      return f;
    };
    const fAt = SUMMARY_HEADER_BYTES + bloomBytes;
    const pagesAt = Math.ceil(summary.length / PAGE_BYTES) * PAGE_BYTES;
    return new SealedIndex(disk, path, bloom, keyCount, recordCount, fences(fAt, keyPages), fences(fAt + 8 * keyPages, seqPages), pagesAt);
  }

  private async page(p: number, entries: number): Promise<DataView> {
    const buf = await this.disk.readRange(this.path, this.pagesAt + p * PAGE_BYTES, PAGE_BYTES);
    if (buf.length !== PAGE_BYTES) throw new SidecarDamagedError(`${this.path}: page ${p} is cut short`);
    const v = new DataView(buf.buffer, buf.byteOffset, PAGE_BYTES);
    if (v.getUint32(PAGE_BYTES - 4) !== crc32c(buf.subarray(0, PAGE_BYTES - 4))) throw new SidecarDamagedError(`${this.path}: page ${p} fails its checksum`);
    if (entries > ENTRIES_PER_PAGE) throw new SidecarDamagedError(`${this.path}: page ${p} entry count`);
    return v;
  }

  /** The record offset stored for key hash `hash`, or null. One page read. */
  async lookupKey(hash: number): Promise<number | null> {
    const p = lastAtOrBelow(this.keyFences, this.keyFences.length, hash);
    if (p < 0) return null;
    const n = Math.min(ENTRIES_PER_PAGE, this.keyCount - p * ENTRIES_PER_PAGE);
    const v = await this.page(p, n);
    let a = 0;
    let b = n - 1;
    while (a <= b) {
      const m = (a + b) >> 1;
      const h = Number(v.getBigUint64(m * ENTRY_BYTES));
      if (h === hash) return v.getUint32(m * ENTRY_BYTES + 8);
      if (h < hash) a = m + 1;
      else b = m - 1;
    }
    return null;
  }

  /** The record that holds `seq`: its offset and first seq, or null when before the segment. One page read. */
  async locate(seq: number): Promise<{ offset: number; firstSeq: number } | null> {
    const p = lastAtOrBelow(this.seqFences, this.seqFences.length, seq);
    if (p < 0) return null;
    const n = Math.min(ENTRIES_PER_PAGE, this.recordCount - p * ENTRIES_PER_PAGE);
    const v = await this.page(p + this.keyFences.length, n);
    let lo = 0;
    let hi = n - 1;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (Number(v.getBigUint64(mid * ENTRY_BYTES)) <= seq) lo = mid;
      else hi = mid - 1;
    }
    return { offset: v.getUint32(lo * ENTRY_BYTES + 8), firstSeq: Number(v.getBigUint64(lo * ENTRY_BYTES)) };
  }
}

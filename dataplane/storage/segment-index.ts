// Per-segment key index: "where is the newest batch of this aggregate in this segment?", so a cold
// lookup costs one bloom check and one small read per segment instead of a scan of the segment.
//
// The active segment keeps its index in memory (a Map of 52-bit key hash → record offset; bounded
// by the segment's size, not by the number of aggregates in the shard). When a segment is sealed,
// its index is written beside it as `NNNNNNNNNN.idx`, sorted by hash, and only a fence per 4 KiB
// page (the page's first hash) stays in memory. The sidecar is derived data: when it is missing or
// fails its checksum, it is rebuilt from the segment at the next start.
//
// Sidecar layout (big-endian): u32 CRC32C of the rest | u32 magic "CIDX" | u32 entry count |
// u32 end offset of the segment it indexes (a sidecar that does not match its segment's end is
// stale and rebuilt) | entries of 12 bytes (u64 hash, u32 record offset), sorted by hash.
// A hash collision (two keys, one 52-bit hash) only costs a fallback: the caller checks the key in
// the record it reads and scans the segment when it is not the one it wanted.
import { closeSync, fsyncSync, openSync, writeSync, renameSync } from 'node:fs';
import { open, readFile } from 'node:fs/promises';
import { crc32c } from './checksum.ts';

const IDX_MAGIC = 0x43494458; // "CIDX"
const IDX_HEADER_BYTES = 16;
const ENTRY_BYTES = 12;
/** Entries per page of the sidecar: one fence (8 bytes of memory) per page. */
const ENTRIES_PER_PAGE = 341;

export function sidecarPath(segmentPath: string): string {
  return segmentPath.replace(/\.seg$/, '.idx');
}

/** Writes the sorted index of a sealed segment (write to a temp file, fsync, rename). */
export function writeSidecar(path: string, index: Map<number, number>, segmentEnd: number): SealedIndex {
  const entries = [...index.entries()].sort((a, b) => a[0] - b[0]);
  const buf = new Uint8Array(IDX_HEADER_BYTES + entries.length * ENTRY_BYTES);
  const v = new DataView(buf.buffer);
  v.setUint32(4, IDX_MAGIC);
  v.setUint32(8, entries.length);
  v.setUint32(12, segmentEnd);
  let at = IDX_HEADER_BYTES;
  for (const [h, off] of entries) {
    v.setBigUint64(at, BigInt(h));
    v.setUint32(at + 8, off);
    at += ENTRY_BYTES;
  }
  v.setUint32(0, crc32c(buf.subarray(4)));
  const tmp = `${path}.tmp`;
  const fd = openSync(tmp, 'w');
  try {
    writeSync(fd, buf);
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
  renameSync(tmp, path);
  return SealedIndex.fromEntries(path, entries);
}

export class SealedIndex {
  readonly path: string;
  readonly count: number;
  /** First hash of each page of ENTRIES_PER_PAGE entries. */
  readonly fences: Float64Array;

  private constructor(path: string, count: number, fences: Float64Array) {
    this.path = path;
    this.count = count;
    this.fences = fences;
  }

  static fromEntries(path: string, sorted: [number, number][]): SealedIndex {
    const pages = Math.ceil(sorted.length / ENTRIES_PER_PAGE);
    const fences = new Float64Array(pages);
    for (let p = 0; p < pages; p++) fences[p] = sorted[p * ENTRIES_PER_PAGE]![0];
    return new SealedIndex(path, sorted.length, fences);
  }

  /** Loads a sidecar; null when it is missing, damaged or not for a segment ending at `segmentEnd`. */
  static async load(path: string, segmentEnd: number): Promise<SealedIndex | null> {
    let buf: Uint8Array;
    try {
      buf = await readFile(path);
    } catch {
      return null;
    }
    if (buf.length < IDX_HEADER_BYTES) return null;
    const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    if (v.getUint32(4) !== IDX_MAGIC) return null;
    const count = v.getUint32(8);
    if (v.getUint32(12) !== segmentEnd) return null;
    if (buf.length !== IDX_HEADER_BYTES + count * ENTRY_BYTES) return null;
    if (v.getUint32(0) !== crc32c(buf.subarray(4))) return null;
    const pages = Math.ceil(count / ENTRIES_PER_PAGE);
    const fences = new Float64Array(pages);
    for (let p = 0; p < pages; p++) fences[p] = Number(v.getBigUint64(IDX_HEADER_BYTES + p * ENTRIES_PER_PAGE * ENTRY_BYTES));
    return new SealedIndex(path, count, fences);
  }

  /** The record offset stored for `hash`, or null. One page read. */
  async lookup(hash: number): Promise<number | null> {
    // Last page whose fence is <= hash.
    let lo = 0;
    let hi = this.fences.length - 1;
    if (hi < 0 || hash < this.fences[0]!) return null;
    while (lo < hi) {
      const mid = (lo + hi + 1) >> 1;
      if (this.fences[mid]! <= hash) lo = mid;
      else hi = mid - 1;
    }
    const first = lo * ENTRIES_PER_PAGE;
    const n = Math.min(ENTRIES_PER_PAGE, this.count - first);
    const page = new Uint8Array(n * ENTRY_BYTES);
    const fh = await open(this.path, 'r');
    try {
      await fh.read(page, 0, page.length, IDX_HEADER_BYTES + first * ENTRY_BYTES);
    } finally {
      await fh.close();
    }
    const v = new DataView(page.buffer);
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
}

// The file model of the simulated disk (sim-disk.ts): an inode's visible image (what reads
// return, like a page cache) apart from its durable image, the unsynced writes between them, and
// what write, fsync, a failed fsync and read do to them.

/** Sector of the device: the unit that survives a power cut wholly old or wholly new. */
export const SECTOR_BYTES = 512;
/** Alignment of segment writes and of allocation (the engine's O_DIRECT block). */
export const BLOCK_BYTES = 4096;

export interface Inode {
  id: number;
  /** Visible image; bytes past `size` are zero. */
  data: Uint8Array;
  size: number;
  /** Durable image; bytes past `durableSize` are zero. */
  durable: Uint8Array;
  durableSize: number;
  /** Writes since the last fsync, in issue order (copies of the caller's bytes). */
  unsynced: { offset: number; bytes: Uint8Array }[];
}

export function emptyInode(id: number): Inode {
  return { id, data: new Uint8Array(0), size: 0, durable: new Uint8Array(0), durableSize: 0, unsynced: [] };
}

export function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function grow(buf: Uint8Array, need: number): Uint8Array {
  if (buf.length >= need) return buf;
  const next = new Uint8Array(Math.max(need, buf.length * 2, BLOCK_BYTES));
  next.set(buf);
  return next;
}

export function writeNow(ino: Inode, offset: number, bytes: Uint8Array): void {
  const end = offset + bytes.length;
  ino.data = grow(ino.data, end);
  ino.data.set(bytes, offset);
  if (end > ino.size) ino.size = end;
  ino.unsynced.push({ offset, bytes: bytes.slice() });
}

export function fsyncNow(ino: Inode): void {
  ino.durable = grow(ino.durable, ino.size);
  for (const w of ino.unsynced) ino.durable.set(w.bytes, w.offset);
  ino.durableSize = ino.size;
  ino.unsynced = [];
}

/** A failed fsync: a seeded subset of the unsynced sectors reached the device, the rest is lost. */
export function fsyncFailed(ino: Inode, rng: () => number): void {
  ino.durable = grow(ino.durable, ino.size);
  let end = ino.durableSize;
  for (const w of ino.unsynced) {
    for (let s = 0; s < w.bytes.length; s += SECTOR_BYTES) {
      if (rng() < 0.5) continue;
      const n = Math.min(SECTOR_BYTES, w.bytes.length - s);
      ino.durable.set(w.bytes.subarray(s, s + n), w.offset + s);
      end = Math.max(end, w.offset + s + n);
    }
  }
  ino.durableSize = end;
  ino.unsynced = [];
}

export function readNow(ino: Inode, offset: number, length: number): Uint8Array {
  const end = Math.min(ino.size, offset + length);
  return end <= offset ? new Uint8Array(0) : ino.data.slice(offset, end);
}

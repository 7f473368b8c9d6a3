// The storage seam: every disk operation of the storage engine (segments, sidecars, metadata
// files, directory listing and fsync, the data-directory lock) goes through `Disk`, and every
// reading of time through `Clock`. Nothing below this line (shard-log.ts, shard.ts, scan.ts,
// segment-index.ts) touches `node:fs` or `Date.now()` itself, so the same engine code runs on the
// real disk (real-disk.ts: O_DIRECT, io_uring or pwrite+fdatasync) and on the simulated disk of
// the power-loss tests (test/sim/sim-disk.ts), which keeps unsynced writes apart and drops or
// tears them on a simulated crash.
//
// Durability contract (what the engine relies on; the simulated disk implements exactly this and
// nothing stronger):
//   - SegmentFile.writeAndSync: the bytes are durable once it resolves. Before that, any subset of
//     the written sectors may survive a crash, each either old or new (never a mix inside a 512-byte
//     sector).
//   - writeFileDurable: after it resolves the file exists under its name with exactly those bytes.
//     A crash before that leaves either the old file (or none) or the new one, never a mix.
//   - rename, remove, and creating a file are durable only after syncDir(dir of the name) resolves.
//   - A read returns what was last written (synced or not), like a page cache.
import type { SegmentFile } from './io.ts';

export type { SegmentFile, AlignedWrite } from './io.ts';

/** An error from the disk with the errno-style code the engine branches on. */
export interface DiskError extends Error {
  code?: string;
}

export function errorCode(e: unknown): string | undefined {
  return typeof e === 'object' && e !== null && 'code' in e && typeof (e as { code: unknown }).code === 'string' ? (e as { code: string }).code : undefined;
}

/** ENOSPC (and EDQUOT): the disk is full; the operation may succeed once space is freed. */
export function isDiskFull(e: unknown): boolean {
  const c = errorCode(e);
  return c === 'ENOSPC' || c === 'EDQUOT';
}

export interface Disk {
  /** True when segment files bypass the page cache (O_DIRECT). */
  readonly direct: boolean;
  /** A zeroed, 4096-aligned buffer of `size` bytes (rounded up to 4096). */
  allocAligned(size: number): Uint8Array;
  /**
   * Opens a segment file. With `create`, a missing file is created and made `sizeBytes` long by
   * writing zeros (the zeros are durable and the name is synced before it resolves); an existing
   * shorter file is extended the same way. Without `create`, a missing file throws ENOENT.
   */
  openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile>;
  /** Creates a directory and its parents (durable: the parent is synced). */
  mkdirp(dir: string): Promise<void>;
  /** Names in a directory (files and directories), unsorted; [] when it does not exist. */
  list(dir: string): Promise<string[]>;
  /** The whole file, or null when it does not exist. Buffered read (not O_DIRECT). */
  readFile(path: string): Promise<Uint8Array | null>;
  /** `length` bytes at `offset` of a small file (sidecars), buffered; short at end of file. */
  readRange(path: string, offset: number, length: number): Promise<Uint8Array>;
  /** Writes a whole file durably and atomically: temp file, fsync, rename, fsync of the directory. */
  writeFileDurable(path: string, bytes: Uint8Array): Promise<void>;
  /** Renames a file; durable once syncDir(dirname) resolved. */
  rename(from: string, to: string): Promise<void>;
  /** Removes a file if it exists; durable once syncDir(dirname) resolved. */
  remove(path: string): Promise<void>;
  /** fsync of a directory: names created, renamed or removed in it survive a crash. */
  syncDir(dir: string): Promise<void>;
  /**
   * Takes an exclusive OS lock on `path` (created if missing; flock on the real disk), or throws
   * DataDirLockedError when another open file description holds it. The lock dies with the
   * process (kill -9 included), and the holder's pid is never consulted: in containers every
   * process may be PID 1.
   */
  lock(path: string): Promise<{ release(): Promise<void> }>;
}

/** Another process (or another open of the same directory) holds the data-directory lock. */
export class DataDirLockedError extends Error {
  override name = 'DataDirLockedError';
}

/** Time, behind one interface so the simulator can drive it. */
export interface Clock {
  /** Wall-clock milliseconds since the epoch (record timestamps). */
  nowMs(): number;
  /** Monotonic milliseconds (intervals, timeouts). */
  monoMs(): number;
  /** Calls `fn` after `ms`; returns a cancel function. Timers must not keep the process alive. */
  after(ms: number, fn: () => void): () => void;
}

export const systemClock: Clock = {
  nowMs: () => Date.now(),
  monoMs: () => performance.now(),
  after(ms, fn) {
    const t = setTimeout(fn, ms);
    t.unref();
    return () => clearTimeout(t);
  },
};

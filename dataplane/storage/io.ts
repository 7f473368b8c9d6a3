// Disk I/O behind one small interface, so the storage engine never touches fs directly.
// Two implementations: io_uring (native addon, completions on the calling thread's event loop)
// and a synchronous pwrite + fdatasync fallback. Both use O_DIRECT with 4 KiB alignment unless
// the operator explicitly accepts buffered I/O (--unsafe-no-direct-io).

import { closeSync, constants as fsConstants, fstatSync, fsyncSync, mkdirSync, openSync, unlinkSync, writeSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { threadId } from 'node:worker_threads';
import { loadNativeIo, NATIVE_ADDON_PATH } from './io-native.ts';
import { createIoUringBackend } from './io-uring.ts';
import { allocPageAligned, createSyncBackend } from './io-sync.ts';

// CONTRACT (implemented by the io helper; the storage engine codes against it):

/** Alignment of every O_DIRECT offset, length and buffer address. */
export const IO_ALIGN_BYTES = 4096;

export interface AlignedWrite {
  /** Byte offset in the file; multiple of IO_ALIGN_BYTES. */
  offset: number;
  /** Data; length a multiple of IO_ALIGN_BYTES, memory 4096-aligned (from FileIo.allocAligned). */
  buf: Uint8Array;
}

export interface SegmentFile {
  readonly path: string;
  readonly sizeBytes: number;
  /** Writes every buffer at its offset, then one fdatasync. Resolves only after fdatasync returned. */
  writeAndSync(writes: readonly AlignedWrite[]): Promise<void>;
  /** Reads `length` bytes at `offset` (any alignment; the implementation widens to aligned bounds). */
  read(offset: number, length: number): Promise<Uint8Array>;
  close(): Promise<void>;
}

export type IoKind = 'io_uring' | 'sync';

export interface FileIo {
  readonly kind: IoKind;
  /** True when files are opened with O_DIRECT. */
  readonly direct: boolean;
  /** Opens a segment file; with create, makes it `sizeBytes` long by writing zeros (not fallocate). */
  openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile>;
  /** A zeroed, 4096-aligned buffer of `size` bytes (size rounded up to IO_ALIGN_BYTES). */
  allocAligned(size: number): Uint8Array;
  close(): void;
}

/**
 * The rule for the writes of one SegmentFile.writeAndSync (every implementation, the simulated one
 * of the tests included, checks through this): offsets and lengths IO_ALIGN_BYTES-aligned, and
 * nothing past the preallocated size. Throws a RangeError naming the first write that breaks it.
 */
export function checkSegmentWrites(path: string, sizeBytes: number, writes: readonly AlignedWrite[]): void {
  for (const w of writes) {
    const len = w.buf.byteLength;
    if (!Number.isSafeInteger(w.offset) || w.offset < 0 || w.offset % IO_ALIGN_BYTES !== 0 || len % IO_ALIGN_BYTES !== 0) {
      throw new RangeError(`${path}: write at ${w.offset} of ${len} bytes is not ${IO_ALIGN_BYTES}-aligned`);
    }
    // Growing past the preallocated size would bring back the slow extending writes that
    // preallocation exists to avoid (feasibility §3); the engine opens a new segment instead.
    if (w.offset + len > sizeBytes) {
      throw new RangeError(`${path}: write at ${w.offset} of ${len} bytes ends past the segment size ${sizeBytes}`);
    }
  }
}

// IMPLEMENTATION (below the contract; backends in io-uring.ts and io-sync.ts)

/** What a SegmentFile needs from an I/O implementation (io-uring.ts, io-sync.ts). */
export interface IoBackend {
  readonly kind: IoKind;
  /** `size` is already a multiple of IO_ALIGN_BYTES. */
  allocAligned(size: number): Uint8Array;
  writevFsync(fd: number, writes: readonly AlignedWrite[]): Promise<void>;
  /** Fills `buf` from `offset`; resolves with the bytes read (short only at end of file). */
  read(fd: number, buf: Uint8Array, offset: number): Promise<number>;
  /** Keeps the backend's per-thread resources alive for one more user. */
  retain(): void;
  release(): void;
}

/**
 * Zero-fill chunk for preallocation: 1 MiB is large enough that per-call overhead vanishes and no
 * larger than the block layer's default per-request limit (max_sectors_kb: 1280 KiB by default,
 * 4096 KiB on the dev VM), so each chunk stays one device request.
 */
export const PREALLOC_CHUNK_BYTES = 1 << 20;

/**
 * Chunks written per fdatasync while preallocating: 64 (64 MiB) keeps buffered mode
 * (--unsafe-no-direct-io) from piling up a whole segment of dirty pages between syncs; 64 writes
 * per fsync is also the batch size feasibility §3 measured.
 */
export const PREALLOC_CHUNKS_PER_SYNC = 64;

const PROBE_FILE_PREFIX = '.celer-io-probe';

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function errnoCode(err: unknown): string | undefined {
  return typeof err === 'object' && err !== null && 'code' in err && typeof err.code === 'string' ? err.code : undefined;
}

function firstLine(s: string): string {
  return s.split('\n', 1)[0] ?? s;
}

function describe(err: unknown): string {
  return firstLine(err instanceof Error ? err.message : String(err));
}

/** fsync of a directory, so a newly created file's name survives a crash. */
function fsyncDir(dir: string): void {
  const fd = openSync(dir, fsConstants.O_RDONLY | fsConstants.O_DIRECTORY);
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

class Segment implements SegmentFile {
  readonly path: string;
  readonly sizeBytes: number;
  readonly #fd: number;
  readonly #io: IoImpl;
  readonly #inflight = new Set<Promise<unknown>>();
  #closed = false;

  constructor(path: string, fd: number, sizeBytes: number, io: IoImpl) {
    this.path = path;
    this.#fd = fd;
    this.sizeBytes = sizeBytes;
    this.#io = io;
  }

  #track<T>(p: Promise<T>): Promise<T> {
    this.#inflight.add(p);
    const done = (): void => {
      this.#inflight.delete(p);
    };
    p.then(done, done);
    return p;
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error(`${this.path}: segment is closed`);
  }

  async writeAndSync(writes: readonly AlignedWrite[]): Promise<void> {
    this.#checkOpen();
    checkSegmentWrites(this.path, this.sizeBytes, writes);
    return this.#track(this.#io.backend.writevFsync(this.#fd, writes));
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.#checkOpen();
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new RangeError(`${this.path}: bad read range ${offset}+${length}`);
    }
    if (length === 0) return new Uint8Array(0);
    const start = Math.floor(offset / IO_ALIGN_BYTES) * IO_ALIGN_BYTES;
    const end = roundUp(offset + length, IO_ALIGN_BYTES);
    const buf = this.#io.backend.allocAligned(end - start);
    const got = await this.#track(this.#readFully(buf, start));
    const skip = offset - start;
    return buf.subarray(skip, skip + Math.max(0, Math.min(length, got - skip)));
  }

  /** Reads until `buf` is full or end of file; returns the bytes read. */
  async #readFully(buf: Uint8Array, start: number): Promise<number> {
    let got = 0;
    while (got < buf.byteLength) {
      const n = await this.#io.backend.read(this.#fd, buf.subarray(got), start + got);
      got += n;
      // 0 is end of file; an unaligned count means the file ended inside that block, and an
      // O_DIRECT read could not continue from there anyway.
      if (n === 0 || got % IO_ALIGN_BYTES !== 0) break;
    }
    return got;
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    this.#closed = true;
    // The kernel may still hold queued I/O on this fd; closing it first could let a new file
    // reuse the number while those requests are waiting.
    await Promise.allSettled([...this.#inflight]);
    closeSync(this.#fd);
    this.#io.backend.release();
  }
}

class IoImpl implements FileIo {
  readonly kind: IoKind;
  readonly direct: boolean;
  readonly backend: IoBackend;
  #closed = false;

  constructor(backend: IoBackend, direct: boolean) {
    this.backend = backend;
    this.kind = backend.kind;
    this.direct = direct;
  }

  allocAligned(size: number): Uint8Array {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`allocAligned: bad size ${size}`);
    return this.backend.allocAligned(Math.max(IO_ALIGN_BYTES, roundUp(size, IO_ALIGN_BYTES)));
  }

  async openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile> {
    if (this.#closed) throw new Error('FileIo is closed');
    if (opts.create && (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0 || opts.sizeBytes % IO_ALIGN_BYTES !== 0)) {
      throw new RangeError(`${path}: segment size ${opts.sizeBytes} is not a positive multiple of ${IO_ALIGN_BYTES}`);
    }
    const base = fsConstants.O_RDWR | (this.direct ? fsConstants.O_DIRECT : 0);
    let fd: number;
    let created = false;
    try {
      fd = openSync(path, base);
    } catch (err) {
      if (!opts.create || errnoCode(err) !== 'ENOENT') throw err;
      fd = openSync(path, base | fsConstants.O_CREAT | fsConstants.O_EXCL, 0o644);
      created = true;
    }
    this.backend.retain();
    let segment: Segment | undefined;
    try {
      let size = fstatSync(fd).size;
      if (opts.create && size < opts.sizeBytes) {
        await this.#zeroFill(fd, size, opts.sizeBytes);
        size = opts.sizeBytes;
      }
      if (created) fsyncDir(dirname(path));
      segment = new Segment(path, fd, size, this);
      return segment;
    } finally {
      if (segment === undefined) {
        closeSync(fd);
        this.backend.release();
      }
    }
  }

  /**
   * Extends a segment from `from` to `to` bytes by writing zeros, so every block is allocated and
   * written before the first append: fallocate alone leaves unwritten extents, whose conversion on
   * each later write halved throughput in feasibility §3.
   */
  async #zeroFill(fd: number, from: number, to: number): Promise<void> {
    let at = Math.floor(from / IO_ALIGN_BYTES) * IO_ALIGN_BYTES;
    const writes: AlignedWrite[] = [];
    if (at < from) {
      // A crash mid-preallocation can leave a partial last block; keep its bytes, zero the rest.
      const block = this.backend.allocAligned(IO_ALIGN_BYTES);
      await this.backend.read(fd, block, at);
      writes.push({ offset: at, buf: block });
      at += IO_ALIGN_BYTES;
    }
    const zeros = this.backend.allocAligned(Math.min(PREALLOC_CHUNK_BYTES, roundUp(to - at, IO_ALIGN_BYTES)));
    while (at < to) {
      const len = Math.min(zeros.byteLength, to - at);
      writes.push({ offset: at, buf: len === zeros.byteLength ? zeros : zeros.subarray(0, len) });
      at += len;
      if (writes.length === PREALLOC_CHUNKS_PER_SYNC) {
        await this.backend.writevFsync(fd, writes);
        writes.length = 0;
      }
    }
    // Also runs with no writes left, so the final size is durable before the segment is used.
    await this.backend.writevFsync(fd, writes);
  }

  close(): void {
    if (this.#closed) return;
    this.#closed = true;
    this.backend.release();
  }
}

type DirectProbe = { honoured: true } | { honoured: false; reason: string };

/**
 * Does this filesystem really do O_DIRECT? Open must accept the flag, an aligned write must work,
 * and a misaligned one must fail with EINVAL: tmpfs (Linux ≥ 6.6) accepts the flag but silently
 * buffers, so the open alone proves nothing.
 */
function probeDirect(path: string, block: Uint8Array): DirectProbe {
  let fd: number;
  try {
    fd = openSync(path, fsConstants.O_RDWR | fsConstants.O_CREAT | fsConstants.O_TRUNC | fsConstants.O_DIRECT, 0o600);
  } catch (err) {
    if (errnoCode(err) === 'EINVAL') return { honoured: false, reason: 'open with O_DIRECT failed with EINVAL' };
    throw err;
  }
  try {
    try {
      writeSync(fd, block, 0, IO_ALIGN_BYTES, 0);
    } catch (err) {
      if (errnoCode(err) === 'EINVAL') {
        return { honoured: false, reason: `an aligned ${IO_ALIGN_BYTES}-byte O_DIRECT write failed with EINVAL` };
      }
      throw err;
    }
    try {
      // Offset 1 is misaligned for every block size, so a filesystem doing direct I/O must refuse.
      writeSync(fd, block, 0, IO_ALIGN_BYTES, 1);
    } catch (err) {
      if (errnoCode(err) === 'EINVAL') return { honoured: true };
      throw err;
    }
    return { honoured: false, reason: 'a misaligned O_DIRECT write succeeded, so the page cache is still in use' };
  } finally {
    closeSync(fd);
  }
}

/**
 * Checks `dir` and picks the I/O implementation:
 * - O_DIRECT must be honoured; otherwise this throws, unless `unsafeNoDirectIo` (the
 *   --unsafe-no-direct-io flag) accepts buffered I/O + fdatasync, with a warning.
 * - io_uring (the dataplane/native addon) unless `forceSync` (default: CELER_IO=sync in the
 *   environment); when the addon cannot load or the kernel refuses io_uring, falls back to
 *   synchronous pwrite + fdatasync, with a warning.
 */
export async function openFileIo(opts: {
  dir: string;
  unsafeNoDirectIo?: boolean;
  forceSync?: boolean;
  log?: (msg: string) => void;
}): Promise<FileIo> {
  const log = opts.log ?? ((msg: string) => console.warn(msg));
  const forceSync = opts.forceSync ?? process.env['CELER_IO'] === 'sync';
  mkdirSync(opts.dir, { recursive: true });

  const loaded = loadNativeIo();
  const alloc = loaded.ok
    ? (size: number) => new Uint8Array(loaded.native.allocAligned(size), 0, size)
    : allocPageAligned;

  const probePath = join(opts.dir, `${PROBE_FILE_PREFIX}-${process.pid}-${threadId}`);
  try {
    const block = alloc(IO_ALIGN_BYTES);
    const probe = probeDirect(probePath, block);
    if (!probe.honoured) {
      if (!opts.unsafeNoDirectIo) {
        throw new Error(
          `Data directory ${opts.dir} is on a filesystem that ignores or refuses O_DIRECT (${probe.reason}), ` +
            'as tmpfs does. Celer needs O_DIRECT so that acknowledged writes do not depend on the page cache. ' +
            'Use a directory on a disk-backed filesystem such as ext4 or XFS, or pass --unsafe-no-direct-io ' +
            'to start anyway with buffered I/O plus fdatasync.',
        );
      }
      log(
        `WARNING: ${opts.dir}: the filesystem ignores or refuses O_DIRECT (${probe.reason}); ` +
          '--unsafe-no-direct-io given, so using buffered I/O plus fdatasync.',
      );
    }
    const direct = probe.honoured;
    if (forceSync) return new IoImpl(createSyncBackend(alloc), direct);

    const fallback = (why: string): FileIo => {
      log(
        `WARNING: io_uring unavailable (${why}); using synchronous pwrite + fdatasync, ` +
          "which blocks this thread's event loop during every sync.",
      );
      return new IoImpl(createSyncBackend(alloc), direct);
    };
    if (!loaded.ok) return fallback(`cannot load ${NATIVE_ADDON_PATH}: ${firstLine(loaded.error.message)}; build it with hack/build-native.sh`);
    let backend: IoBackend;
    try {
      backend = createIoUringBackend(loaded.native);
    } catch (err) {
      const code = errnoCode(err);
      const hint = code === 'EPERM' || code === 'ENOSYS' ? '; blocked by seccomp (containers) or kernel.io_uring_disabled?' : '';
      return fallback(`${describe(err)}${hint}`);
    }
    // A kernel that sets up rings but lacks IORING_OP_WRITE/READ (before 5.6) fails here instead.
    // O_CREAT: a filesystem that refused the O_DIRECT open left no probe file behind.
    const fd = openSync(probePath, fsConstants.O_RDWR | fsConstants.O_CREAT | (direct ? fsConstants.O_DIRECT : 0), 0o600);
    try {
      await backend.writevFsync(fd, [{ offset: 0, buf: block }]);
      const got = await backend.read(fd, block, 0);
      if (got !== IO_ALIGN_BYTES) throw new Error(`probe read returned ${got} bytes`);
    } catch (err) {
      backend.release();
      return fallback(`probe write/read through io_uring failed: ${describe(err)}`);
    } finally {
      closeSync(fd);
    }
    return new IoImpl(backend, direct);
  } finally {
    try {
      unlinkSync(probePath);
    } catch {
      // Never created (open failed) or already gone.
    }
  }
}

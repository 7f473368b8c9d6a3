// Disk I/O behind one small interface, so the storage engine never touches fs directly.
// Two implementations: io_uring (native addon, completions on the calling thread's event loop)
// and a synchronous pwrite + fdatasync fallback. Both use O_DIRECT with 4 KiB alignment unless
// the operator explicitly accepts buffered I/O (--unsafe-no-direct-io).
//
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

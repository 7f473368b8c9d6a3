// io_uring implementation: a thin adapter over the addon's per-thread ring (dataplane/native).
import type { AlignedWrite, IoBackend } from './io.ts';
import type { NativeIo } from './io-native.ts';

/**
 * Submission-queue entries per thread's ring. Group commit sends up to 64 writes + 1 fsync per
 * batch (the batch size feasibility §3 measured at ~100 k writes/s), and each batch is one linked
 * chain that must fit in the ring whole, so 256 holds several batches plus the reads between them.
 * Submissions beyond this wait in the addon's queue instead of failing; a single call longer than
 * the ring is split there (writes first, the fsync once they all succeeded).
 */
export const IO_URING_SQ_ENTRIES = 256;

/** Takes one reference on this thread's ring; throws when the kernel refuses io_uring. */
export function createIoUringBackend(native: NativeIo): IoBackend {
  native.ringAcquire(IO_URING_SQ_ENTRIES);
  return {
    kind: 'io_uring',
    allocAligned: (size: number) => new Uint8Array(native.allocAligned(size), 0, size),
    writevFsync(fd: number, writes: readonly AlignedWrite[]): Promise<void> {
      const offsets: number[] = [];
      const bufs: Uint8Array[] = [];
      for (const w of writes) {
        offsets.push(w.offset);
        bufs.push(w.buf);
      }
      return native.writevFsync(fd, offsets, bufs);
    },
    read: (fd: number, buf: Uint8Array, offset: number) => native.read(fd, buf, offset),
    retain: () => native.ringAcquire(IO_URING_SQ_ENTRIES),
    release: () => native.ringRelease(),
  };
}

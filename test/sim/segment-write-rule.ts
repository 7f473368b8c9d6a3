// The rule for the writes of one SegmentFile.writeAndSync, as dataplane/storage/io.ts (the real
// segment, IoSegment.writeAndSync) enforces it: offsets and lengths IO_ALIGN_BYTES-aligned, nothing
// past the preallocated size. The simulated segment (sim-segment.ts) checks through this helper so
// it refuses exactly what the real one does, with the same messages.
import { IO_ALIGN_BYTES, type AlignedWrite } from '../../dataplane/storage/io.ts';

/** Throws the RangeError io.ts throws for the first write of `writes` that breaks the rule. */
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

// A Disk (over a RealDisk or a SimDisk) whose segment I/O a test can hold: while `holdFlushes` is
// set every segment writeAndSync waits until released (all at once, or one at a time); while
// `holdReadResults` is set a segment read happens but its result waits in `heldReads`.
import type { AlignedWrite, Disk, SegmentFile } from '../../dataplane/storage/disk.ts';
import { ForwardingDisk } from './forwarding-disk.ts';

export class HoldDisk<D extends Disk = Disk> extends ForwardingDisk<D> {
  holdFlushes = false;
  holdReadResults = false;
  readonly heldReads: (() => void)[] = [];
  private readonly held: (() => void)[] = [];
  get heldFlushes(): number {
    return this.held.length;
  }
  /** Lets every held write go and stops holding. */
  releaseFlushes(): void {
    this.holdFlushes = false;
    for (const r of this.held.splice(0)) r();
  }
  /** Lets the oldest held write go (later ones stay held). */
  releaseOneFlush(): void {
    this.held.shift()?.();
  }
  override async openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile> {
    const f = await this.inner.openSegment(path, opts);
    return {
      path: f.path,
      sizeBytes: f.sizeBytes,
      read: async (offset, length) => {
        const bytes = await f.read(offset, length);
        if (this.holdReadResults) await new Promise<void>((r) => this.heldReads.push(r));
        return bytes;
      },
      writeAndSync: async (writes: readonly AlignedWrite[]) => {
        if (this.holdFlushes) await new Promise<void>((r) => this.held.push(r));
        return f.writeAndSync(writes);
      },
      close: () => f.close(),
    };
  }
}

// The segment file of the simulated disk (sim-disk.ts): SimSegment, the SegmentFile
// openSegment returns, and SegmentOps, what it may do to the disk that opened it. Its
// writeAndSync is two steps (write, then fsync), so a power cut can land between them.
import type { AlignedWrite, SegmentFile } from '../../dataplane/storage/disk.ts';
import { checkSegmentWrites } from '../../dataplane/storage/io.ts';
import type { SimOpKind } from './sim-faults.ts';
import type { Inode } from './sim-file.ts';

export interface SegmentOps {
  step(kind: SimOpKind, path: string): Promise<void>;
  write(ino: Inode, writes: readonly AlignedWrite[]): void;
  fsync(ino: Inode, path: string): Promise<void>;
  read(ino: Inode, offset: number, length: number): Uint8Array;
  hold(ino: Inode, delta: 1 | -1): void;
}

export class SimSegment implements SegmentFile {
  readonly path: string;
  readonly sizeBytes: number;
  readonly #disk: SegmentOps;
  readonly #ino: Inode;
  #closed = false;

  constructor(disk: SegmentOps, path: string, ino: Inode, sizeBytes: number) {
    this.#disk = disk;
    this.path = path;
    this.#ino = ino;
    this.sizeBytes = sizeBytes;
    disk.hold(ino, 1);
  }

  #checkOpen(): void {
    if (this.#closed) throw new Error(`${this.path}: segment is closed`);
  }

  async writeAndSync(writes: readonly AlignedWrite[]): Promise<void> {
    this.#checkOpen();
    checkSegmentWrites(this.path, this.sizeBytes, writes);
    // The buffers belong to the disk until this resolves: they are read when the write step
    // takes effect, not now, so an engine that reuses one too early writes the wrong bytes.
    await this.writeUnsynced(writes);
    await this.fsync();
  }

  /** The write phase of writeAndSync alone (no checks): for deliberately broken disks in tests. */
  async writeUnsynced(writes: readonly AlignedWrite[]): Promise<void> {
    await this.#disk.step('write', this.path);
    this.#checkOpen();
    this.#disk.write(this.#ino, writes);
  }

  /** The fsync phase of writeAndSync alone. */
  async fsync(): Promise<void> {
    await this.#disk.fsync(this.#ino, this.path);
  }

  async read(offset: number, length: number): Promise<Uint8Array> {
    this.#checkOpen();
    if (!Number.isSafeInteger(offset) || offset < 0 || !Number.isSafeInteger(length) || length < 0) {
      throw new RangeError(`${this.path}: bad read range ${offset}+${length}`);
    }
    await this.#disk.step('read', this.path);
    this.#checkOpen();
    return this.#disk.read(this.#ino, offset, length);
  }

  async close(): Promise<void> {
    if (this.#closed) return;
    await this.#disk.step('close', this.path);
    if (this.#closed) return;
    this.#closed = true;
    this.#disk.hold(this.#ino, -1);
  }
}

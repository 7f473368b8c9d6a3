// A Disk that forwards every call to an inner Disk (a RealDisk or a SimDisk). Test wrappers extend
// it and override only what they hook (openSegment to hold or count segment I/O, rename to fail,
// syncDir to skip), instead of each repeating the dozen forwarding methods.
import type { Disk, SegmentFile } from '../../dataplane/storage/disk.ts';

export class ForwardingDisk<D extends Disk = Disk> implements Disk {
  readonly inner: D;
  constructor(inner: D) {
    this.inner = inner;
  }
  get direct(): boolean {
    return this.inner.direct;
  }
  allocAligned(size: number): Uint8Array {
    return this.inner.allocAligned(size);
  }
  openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile> {
    return this.inner.openSegment(path, opts);
  }
  mkdirp(dir: string): Promise<void> {
    return this.inner.mkdirp(dir);
  }
  list(dir: string): Promise<string[]> {
    return this.inner.list(dir);
  }
  readFile(path: string): Promise<Uint8Array | null> {
    return this.inner.readFile(path);
  }
  readRange(path: string, offset: number, length: number): Promise<Uint8Array> {
    return this.inner.readRange(path, offset, length);
  }
  writeFileDurable(path: string, bytes: Uint8Array): Promise<void> {
    return this.inner.writeFileDurable(path, bytes);
  }
  rename(from: string, to: string): Promise<void> {
    return this.inner.rename(from, to);
  }
  remove(path: string): Promise<void> {
    return this.inner.remove(path);
  }
  syncDir(dir: string): Promise<void> {
    return this.inner.syncDir(dir);
  }
  lock(path: string): Promise<{ release(): Promise<void> }> {
    return this.inner.lock(path);
  }
}

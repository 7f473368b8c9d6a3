// The real disk behind the storage seam (disk.ts): segments through FileIo (O_DIRECT, io_uring or
// pwrite + fdatasync), everything else through node:fs with explicit fsyncs. The only module of the
// engine that imports node:fs for data files.
import { constants as fsConstants } from 'node:fs';
import { mkdir, open, readdir, readFile, rename, rm } from 'node:fs/promises';
import { dirname } from 'node:path';
import { errorCode, type Disk } from './disk.ts';
import type { FileIo, SegmentFile } from './io.ts';
import { lockDataDir } from './lock.ts';

async function fsyncPath(path: string, directory: boolean): Promise<void> {
  const fh = await open(path, directory ? fsConstants.O_RDONLY | fsConstants.O_DIRECTORY : fsConstants.O_RDONLY);
  try {
    await fh.sync();
  } finally {
    await fh.close();
  }
}

export class RealDisk implements Disk {
  readonly io: FileIo;

  constructor(io: FileIo) {
    this.io = io;
  }

  get direct(): boolean {
    return this.io.direct;
  }

  allocAligned(size: number): Uint8Array {
    return this.io.allocAligned(size);
  }

  openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile> {
    return this.io.openSegment(path, opts);
  }

  async mkdirp(dir: string): Promise<void> {
    const made = await mkdir(dir, { recursive: true });
    if (made !== undefined) await fsyncPath(dirname(made), true);
  }

  async list(dir: string): Promise<string[]> {
    try {
      return await readdir(dir);
    } catch (e) {
      if (errorCode(e) === 'ENOENT') return [];
      throw e;
    }
  }

  async readFile(path: string): Promise<Uint8Array | null> {
    try {
      return new Uint8Array(await readFile(path));
    } catch (e) {
      if (errorCode(e) === 'ENOENT') return null;
      throw e;
    }
  }

  async readRange(path: string, offset: number, length: number): Promise<Uint8Array> {
    const fh = await open(path, 'r');
    try {
      const buf = new Uint8Array(length);
      const { bytesRead } = await fh.read(buf, 0, length, offset);
      return buf.subarray(0, bytesRead);
    } finally {
      await fh.close();
    }
  }

  async writeFileDurable(path: string, bytes: Uint8Array): Promise<void> {
    const tmp = `${path}.tmp`;
    const fh = await open(tmp, 'w');
    try {
      await fh.writeFile(bytes);
      await fh.sync();
    } finally {
      await fh.close();
    }
    await rename(tmp, path);
    await this.syncDir(dirname(path));
  }

  async rename(from: string, to: string): Promise<void> {
    await rename(from, to);
  }

  async remove(path: string): Promise<void> {
    await rm(path, { force: true });
  }

  async syncDir(dir: string): Promise<void> {
    await fsyncPath(dir, true);
  }

  /** `path` is the data directory; the lock file inside it is storage/lock.ts's. */
  lock(path: string): Promise<{ release(): Promise<void> }> {
    return lockDataDir(path);
  }
}

// A simulated disk behind the storage seam (dataplane/storage/disk.ts), for power-loss tests.
// A killed process keeps the kernel's page cache, so only a disk that forgets can show what a
// power cut does. SimDisk keeps, for every file, what is durable apart from what is only visible,
// and `crash(rng)` builds the disk a power cut would leave behind.
//
// Model (exactly the durability contract of disk.ts, nothing stronger):
//   - A file has a visible image (what reads return, like a page cache) and a durable image. A
//     write lands in the visible image at once and joins the file's list of unsynced writes;
//     fsync (the second phase of writeAndSync) copies every unsynced write of that file into the
//     durable image. writeAndSync is two steps (write, then fsync), so a crash can land between
//     them or before either; a crash "during" the fsync is a crash before it: any subset survives.
//   - A directory has visible entries, durable entries and a list of pending operations (create,
//     rename, remove). syncDir(dir) makes that directory's pending list durable. A rename is one
//     operation (both names change together). Renames across directories are refused (EXDEV):
//     the engine never does one, and the contract says nothing about them.
//   - mkdirp and the name of a segment created by openSegment are durable when they resolve (they
//     sync the parent); writeFileDurable goes through `<path>.tmp`, fsync, rename and syncDir, as
//     real-disk.ts does, so a crash may leave the temp file behind.
//   - crash(rng): a seeded choice of a style, then of what survives (see CrashStyle). Unsynced
//     writes survive per 512-byte sector, each sector wholly old or wholly new (the contract's
//     sector atomicity), so a 4 KiB block can be torn at any sector boundary. A file's size after
//     the crash is its durable size, grown to the end of the furthest surviving sector; sectors of
//     the grown part that did not survive read as zeros. For every directory a prefix of its
//     pending operations survives (the order they were made in is the order they reach the disk).
//     `tearInsideSectors` goes beyond the contract (a prefix of a sector's new bytes survives),
//     for testing what an engine does on hardware without sector atomicity.
//   - A failed fsync (EIO) loses a seeded subset of that file's unsynced sectors from the durable
//     image while reads keep returning them (the Linux "fsyncgate" behaviour): nothing written
//     before a failed fsync can be trusted, and a later fsync does not bring it back.
//   - After crash() the old SimDisk is dead: every operation on it, and on files opened from it,
//     never settles (or, with `afterCrash: 'refuse'`, rejects), so a zombie engine cannot write
//     into the image the next one opens.
//
// Faults: `onOp` sees every step of every operation (kind, path, sequence number) before it takes
// effect; returning an error code ('EIO') makes that step fail with it, and calling crash() from
// it cuts the power right there. `capacityBytes` makes growth fail with ENOSPC (openSegment's zero
// fill, writeFileDurable); overwriting allocated bytes of a preallocated segment needs no space.
//
// Where the parts live: sim-file.ts (the file model: visible and durable images, unsynced writes),
// sim-dir.ts (the directory model: visible, durable and pending entries), sim-crash.ts (crash
// styles and the image a power cut leaves), sim-faults.ts (steps, options, errors of the fault
// hook), sim-segment.ts (SimSegment, whose writes are checked by io.ts checkSegmentWrites).
// This file is SimDisk itself: steps, names, the Disk operations, test helpers, crash().
import { posix } from 'node:path';
import { DataDirLockedError, type Disk } from '../../dataplane/storage/disk.ts';
import { prng } from '../lib/prng.ts';
import { crashImage, type CrashOptions, type CrashReport } from './sim-crash.ts';
import { changeDir, emptyDir, norm, ROOT, syncDirNow, type Dir, type Entry } from './sim-dir.ts';
import { diskError, SimDiskCrashedError, type SimDiskOptions, type SimOp, type SimOpKind } from './sim-faults.ts';
import { BLOCK_BYTES, emptyInode, fsyncFailed, fsyncNow, readNow, roundUp, writeNow, type Inode } from './sim-file.ts';
import { SimSegment, type SegmentOps } from './sim-segment.ts';

export { CRASH_STYLES, type CrashOptions, type CrashReport, type CrashStyle } from './sim-crash.ts';
export { SimDiskCrashedError, type SimDiskOptions, type SimOp, type SimOpKind } from './sim-faults.ts';
export { BLOCK_BYTES, SECTOR_BYTES } from './sim-file.ts';
export { SimSegment } from './sim-segment.ts';

export class SimDisk implements Disk {
  readonly direct = true;
  /** Sees every step before it takes effect; may return an error code, or crash the disk. */
  onOp: ((op: SimOp) => string | undefined | void) | null = null;
  capacityBytes: number;
  /** Steps taken so far (the `n` of the last SimOp). */
  steps = 0;
  lastCrash: CrashReport | null = null;
  private readonly opts: SimDiskOptions;
  private readonly rng: () => number;
  private readonly dirs = new Map<string, Dir>();
  private readonly openCount = new Map<Inode, number>();
  private readonly locks = new Set<string>();
  private nextInode = 1;
  private dead = false;

  constructor(opts: SimDiskOptions = {}) {
    this.opts = opts;
    this.capacityBytes = opts.capacityBytes ?? Infinity;
    this.rng = prng(opts.seed ?? 0);
    this.dirs.set(ROOT, emptyDir());
  }

  get crashed(): boolean {
    return this.dead;
  }

  // -------------------------------------------------------------------------------------------
  // Steps, faults, space

  /** Waits the step's turns, then lets the hook fail it or cut the power before it takes effect. */
  private async step(kind: SimOpKind, path: string): Promise<void> {
    if (this.dead) return this.deadEnd();
    const turns = this.opts.turns?.(kind) ?? 1;
    for (let i = 0; i < turns; i++) await new Promise<void>((r) => setImmediate(r));
    if (this.dead) return this.deadEnd();
    const n = ++this.steps;
    const code = this.onOp?.({ kind, path, n });
    if (this.dead) return this.deadEnd();
    if (typeof code === 'string') throw diskError(code, kind, path);
  }

  private deadEnd(): Promise<never> {
    if (this.opts.afterCrash === 'refuse') return Promise.reject(new SimDiskCrashedError('the simulated disk lost power; operations on it never complete'));
    return new Promise<never>(() => {});
  }

  /** Bytes allocated: every file reachable by a name or held open, in whole blocks. */
  get usedBytes(): number {
    const live = new Set<Inode>(this.openCount.keys());
    for (const d of this.dirs.values()) for (const e of d.visible.values()) if (e.kind === 'file') live.add(e.inode);
    let used = 0;
    for (const ino of live) used += roundUp(ino.size, BLOCK_BYTES);
    return used;
  }

  private needSpace(bytes: number, path: string): void {
    if (bytes > 0 && this.usedBytes + bytes > this.capacityBytes) throw diskError('ENOSPC', 'no space left on device, write', path);
  }

  // -------------------------------------------------------------------------------------------
  // Names

  private dirOf(path: string): { dir: Dir; parent: string; name: string } {
    const p = norm(path);
    const parent = posix.dirname(p);
    const dir = this.dirs.get(parent);
    if (dir === undefined) throw diskError('ENOENT', 'no such directory', parent);
    return { dir, parent, name: posix.basename(p) };
  }

  private lookup(path: string): Entry | undefined {
    const p = norm(path);
    if (p === ROOT) return { kind: 'dir' };
    return this.dirs.get(posix.dirname(p))?.visible.get(posix.basename(p));
  }

  private fileAt(path: string): Inode | null {
    const e = this.lookup(path);
    if (e === undefined) return null;
    if (e.kind === 'dir') throw diskError('EISDIR', 'is a directory', path);
    return e.inode;
  }

  private newInode(): Inode {
    return emptyInode(this.nextInode++);
  }

  // -------------------------------------------------------------------------------------------
  // File data

  private async fsyncStep(ino: Inode, path: string): Promise<void> {
    try {
      await this.step('fsync', path);
    } catch (e) {
      if (!this.dead) fsyncFailed(ino, this.rng);
      throw e;
    }
    fsyncNow(ino);
  }

  // -------------------------------------------------------------------------------------------
  // Disk

  allocAligned(size: number): Uint8Array {
    if (!Number.isSafeInteger(size) || size < 0) throw new RangeError(`allocAligned: bad size ${size}`);
    return new Uint8Array(Math.max(BLOCK_BYTES, roundUp(size, BLOCK_BYTES)));
  }

  async openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SimSegment> {
    if (opts.create && (!Number.isSafeInteger(opts.sizeBytes) || opts.sizeBytes <= 0 || opts.sizeBytes % BLOCK_BYTES !== 0)) {
      throw new RangeError(`${path}: segment size ${opts.sizeBytes} is not a positive multiple of ${BLOCK_BYTES}`);
    }
    await this.step('open', path);
    const { dir, parent, name } = this.dirOf(path);
    let ino = this.fileAt(path);
    let created = false;
    if (ino === null) {
      if (!opts.create) throw diskError('ENOENT', 'no such file, open', path);
      await this.step('create', path);
      ino = this.fileAt(path); // a concurrent open may have created it meanwhile
      if (ino === null) {
        ino = this.newInode();
        changeDir(dir, [[name, { kind: 'file', inode: ino }]]);
        created = true;
      }
    }
    if (opts.create && ino.size < opts.sizeBytes) {
      // Zero fill from the last whole block (a crash mid-fill can leave a partial block).
      await this.step('write', path);
      this.needSpace(roundUp(opts.sizeBytes, BLOCK_BYTES) - roundUp(ino.size, BLOCK_BYTES), path);
      const from = ino.size - (ino.size % BLOCK_BYTES);
      const block = readNow(ino, from, BLOCK_BYTES);
      const fill = new Uint8Array(opts.sizeBytes - from);
      fill.set(block);
      writeNow(ino, from, fill);
      await this.fsyncStep(ino, path);
    }
    if (created) {
      await this.step('syncDir', parent);
      syncDirNow(dir);
    }
    return new SimSegment(this.segmentOps, path, ino, ino.size);
  }

  async mkdirp(dir: string): Promise<void> {
    const p = norm(dir);
    const chain: string[] = [];
    for (let at = p; at !== ROOT; at = posix.dirname(at)) chain.unshift(at);
    for (const d of chain) {
      const e = this.lookup(d);
      if (e !== undefined) {
        if (e.kind !== 'dir') throw diskError('ENOTDIR', 'not a directory, mkdir', d);
        continue;
      }
      await this.step('mkdir', d);
      if (this.lookup(d) !== undefined) continue; // made by a concurrent mkdirp meanwhile
      const parent = this.dirs.get(posix.dirname(d))!;
      changeDir(parent, [[posix.basename(d), { kind: 'dir' }]]);
      this.dirs.set(d, emptyDir());
      await this.step('syncDir', posix.dirname(d));
      syncDirNow(parent);
    }
  }

  async list(dir: string): Promise<string[]> {
    await this.step('list', dir);
    return [...(this.dirs.get(norm(dir))?.visible.keys() ?? [])];
  }

  async readFile(path: string): Promise<Uint8Array | null> {
    await this.step('readFile', path);
    const ino = this.fileAt(path);
    return ino === null ? null : readNow(ino, 0, ino.size);
  }

  async readRange(path: string, offset: number, length: number): Promise<Uint8Array> {
    await this.step('read', path);
    const ino = this.fileAt(path);
    if (ino === null) throw diskError('ENOENT', 'no such file, open', path);
    return readNow(ino, offset, length);
  }

  async writeFileDurable(path: string, bytes: Uint8Array): Promise<void> {
    const copy = bytes.slice();
    const tmpPath = `${norm(path)}.tmp`;
    await this.step('create', tmpPath);
    const { dir, parent, name } = this.dirOf(path);
    if (this.lookup(path)?.kind === 'dir') throw diskError('EISDIR', 'is a directory', path);
    const old = this.lookup(tmpPath);
    const held = old !== undefined && old.kind === 'file' ? roundUp(old.inode.size, BLOCK_BYTES) : 0;
    this.needSpace(roundUp(copy.length, BLOCK_BYTES) - held, tmpPath);
    const ino = this.newInode();
    changeDir(dir, [[posix.basename(tmpPath), { kind: 'file', inode: ino }]]);
    await this.step('write', tmpPath);
    writeNow(ino, 0, copy);
    await this.fsyncStep(ino, tmpPath);
    await this.step('rename', path);
    const still = this.lookup(tmpPath);
    if (still === undefined || still.kind !== 'file' || still.inode !== ino) throw diskError('ENOENT', 'temp file replaced meanwhile, rename', tmpPath);
    changeDir(dir, [
      [posix.basename(tmpPath), null],
      [name, { kind: 'file', inode: ino }],
    ]);
    await this.step('syncDir', parent);
    syncDirNow(dir);
  }

  async rename(from: string, to: string): Promise<void> {
    await this.step('rename', to);
    const a = this.dirOf(from);
    const b = this.dirOf(to);
    if (a.parent !== b.parent) throw diskError('EXDEV', 'the simulated disk renames within one directory only, rename', `${from} -> ${to}`);
    const e = this.lookup(from);
    if (e === undefined) throw diskError('ENOENT', 'no such file, rename', from);
    if (e.kind === 'dir' || this.lookup(to)?.kind === 'dir') throw diskError('EISDIR', 'the simulated disk renames files only, rename', from);
    if (a.name === b.name) return;
    changeDir(a.dir, [
      [a.name, null],
      [b.name, e],
    ]);
  }

  async remove(path: string): Promise<void> {
    await this.step('remove', path);
    const e = this.lookup(path);
    if (e === undefined) return;
    if (e.kind === 'dir') throw diskError('EISDIR', 'the simulated disk removes files only, rm', path);
    const { dir, name } = this.dirOf(path);
    changeDir(dir, [[name, null]]);
  }

  async syncDir(dir: string): Promise<void> {
    await this.step('syncDir', dir);
    const d = this.dirs.get(norm(dir));
    if (d === undefined) throw diskError('ENOENT', 'no such directory, open', dir);
    syncDirNow(d);
  }

  async lock(path: string): Promise<{ release(): Promise<void> }> {
    await this.step('lock', path);
    const p = norm(path);
    if (this.locks.has(p)) throw new DataDirLockedError(`${path} is locked by another open of this data directory (simulated disk)`);
    const { dir, name } = this.dirOf(path);
    if (this.fileAt(path) === null) changeDir(dir, [[name, { kind: 'file', inode: this.newInode() }]]);
    this.locks.add(p);
    let held = true;
    return {
      release: async () => {
        await this.step('unlock', path);
        if (held) this.locks.delete(p);
        held = false;
      },
    };
  }

  // -------------------------------------------------------------------------------------------
  // Test helpers (not part of Disk)

  /** The visible bytes of a file, or null (no step: for assertions). */
  peek(path: string): Uint8Array | null {
    const ino = this.fileAt(path);
    return ino === null ? null : readNow(ino, 0, ino.size);
  }

  /** Names in a directory, sorted (no step). */
  names(dir: string): string[] {
    return [...(this.dirs.get(norm(dir))?.visible.keys() ?? [])].sort();
  }

  /** Unsynced bytes over every file, and pending directory operations (no step). */
  get pending(): { unsyncedBytes: number; dirOps: number } {
    let unsyncedBytes = 0;
    let dirOps = 0;
    const seen = new Set<Inode>();
    for (const d of this.dirs.values()) {
      dirOps += d.pending.length;
      for (const e of [...d.visible.values(), ...d.durable.values()]) {
        if (e.kind !== 'file' || seen.has(e.inode)) continue;
        seen.add(e.inode);
        for (const w of e.inode.unsynced) unsyncedBytes += w.bytes.length;
      }
    }
    return { unsyncedBytes, dirOps };
  }

  /**
   * Damages durable data: XORs `mask` into the byte at `offset` of the file, in both images
   * (a bit rotting on the platter). For tests of corruption detection.
   */
  corrupt(path: string, offset: number, mask = 0xff): void {
    const ino = this.fileAt(path);
    if (ino === null || offset >= ino.size) throw new RangeError(`corrupt: ${path} has no byte ${offset}`);
    ino.data[offset]! ^= mask;
    if (offset < ino.durableSize) ino.durable[offset]! ^= mask;
    for (const w of ino.unsynced) if (offset >= w.offset && offset < w.offset + w.bytes.length) w.bytes[offset - w.offset]! ^= mask;
  }

  /** Runs `fn` when step `n` is reached, before it takes effect (one hook; replaces `onOp`). */
  atStep(n: number, fn: (op: SimOp) => void): void {
    this.onOp = (op) => {
      if (op.n === n) fn(op);
    };
  }

  // -------------------------------------------------------------------------------------------
  // Power loss

  /**
   * Cuts the power: returns a new SimDisk holding what survived (choices from `rng`), and makes
   * this one dead. Calling it again on the dead disk with an equal rng gives an equal disk.
   */
  crash(rng: () => number, opts: CrashOptions = {}): SimDisk {
    this.dead = true;
    const next = new SimDisk({ ...this.opts, capacityBytes: this.capacityBytes });
    const { dirs, report } = crashImage(this.dirs, rng, opts, () => next.newInode());
    for (const [path, d] of dirs) next.dirs.set(path, d);
    this.lastCrash = report;
    next.lastCrash = report;
    return next;
  }

  /** What a SimSegment may do to the disk that opened it. */
  private readonly segmentOps: SegmentOps = {
    step: (kind, path) => this.step(kind, path),
    write: (ino, writes) => {
      for (const w of writes) writeNow(ino, w.offset, w.buf);
    },
    fsync: (ino, path) => this.fsyncStep(ino, path),
    read: (ino, offset, length) => readNow(ino, offset, length),
    hold: (ino, delta) => {
      const n = (this.openCount.get(ino) ?? 0) + delta;
      if (n <= 0) this.openCount.delete(ino);
      else this.openCount.set(ino, n);
    },
  };
}

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
import { posix } from 'node:path';
import { DataDirLockedError, type AlignedWrite, type Disk, type DiskError, type SegmentFile } from '../../dataplane/storage/disk.ts';
import { prng } from '../lib/prng.ts';

/** Sector of the device: the unit that survives a power cut wholly old or wholly new. */
export const SECTOR_BYTES = 512;
/** Alignment of segment writes and of allocation (the engine's O_DIRECT block). */
export const BLOCK_BYTES = 4096;

/** One step of a disk operation, as the fault hook sees it. */
export type SimOpKind = 'open' | 'create' | 'read' | 'write' | 'fsync' | 'close' | 'mkdir' | 'list' | 'readFile' | 'rename' | 'remove' | 'syncDir' | 'lock' | 'unlock';

export interface SimOp {
  kind: SimOpKind;
  /** The file or directory the step acts on. */
  path: string;
  /** 1, 2, 3…: steps of this disk in the order they take effect. */
  n: number;
}

/**
 * What survives a crash:
 *   - 'lose-all': no unsynced sector and no pending directory operation.
 *   - 'keep-all': every one (the device finished, the acknowledgment never came).
 *   - 'in-order': per file, the device wrote the unsynced sectors in issue order and stopped at a
 *     random point; per directory, a random prefix of the pending operations.
 *   - 'scatter': every unsynced sector independently, with a per-crash probability (the device
 *     reorders freely); per directory, a random prefix.
 */
export type CrashStyle = 'lose-all' | 'keep-all' | 'in-order' | 'scatter';
export const CRASH_STYLES: readonly CrashStyle[] = ['lose-all', 'keep-all', 'in-order', 'scatter'];

export interface CrashOptions {
  /** Forces a style; otherwise the rng picks one. */
  style?: CrashStyle;
  /** Beyond the contract: a surviving sector may keep only a prefix of its new bytes. */
  tearInsideSectors?: boolean;
}

/** What the last crash chose, for messages of failing tests. */
export interface CrashReport {
  style: CrashStyle;
  sectorsKept: number;
  sectorsLost: number;
  dirOpsKept: number;
  dirOpsLost: number;
}

export interface SimDiskOptions {
  /** Bytes the disk can allocate (files count in whole 4 KiB blocks); Infinity by default. */
  capacityBytes?: number;
  /** Seed of the disk's own choices (latency turns, what a failed fsync loses). */
  seed?: number;
  /** Event-loop turns (setImmediate) before a step takes effect; 1 by default. */
  turns?: (kind: SimOpKind) => number;
  /** What a dead disk does with operations: never settle ('hang', default) or reject ('refuse'). */
  afterCrash?: 'hang' | 'refuse';
}

interface Inode {
  id: number;
  /** Visible image; bytes past `size` are zero. */
  data: Uint8Array;
  size: number;
  /** Durable image; bytes past `durableSize` are zero. */
  durable: Uint8Array;
  durableSize: number;
  /** Writes since the last fsync, in issue order (copies of the caller's bytes). */
  unsynced: { offset: number; bytes: Uint8Array }[];
}

type Entry = { kind: 'file'; inode: Inode } | { kind: 'dir' };

/** A pending directory operation: names set (to an entry) or cleared (null) together. */
type DirOp = [name: string, entry: Entry | null][];

interface Dir {
  visible: Map<string, Entry>;
  durable: Map<string, Entry>;
  pending: DirOp[];
}

const ROOT = '/';

function norm(p: string): string {
  return posix.resolve(ROOT, p);
}

function diskError(code: string, what: string, path: string): DiskError {
  const e: DiskError = new Error(`${code}: ${what} '${path}' (simulated disk)`);
  e.code = code;
  return e;
}

function roundUp(n: number, to: number): number {
  return Math.ceil(n / to) * to;
}

function grow(buf: Uint8Array, need: number): Uint8Array {
  if (buf.length >= need) return buf;
  const next = new Uint8Array(Math.max(need, buf.length * 2, BLOCK_BYTES));
  next.set(buf);
  return next;
}

function applyOps(into: Map<string, Entry>, ops: readonly DirOp[]): void {
  for (const op of ops) {
    for (const [name, entry] of op) {
      if (entry === null) into.delete(name);
      else into.set(name, entry);
    }
  }
}

/** Thrown by a dead disk with afterCrash 'refuse'. */
export class SimDiskCrashedError extends Error {
  override name = 'SimDiskCrashedError';
  readonly code = 'ECRASHED';
}

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
    this.dirs.set(ROOT, { visible: new Map(), durable: new Map(), pending: [] });
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

  private change(dir: Dir, op: DirOp): void {
    applyOps(dir.visible, [op]);
    dir.pending.push(op);
  }

  private newInode(): Inode {
    return { id: this.nextInode++, data: new Uint8Array(0), size: 0, durable: new Uint8Array(0), durableSize: 0, unsynced: [] };
  }

  private syncDirNow(dir: Dir): void {
    applyOps(dir.durable, dir.pending);
    dir.pending = [];
  }

  // -------------------------------------------------------------------------------------------
  // File data

  private writeNow(ino: Inode, offset: number, bytes: Uint8Array): void {
    const end = offset + bytes.length;
    ino.data = grow(ino.data, end);
    ino.data.set(bytes, offset);
    if (end > ino.size) ino.size = end;
    ino.unsynced.push({ offset, bytes: bytes.slice() });
  }

  private fsyncNow(ino: Inode): void {
    ino.durable = grow(ino.durable, ino.size);
    for (const w of ino.unsynced) ino.durable.set(w.bytes, w.offset);
    ino.durableSize = ino.size;
    ino.unsynced = [];
  }

  /** A failed fsync: a seeded subset of the unsynced sectors reached the device, the rest is lost. */
  private fsyncFailed(ino: Inode): void {
    ino.durable = grow(ino.durable, ino.size);
    let end = ino.durableSize;
    for (const w of ino.unsynced) {
      for (let s = 0; s < w.bytes.length; s += SECTOR_BYTES) {
        if (this.rng() < 0.5) continue;
        const n = Math.min(SECTOR_BYTES, w.bytes.length - s);
        ino.durable.set(w.bytes.subarray(s, s + n), w.offset + s);
        end = Math.max(end, w.offset + s + n);
      }
    }
    ino.durableSize = end;
    ino.unsynced = [];
  }

  private async fsyncStep(ino: Inode, path: string): Promise<void> {
    try {
      await this.step('fsync', path);
    } catch (e) {
      if (!this.dead) this.fsyncFailed(ino);
      throw e;
    }
    this.fsyncNow(ino);
  }

  private readNow(ino: Inode, offset: number, length: number): Uint8Array {
    const end = Math.min(ino.size, offset + length);
    return end <= offset ? new Uint8Array(0) : ino.data.slice(offset, end);
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
        this.change(dir, [[name, { kind: 'file', inode: ino }]]);
        created = true;
      }
    }
    if (opts.create && ino.size < opts.sizeBytes) {
      // Zero fill from the last whole block (a crash mid-fill can leave a partial block).
      await this.step('write', path);
      this.needSpace(roundUp(opts.sizeBytes, BLOCK_BYTES) - roundUp(ino.size, BLOCK_BYTES), path);
      const from = ino.size - (ino.size % BLOCK_BYTES);
      const block = this.readNow(ino, from, BLOCK_BYTES);
      const fill = new Uint8Array(opts.sizeBytes - from);
      fill.set(block);
      this.writeNow(ino, from, fill);
      await this.fsyncStep(ino, path);
    }
    if (created) {
      await this.step('syncDir', parent);
      this.syncDirNow(dir);
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
      this.change(parent, [[posix.basename(d), { kind: 'dir' }]]);
      this.dirs.set(d, { visible: new Map(), durable: new Map(), pending: [] });
      await this.step('syncDir', posix.dirname(d));
      this.syncDirNow(parent);
    }
  }

  async list(dir: string): Promise<string[]> {
    await this.step('list', dir);
    return [...(this.dirs.get(norm(dir))?.visible.keys() ?? [])];
  }

  async readFile(path: string): Promise<Uint8Array | null> {
    await this.step('readFile', path);
    const ino = this.fileAt(path);
    return ino === null ? null : this.readNow(ino, 0, ino.size);
  }

  async readRange(path: string, offset: number, length: number): Promise<Uint8Array> {
    await this.step('read', path);
    const ino = this.fileAt(path);
    if (ino === null) throw diskError('ENOENT', 'no such file, open', path);
    return this.readNow(ino, offset, length);
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
    this.change(dir, [[posix.basename(tmpPath), { kind: 'file', inode: ino }]]);
    await this.step('write', tmpPath);
    this.writeNow(ino, 0, copy);
    await this.fsyncStep(ino, tmpPath);
    await this.step('rename', path);
    const still = this.lookup(tmpPath);
    if (still === undefined || still.kind !== 'file' || still.inode !== ino) throw diskError('ENOENT', 'temp file replaced meanwhile, rename', tmpPath);
    this.change(dir, [
      [posix.basename(tmpPath), null],
      [name, { kind: 'file', inode: ino }],
    ]);
    await this.step('syncDir', parent);
    this.syncDirNow(dir);
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
    this.change(a.dir, [
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
    this.change(dir, [[name, null]]);
  }

  async syncDir(dir: string): Promise<void> {
    await this.step('syncDir', dir);
    const d = this.dirs.get(norm(dir));
    if (d === undefined) throw diskError('ENOENT', 'no such directory, open', dir);
    this.syncDirNow(d);
  }

  async lock(path: string): Promise<{ release(): Promise<void> }> {
    await this.step('lock', path);
    const p = norm(path);
    if (this.locks.has(p)) throw new DataDirLockedError(`${path} is locked by another open of this data directory (simulated disk)`);
    const { dir, name } = this.dirOf(path);
    if (this.fileAt(path) === null) this.change(dir, [[name, { kind: 'file', inode: this.newInode() }]]);
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
    return ino === null ? null : this.readNow(ino, 0, ino.size);
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
    const style = opts.style ?? CRASH_STYLES[Math.floor(rng() * CRASH_STYLES.length)]!;
    const report: CrashReport = { style, sectorsKept: 0, sectorsLost: 0, dirOpsKept: 0, dirOpsLost: 0 };
    const next = new SimDisk({ ...this.opts, capacityBytes: this.capacityBytes });
    const keepP = 0.2 + 0.6 * rng();
    // Directories: durable entries plus a surviving prefix of the pending operations.
    const after = new Map<string, Map<string, Entry>>();
    for (const path of [...this.dirs.keys()].sort()) {
      const d = this.dirs.get(path)!;
      const k = style === 'lose-all' ? 0 : style === 'keep-all' ? d.pending.length : Math.floor(rng() * (d.pending.length + 1));
      const entries = new Map(d.durable);
      applyOps(entries, d.pending.slice(0, k));
      report.dirOpsKept += k;
      report.dirOpsLost += d.pending.length - k;
      after.set(path, entries);
    }
    // Files: the durable image plus the surviving sectors, for every file still named.
    const images = new Map<Inode, Inode>();
    const image = (ino: Inode): Inode => {
      let out = images.get(ino);
      if (out !== undefined) return out;
      out = this.survivor(ino, next, style, keepP, rng, opts.tearInsideSectors === true, report);
      images.set(ino, out);
      return out;
    };
    const walk = (path: string): void => {
      const entries = after.get(path);
      if (entries === undefined) return; // a directory the crash un-created
      const d: Dir = { visible: new Map(), durable: new Map(), pending: [] };
      next.dirs.set(path, d);
      for (const name of [...entries.keys()].sort()) {
        const e = entries.get(name)!;
        const copy: Entry = e.kind === 'dir' ? e : { kind: 'file', inode: image(e.inode) };
        d.visible.set(name, copy);
        d.durable.set(name, copy);
        if (e.kind === 'dir') walk(posix.join(path, name));
      }
    };
    walk(ROOT);
    this.lastCrash = report;
    next.lastCrash = report;
    return next;
  }

  private survivor(ino: Inode, next: SimDisk, style: CrashStyle, keepP: number, rng: () => number, tear: boolean, report: CrashReport): Inode {
    const sectors = ino.unsynced.reduce((n, w) => n + Math.ceil(w.bytes.length / SECTOR_BYTES), 0);
    const cut = style === 'in-order' ? Math.floor(rng() * (sectors + 1)) : 0;
    const img = new Uint8Array(Math.max(ino.size, ino.durableSize));
    img.set(ino.durable.subarray(0, ino.durableSize));
    let size = ino.durableSize;
    let i = 0;
    for (const w of ino.unsynced) {
      for (let s = 0; s < w.bytes.length; s += SECTOR_BYTES, i++) {
        const keep = style === 'keep-all' || (style === 'in-order' && i < cut) || (style === 'scatter' && rng() < keepP);
        if (!keep) {
          report.sectorsLost++;
          continue;
        }
        report.sectorsKept++;
        let n = Math.min(SECTOR_BYTES, w.bytes.length - s);
        if (tear && style === 'scatter' && rng() < 0.1) n = Math.floor(rng() * n);
        img.set(w.bytes.subarray(s, s + n), w.offset + s);
        size = Math.max(size, w.offset + s + Math.min(SECTOR_BYTES, w.bytes.length - s));
      }
    }
    const out = next.newInode();
    out.data = img.slice();
    out.durable = img;
    out.size = out.durableSize = size;
    out.data.fill(0, size);
    out.durable.fill(0, size);
    return out;
  }

  /** What a SimSegment may do to the disk that opened it. */
  private readonly segmentOps: SegmentOps = {
    step: (kind, path) => this.step(kind, path),
    write: (ino, writes) => {
      for (const w of writes) this.writeNow(ino, w.offset, w.buf);
    },
    fsync: (ino, path) => this.fsyncStep(ino, path),
    read: (ino, offset, length) => this.readNow(ino, offset, length),
    hold: (ino, delta) => {
      const n = (this.openCount.get(ino) ?? 0) + delta;
      if (n <= 0) this.openCount.delete(ino);
      else this.openCount.set(ino, n);
    },
  };
}

interface SegmentOps {
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
    for (const w of writes) {
      const len = w.buf.byteLength;
      if (!Number.isSafeInteger(w.offset) || w.offset < 0 || w.offset % BLOCK_BYTES !== 0 || len % BLOCK_BYTES !== 0) {
        throw new RangeError(`${this.path}: write at ${w.offset} of ${len} bytes is not ${BLOCK_BYTES}-aligned`);
      }
      if (w.offset + len > this.sizeBytes) {
        throw new RangeError(`${this.path}: write at ${w.offset} of ${len} bytes ends past the segment size ${this.sizeBytes}`);
      }
    }
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

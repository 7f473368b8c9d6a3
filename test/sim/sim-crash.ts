// The crash and tear model of the simulated disk (sim-disk.ts): the crash styles, and the image a
// power cut leaves: per directory its durable entries plus a surviving prefix of the pending
// operations; per file its durable image plus the unsynced sectors that survived (each wholly old
// or new, or, beyond the contract with `tearInsideSectors`, a prefix of a sector's new bytes).
import { posix } from 'node:path';
import { applyOps, ROOT, type Dir, type Entry } from './sim-dir.ts';
import { SECTOR_BYTES, type Inode } from './sim-file.ts';

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

/**
 * The directories (all synced, in walk order from the root) a power cut leaves of `dirs`, with
 * new inodes from `newInode` for the files still named, and what it chose.
 */
export function crashImage(dirs: ReadonlyMap<string, Dir>, rng: () => number, opts: CrashOptions, newInode: () => Inode): { dirs: Map<string, Dir>; report: CrashReport } {
  const style = opts.style ?? CRASH_STYLES[Math.floor(rng() * CRASH_STYLES.length)]!;
  const report: CrashReport = { style, sectorsKept: 0, sectorsLost: 0, dirOpsKept: 0, dirOpsLost: 0 };
  const keepP = 0.2 + 0.6 * rng();
  // Directories: durable entries plus a surviving prefix of the pending operations.
  const after = new Map<string, Map<string, Entry>>();
  for (const path of [...dirs.keys()].sort()) {
    const d = dirs.get(path)!;
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
    out = survivor(ino, newInode, style, keepP, rng, opts.tearInsideSectors === true, report);
    images.set(ino, out);
    return out;
  };
  const out = new Map<string, Dir>();
  const walk = (path: string): void => {
    const entries = after.get(path);
    if (entries === undefined) return; // a directory the crash un-created
    const d: Dir = { visible: new Map(), durable: new Map(), pending: [] };
    out.set(path, d);
    for (const name of [...entries.keys()].sort()) {
      const e = entries.get(name)!;
      const copy: Entry = e.kind === 'dir' ? e : { kind: 'file', inode: image(e.inode) };
      d.visible.set(name, copy);
      d.durable.set(name, copy);
      if (e.kind === 'dir') walk(posix.join(path, name));
    }
  };
  walk(ROOT);
  return { dirs: out, report };
}

function survivor(ino: Inode, newInode: () => Inode, style: CrashStyle, keepP: number, rng: () => number, tear: boolean, report: CrashReport): Inode {
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
  const out = newInode();
  out.data = img.slice();
  out.durable = img;
  out.size = out.durableSize = size;
  out.data.fill(0, size);
  out.durable.fill(0, size);
  return out;
}

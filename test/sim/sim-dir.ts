// The directory model of the simulated disk (sim-disk.ts): a directory's visible entries, its
// durable entries and the pending operations (create, rename, remove) between them; a change
// lands in the visible entries at once and waits for syncDir to become durable.
import { posix } from 'node:path';
import type { Inode } from './sim-file.ts';

export type Entry = { kind: 'file'; inode: Inode } | { kind: 'dir' };

/** A pending directory operation: names set (to an entry) or cleared (null) together. */
export type DirOp = [name: string, entry: Entry | null][];

export interface Dir {
  visible: Map<string, Entry>;
  durable: Map<string, Entry>;
  pending: DirOp[];
}

export const ROOT = '/';

export function norm(p: string): string {
  return posix.resolve(ROOT, p);
}

export function emptyDir(): Dir {
  return { visible: new Map(), durable: new Map(), pending: [] };
}

export function applyOps(into: Map<string, Entry>, ops: readonly DirOp[]): void {
  for (const op of ops) {
    for (const [name, entry] of op) {
      if (entry === null) into.delete(name);
      else into.set(name, entry);
    }
  }
}

/** A change made now: visible at once, pending until the directory is synced. */
export function changeDir(dir: Dir, op: DirOp): void {
  applyOps(dir.visible, [op]);
  dir.pending.push(op);
}

export function syncDirNow(dir: Dir): void {
  applyOps(dir.durable, dir.pending);
  dir.pending = [];
}

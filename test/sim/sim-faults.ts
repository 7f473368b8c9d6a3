// Fault injection of the simulated disk (sim-disk.ts): the steps the `onOp` hook sees, the
// options that shape latency and what a dead disk does, the error a refusing dead disk throws,
// and the errno-style errors every failing step raises.
import type { DiskError } from '../../dataplane/storage/disk.ts';

/** One step of a disk operation, as the fault hook sees it. */
export type SimOpKind = 'open' | 'create' | 'read' | 'write' | 'fsync' | 'close' | 'mkdir' | 'list' | 'readFile' | 'rename' | 'remove' | 'syncDir' | 'lock' | 'unlock';

export interface SimOp {
  kind: SimOpKind;
  /** The file or directory the step acts on. */
  path: string;
  /** 1, 2, 3…: steps of this disk in the order they take effect. */
  n: number;
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

export function diskError(code: string, what: string, path: string): DiskError {
  const e: DiskError = new Error(`${code}: ${what} '${path}' (simulated disk)`);
  e.code = code;
  return e;
}

/** Thrown by a dead disk with afterCrash 'refuse'. */
export class SimDiskCrashedError extends Error {
  override name = 'SimDiskCrashedError';
  readonly code = 'ECRASHED';
}

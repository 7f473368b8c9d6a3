// What every part of the power-loss harness (powerloss.ts) shares: the shard's layout on the
// SimDisk and the run's limits, the options of a run, the records of what was issued and what a
// read recovered, and the client-side plumbing (one request as the worker answers it, opening
// the real Shard, the Driver that moves the simulated clock, bounded waits, paged reads).
import { decodeError, encodeError, decodeReadOk, encodeReadRequest, encodeWriteRequest, Expect, Op, type ExpectMode, type WireEvent, type WireReadOk, type WireWriteOk } from '../../client/wire.ts';
import type { NormalizedKey } from '../../client/key.ts';
import { ErrorCode } from '../../client/errors.ts';
import type { Disk } from '../../dataplane/storage/disk.ts';
import { Shard, type ShardResult } from '../../dataplane/shard/shard.ts';
import type { SimClock } from './sim-clock.ts';
import type { CrashOptions, SimDisk } from './sim-disk.ts';
import type { FakeFollower } from './powerloss-follower.ts';
import type { Scenario } from './powerloss-scenarios.ts';

/** 64 KiB segments (the engine's minimum): a run of ~100 writes rotates a few times. */
export const SIM_SEGMENT_BYTES = 64 * 1024;
export const DATA_DIR = '/data';
export const SHARD_DIR = `${DATA_DIR}/shard-000`;
export const NUM_SHARDS = 1;
/** Routing code of 'id' (dataplane/storage/segment.ts ROUTING_CODES). */
export const ROUTING = 2;
export const NODE_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xc0 + i);
/** Event bytes below which a write surely fits one record of a 64 KiB segment (56 KiB of records, less headers); above it 9100 is a fair answer. */
export const RECORD_FITS_BYTES = 48 * 1024;
/** Event-loop turns a run may take before it counts as stuck (a hang in the engine). */
export const TURNS_MAX = 400_000;
/** Simulated quiet time after the workload, so the idle header catch-up (50 ms) happens. */
export const IDLE_MS = 120;

export interface RunOptions {
  seed: number;
  /** Puts something between the engine and the SimDisk (the deliberately broken disks of the teeth tests). */
  wrap?: (disk: SimDisk) => Disk;
  /** Forces a scenario (default: seeded); a forced scenario also leaves out rot and the second power cut. */
  scenario?: Scenario;
  /** Passed to every SimDisk.crash of the run (a forced style, tearing inside sectors). */
  crash?: CrashOptions;
}

export interface Part {
  agg: number;
  mode: ExpectMode;
  expect: number;
  clientSeq: bigint;
  events: WireEvent[];
}

export interface Issued {
  id: number;
  client: number;
  clientId: bigint;
  parts: Part[];
  body: Uint8Array;
  /** null while unanswered (in flight at the cut). */
  answer: { ok: WireWriteOk } | { code: number; detail: Record<string, unknown> } | null;
}

/** A batch as recovered by reading an aggregate. */
export interface SeenBatch {
  agg: number;
  from: number;
  to: number;
  seq: number;
  clientId: bigint;
  events: WireEvent[];
}


export function keyOf(agg: number): NormalizedKey {
  return { org: 7n, type: 3n, id: BigInt(agg + 1) };
}

export function turn(): Promise<void> {
  return new Promise<void>((r) => setImmediate(r));
}

export function sameBytes(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

export function sameEvent(a: WireEvent, b: WireEvent): boolean {
  return a.type === b.type && sameBytes(a.data, b.data) && sameBytes(a.metadata, b.metadata);
}

/** Reads the write id a harness event carries in its first 4 bytes. */
export function writeIdOf(e: WireEvent): number {
  return e.data.length >= 4 ? new DataView(e.data.buffer, e.data.byteOffset, 4).getUint32(0) : -1;
}

/**
 * One request, answered as the worker answers it (dataplane/shard/worker.ts): a request that
 * throws (say, a read that met EIO) gets 9200.
 */
export function call(shard: Shard, op: number, body: Uint8Array): Promise<ShardResult> {
  return shard.handle(op, body).catch((e: Error) => ({ op: Op.Error, body: encodeError(ErrorCode.ShardUnavailable, `internal error in shard ${shard.id}: ${e.message}`) }));
}

/** Opens the real shard on `disk` (the engine's own options; nothing else of it is used). */
export async function openShard(disk: Disk, clock: SimClock, memoryBudgetBytes: number, log: (m: string) => void, commitStep?: FakeFollower): Promise<Shard> {
  const s = await Shard.open({
    disk,
    clock,
    dir: SHARD_DIR,
    shard: 0,
    numShards: NUM_SHARDS,
    routing: ROUTING,
    segmentBytes: SIM_SEGMENT_BYTES,
    memoryBudgetBytes,
    nodeId: NODE_ID,
    log,
    ...(commitStep === undefined ? {} : { commitStep }),
  });
  commitStep?.opened(s.committedSeq);
  return s;
}

/**
 * Runs the clock while `busy()` holds: one turn of the event loop per step, `msPerTurn` of
 * simulated time each. Stops at TURNS_MAX turns and says so.
 */
export class Driver {
  turns = 0;
  private stopped = false;
  readonly done: Promise<void>;
  stuck = false;

  constructor(clock: SimClock, msPerTurn: number) {
    this.done = (async () => {
      while (!this.stopped) {
        await turn();
        clock.advance(msPerTurn);
        if (++this.turns > TURNS_MAX) {
          this.stuck = true;
          return;
        }
      }
    })();
  }

  stop(): void {
    this.stopped = true;
  }
}

/** Awaits `p` unless the driver gives up first (then null). */
export async function bounded<T>(p: Promise<T>, driver: Driver): Promise<T | null> {
  let settled = false;
  const r = await Promise.race([
    p.finally(() => (settled = true)),
    driver.done.then(() => null),
  ]);
  return settled ? (r as T) : null;
}

/**
 * No answer, 9200 (the shard stopped before the write was durable), 2007, or 2008 not for a full
 * disk (a failed fsync): the write may or may not be on disk. 2008 for a full disk says nothing
 * was placed.
 */
export function indeterminate(w: Issued): boolean {
  if (w.answer === null) return true;
  if (!('code' in w.answer)) return false;
  const c = w.answer.code;
  return c === ErrorCode.ShardUnavailable || c === ErrorCode.NotAcknowledged || (c === ErrorCode.StorageFailed && w.answer.detail['diskFull'] !== true);
}

export function retryBody(w: Issued): Uint8Array {
  return encodeWriteRequest({
    clientId: w.clientId,
    writes: w.parts.map((p) => ({ key: keyOf(p.agg), expectMode: Expect.Any, expectVersion: 0n, clientSeq: p.clientSeq, events: p.events })),
  });
}

export function eventBytesOf(w: Issued): number {
  return w.parts.reduce((n, p) => n + p.events.reduce((m, e) => m + e.data.length + (e.metadata?.length ?? 0), 0), 0);
}

/** 9100 for a write whose record would not fit in a segment: nothing was placed. */
export function tooBig(w: Issued, r: ShardResult): boolean {
  return r.op === Op.Error && decodeError(r.body).code === ErrorCode.BadRequest && eventBytesOf(w) > RECORD_FITS_BYTES;
}

/** 2008 for a full disk: nothing was placed. */
export function diskFull(r: ShardResult): boolean {
  if (r.op !== Op.Error) return false;
  const e = decodeError(r.body);
  return e.code === ErrorCode.StorageFailed && e.detail['diskFull'] === true;
}

export type ReadResult = { batches: SeenBatch[] } | { code: number; message: string };

/** Reads an aggregate from version 1 to its end, page by page. */
export async function readAll(shard: Shard, agg: number, maxBytes: number): Promise<ReadResult> {
  const batches: SeenBatch[] = [];
  let from = 1n;
  for (let page = 0; page < 10_000; page++) {
    const r: ShardResult = await call(shard, Op.Read, encodeReadRequest({ key: keyOf(agg), from, to: 0n, maxBytes, eventTypes: [] }));
    if (r.op !== Op.ReadOk) {
      const e = decodeError(r.body);
      return { code: e.code, message: e.message };
    }
    const ok: WireReadOk = decodeReadOk(r.body);
    for (const b of ok.batches) {
      batches.push({
        agg,
        from: Number(b.fromVersion),
        to: Number(b.toVersion),
        seq: Number(b.seq),
        clientId: b.clientId,
        events: b.events.map((e) => {
          const ev: WireEvent = { type: e.type, data: e.data };
          if (e.metadata !== undefined) ev.metadata = e.metadata;
          return ev;
        }),
      });
      const versions = b.events.map((e) => Number(e.version));
      for (let i = 0; i < versions.length; i++) {
        if (versions[i] !== Number(b.fromVersion) + i) return { code: -1, message: `batch ${b.fromVersion}..${b.toVersion} carries event versions ${versions.join(',')}` };
      }
    }
    if (ok.nextVersion === 0n) return { batches };
    if (ok.nextVersion <= from) return { code: -1, message: `read page from ${from} says the next starts at ${ok.nextVersion}` };
    from = ok.nextVersion;
  }
  return { code: -1, message: 'more than 10000 pages' };
}

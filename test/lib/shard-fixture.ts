// The shared fixture of the review regression tests (dataplane/shard/review-*.test.ts): a real
// Shard on the simulated disk, made deterministic. Time moves only when the test moves it
// (ManualClock), commit steps settle when the test says (FakeCommitStep), and waits poll a
// condition with a deadline (until, settle, quiet); plus request bodies and result readers.
import assert from 'node:assert/strict';
import { decodeError, decodeReadOk, decodeWriteOk, encodeKeyRequest, encodeReadRequest, encodeWriteRequest, Expect, Op } from '../../client/wire.ts';
import type { Clock, Disk } from '../../dataplane/storage/disk.ts';
import { Shard, type CommitStep, type ShardResult } from '../../dataplane/shard/shard.ts';
import type { SimDisk } from '../sim/sim-disk.ts';

export const NODE_ID = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
export const DIR = '/data/shard-000';
/** The engine's minimum segment size, so that a few 30 KB writes rotate. */
export const SEGMENT_BYTES = 64 * 1024;
/** Wall-clock budget of one wait for a condition (the conditions come within milliseconds). */
export const WAIT_MS = 5000;

// ---------------------------------------------------------------------------------------------
// Time, waits, commit steps

/** A Clock that moves only when the test moves it (or a wait advances it, 1 ms per turn). */
export class ManualClock implements Clock {
  private now = 0;
  private order = 0;
  private timers: { atMs: number; order: number; fn: () => void }[] = [];

  nowMs(): number {
    return 1_767_225_600_000 + Math.floor(this.now);
  }

  monoMs(): number {
    return this.now;
  }

  after(ms: number, fn: () => void): () => void {
    const t = { atMs: this.now + Math.max(0, ms), order: this.order++, fn };
    this.timers.push(t);
    return () => {
      this.timers = this.timers.filter((x) => x !== t);
    };
  }

  /** Runs every timer due by now + ms, earliest first; timers set meanwhile wait for the next call. */
  advance(ms: number): void {
    const target = this.now + ms;
    const setBefore = this.order;
    for (;;) {
      let next: (typeof this.timers)[number] | null = null;
      for (const t of this.timers) {
        if (t.order < setBefore && t.atMs <= target && (next === null || t.atMs < next.atMs || (t.atMs === next.atMs && t.order < next.order))) next = t;
      }
      if (next === null) break;
      const due = next;
      this.timers = this.timers.filter((x) => x !== due);
      this.now = Math.max(this.now, due.atMs);
      due.fn();
    }
    this.now = target;
  }
}

export const turn = (): Promise<void> => new Promise<void>((r) => setImmediate(r));

/** Polls `cond` once per event-loop turn (time moving `tickMs` per turn) until it holds; throws at the deadline. */
export async function until(clock: ManualClock, cond: () => boolean, what: string, ms = WAIT_MS, tickMs = 1): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    clock.advance(tickMs);
    await turn();
  }
}

/** A promise whose state can be looked at synchronously. */
export function track<T>(p: Promise<T>): { readonly settled: boolean; readonly value: T | undefined; readonly error: unknown; readonly promise: Promise<T> } {
  const t = { settled: false, value: undefined as T | undefined, error: undefined as unknown, promise: p };
  p.then(
    (v) => {
      t.settled = true;
      t.value = v;
    },
    (e: unknown) => {
      t.settled = true;
      t.error = e;
    },
  );
  return t;
}

/** Waits (polling, with a deadline) until `p` settles, and returns its value. */
export async function settle<T>(clock: ManualClock, p: Promise<T>, what: string, ms = WAIT_MS, tickMs = 1): Promise<T> {
  const t = track(p);
  await until(clock, () => t.settled, what, ms, tickMs);
  if (t.error !== undefined) throw t.error;
  return t.value as T;
}

/** Waits until the disk has taken no step for `quietTurns` turns in a row (background work done). */
export async function quiet(clock: ManualClock, disk: SimDisk, quietTurns = 12): Promise<void> {
  let steps = 0;
  disk.onOp = () => {
    steps++;
  };
  let seen = -1;
  let still = 0;
  await until(
    clock,
    () => {
      still = steps === seen ? still + 1 : 0;
      seen = steps;
      return still >= quietTurns;
    },
    'the disk to go quiet',
  );
  disk.onOp = null;
}

export interface HeldCommit {
  from: number;
  to: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** A commit step whose commits settle when the test says (or at once, per the `answer` hook). */
export class FakeCommitStep implements CommitStep {
  readonly calls: { from: number; to: number }[] = [];
  readonly held: HeldCommit[] = [];
  /** Per call (1-based): 'hold' (default), 'ok' or an Error to reject with at once. */
  answer: (call: number, from: number, to: number) => 'hold' | 'ok' | Error = () => 'hold';

  commit(from: number, to: number): Promise<void> {
    this.calls.push({ from, to });
    const a = this.answer(this.calls.length, from, to);
    if (a === 'ok') return Promise.resolve();
    if (a instanceof Error) return Promise.reject(a);
    return new Promise<void>((resolve, reject) => this.held.push({ from, to, resolve, reject }));
  }

  resolveAll(): void {
    for (const h of this.held.splice(0)) h.resolve();
  }

  rejectAll(why: string): void {
    for (const h of this.held.splice(0)) h.reject(new Error(why));
  }
}

/** A FakeCommitStep with the early hand-off (`send`): records the last seq of each group handed over. */
export class SendingCommitStep extends FakeCommitStep {
  readonly sent: number[] = [];
  send(records: readonly Uint8Array[]): void {
    const last = records[records.length - 1]!;
    const v = new DataView(last.buffer, last.byteOffset, last.length);
    this.sent.push(Number(v.getBigUint64(24)) + v.getUint16(18) - 1);
  }
}

// ---------------------------------------------------------------------------------------------
// Shards, requests, results

export interface Opened {
  shard: Shard;
  logs: string[];
}

export async function openShard(disk: Disk, clock: Clock, commitStep?: CommitStep, logs: string[] = []): Promise<Opened> {
  const shard = await Shard.open({
    disk,
    clock,
    nodeId: NODE_ID,
    dir: DIR,
    shard: 0,
    numShards: 1,
    routing: 2,
    segmentBytes: SEGMENT_BYTES,
    memoryBudgetBytes: 16 << 20,
    commitStep,
    log: (m) => logs.push(m),
  });
  return { shard, logs };
}

export const key = (id: number) => ({ org: 1n, type: 2n, id: BigInt(id) });

export function writeBody(id: number, bytes = 10): Uint8Array {
  return encodeWriteRequest({
    clientId: 7n,
    writes: [{ key: key(id), expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [{ type: 't', data: new Uint8Array(bytes).fill(0x41) }] }],
  });
}

export const readBody = (id: number) => encodeReadRequest({ key: key(id), from: 1n, to: 0n, maxBytes: 1 << 20, eventTypes: [] });
export const detailsBody = (id: number) => encodeKeyRequest(key(id));

/** 0 for a success, else the error code. */
export function code(r: ShardResult): number {
  return r.op === Op.Error ? decodeError(r.body).code : 0;
}

export function show(r: ShardResult): string {
  if (r.op === Op.Error) {
    const e = decodeError(r.body);
    return `error ${e.code}: ${e.message}`;
  }
  if (r.op === Op.WriteOk) return `write ok at seq ${decodeWriteOk(r.body).firstSeq}`;
  return `op ${r.op}`;
}

/** Versions of the events a read returns (throws on an error). */
export function readVersions(r: ShardResult): bigint[] {
  assert.equal(r.op, Op.ReadOk, show(r));
  return decodeReadOk(r.body).batches.flatMap((b) => b.events.map((e) => e.version));
}

/** Records unhandled rejections while `fn` runs. */
export async function watchingUnhandled<T>(fn: (unhandled: unknown[]) => Promise<T>): Promise<T> {
  const unhandled: unknown[] = [];
  const on = (e: unknown): void => {
    unhandled.push(e);
  };
  process.on('unhandledRejection', on);
  try {
    return await fn(unhandled);
  } finally {
    process.off('unhandledRejection', on);
  }
}

export const describeUnhandled = (u: unknown[]) => u.map((e) => (e instanceof Error ? e.message : String(e))).join('; ');

// Regression tests for the eight bugs a review proved with scripts against a real Shard (and its
// ShardLog) on the simulated disk: a commit step that rejects, a later commit that covers a refused
// one, a disk-full rewind of durable writes, an interrupted truncation with several later segments,
// a stale idle timer after truncateAfter, truncateAfter racing in-flight commits and writes, and a
// durable tail kept over a restart that skipped the commit step. Each test is the review's
// reproduction made deterministic: commit steps settle when the test says, time moves only when the
// test moves it (ManualClock), and waits poll a condition with a deadline.
// The two "(later)" tests were found after the first fixes and failed until the cold-load retry
// and the refresh of states cached behind an uncommitted tail.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeDetailsOk, decodeError, decodeReadOk, decodeWriteOk, encodeKeyRequest, encodeReadRequest, encodeWriteRequest, Expect, Op } from '../../client/wire.ts';
import { prng } from '../../test/lib/prng.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { initHashing } from '../storage/checksum.ts';
import type { Clock, Disk } from '../storage/disk.ts';
import { encodeRecord, recordSize } from '../storage/record.ts';
import { ShardLog, TruncateRefusedError } from '../storage/shard-log.ts';
import { Shard, type CommitStep, type ShardResult } from './shard.ts';

await initHashing();

const NODE_ID = Uint8Array.from({ length: 16 }, (_, i) => i + 1);
const DIR = '/data/shard-000';
/** The engine's minimum segment size, so that a few 30 KB writes rotate. */
const SEGMENT_BYTES = 64 * 1024;
/** Wall-clock budget of one wait for a condition (the conditions come within milliseconds). */
const WAIT_MS = 5000;

// ---------------------------------------------------------------------------------------------
// Time, waits, commit steps

/** A Clock that moves only when the test moves it (or a wait advances it, 1 ms per turn). */
class ManualClock implements Clock {
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

const turn = (): Promise<void> => new Promise<void>((r) => setImmediate(r));

/** Polls `cond` once per event-loop turn (time moving `tickMs` per turn) until it holds; throws at the deadline. */
async function until(clock: ManualClock, cond: () => boolean, what: string, ms = WAIT_MS, tickMs = 1): Promise<void> {
  const end = performance.now() + ms;
  while (!cond()) {
    if (performance.now() > end) throw new Error(`timed out after ${ms} ms waiting for: ${what}`);
    clock.advance(tickMs);
    await turn();
  }
}

/** A promise whose state can be looked at synchronously. */
function track<T>(p: Promise<T>): { readonly settled: boolean; readonly value: T | undefined; readonly error: unknown; readonly promise: Promise<T> } {
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
async function settle<T>(clock: ManualClock, p: Promise<T>, what: string, ms = WAIT_MS, tickMs = 1): Promise<T> {
  const t = track(p);
  await until(clock, () => t.settled, what, ms, tickMs);
  if (t.error !== undefined) throw t.error;
  return t.value as T;
}

/** Waits until the disk has taken no step for `quietTurns` turns in a row (background work done). */
async function quiet(clock: ManualClock, disk: SimDisk, quietTurns = 12): Promise<void> {
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

interface HeldCommit {
  from: number;
  to: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** A commit step whose commits settle when the test says (or at once, per the `answer` hook). */
class FakeCommitStep implements CommitStep {
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

// ---------------------------------------------------------------------------------------------
// Shards, requests, results

interface Opened {
  shard: Shard;
  logs: string[];
}

async function openShard(disk: Disk, clock: Clock, commitStep?: CommitStep, logs: string[] = []): Promise<Opened> {
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

const key = (id: number) => ({ org: 1n, type: 2n, id: BigInt(id) });

function writeBody(id: number, bytes = 10): Uint8Array {
  return encodeWriteRequest({
    clientId: 7n,
    writes: [{ key: key(id), expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [{ type: 't', data: new Uint8Array(bytes).fill(0x41) }] }],
  });
}

const readBody = (id: number) => encodeReadRequest({ key: key(id), from: 1n, to: 0n, maxBytes: 1 << 20, eventTypes: [] });
const detailsBody = (id: number) => encodeKeyRequest(key(id));

/** 0 for a success, else the error code. */
function code(r: ShardResult): number {
  return r.op === Op.Error ? decodeError(r.body).code : 0;
}

function show(r: ShardResult): string {
  if (r.op === Op.Error) {
    const e = decodeError(r.body);
    return `error ${e.code}: ${e.message}`;
  }
  if (r.op === Op.WriteOk) return `write ok at seq ${decodeWriteOk(r.body).firstSeq}`;
  return `op ${r.op}`;
}

/** Versions of the events a read returns (throws on an error). */
function readVersions(r: ShardResult): bigint[] {
  assert.equal(r.op, Op.ReadOk, show(r));
  return decodeReadOk(r.body).batches.flatMap((b) => b.events.map((e) => e.version));
}

/** Records unhandled rejections while `fn` runs. */
async function watchingUnhandled<T>(fn: (unhandled: unknown[]) => Promise<T>): Promise<T> {
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

const describeUnhandled = (u: unknown[]) => u.map((e) => (e instanceof Error ? e.message : String(e))).join('; ');

// ---------------------------------------------------------------------------------------------
// r1: a rejected commit step while an earlier one is pending

test('r1: a commit step rejecting group 2 while group 1 is pending: no unhandled rejection, both writes 2007, writes stop', async () => {
  await watchingUnhandled(async (unhandled) => {
    const clock = new ManualClock();
    const step = new FakeCommitStep();
    step.answer = (call) => (call === 1 ? 'hold' : new Error('follower gone'));
    const { shard } = await openShard(new SimDisk(), clock, step);
    const w1 = track(shard.handle(Op.Write, writeBody(1)));
    await until(clock, () => step.calls.length === 1, 'group 1 durable, its commit step running');
    const w2 = track(shard.handle(Op.Write, writeBody(2)));
    await until(clock, () => step.calls.length === 2, 'group 2 durable, its commit step rejected');
    // Node reports an unhandled rejection once the microtasks of a turn have run: give it turns.
    for (let i = 0; i < 20; i++) await turn();
    assert.equal(unhandled.length, 0, `a rejected commit step must never be an unhandled rejection (it kills the worker): ${describeUnhandled(unhandled)}`);
    step.resolveAll();
    const r1 = await settle(clock, w1.promise, 'write 1 answered');
    const r2 = await settle(clock, w2.promise, 'write 2 answered');
    assert.equal(code(r1), 2007, `write 1: ${show(r1)}`);
    assert.equal(code(r2), 2007, `write 2: ${show(r2)}`);
    assert.ok(shard.committedSeq < 2, `the range the commit step refused is not committed (committed ${shard.committedSeq})`);
    assert.notEqual(shard.writesRefused, null, 'a failed commit step stops writes');
    const r3 = await settle(clock, shard.handle(Op.Write, writeBody(3)), 'a later write answered');
    assert.ok(code(r3) === 2008 || code(r3) === 2007, `a later write is refused: ${show(r3)}`);
    for (let i = 0; i < 20; i++) await turn();
    assert.equal(unhandled.length, 0, describeUnhandled(unhandled));
    assert.equal(shard.state, 'serving', 'reads go on');
    await shard.close();
  });
});

// ---------------------------------------------------------------------------------------------
// r2: a later successful commit must not cover a refused one

async function assertNothingCommitted(clock: ManualClock, shard: Shard, ids: number[], when: string): Promise<void> {
  assert.equal(shard.committedSeq, 0, `${when}: committed watermark`);
  const recs = await shard.readCommitted(1, 1 << 20);
  assert.deepEqual(
    recs.map((r) => r.header.firstSeq),
    [],
    `${when}: readCommitted(1) serves no record the commit step refused`,
  );
  for (const id of ids) {
    const d = await settle(clock, shard.handle(Op.Details, detailsBody(id)), `details of ${id}`);
    assert.equal(code(d), 1001, `${when}: details of key ${id}: ${show(d)}`);
    const r = await settle(clock, shard.handle(Op.Read, readBody(id)), `read of ${id}`);
    assert.equal(code(r), 1001, `${when}: read of key ${id}: ${show(r)}`);
  }
}

test('r2: after a rejected commit, a later write (whose commit would succeed) does not make the refused record committed, also after reopening', async () => {
  const clock = new ManualClock();
  const disk = new SimDisk();
  const step = new FakeCommitStep();
  step.answer = (call) => (call === 1 ? new Error('replica refused') : 'ok');
  let { shard } = await openShard(disk, clock, step);
  const r1 = await settle(clock, shard.handle(Op.Write, writeBody(1)), 'write 1 answered');
  assert.equal(code(r1), 2007, `write 1: ${show(r1)}`);
  const r2 = await settle(clock, shard.handle(Op.Write, writeBody(2)), 'write 2 answered');
  assert.ok(code(r2) === 2008 || code(r2) === 2007, `write 2 is refused, writes stopped: ${show(r2)}`);
  await assertNothingCommitted(clock, shard, [1], 'before reopening');
  await shard.close();
  ({ shard } = await openShard(disk, clock, step));
  await assertNothingCommitted(clock, shard, [1, 2], 'after reopening');
  await shard.close();
});

test('r2: a commit step that succeeds for group 2 while group 1 is refused does not commit past the hole, also after reopening', async () => {
  const clock = new ManualClock();
  const disk = new SimDisk();
  const step = new FakeCommitStep();
  step.answer = (call) => (call === 1 ? 'hold' : 'ok');
  let { shard } = await openShard(disk, clock, step);
  const w1 = track(shard.handle(Op.Write, writeBody(1)));
  await until(clock, () => step.calls.length === 1, 'group 1 durable, its commit step running');
  const w2 = track(shard.handle(Op.Write, writeBody(2)));
  await until(clock, () => step.calls.length === 2, 'group 2 durable, its commit step succeeded');
  step.rejectAll('replica refused');
  const r1 = await settle(clock, w1.promise, 'write 1 answered');
  const r2 = await settle(clock, w2.promise, 'write 2 answered');
  assert.equal(code(r1), 2007, `write 1: ${show(r1)}`);
  assert.equal(code(r2), 2007, `write 2 (after the hole): ${show(r2)}`);
  await assertNothingCommitted(clock, shard, [1, 2], 'before reopening');
  await shard.close();
  ({ shard } = await openShard(disk, clock, step));
  await assertNothingCommitted(clock, shard, [1, 2], 'after reopening');
  await shard.close();
});

// ---------------------------------------------------------------------------------------------
// r3: a disk-full rewind fails only what never reached the disk

test('r3: a disk-full rewind keeps durable writes waiting on their commit step; only the write that never reached the disk gets 2008 diskFull', async () => {
  const clock = new ManualClock();
  // Room for segment 1 and its spare (segment 2), not for a third segment.
  const disk = new SimDisk({ capacityBytes: 2 * SEGMENT_BYTES + 4096 });
  const step = new FakeCommitStep();
  const { shard } = await openShard(disk, clock, step);
  await quiet(clock, disk); // the spare segment 2 is made
  const w1 = track(shard.handle(Op.Write, writeBody(1, 30000)));
  await until(clock, () => step.calls.length === 1, 'W1 durable, its commit step running');
  const w2 = track(shard.handle(Op.Write, writeBody(1, 30000))); // segment 2 (the spare)
  const w3 = track(shard.handle(Op.Write, writeBody(1, 30000))); // segment 3: no room
  const r3 = await settle(clock, w3.promise, 'W3 answered');
  assert.equal(code(r3), 2008, `W3 never reached the disk: ${show(r3)}`);
  assert.equal(decodeError(r3.body).detail.diskFull, true, 'W3 is refused for a full disk');
  await until(clock, () => step.calls.length === 2, 'W2 durable, its commit step running');
  assert.deepEqual(step.calls, [{ from: 1, to: 1 }, { from: 2, to: 2 }]);
  assert.equal(w1.settled, false, `W1 is durable: it waits for its commit step, not a 2008 (${w1.value ? show(w1.value) : ''})`);
  assert.equal(w2.settled, false, `W2 is durable: it waits for its commit step, not a 2008 (${w2.value ? show(w2.value) : ''})`);
  step.resolveAll();
  const r1 = await settle(clock, w1.promise, 'W1 answered');
  const r2 = await settle(clock, w2.promise, 'W2 answered');
  assert.equal(code(r1), 0, `W1: ${show(r1)}`);
  assert.equal(code(r2), 0, `W2: ${show(r2)}`);
  assert.equal(decodeWriteOk(r1.body).firstSeq, 1n);
  assert.equal(decodeWriteOk(r2.body).firstSeq, 2n);
  assert.equal(shard.committedSeq, 2);
  assert.equal(shard.durableSeq, 2);
  assert.deepEqual(readVersions(await settle(clock, shard.handle(Op.Read, readBody(1)), 'read of key 1')), [1n, 2n]);
  assert.equal(shard.writesRefused, null, 'a full disk does not stop writes');
  await shard.close();
});

// ---------------------------------------------------------------------------------------------
// r4: an interrupted truncation with several later segments always recovers, at the cut

const LOG_NODE = new Uint8Array(16).fill(9);

function openLog(disk: Disk, clock: Clock): Promise<ShardLog> {
  return ShardLog.open({ disk, clock, dir: DIR, shard: 0, numShards: 1, routing: 2, segmentBytes: SEGMENT_BYTES, log: () => {}, ackAtDurable: false });
}

/** Places one single-batch record for key `id` with `n` raw event bytes (the log does not decode them). */
function place(log: ShardLog, id: number, n: number): void {
  const k = new Uint8Array(48);
  k[47] = id;
  const b = { key: k, fromVersion: 1, clientSeq: 0n, eventCount: 1, prevSeq: 0, eventsBytes: n, writeEvents: (d: Uint8Array, at: number) => d.fill(0x5a, at, at + n) };
  const p = log.reserve(recordSize([b]));
  const bytes = encodeRecord({ shard: 0, firstSeq: p.firstSeq, epoch: 0, nodeId: LOG_NODE, vouchedEnd: p.vouchedEnd, timestampMs: 1, prevHash: p.prevHash, clientId: 1n, batches: [b] });
  log.commitPlacement(bytes, [k], 1);
}

const TRUNC_RECORDS = 8;

/** A cluster-mode log (ack barrier at seq 1) of 8 records of 20 KB: 4 segments and a spare. */
async function truncationSetup(clock: ManualClock, seed: number): Promise<{ disk: SimDisk; log: ShardLog }> {
  const disk = new SimDisk({ seed });
  const log = await openLog(disk, clock);
  for (let i = 0; i < TRUNC_RECORDS; i++) {
    place(log, i, 20000);
    while (log.queuedRecords > 0) await log.flush();
  }
  log.setAcked(1);
  await log.syncHeader();
  await quiet(clock, disk);
  return { disk, log };
}

/** Opens the image left by a crash; returns the recovered durable seq or the error. */
async function recover(clock: ManualClock, image: SimDisk): Promise<number | Error> {
  try {
    const l = await openLog(image, clock);
    const seq = l.durableSeq;
    await l.close();
    // Recovery finished the truncation durably: a second open agrees.
    const again = await openLog(image, clock);
    assert.equal(again.durableSeq, seq, 'a second recovery ends where the first did');
    await again.close();
    return seq;
  } catch (e) {
    return e as Error;
  }
}

test('r4: truncateAfter over several later segments, cut by a crash at its directory sync (40 seeds): recovery ends at the cut', async () => {
  const clock = new ManualClock();
  const problems: string[] = [];
  for (let seed = 1; seed <= 40; seed++) {
    const { disk, log } = await truncationSetup(clock, seed);
    assert.ok(log.segmentCount >= 4, `setup: ${log.segmentCount} segments`);
    let image: SimDisk | null = null;
    disk.onOp = (op) => {
      if (image === null && op.kind === 'syncDir' && op.path === DIR) image = disk.crash(prng(seed), { style: 'in-order' });
    };
    void log.truncateAfter(1).catch(() => {}); // the dead disk never answers it
    await until(clock, () => image !== null, `seed ${seed}: truncateAfter reaches its directory sync`);
    const got = await recover(clock, image!);
    const names = image!.names(DIR).filter((n) => n.endsWith('.seg'));
    if (got !== 1) problems.push(`seed ${seed}: ${got instanceof Error ? `${got.name}: ${got.message}` : `recovered to seq ${got}`} (segments after the crash: ${names.join(',')})`);
  }
  assert.deepEqual(problems, []);
});

test('r4: truncateAfter over several later segments, cut by a crash at any step (seeded styles): always recovers, at the cut once the marker is durable', async () => {
  const clock = new ManualClock();
  // A dry run lists the steps of the truncation.
  const dry = await truncationSetup(clock, 0);
  const steps: string[] = [];
  dry.disk.onOp = (op) => {
    steps.push(`${op.kind} ${op.path}`);
  };
  await dry.log.truncateAfter(1);
  dry.disk.onOp = null;
  await dry.log.close();
  assert.equal(await recover(clock, dry.disk), 1, 'without a crash the log ends at the cut');
  // The cut marker is durable once the first fsync of the truncation (segment 1's header) is done.
  const markerSynced = steps.findIndex((s) => s.startsWith('fsync ')) + 1;
  assert.ok(markerSynced > 0, `no fsync among the steps: ${steps.join(' | ')}`);
  assert.ok(steps.filter((s) => s.startsWith('remove')).length >= 3, `several later segments go: ${steps.join(' | ')}`);
  const problems: string[] = [];
  for (let at = 1; at <= steps.length; at++) {
    for (let seed = 1; seed <= 6; seed++) {
      const { disk, log } = await truncationSetup(clock, seed);
      let image: SimDisk | null = null;
      let n = 0;
      const rng = prng(seed * 1000 + at);
      disk.onOp = () => {
        if (++n === at && image === null) image = disk.crash(rng);
      };
      void log.truncateAfter(1).catch(() => {});
      await until(clock, () => image !== null, `step ${at}, seed ${seed}: the crash`);
      const got = await recover(clock, image!);
      const where = `crash before step ${at} (${steps[at - 1]}), seed ${seed}, ${image!.lastCrash?.style ?? ''}`;
      if (got instanceof Error) problems.push(`${where}: ${got.name}: ${got.message}`);
      else if (at > markerSynced ? got !== 1 : got !== 1 && got !== TRUNC_RECORDS) problems.push(`${where}: recovered to seq ${got}`);
    }
  }
  assert.deepEqual(problems, []);
});

// ---------------------------------------------------------------------------------------------
// r5: no stale idle timer after truncateAfter

test('r5: after truncateAfter no stale idle header catch-up stops writes (standalone)', async () => {
  const clock = new ManualClock();
  const { shard, logs } = await openShard(new SimDisk(), clock);
  assert.equal(code(await settle(clock, shard.handle(Op.Write, writeBody(1)), 'w1')), 0);
  assert.equal(code(await settle(clock, shard.handle(Op.Write, writeBody(1)), 'w2')), 0);
  // A legal no-op cut at the durable end: the shard still closes and reopens its log.
  await shard.truncateAfter(shard.durableSeq);
  // Any idle catch-up the last commit loop armed comes due now.
  clock.advance(1000);
  for (let i = 0; i < 20; i++) await turn();
  const r3 = await settle(clock, shard.handle(Op.Write, writeBody(1)), 'w3');
  assert.equal(code(r3), 0, `a write after truncateAfter: ${show(r3)}; log: ${logs.join(' | ')}`);
  clock.advance(1000);
  const r4 = await settle(clock, shard.handle(Op.Write, writeBody(1)), 'w4');
  assert.equal(code(r4), 0, `${show(r4)}; log: ${logs.join(' | ')}`);
  assert.equal(shard.writesRefused, null, logs.join(' | '));
  assert.deepEqual(readVersions(await settle(clock, shard.handle(Op.Read, readBody(1)), 'read')), [1n, 2n, 3n, 4n]);
  await shard.close();
});

// ---------------------------------------------------------------------------------------------
// r6: truncateAfter and commits in flight

function assertWatermarks(shard: Shard, when: string): void {
  assert.ok(shard.committedSeq <= shard.durableSeq && shard.durableSeq <= shard.placedSeq, `${when}: watermarks placed ${shard.placedSeq} ≥ durable ${shard.durableSeq} ≥ committed ${shard.committedSeq}`);
}

/** Cluster mode on a disk with room for 2 segments: W1 (segment 1) and W2 (segment 2) durable with their commit steps running, W3 refused (disk full). */
async function commitsInFlight(clock: ManualClock): Promise<{ shard: Shard; step: FakeCommitStep; w1: ReturnType<typeof track<ShardResult>>; w2: ReturnType<typeof track<ShardResult>> }> {
  const disk = new SimDisk({ capacityBytes: 2 * SEGMENT_BYTES + 4096 });
  const step = new FakeCommitStep();
  const { shard } = await openShard(disk, clock, step);
  await quiet(clock, disk);
  const w1 = track(shard.handle(Op.Write, writeBody(1, 30000)));
  await until(clock, () => step.calls.length === 1, 'W1 durable');
  const w2 = track(shard.handle(Op.Write, writeBody(1, 30000)));
  const w3 = track(shard.handle(Op.Write, writeBody(1, 30000)));
  await settle(clock, w3.promise, 'W3 refused (disk full)');
  await until(clock, () => step.calls.length === 2, 'W2 durable');
  return { shard, step, w1, w2 };
}

/** After a cut: the commit results of whatever it removed never make committed pass durable, and a new write's record is not committed before its own commit step. */
async function assertCommitsAfterCut(clock: ManualClock, shard: Shard, step: FakeCommitStep, unhandled: unknown[]): Promise<void> {
  for (let i = 0; i < 20; i++) await turn();
  clock.advance(100);
  for (let i = 0; i < 20; i++) await turn();
  assertWatermarks(shard, 'after the commit steps resolved');
  assert.equal(shard.state, 'serving', `the shard serves (${shard.state})`);
  assert.equal(unhandled.length, 0, describeUnhandled(unhandled));
  const before = shard.durableSeq;
  assert.equal(shard.committedSeq, before, 'everything durable is committed (nothing in flight)');
  const w4 = track(shard.handle(Op.Write, writeBody(5, 10)));
  await until(clock, () => shard.durableSeq > before || w4.settled, 'W4 durable');
  assert.equal(w4.settled, false, `W4 waits for its commit step (${w4.value ? show(w4.value) : String(w4.error)})`);
  assert.deepEqual(
    (await shard.readCommitted(before + 1, 1 << 20)).map((r) => r.header.firstSeq),
    [],
    `a record whose commit step is running is not committed (committed ${shard.committedSeq}, durable ${shard.durableSeq})`,
  );
  assertWatermarks(shard, 'W4 durable');
  step.resolveAll();
  const r4 = await settle(clock, w4.promise, 'W4 answered');
  assert.equal(code(r4), 0, show(r4));
  assertWatermarks(shard, 'the end');
  assert.equal(unhandled.length, 0, describeUnhandled(unhandled));
}

test('r6: truncateAfter(0) once the writes are answered, their commit steps resolving after it: refused below the barrier, or the late commits are dropped; committed never passes durable', async () => {
  await watchingUnhandled(async (unhandled) => {
    const clock = new ManualClock();
    const { shard, step, w1, w2 } = await commitsInFlight(clock);
    // The review's order: the cut comes after W1..W3 were answered. (Durable writes are answered
    // only once committed, so here the commit steps resolve first; a shard that answers them early
    // gets the cut while they run.)
    for (let i = 0; i < 20; i++) await turn();
    if (!w1.settled || !w2.settled) {
      step.resolveAll();
      await until(clock, () => w1.settled && w2.settled, 'W1, W2 answered');
    }
    const cut = track(shard.truncateAfter(0));
    step.resolveAll();
    await until(clock, () => cut.settled, 'the cut');
    if (cut.error === undefined) {
      assert.ok(shard.durableSeq === 0 && shard.committedSeq === 0, `cut at 0: durable ${shard.durableSeq}, committed ${shard.committedSeq}`);
    } else {
      assert.ok(cut.error instanceof TruncateRefusedError, `refused for the acknowledged records: ${String(cut.error)}`);
      assert.equal(shard.durableSeq, 2, 'nothing was cut');
    }
    await assertCommitsAfterCut(clock, shard, step, unhandled);
    await shard.close();
  });
});

test('r6: truncateAfter(0) while commit steps are in flight waits for them, then refuses (writes not stopped / below the barrier); committed never passes durable', async () => {
  await watchingUnhandled(async (unhandled) => {
    const clock = new ManualClock();
    const { shard, step, w1, w2 } = await commitsInFlight(clock);
    const cut = track(shard.truncateAfter(0));
    for (let i = 0; i < 20; i++) await turn();
    assert.equal(cut.settled, false, `truncateAfter waits for the commit steps in flight (${String(cut.error ?? 'it went ahead')})`);
    step.resolveAll();
    await until(clock, () => cut.settled && w1.settled && w2.settled, 'the cut and W1, W2 answered');
    assert.ok(
      cut.error instanceof TruncateRefusedError || (cut.error instanceof Error && /needs writes to be stopped/.test(cut.error.message)),
      `the cut is refused (acknowledged or in-flight writes), not carried out nor failed: ${String(cut.error)}`,
    );
    assert.equal(shard.durableSeq, 2, 'nothing was cut');
    assert.equal(code(w1.value!), 0, `W1: ${show(w1.value!)}`);
    assert.equal(code(w2.value!), 0, `W2: ${show(w2.value!)}`);
    await assert.rejects(shard.truncateAfter(0), TruncateRefusedError, 'below the ack barrier: refused');
    await assertCommitsAfterCut(clock, shard, step, unhandled);
    await shard.close();
  });
});

test('r6: truncateAfter(0) while a commit step is in flight waits it out; when it fails, the unacknowledged tail is cut', async () => {
  await watchingUnhandled(async (unhandled) => {
    const clock = new ManualClock();
    const step = new FakeCommitStep();
    const { shard } = await openShard(new SimDisk(), clock, step);
    const w1 = track(shard.handle(Op.Write, writeBody(1)));
    await until(clock, () => step.calls.length === 1, 'W1 durable');
    const cut = track(shard.truncateAfter(0));
    for (let i = 0; i < 20; i++) await turn();
    assert.equal(cut.settled, false, `truncateAfter waits for the commit step in flight (${String(cut.error ?? 'it went ahead')})`);
    step.rejectAll('lost the quorum');
    await until(clock, () => cut.settled && w1.settled, 'the cut and W1 answered');
    assert.equal(cut.error, undefined, `the cut of a tail nobody acknowledged goes ahead: ${String(cut.error)}`);
    assert.equal(code(w1.value!), 2007, show(w1.value!));
    assert.equal(shard.durableSeq, 0);
    assert.equal(shard.committedSeq, 0);
    for (let i = 0; i < 20; i++) await turn();
    clock.advance(100);
    assertWatermarks(shard, 'after the cut');
    assert.equal(shard.state, 'serving');
    assert.equal(unhandled.length, 0, describeUnhandled(unhandled));
    await shard.close();
  });
});

// ---------------------------------------------------------------------------------------------
// r8: truncateAfter racing a write (the fuzz)

interface RaceConfig {
  /** Event-loop turns a disk read takes (the racing write's cold load is reads). */
  readTurns: number;
  /** Turns every other disk step takes. */
  otherTurns: number;
  /** The cut starts after 0..ks turns. */
  ks: number;
}

const RACE_CONFIGS: RaceConfig[] = [
  { readTurns: 1, otherTurns: 1, ks: 24 },
  { readTurns: 3, otherTurns: 1, ks: 24 },
  { readTurns: 10, otherTurns: 1, ks: 16 },
  { readTurns: 10, otherTurns: 3, ks: 20 },
  { readTurns: 60, otherTurns: 1, ks: 4 },
];

/** A racing write rejected with this is the one problem still open (see the 'r8 (open)' test). */
const CLOSED_LOG_REJECTION = /segment is closed/;

interface RaceFindings {
  /** One line per race that went wrong in a way the review fixes cover. */
  problems: string[];
  /** One line per race whose write rejected because its cold load read the closed log. */
  closedLog: string[];
}

let raceFindings: RaceFindings | null = null;

/**
 * Races a write whose key is cold (its state loads from disk) against a standalone no-op cut at
 * the durable end (legal; the shard still closes and reopens its log), the cut starting k turns
 * after the write. No time passes during the race; stale timers get their chance after it.
 */
async function raceTruncateAgainstWrite(unhandled: unknown[]): Promise<RaceFindings> {
  const clock = new ManualClock();
  const found: RaceFindings = { problems: [], closedLog: [] };
  for (const { readTurns, otherTurns, ks } of RACE_CONFIGS) {
    for (let k = 0; k <= ks; k++) {
      const where = `reads ${readTurns} turns, others ${otherTurns}, cut after ${k} turns`;
      unhandled.length = 0;
      const disk = new SimDisk({ turns: (kind) => (kind === 'read' ? readTurns : otherTurns) });
      let { shard } = await openShard(disk, clock);
      for (let i = 1; i <= 3; i++) await settle(clock, shard.handle(Op.Write, writeBody(i)), 'setup write', WAIT_MS, 0);
      await shard.close();
      ({ shard } = await openShard(disk, clock)); // cold caches: the write loads key 2 from disk
      const w = track(shard.handle(Op.Write, writeBody(2)));
      for (let i = 0; i < k; i++) await turn();
      const cut = await shard.truncateAfter(shard.durableSeq).then(
        () => null,
        (e: unknown) => e as Error,
      );
      let wr: ShardResult | Error;
      try {
        wr = await settle(clock, w.promise, 'the racing write', 1000, 0);
      } catch (e) {
        wr = e as Error;
      }
      clock.advance(1000); // stale timers, if any, fire now
      for (let i = 0; i < 10; i++) await turn();
      let next: ShardResult | Error;
      try {
        next = await settle(clock, shard.handle(Op.Write, writeBody(2)), 'the next write', 1000, 0);
      } catch (e) {
        next = e as Error;
      }
      const bad: string[] = [];
      // The cut may refuse to start while the write is placed and not yet durable.
      if (cut !== null && !/needs writes to be stopped/.test(cut.message)) bad.push(`cut threw ${cut.message}`);
      if (wr instanceof Error) {
        if (CLOSED_LOG_REJECTION.test(wr.message)) found.closedLog.push(`${where}: racing write rejected: ${wr.message}`);
        else bad.push(`racing write rejected: ${wr.message}`);
      } else if (code(wr) !== 0 && code(wr) !== 2012) bad.push(`racing write: ${show(wr)}`);
      if (next instanceof Error) bad.push(`next write rejected: ${next.message}`);
      else if (code(next) !== 0) bad.push(`next write: ${show(next)}`);
      else {
        // Key 2 had version 1; the racing write made it 2 if it succeeded.
        const v = decodeWriteOk(next.body).ranges[0]!.fromVersion;
        const want = !(wr instanceof Error) && code(wr) === 0 ? 3n : 2n;
        if (v !== want) bad.push(`next write at version ${v}, want ${want}`);
      }
      if (shard.writesRefused !== null) bad.push(`writesRefused: ${shard.writesRefused}`);
      if (shard.state !== 'serving') bad.push(`state ${shard.state}`);
      if (!(shard.committedSeq <= shard.durableSeq && shard.durableSeq <= shard.placedSeq)) bad.push(`watermarks ${shard.placedSeq}/${shard.durableSeq}/${shard.committedSeq}`);
      if (unhandled.length > 0) bad.push(`unhandled: ${describeUnhandled(unhandled)}`);
      if (bad.length > 0) found.problems.push(`${where}: ${bad.join('; ')}`);
    }
  }
  return found;
}

test('r8: a truncateAfter racing a cold-loading write never stops writes, breaks a watermark or leaks a rejection; the write succeeds or gets 2012', async () => {
  raceFindings = await watchingUnhandled((unhandled) => raceTruncateAgainstWrite(unhandled));
  assert.deepEqual(raceFindings.problems, []);
});

// Found after the review fixes: when the cut closes the log during the racing write's cold load,
// the load read through the closed log and the write rejected with "segment is closed". Now the
// load starts again on the new log.
test('r8 (later): a truncateAfter during the racing write\'s cold load: the write gets 2012, not a "segment is closed" rejection', async () => {
  raceFindings ??= await watchingUnhandled((unhandled) => raceTruncateAgainstWrite(unhandled));
  assert.deepEqual(raceFindings.closedLog, []);
});

// ---------------------------------------------------------------------------------------------
// r9: a durable tail kept over a restart goes through the commit step

/** Life 1 makes seqs 1 (key 1) and 2 (key 2) durable, its commit step never answers; the power goes. */
async function keptTailImage(clock: ManualClock): Promise<SimDisk> {
  const disk = new SimDisk();
  const never = new FakeCommitStep();
  const { shard: s1 } = await openShard(disk, clock, never);
  void s1.handle(Op.Write, writeBody(1));
  void s1.handle(Op.Write, writeBody(2));
  await until(clock, () => s1.durableSeq === 2 && never.calls.length === 2, 'life 1: seqs 1, 2 durable, commits pending');
  assert.equal(s1.committedSeq, 0);
  return disk.crash(prng(1), { style: 'keep-all' });
}

test('r9: a durable but uncommitted tail kept over a restart goes through the commit step before it is visible', async () => {
  const clock = new ManualClock();
  const image = await keptTailImage(clock);
  const step = new FakeCommitStep();
  const { shard } = await openShard(image, clock, step);
  assert.equal(shard.durableSeq, 2, 'recovery keeps the durable tail');
  assert.equal(shard.committedSeq, 0, 'but not as committed');
  const w3 = track(shard.handle(Op.Write, writeBody(3)));
  await until(clock, () => step.calls.length >= 1, 'life 2: the first commit step');
  assert.deepEqual(step.calls[0], { from: 1, to: 3 }, 'the first commit after the restart covers the kept tail, from its first uncommitted seq');
  const r1 = await settle(clock, shard.handle(Op.Read, readBody(1)), 'read 1');
  assert.equal(code(r1), 1001, `key 1 is not visible before its commit step: ${show(r1)}`);
  assert.deepEqual(await shard.readCommitted(1, 1 << 20), [], 'nothing is committed before the commit step answers');
  step.resolveAll();
  const r3 = await settle(clock, w3.promise, 'W3 answered');
  assert.equal(code(r3), 0, show(r3));
  assert.equal(shard.committedSeq, 3);
  assert.deepEqual(
    (await shard.readCommitted(1, 1 << 20)).map((r) => r.header.firstSeq),
    [1, 2, 3],
  );
  assert.deepEqual(readVersions(await settle(clock, shard.handle(Op.Read, readBody(2)), 'read 2')), [1n]);
  await shard.close();
});

// Found after the review fixes: an aggregate read while the kept tail was not committed cached a
// committed view without the tail's batch, and nothing refreshed it when the tail committed.
test('r9 (later): an aggregate read while the kept tail was uncommitted is visible once the tail commits', async () => {
  const clock = new ManualClock();
  const image = await keptTailImage(clock);
  const step = new FakeCommitStep();
  step.answer = () => 'ok';
  const { shard } = await openShard(image, clock, step);
  assert.equal(code(await settle(clock, shard.handle(Op.Read, readBody(1)), 'read 1 before')), 1001);
  assert.equal(code(await settle(clock, shard.handle(Op.Write, writeBody(3)), 'W3')), 0);
  assert.equal(shard.committedSeq, 3);
  const d = await settle(clock, shard.handle(Op.Details, detailsBody(1)), 'details 1 after');
  assert.equal(code(d), 0, `details of key 1 once its record is committed: ${show(d)}`);
  assert.deepEqual(readVersions(await settle(clock, shard.handle(Op.Read, readBody(1)), 'read 1 after')), [1n]);
  await shard.close();
});

// Second review: the kept tail commits while a cold load walks back over it. The load used to walk
// against the committed seq of its start and finish after the commit without marking its state as
// behind the tail, so details and reads missed the committed batch for as long as it stayed cached.
test('a cold load during which the kept tail commits does not cache an old committed view', async () => {
  const clock = new ManualClock();
  const disk = new SimDisk();
  const st1 = new FakeCommitStep();
  st1.answer = (call) => (call === 1 ? 'ok' : 'hold');
  const { shard: s1 } = await openShard(disk, clock, st1);
  assert.equal(code(await settle(clock, s1.handle(Op.Write, writeBody(1, 6000)), 'w1')), 0);
  void s1.handle(Op.Write, writeBody(1, 10));
  void s1.handle(Op.Write, writeBody(3, 10));
  await until(clock, () => s1.durableSeq === 3, 'seqs 2 and 3 durable');
  const image = disk.crash(prng(1), { style: 'keep-all' });
  const st2 = new FakeCommitStep();
  const { shard } = await openShard(image, clock, st2);
  assert.equal(shard.committedSeq, 1);
  const w = track(shard.handle(Op.Write, writeBody(9)));
  await until(clock, () => st2.calls.length === 1, 'the commit step is asked');
  let reads = 0;
  image.onOp = (op) => {
    if (op.kind === 'read' && ++reads === 2) st2.resolveAll();
    return undefined;
  };
  const d = await settle(clock, shard.handle(Op.Details, detailsBody(1)), 'details');
  image.onOp = null;
  await settle(clock, w.promise, 'the write');
  assert.equal(shard.committedSeq, 4);
  assert.equal(code(d), 0, show(d));
  assert.equal(decodeDetailsOk(d.body).version, 2n, 'seq 2 (version 2 of key 1) is committed');
  assert.deepEqual(readVersions(await settle(clock, shard.handle(Op.Read, readBody(1)), 'read')), [1n, 2n]);
  await shard.close();
});

// Second review: a read whose cold load walks back over a long uncommitted tail while truncateAfter
// cuts that tail used to follow the links through the new log and stop the shard ("batch seq N is
// linked to but not in the log").
test('a read during truncateAfter of a long kept tail is answered and the shard keeps serving', async () => {
  const clock = new ManualClock();
  const disk = new SimDisk();
  const st1 = new FakeCommitStep();
  st1.answer = (call) => (call === 1 ? 'ok' : 'hold');
  const { shard: s1 } = await openShard(disk, clock, st1);
  assert.equal(code(await settle(clock, s1.handle(Op.Write, writeBody(1, 10)), 'w1')), 0);
  for (let i = 0; i < 10; i++) void s1.handle(Op.Write, writeBody(1, 10));
  await until(clock, () => s1.durableSeq === 11, 'the tail is durable');
  const image = disk.crash(prng(1), { style: 'keep-all' });
  const { shard } = await openShard(image, clock, new FakeCommitStep());
  const rd = track(shard.handle(Op.Read, readBody(1)));
  const tr = track(shard.truncateAfter(1));
  await until(clock, () => rd.settled && tr.settled, 'both settled');
  assert.equal(tr.error, undefined);
  assert.equal(rd.error, undefined);
  assert.equal(code(rd.value!), 0, show(rd.value!));
  assert.deepEqual(readVersions(rd.value!), [1n]);
  assert.equal(shard.state, 'serving');
  await shard.close();
});

// The three watermarks (placed ≥ durable ≥ committed) with a commit step after the fdatasync, the
// durable ack barrier, truncateAfter of a speculative tail, and reads by position. The commit step
// is a fake whose commits settle only when the test says; flushes can be held by a Disk wrapper.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeDetailsOk, decodeError, decodeReadOk, decodeWriteOk, encodeKeyRequest, encodeReadRequest, encodeWriteRequest, Expect, Op, type ExpectMode } from '../../client/wire.ts';
import { HoldDisk } from '../../test/lib/hold-disk.ts';
import { nodeFs, verifyShard } from '../cli/verify.ts';
import { SEGMENT_HEADER_BYTES } from '../constants.ts';
import { initHashing } from '../storage/checksum.ts';
import { systemClock, type Clock } from '../storage/disk.ts';
import { openFileIo, type FileIo } from '../storage/io.ts';
import { batchesOf } from '../storage/record.ts';
import { RealDisk } from '../storage/real-disk.ts';
import { decodeSegmentHeader } from '../storage/segment.ts';
import { TruncateRefusedError } from '../storage/shard-log.ts';
import { Shard, type CommitStep, type ShardResult } from './shard.ts';

await initHashing();

const NODE_ID = new Uint8Array(16).fill(0x11);
const SEGMENT_BYTES = 64 * 1024;
/** Record timestamps fixed, so two shards fed the same writes hold byte-identical records. */
const CLOCK: Clock = { ...systemClock, nowMs: () => 1_750_000_000_000 };

interface HeldCommit {
  from: number;
  to: number;
  resolve: () => void;
  reject: (e: Error) => void;
}

/** A commit step whose commits settle when the test says (or at once while `auto`). */
class FakeCommitStep implements CommitStep {
  auto = false;
  readonly calls: { from: number; to: number }[] = [];
  readonly held: HeldCommit[] = [];
  commit(from: number, to: number): Promise<void> {
    this.calls.push({ from, to });
    if (this.auto) return Promise.resolve();
    return new Promise<void>((resolve, reject) => this.held.push({ from, to, resolve, reject }));
  }
  /** Resolves the held commits that end at or below `seq`. */
  resolveThrough(seq: number): void {
    for (let i = 0; i < this.held.length; ) {
      if (this.held[i]!.to <= seq) this.held.splice(i, 1)[0]!.resolve();
      else i++;
    }
  }
  rejectAll(why: string): void {
    for (const h of this.held.splice(0)) h.reject(new Error(why));
  }
}

async function until(cond: () => boolean, what: string, turns = 20_000): Promise<void> {
  for (let i = 0; i < turns; i++) {
    if (cond()) return;
    await new Promise<void>((r) => setImmediate(r));
  }
  assert.fail(`timed out waiting until ${what}`);
}

interface Env {
  root: string;
  disk: HoldDisk;
  /** Opens shard-`name` with `step` as its commit step (none: standalone). */
  openShard: (o: { name?: string; step?: CommitStep; memoryBudgetBytes?: number }) => Promise<Shard>;
  dirOf: (name?: string) => string;
}

async function withEnv(fn: (env: Env) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'celer-commit-'));
  let io: FileIo | null = null;
  const opened: Shard[] = [];
  try {
    io = await openFileIo({ dir: root, log: () => {} });
    const disk = new HoldDisk(new RealDisk(io));
    const dirOf = (name = 'a') => join(root, name);
    await fn({
      root,
      disk,
      dirOf,
      openShard: async ({ name, step, memoryBudgetBytes }) => {
        const s = await Shard.open({
          disk,
          clock: CLOCK,
          nodeId: NODE_ID,
          dir: dirOf(name),
          shard: 0,
          numShards: 1,
          routing: 2,
          segmentBytes: SEGMENT_BYTES,
          memoryBudgetBytes: memoryBudgetBytes ?? 1 << 20,
          log: () => {},
          ...(step !== undefined ? { commitStep: step } : {}),
        });
        assert.equal(s.state, 'serving', s.reason);
        opened.push(s);
        return s;
      },
    });
  } finally {
    for (const s of opened) await s.close().catch(() => {});
    io?.close();
    await rm(root, { recursive: true, force: true });
  }
}

const CLIENT = 77n;
const key = (id: number) => ({ org: 4n, type: 4n, id: BigInt(id) });
function writeReq(id: number, o: { seq?: number; expect?: ExpectMode; version?: number; type?: string; size?: number; also?: number } = {}): Uint8Array {
  const one = (k: number) => ({
    key: key(k),
    expectMode: o.expect ?? Expect.Any,
    expectVersion: BigInt(o.version ?? 0),
    clientSeq: BigInt(o.seq ?? 0),
    events: [{ type: o.type ?? 'e', data: new Uint8Array(o.size ?? 16).fill(k & 0xff) }],
  });
  return encodeWriteRequest({ clientId: CLIENT, writes: o.also !== undefined ? [one(id), { ...one(o.also), clientSeq: 0n }] : [one(id)] });
}

function code(r: ShardResult): number {
  assert.equal(r.op, Op.Error, 'expected an error response');
  return decodeError(r.body).code;
}
function written(r: ShardResult): { firstSeq: bigint; versions: bigint[] } {
  assert.equal(r.op, Op.WriteOk, r.op === Op.Error ? decodeError(r.body).message : '');
  const w = decodeWriteOk(r.body);
  return { firstSeq: w.firstSeq, versions: w.ranges.map((x) => x.fromVersion) };
}
async function details(s: Shard, id: number): Promise<{ version: bigint; lastSeq: bigint } | number> {
  const r = await s.handle(Op.Details, encodeKeyRequest(key(id)));
  if (r.op === Op.Error) return decodeError(r.body).code;
  const d = decodeDetailsOk(r.body);
  return { version: d.version, lastSeq: d.lastSeq };
}
async function events(s: Shard, id: number): Promise<string[] | number> {
  const r = await s.handle(Op.Read, encodeReadRequest({ key: key(id), from: 1n, to: 0n, maxBytes: 0, eventTypes: [] }));
  if (r.op === Op.Error) return decodeError(r.body).code;
  return decodeReadOk(r.body).batches.flatMap((b) => b.events.map((e) => `${e.version}:${e.type}`));
}
function watermarks(s: Shard): [number, number, number] {
  return [s.placedSeq, s.durableSeq, s.committedSeq];
}
async function headerAckedSeq(segPath: string): Promise<number> {
  const fh = await open(segPath, 'r');
  try {
    const b = new Uint8Array(SEGMENT_HEADER_BYTES);
    await fh.read(b, 0, b.length, 0);
    const h = decodeSegmentHeader(b);
    assert.ok(h.ok);
    return h.header.ackedSeq;
  } finally {
    await fh.close();
  }
}

/** Settles-tracking wrapper: `.done` turns true once the promise settles. */
function track<T>(p: Promise<T>): { p: Promise<T>; done: boolean } {
  const t = { p, done: false };
  void p.finally(() => (t.done = true));
  return t;
}

// Guards the watermark defect: the old engine acknowledged a write at its fdatasync and had no
// step between durable and committed, so nothing could hold an acknowledgement (or hide a write
// from readers) until a follower had it.
test('a write is acknowledged and visible only once its commit resolves; guards and exactly-once see it placed', async () => {
  await withEnv(async ({ disk, dirOf, openShard }) => {
    const step = new FakeCommitStep();
    const s = await openShard({ step });
    // Placed, not durable: the flush is held, no commit has been asked for.
    disk.holdFlushes = true;
    const w1 = track(s.handle(Op.Write, writeReq(1, { seq: 1 })));
    await until(() => disk.heldFlushes > 0, 'the first flush is held');
    assert.deepEqual(watermarks(s), [1, 0, 0]);
    assert.equal(step.calls.length, 0, 'the commit step runs only after the fdatasync');
    disk.releaseFlushes();
    // Durable, not committed.
    await until(() => step.held.length === 1, 'the commit step is asked for seq 1');
    assert.deepEqual(step.calls, [{ from: 1, to: 1 }]);
    assert.deepEqual(watermarks(s), [1, 1, 0]);
    assert.equal(await details(s, 1), 1001, 'details does not show an uncommitted write');
    assert.equal(await events(s, 1), 1001, 'reads do not show an uncommitted write');
    assert.equal(code(await s.handle(Op.Write, writeReq(1, { seq: 1 }))), 2013, 'a retry while in flight');
    const guard = await s.handle(Op.Write, writeReq(1, { expect: Expect.Exact, version: 0 }));
    assert.equal(code(guard), 2003, 'a concurrent exact-version write is checked against the placed write');
    assert.equal(decodeError(guard.body).detail.currentVersion, '1');
    assert.equal(code(await s.handle(Op.Write, writeReq(1, { expect: Expect.NoStream }))), 2003);
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(w1.done, false, 'not acknowledged before its commit');
    // Committed: acknowledged only after the ack barrier covering it is durable in the header.
    step.resolveThrough(1);
    assert.deepEqual(written(await w1.p).versions, [1n]);
    assert.ok((await headerAckedSeq(join(dirOf(), '0000000001.seg'))) >= 1, 'the ack barrier was durable before the acknowledgement');
    assert.deepEqual(watermarks(s), [1, 1, 1]);
    assert.deepEqual(await details(s, 1), { version: 1n, lastSeq: 1n });
    assert.deepEqual(await events(s, 1), ['1:e']);
    assert.equal(code(await s.handle(Op.Write, writeReq(1, { seq: 1 }))), 2002, 'a retry after commit');
    // A rejected commit: not acknowledged, outcome unknown.
    const w2 = s.handle(Op.Write, writeReq(2, { seq: 1 }));
    await until(() => step.held.length === 1, 'the commit step is asked for seq 2');
    step.rejectAll('the follower is gone');
    const r2 = await w2;
    assert.equal(code(r2), 2007);
    assert.match(decodeError(r2.body).message, /follower is gone/);
    assert.equal(s.committedSeq, 1);
    assert.equal(await details(s, 2), 1001);
    assert.equal(s.state, 'serving');
  });
});

test('committed never passes durable and durable never passes placed, under concurrent writes and commits', async () => {
  await withEnv(async ({ openShard }) => {
    const step = new FakeCommitStep();
    step.auto = true; // resolves at once: the fastest a commit can be
    const s = await openShard({ step });
    let inOrder = true;
    let samples = 0;
    let stop = false;
    const sampler = (async () => {
      while (!stop) {
        const [p, d, c] = watermarks(s);
        if (!(p >= d && d >= c)) inOrder = false;
        samples++;
        await new Promise<void>((r) => setImmediate(r));
      }
    })();
    for (let round = 0; round < 5; round++) {
      const rs = await Promise.all(Array.from({ length: 40 }, (_, i) => s.handle(Op.Write, writeReq(1 + (i % 7), { size: 200 + i * 50 }))));
      for (const r of rs) written(r);
    }
    stop = true;
    await sampler;
    assert.ok(samples > 10);
    assert.ok(inOrder, 'placed ≥ durable ≥ committed at every sample');
    assert.deepEqual(watermarks(s), [200, 200, 200]);
    assert.equal(s.state, 'serving', s.reason);
  });
});

/**
 * Writes that commit (seqs 1..3 on aggregate 1 with clientSeqs 1..3, and aggregate 2), then a
 * speculative tail whose commits are held: the caller says how big, and whether it ends with a restart.
 */
async function committedThenTail(s: Shard, step: FakeCommitStep, tail: { records: number; size: number }): Promise<Promise<ShardResult>[]> {
  step.auto = true;
  for (let i = 1; i <= 3; i++) written(await s.handle(Op.Write, writeReq(1, { seq: i, type: 'kept' })));
  written(await s.handle(Op.Write, writeReq(2, { type: 'kept' })));
  step.auto = false;
  const pending: Promise<ShardResult>[] = [];
  // The tail: aggregate 1 (clientSeq 5, 6, ...), and a new aggregate 3 that only the tail holds.
  for (let i = 0; i < tail.records; i++) {
    const before = s.durableSeq;
    pending.push(s.handle(Op.Write, i % 2 === 0 ? writeReq(1, { seq: 5 + i, type: 'tail', size: tail.size }) : writeReq(3, { seq: 5 + i, type: 'tail', size: tail.size })));
    await until(() => s.durableSeq > before, 'the tail write is durable');
  }
  assert.deepEqual(watermarks(s), [4 + tail.records, 4 + tail.records, 4]);
  return pending;
}

/** What the shard shows once the tail is gone: exactly what it showed before the tail was written. */
async function readsAsBefore(s: Shard): Promise<void> {
  assert.deepEqual(watermarks(s), [4, 4, 4]);
  assert.deepEqual(await details(s, 1), { version: 3n, lastSeq: 3n });
  assert.deepEqual(await events(s, 1), ['1:kept', '2:kept', '3:kept']);
  assert.equal(await details(s, 3), 1001, 'the aggregate only the tail held does not exist');
}

/** Writes after the tail is gone: guards, exactly-once floors and seqs as if it had never been written. */
async function writesAsIfNoTail(s: Shard, step: FakeCommitStep): Promise<void> {
  step.auto = true;
  // The guard sees version 3 again; clientSeq 5 (only in the removed tail) lands, not 2002/2013.
  const a = await s.handle(Op.Write, writeReq(1, { seq: 5, expect: Expect.Exact, version: 3, type: 'new' }));
  assert.deepEqual(written(a), { firstSeq: 5n, versions: [4n] }, 'the next seq, gapless');
  const b = written(await s.handle(Op.Write, writeReq(3, { seq: 6, expect: Expect.NoStream, type: 'new' })));
  assert.deepEqual(b, { firstSeq: 6n, versions: [1n] });
  assert.equal(code(await s.handle(Op.Write, writeReq(1, { seq: 5 }))), 2002, 'and now it is applied');
  assert.deepEqual(await events(s, 1), ['1:kept', '2:kept', '3:kept', '4:new']);
  assert.deepEqual(await events(s, 3), ['1:new']);
}

/** The same history without the tail, written to `name`: the chain tip to compare with. */
async function reference(openShard: Env['openShard'], name: string): Promise<void> {
  const step = new FakeCommitStep();
  step.auto = true;
  const s = await openShard({ name, step });
  for (let i = 1; i <= 3; i++) written(await s.handle(Op.Write, writeReq(1, { seq: i, type: 'kept' })));
  written(await s.handle(Op.Write, writeReq(2, { type: 'kept' })));
  written(await s.handle(Op.Write, writeReq(1, { seq: 5, expect: Expect.Exact, version: 3, type: 'new' })));
  written(await s.handle(Op.Write, writeReq(3, { seq: 6, expect: Expect.NoStream, type: 'new' })));
  await s.close();
}

// Guards the truncateAfter defect: the old engine had no way to remove a durable tail that was
// never committed (a leader's speculative writes after it lost its follower), so they stayed in
// the log and came back as data.
test('truncateAfter removes a speculative durable tail as if it had never been written, and never cuts below the ack barrier', async () => {
  await withEnv(async ({ dirOf, openShard }) => {
    const step = new FakeCommitStep();
    let s = await openShard({ step });
    const pending = await committedThenTail(s, step, { records: 2, size: 16 });
    // Before: the tail is placed and durable, so guards and exactly-once see it.
    assert.equal(code(await s.handle(Op.Write, writeReq(1, { seq: 5 }))), 2013);
    assert.equal(code(await s.handle(Op.Write, writeReq(1, { expect: Expect.Exact, version: 3 }))), 2003);
    // The commits fail (the follower is gone): the writes are answered 2007 and none is in flight.
    step.rejectAll('lost the follower');
    for (const p of pending) assert.equal(code(await p), 2007);
    await assert.rejects(s.truncateAfter(3), TruncateRefusedError, 'seq 4 was acknowledged: it is at the ack barrier');
    await assert.rejects(s.truncateAfter(2), TruncateRefusedError);
    assert.deepEqual(watermarks(s), [6, 6, 4], 'a refused truncation changes nothing');
    await s.truncateAfter(4);
    await readsAsBefore(s);
    await s.close();
    // Cold: a restart with a tiny cache rebuilds states and floors from the log alone.
    s = await openShard({ step, memoryBudgetBytes: 1 });
    await readsAsBefore(s);
    await writesAsIfNoTail(s, step);
    await s.close();
    s = await openShard({ step, memoryBudgetBytes: 1 });
    assert.deepEqual(await details(s, 1), { version: 4n, lastSeq: 5n });
    assert.equal(code(await s.handle(Op.Write, writeReq(1, { seq: 5 }))), 2002);
    await s.close();
    await reference(openShard, 'ref');
    const [got, want] = await Promise.all([verifyShard(nodeFs, dirOf(), 0, 1, 2), verifyShard(nodeFs, dirOf('ref'), 0, 1, 2)]);
    assert.equal(got.problem, null);
    assert.equal(got.tornTail, null);
    assert.equal(got.lastSeq, 6);
    assert.equal(got.tip, want.tip, 'the chain is exactly the one written without the tail');
  });
});

// A failed commit stops writes (nothing may commit past the hole it leaves). truncateAfter removes
// the hole; from then on the shard is as if the tail had never been written, so writes go on
// without a restart.
test('once truncateAfter has removed the range whose commit failed, the shard takes writes again', async () => {
  await withEnv(async ({ openShard }) => {
    const step = new FakeCommitStep();
    const s = await openShard({ step });
    const pending = await committedThenTail(s, step, { records: 2, size: 16 });
    step.rejectAll('lost the follower');
    for (const p of pending) assert.equal(code(await p), 2007);
    await s.truncateAfter(4);
    await readsAsBefore(s);
    await writesAsIfNoTail(s, step);
  });
});

test('a commit that settles while truncateAfter waits for it commits nothing of the removed tail', async () => {
  await withEnv(async ({ openShard }) => {
    const step = new FakeCommitStep();
    const s = await openShard({ step });
    const pending = await committedThenTail(s, step, { records: 2, size: 16 });
    assert.equal(step.held.length, 2, 'one commit per tail record');
    const [first, second] = step.held.splice(0);
    first!.reject(new Error('lost the follower'));
    for (const p of pending) assert.equal(code(await p), 2007);
    const cut = track(s.truncateAfter(4));
    await new Promise((r) => setTimeout(r, 20));
    assert.equal(cut.done, false, 'truncateAfter waits for the outstanding commit');
    assert.equal(code(await s.handle(Op.Write, writeReq(9))), 2012, 'writes wait out the truncation');
    second!.resolve(); // a late success for a record after the hole
    await cut.p;
    await readsAsBefore(s);
    await new Promise((r) => setTimeout(r, 20));
    assert.deepEqual(watermarks(s), [4, 4, 4], 'the late commit did not count');
  });
});

test('truncateAfter of a tail kept from before a restart that spans a segment rotation', async () => {
  await withEnv(async ({ dirOf, openShard }) => {
    const step = new FakeCommitStep();
    let s = await openShard({ step });
    await committedThenTail(s, step, { records: 9, size: 10_000 }); // ~100 KB: rotates into segment 2 (and 3)
    const segs = async () => (await readdir(dirOf())).filter((n) => n.endsWith('.seg')).sort();
    assert.ok((await segs()).length >= 2, (await segs()).join(' '));
    await s.close(); // the tail's commits never settle: a restart
    s = await openShard({ step });
    assert.deepEqual(watermarks(s), [13, 13, 4], 'the durable tail is kept, not committed');
    assert.deepEqual(await details(s, 1), { version: 3n, lastSeq: 3n }, 'the committed view hides the tail');
    assert.equal(await details(s, 3), 1001);
    assert.equal(code(await s.handle(Op.Write, writeReq(1, { seq: 5 }))), 2013, 'its clientSeqs are in flight');
    await assert.rejects(s.truncateAfter(3), TruncateRefusedError);
    await s.truncateAfter(4);
    assert.deepEqual(await segs(), ['0000000001.seg'], 'the later segments are gone');
    await readsAsBefore(s);
    await writesAsIfNoTail(s, step);
    // Keep writing across a rotation again.
    for (let i = 0; i < 8; i++) written(await s.handle(Op.Write, writeReq(10 + i, { size: 10_000 })));
    assert.ok((await segs()).length >= 2);
    await s.close();
    const got = await verifyShard(nodeFs, dirOf(), 0, 1, 2);
    assert.equal(got.problem, null);
    assert.equal(got.lastSeq, 14);
    await reference(openShard, 'ref');
    const ref = await openShard({ name: 'ref', step });
    for (let i = 0; i < 8; i++) written(await ref.handle(Op.Write, writeReq(10 + i, { size: 10_000 })));
    await ref.close();
    assert.equal(got.tip, (await verifyShard(nodeFs, dirOf('ref'), 0, 1, 2)).tip, 'the chain is exactly the one written without the tail');
  });
});

// Reads go on during a truncateAfter (only writes wait). A cold load that read the old log (tail
// included) before the cut and lands after it must not put that state in the new cache: its
// write-ahead version would include the removed tail, the next write would skip a version and
// link the aggregate to the tail's seq, which the write itself then reuses.
test('a cold load that read the old log before truncateAfter does not bring the removed tail back', async () => {
  await withEnv(async ({ disk, dirOf, openShard }) => {
    const step = new FakeCommitStep();
    let s = await openShard({ step });
    await committedThenTail(s, step, { records: 1, size: 16 }); // aggregate 1: v1..v3 committed, v4 (seq 5) the tail
    await s.close();
    s = await openShard({ step });
    assert.deepEqual(watermarks(s), [5, 5, 4]);
    disk.holdReadResults = true;
    const cold = details(s, 1);
    await until(() => disk.heldReads.length === 1, 'the cold load of aggregate 1 has read its newest record, the tail');
    disk.holdReadResults = false;
    await s.truncateAfter(4);
    disk.heldReads.shift()!();
    assert.deepEqual(await cold, { version: 3n, lastSeq: 3n });
    await readsAsBefore(s);
    step.auto = true;
    const w = await s.handle(Op.Write, writeReq(1, { expect: Expect.Exact, version: 3, type: 'new' }));
    assert.deepEqual(written(w), { firstSeq: 5n, versions: [4n] }, 'the guard sees version 3, the write gets version 4');
    assert.deepEqual(await events(s, 1), ['1:kept', '2:kept', '3:kept', '4:new']);
    await s.close();
    assert.equal((await verifyShard(nodeFs, dirOf(), 0, 1, 2)).problem, null);
  });
});

// Guards the reads-by-position defect: the old engine could find records only by key (newest
// first), so a follower or S3 uploader had no way to read the log from a seq onwards.
test('readCommitted returns the records from a seq in order, across sealed segments, never beyond committed', async () => {
  await withEnv(async ({ openShard }) => {
    const step = new FakeCommitStep();
    step.auto = true;
    const s = await openShard({ step });
    for (let i = 1; i <= 20; i++) written(await s.handle(Op.Write, writeReq(i, { size: 6_000 })));
    written(await s.handle(Op.Write, writeReq(21, { also: 22 }))); // one record, seqs 21 and 22
    for (let i = 23; i <= 26; i++) written(await s.handle(Op.Write, writeReq(i, { size: 6_000 })));
    step.auto = false;
    const before = s.durableSeq;
    void s.handle(Op.Write, writeReq(27));
    await until(() => s.durableSeq > before, 'seq 27 is durable');
    assert.deepEqual(watermarks(s), [27, 27, 26]);
    const seqsOf = (rs: Awaited<ReturnType<Shard['readCommitted']>>) => rs.flatMap((r) => [...batchesOf(r.bytes, r.header)].map((b) => b.seq));
    const all = await s.readCommitted(1, 1 << 30);
    assert.deepEqual(seqsOf(all), Array.from({ length: 26 }, (_, i) => i + 1), 'every committed seq once, in order, and not 27');
    assert.ok(new Set(all.map((r) => r.segment)).size >= 3, 'across sealed segments');
    assert.deepEqual(await s.readCommitted(27, 1 << 30), [], 'nothing beyond committed');
    const one = await s.readCommitted(9, 1);
    assert.deepEqual(seqsOf(one), [9], 'at least one record, however small maxBytes');
    const some = await s.readCommitted(5, 15_000);
    assert.deepEqual(seqsOf(some), [5, 6, 7], 'about maxBytes: stops after the record that reaches it');
    const mid = await s.readCommitted(22, 1 << 30);
    assert.deepEqual(seqsOf(mid), [21, 22, 23, 24, 25, 26], 'from the record that holds the seq');
    // Each record read is the one at its location, and checks out.
    for (const r of all) assert.equal(r.bytes.length, r.header.length);
  });
});

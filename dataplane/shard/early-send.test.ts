// The early hand-off of a leader's group (CommitStep.send): the group goes to the commit step's
// `send` before its local write is issued (so the follower's fdatasync overlaps the leader's), and
// once it went out a failed write of it is never answered "not stored": the follower may hold it.
// A real Shard on a SimDisk (fixture: test/lib/shard-fixture.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeError, Op } from '../../client/wire.ts';
import { code, DIR, FakeCommitStep, ManualClock, SendingCommitStep, openShard, quiet, settle, show, track, until, writeBody } from '../../test/lib/shard-fixture.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { initHashing } from '../storage/checksum.ts';

await initHashing();

/** The early hand-off, noting how many segment writes had been issued when each group was handed over. */
class SendingStep extends SendingCommitStep {
  readonly writesBefore: number[] = [];
  segmentWrites = 0;
  override send(records: readonly Uint8Array[]): void {
    super.send(records);
    this.writesBefore.push(this.segmentWrites);
  }
}

const isSegmentWrite = (kind: string, path: string): boolean => kind === 'write' && path.startsWith(DIR) && /\.seg(\.new)?$/.test(path);

test('a leader hands each group to send() before its write is issued, and commit() after its fdatasync', async () => {
  const clock = new ManualClock();
  const disk = new SimDisk();
  const step = new SendingStep();
  step.answer = () => 'ok';
  const { shard } = await openShard(disk, clock, step);
  await quiet(clock, disk);
  disk.onOp = (op) => {
    if (isSegmentWrite(op.kind, op.path)) step.segmentWrites++;
    return undefined;
  };
  const r1 = await settle(clock, shard.handle(Op.Write, writeBody(1)), 'W1');
  assert.equal(code(r1), 0, show(r1));
  const writesAfterW1 = step.segmentWrites;
  const r2 = await settle(clock, shard.handle(Op.Write, writeBody(2)), 'W2');
  assert.equal(code(r2), 0, show(r2));
  disk.onOp = null;
  assert.ok(writesAfterW1 > 0, 'the group writes reach the segment file');
  assert.deepEqual(
    step.sent,
    [1, 2],
    'each group is handed over once, in seq order',
  );
  assert.equal(step.writesBefore[0], 0, 'group 1 was handed over before its segment write');
  assert.equal(step.writesBefore[1], writesAfterW1, 'group 2 was handed over before its segment write');
  assert.deepEqual(step.calls, [{ from: 1, to: 1 }, { from: 2, to: 2 }], 'commit() still runs once per durable group');
  await shard.close();
});

async function fullDiskOnFirstGroupWrite(withSend: boolean) {
  const clock = new ManualClock();
  const disk = new SimDisk();
  const step = withSend ? new SendingStep() : new FakeCommitStep();
  step.answer = () => 'ok';
  const { shard } = await openShard(disk, clock, step);
  await quiet(clock, disk);
  let failed = false;
  disk.onOp = (op) => {
    if (!failed && isSegmentWrite(op.kind, op.path)) {
      failed = true;
      return 'ENOSPC';
    }
    return undefined;
  };
  const w = track(shard.handle(Op.Write, writeBody(1)));
  const r = await settle(clock, w.promise, 'the write whose group write fails');
  disk.onOp = null;
  await until(clock, () => true, 'a turn');
  const e = r.op === Op.Error ? decodeError(r.body) : null;
  const out = { code: e?.code ?? 0, message: e?.message ?? show(r), diskFull: (e?.detail as { diskFull?: boolean } | undefined)?.diskFull, refused: shard.writesRefused, sent: withSend ? (step as SendingStep).sent.length : 0 };
  await shard.close();
  return out;
}

test('a full disk during a group write that was handed over is an unknown outcome: writes stop, never "not stored"', async () => {
  // Without the hand-off, the failed group is erased and its write refused as not stored (writes go on).
  const plain = await fullDiskOnFirstGroupWrite(false);
  assert.equal(plain.code, 2008, JSON.stringify(plain));
  assert.equal(plain.diskFull, true, 'without send(): refused as not stored for a full disk');
  assert.equal(plain.refused, null, 'without send(): writes go on once space is freed');
  // With it, the follower may already hold the group: "not stored" could be false.
  const sent = await fullDiskOnFirstGroupWrite(true);
  assert.equal(sent.sent, 1, 'the group was handed over before its write failed');
  assert.equal(sent.code, 2008, JSON.stringify(sent));
  assert.notEqual(sent.diskFull, true, `with send(): never "not stored" (${sent.message})`);
  assert.match(sent.message, /not acknowledged/, 'the answer says the outcome is not known');
  assert.notEqual(sent.refused, null, 'with send(): the shard stops taking writes (the tail is settled by the cluster)');
});

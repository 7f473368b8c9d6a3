// Review 4: a commit step that fails while the next group is queued (not yet written). With the
// barrier wait of the early hand-off (commitLoop waits for the group's commit before the next
// flush) this is the usual order under load: the commit fails, writes stop, the loop exits, and
// the queued group stays placed in the log. The cluster then steps the node down
// (becomeReplica, quiesce, truncateAfter of the unacknowledged tail) and may later promote it
// (becomeLeader). Neither may be refused because of records whose writes were already answered.
// A real Shard on the simulated disk; fixture: test/lib/shard-fixture.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Op } from '../../client/wire.ts';
import { HoldDisk } from '../../test/lib/hold-disk.ts';
import { code, ManualClock, SendingCommitStep, openShard, quiet, settle, show, track, turn, until, writeBody } from '../../test/lib/shard-fixture.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { initHashing } from '../storage/checksum.ts';

await initHashing();

/**
 * Seq 1's group is written (held on the disk) with seq 2 placed behind it, so seq 2 is queued
 * when group 1 becomes durable.
 */
async function groupOneHeldSeqTwoQueued() {
  const clock = new ManualClock();
  const disk = new HoldDisk(new SimDisk());
  const step = new SendingCommitStep();
  const { shard, logs } = await openShard(disk, clock, step);
  await quiet(clock, disk.inner);
  disk.holdFlushes = true;
  const w1 = track(shard.handle(Op.Write, writeBody(1)));
  await until(clock, () => disk.heldFlushes === 1, 'group 1 write issued (held)');
  const w2 = track(shard.handle(Op.Write, writeBody(2)));
  await until(clock, () => shard.placedSeq === 2, 'seq 2 placed while group 1 is being written');
  return { clock, disk, step, shard, logs, w1, w2 };
}

/**
 * Group 1 (seq 1) is written and its commit held; seq 2 is placed while group 1's write is in
 * flight, so it is queued when group 1 becomes durable. The flush took 5 ms, so the loop waits
 * for group 1's commit before it writes seq 2; that commit fails.
 */
async function commitFailsWithAGroupQueued() {
  const { clock, disk, step, shard, logs, w1, w2 } = await groupOneHeldSeqTwoQueued();
  clock.advance(5); // the flush of group 1 takes 5 ms
  disk.releaseFlushes();
  await until(clock, () => step.calls.length === 1, 'group 1 durable, its commit step running', undefined, 0);
  assert.equal(shard.durableSeq, 1);
  // The loop now waits (up to 5 ms of the shard's clock, which stands still) for group 1's commit.
  for (let i = 0; i < 5; i++) await turn();
  assert.equal(step.calls.length, 1, 'seq 2 is not written before group 1 commits (the barrier wait)');
  step.held[0]!.reject(new Error('this node lost its authority to acknowledge'));
  const r1 = await settle(clock, w1.promise, 'write 1 answered');
  const r2 = await settle(clock, w2.promise, 'write 2 answered');
  assert.equal(code(r1), 2007, show(r1));
  assert.equal(code(r2), 2007, show(r2));
  for (let i = 0; i < 10; i++) await turn();
  return { clock, disk, step, shard, logs };
}

test('review4 C1: after a failed commit with a group queued, the step-down rewind (becomeReplica, quiesce, truncateAfter) succeeds', async () => {
  const { shard } = await commitFailsWithAGroupQueued();
  // cluster-node.ts stepBack: becomeReplica, quiesce, truncateAfter(committed).
  shard.becomeReplica(2);
  await shard.quiesce();
  await shard.truncateAfter(shard.committedSeq);
  assert.equal(shard.durableSeq, 0, 'the unacknowledged tail is rewound');
  assert.equal(shard.placedSeq, 0, 'nothing of the answered writes stays placed');
  await shard.close();
});

test('review4 C2: after a failed commit with a group queued, the node can lead again (becomeLeader)', async () => {
  const { clock, shard, step } = await commitFailsWithAGroupQueued();
  shard.becomeReplica(2);
  await shard.quiesce();
  // The rewind of the tail failed or was left to the next leader: this node is promoted later.
  step.answer = () => 'ok';
  assert.doesNotThrow(() => shard.becomeLeader(3), 'becomeLeader is not refused for records whose writes were answered 2007');
  const r = await settle(clock, shard.handle(Op.Write, writeBody(3)), 'a write as the new leader');
  assert.equal(code(r), 0, show(r));
  assert.equal(shard.committedSeq, 2, 'the kept durable seq 1 and the new write commit; the dropped seq 2 was never written');
  await shard.close();
});

test('review4 C3: a write that fails after a failed commit step stopped writes keeps the shard stopped over a role change (the rule after a failed fdatasync)', async () => {
  const { clock, disk, step, shard, w1, w2 } = await groupOneHeldSeqTwoQueued();
  // The barrier wait for group 1's commit runs out (the clock moves): group 2 is written (held).
  disk.releaseOneFlush();
  await until(clock, () => step.calls.length === 1 && disk.heldFlushes === 1, 'group 1 durable, its commit running; group 2 write issued');
  step.held[0]!.reject(new Error('this node lost its authority to acknowledge'));
  await settle(clock, w1.promise, 'write 1 answered', undefined, 0);
  assert.notEqual(shard.writesRefused, null, 'the failed commit stopped writes');
  // Group 2's fdatasync fails (EIO): what the kernel kept of it is unknown.
  disk.inner.onOp = (op) => (op.kind === 'fsync' && /\.seg(\.new)?$/.test(op.path) ? 'EIO' : undefined);
  disk.releaseFlushes();
  const r2 = await settle(clock, w2.promise, 'write 2 answered', undefined, 0);
  assert.notEqual(code(r2), 0, show(r2));
  for (let i = 0; i < 10; i++) await turn();
  disk.inner.onOp = null;
  assert.equal(shard.durableSeq, 1, 'group 2 is not durable');
  shard.becomeReplica(2);
  assert.notEqual(shard.writesRefused, null, 'a failed fdatasync stops writes for good (restart to recover), whatever stopped them first');
  await shard.close();
});

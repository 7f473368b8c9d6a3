// Review regressions, commit-step failures: a commit step that rejects while an earlier one is
// pending (r1), and a later successful commit that must not cover a refused one (r2), before and
// after reopening. A real Shard on the simulated disk; the fixture (test/lib/shard-fixture.ts)
// makes commit steps settle when the test says and time move only when the test moves it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Op } from '../../client/wire.ts';
import { code, describeUnhandled, detailsBody, FakeCommitStep, ManualClock, openShard, readBody, settle, show, track, turn, until, watchingUnhandled, writeBody } from '../../test/lib/shard-fixture.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { initHashing } from '../storage/checksum.ts';
import type { Shard } from './shard.ts';

await initHashing();

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
// r3: the hole must hold when the shard has become a replica before the refusal arrives (sim seed
// 1104: a deposed leader's group 2 was covered by S3 while group 1 never was; the demotion made
// the shard a replica, group 1's refusal then did not stop the chain, group 2 committed past the
// hole and raised the ack barrier over records never acknowledged nor replicated).

test('r3: a refused group 1 after becomeReplica still stops group 2 (already answered ok) from committing past the hole', async () => {
  const clock = new ManualClock();
  const disk = new SimDisk();
  const step = new FakeCommitStep();
  step.answer = (call) => (call === 1 ? 'hold' : 'ok');
  let { shard } = await openShard(disk, clock, step);
  const w1 = track(shard.handle(Op.Write, writeBody(1)));
  await until(clock, () => step.calls.length === 1, 'group 1 durable, its commit step running');
  const w2 = track(shard.handle(Op.Write, writeBody(2)));
  await until(clock, () => step.calls.length === 2, 'group 2 durable, its commit step succeeded');
  shard.becomeReplica(2);
  step.rejectAll('this node stopped leading');
  const r1 = await settle(clock, w1.promise, 'write 1 answered');
  const r2 = await settle(clock, w2.promise, 'write 2 answered');
  assert.equal(code(r1), 2007, `write 1: ${show(r1)}`);
  assert.equal(code(r2), 2007, `write 2 (after the hole): ${show(r2)}`);
  await assertNothingCommitted(clock, shard, [1, 2], 'as a replica, before reopening');
  await shard.close();
  ({ shard } = await openShard(disk, clock, step));
  await assertNothingCommitted(clock, shard, [1, 2], 'after reopening');
  await shard.close();
});

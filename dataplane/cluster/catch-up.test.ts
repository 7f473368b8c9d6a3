// S3 catch-up when the newest batch starts past the local end and does not link (review 3,
// suspicion 2). Node A followed B's epoch-1 records 1..10 (acknowledged up to 10 on B, A's own
// barrier only at 5), then led epoch 2 for one unacknowledged record 11. B led epochs 3 and 4
// with A away, committing 11 and 12 through S3. A comes back (to lead, B being down): the batch
// of epoch 4 (12..12) is tried first and does not link. Cutting A's log back to its barrier there
// would drop 6..10, which nothing in S3 holds; the batch of epoch 3 that overlaps A's log shows
// the difference is at 11. Real shards on simulated disks, an in-memory bucket.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Op } from '../../client/wire.ts';
import { MemoryStore } from '../../test/lib/cluster-fixture.ts';
import { code, FakeCommitStep, ManualClock, openShard, settle, show, until, writeBody } from '../../test/lib/shard-fixture.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { equalBytes, initHashing } from '../storage/checksum.ts';
import type { Shard } from '../shard/shard.ts';
import { catchUpFromS3 } from './catch-up.ts';
import { encodeFallback, fallbackKey, parseFallbackKey, type FallbackKey } from './fallback.ts';
import { localShardPort } from './local-shard.ts';
import { newCounters } from './ports.ts';

await initHashing();


async function write(clock: ManualClock, s: Shard, id: number): Promise<void> {
  const r = await settle(clock, s.handle(Op.Write, writeBody(id)), `write of key ${id}`);
  assert.equal(code(r), 0, show(r));
}

test('catch-up finds where the local tail differs from an overlapping newer batch, not by cutting to the barrier (acknowledged 6..10 stay)', async () => {
  const clock = new ManualClock();
  // B leads epoch 1: records 1..10, acknowledged (its commit step answers at once).
  const stepB = new FakeCommitStep();
  stepB.answer = () => 'ok';
  const { shard: b } = await openShard(new SimDisk(), clock, stepB);
  b.becomeLeader(1);
  for (let id = 1; id <= 10; id++) await write(clock, b, id);
  const bRecords = await b.readDurable(1, 10, 1 << 20);
  // A follows: holds 1..10, told only up to 5 is committed (its barrier).
  const stepA = new FakeCommitStep();
  const { shard: a } = await openShard(new SimDisk(), clock, stepA);
  a.becomeReplica(1);
  assert.equal(await a.applyReplicated(bRecords), 10);
  a.commitTo(5);
  // A leads epoch 2 briefly: its kept tail 6..10 and its own record 11 go to the commit step,
  // which never answers before it steps back (11 is durable, never committed).
  a.becomeLeader(2);
  const w11 = a.handle(Op.Write, writeBody(11));
  await until(clock, () => a.tip().durableSeq === 11 && stepA.held.length === 2, "A's own record 11 durable, its commit step waiting");
  a.becomeReplica(2);
  stepA.rejectAll('deposed');
  await settle(clock, w11, "A's write of 11 answered");
  await a.quiesce();
  assert.equal(a.tip().durableSeq, 11);
  assert.equal(a.tip().barrierSeq, 5);
  // B leads epochs 3 and 4 with A away: 11 and 12, each through S3.
  const store = new MemoryStore();
  b.becomeLeader(3);
  await write(clock, b, 21);
  b.becomeLeader(4);
  await write(clock, b, 22);
  for (const [seq, epoch] of [[11, 3], [12, 4]] as const) {
    const recs = await b.readDurable(seq, seq, 1 << 20);
    await store.putIfAbsent(fallbackKey(0, seq, seq, epoch, 'node-b'), encodeFallback(0, seq, seq, epoch, recs));
  }
  const listed = (await store.list('')).map((o) => parseFallbackKey(o.key)).filter((k): k is FallbackKey => k !== null);
  assert.equal(listed.length, 2);
  const logs: string[] = [];
  await catchUpFromS3(localShardPort(a), listed, store, (m) => logs.push(m), newCounters());
  await a.quiesce();
  const tip = a.tip();
  assert.equal(tip.durableSeq, 12, `A holds B's 11 and 12 after catch-up (log: ${logs.join(' | ')})`);
  for (let seq = 1; seq <= 12; seq++) {
    const mine = await a.recordAt(seq);
    const theirs = await b.recordAt(seq);
    assert.ok(mine !== null && theirs !== null && equalBytes(mine.hash, theirs.hash), `seq ${seq}: A's record equals B's (log: ${logs.join(' | ')})`);
  }
  await a.close();
  await b.close();
});

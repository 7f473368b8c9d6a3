// Review regression r3, the disk-full rewind: it fails only the write that never reached the disk
// (2008 diskFull); writes already durable keep waiting on their commit step and then succeed.
// A real Shard on a SimDisk with room for two segments (fixture: test/lib/shard-fixture.ts).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeError, decodeWriteOk, Op } from '../../client/wire.ts';
import { code, FakeCommitStep, ManualClock, openShard, quiet, readBody, readVersions, SEGMENT_BYTES, settle, show, track, until, writeBody } from '../../test/lib/shard-fixture.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { initHashing } from '../storage/checksum.ts';

await initHashing();

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

// Review 2: a write's retry is applied twice on a new leader (sim seed 9182).
// The adopted tail (durable, not yet committed) holds client 2's write W (clientSeq 1) to a shared
// aggregate. Another client's write to that aggregate is placed first (state.pending > 0); then W's
// retry loads client 2's floor with loadFloor, which starts at s.cSeq when pending > 0 and so skips
// the durable uncommitted batch of W: the retry is placed again instead of 2013/2002.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeError, encodeWriteRequest, Expect, Op } from '../../client/wire.ts';
import { initHashing } from '../storage/checksum.ts';
import { systemClock } from '../storage/disk.ts';
import { openFileIo } from '../storage/io.ts';
import { RealDisk } from '../storage/real-disk.ts';
import { Shard, type CommitStep } from '../shard/shard.ts';

await initHashing();

const key = { org: 4n, type: 4n, id: 9n };
const w = (clientId: bigint, clientSeq: bigint) =>
  encodeWriteRequest({ clientId, writes: [{ key, expectMode: Expect.Any, expectVersion: 0n, clientSeq, events: [{ type: 'e', data: new Uint8Array(8) }] }] });

test('a retry of a write in the adopted (durable, uncommitted) tail is not applied again', async () => {
  const root = await mkdtemp(join(tmpdir(), 'celer-review2-'));
  const io = await openFileIo({ dir: root, log: () => {} });
  let mode: 'reject' | 'hold' = 'reject';
  const held: (() => void)[] = [];
  const step: CommitStep = {
    commit: () => (mode === 'reject' ? Promise.reject(new Error('follower gone')) : new Promise<void>((r) => held.push(r))),
  };
  const s = await Shard.open({ disk: new RealDisk(io), clock: systemClock, nodeId: new Uint8Array(16).fill(1), dir: join(root, 's'), shard: 0, numShards: 1, routing: 2, segmentBytes: 64 * 1024, memoryBudgetBytes: 1 << 20, log: () => {}, commitStep: step, replica: true });
  try {
    s.becomeLeader(1);
    // W is placed and durable; its commit step fails (2007 to the client), the tail stays.
    const first = await s.handle(Op.Write, w(2n, 1n));
    assert.equal(first.op, Op.Error);
    s.becomeReplica(1);
    await s.quiesce();
    // Promotion: the durable tail (W) goes through the commit step again, which now waits.
    mode = 'hold';
    s.becomeLeader(2);
    assert.equal(s.tip().durableSeq, 1);
    assert.equal(s.tip().committedSeq, 0);
    // Another client's write to the same aggregate, then W's retry.
    const other = s.handle(Op.Write, w(3n, 1n));
    for (let i = 0; i < 50; i++) await new Promise((r) => setImmediate(r));
    const retry = s.handle(Op.Write, w(2n, 1n));
    for (let i = 0; i < 200; i++) await new Promise((r) => setImmediate(r));
    const placedBeforeRelease = s.tip().placedSeq;
    for (let i = 0; i < 20 && held.length > 0; i++) {
      for (const r of held.splice(0)) r();
      for (let j = 0; j < 50; j++) await new Promise((r) => setImmediate(r));
    }
    await other;
    const res = await Promise.race([retry, new Promise<null>((r) => setTimeout(() => r(null), 2000))]);
    assert.equal(placedBeforeRelease, 2, `the retry must not be placed (placed seq ${placedBeforeRelease})`);
    assert.ok(res === null || res.op === Op.Error, 'the retry must not be acknowledged as a new write');
    if (res !== null) assert.ok([2013, 2002].includes(decodeError(res.body).code));
  } finally {
    for (const r of held.splice(0)) r();
    await s.close().catch(() => {});
    io.close();
    await rm(root, { recursive: true, force: true });
  }
});

// Review regression r4, truncateAfter crash safety: a ShardLog truncation over several later
// segments, cut by a crash at its directory sync or at any step (seeded crash styles), always
// recovers, and at the cut once the cut marker is durable. Straight on the ShardLog and a SimDisk;
// ManualClock, until and quiet come from test/lib/shard-fixture.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DIR, ManualClock, quiet, SEGMENT_BYTES, until } from '../../test/lib/shard-fixture.ts';
import { prng } from '../../test/lib/prng.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { initHashing } from '../storage/checksum.ts';
import type { Clock, Disk } from '../storage/disk.ts';
import { encodeRecord, recordSize } from '../storage/record.ts';
import { ShardLog } from '../storage/shard-log.ts';

await initHashing();

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

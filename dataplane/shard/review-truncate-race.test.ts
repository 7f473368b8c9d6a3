// Review regressions, truncateAfter against work in flight: no stale idle timer after a cut (r5),
// a cut while commit steps are in flight or just answered (r6), and a cut racing a cold-loading
// write (r8, a fuzz over disk step timings). The "(later)" test was found after the first fixes and
// failed until the cold-load retry. A real Shard on the simulated disk; fixture:
// test/lib/shard-fixture.ts.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { decodeWriteOk, Op } from '../../client/wire.ts';
import { code, describeUnhandled, FakeCommitStep, ManualClock, openShard, quiet, readBody, readVersions, SEGMENT_BYTES, settle, show, track, turn, until, WAIT_MS, watchingUnhandled, writeBody } from '../../test/lib/shard-fixture.ts';
import { SimDisk } from '../../test/sim/sim-disk.ts';
import { initHashing } from '../storage/checksum.ts';
import { TruncateRefusedError } from '../storage/shard-log.ts';
import type { Shard, ShardResult } from './shard.ts';

await initHashing();

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

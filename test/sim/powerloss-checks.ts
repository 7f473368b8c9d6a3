// The checks after the power cut in the power-loss harness (powerloss.ts): verifyShard on the
// crashed image, sometimes a second cut during recovery, the reopened shard's history against
// what was issued (acknowledged writes exact, gapless versions and seqs, all or nothing),
// exactly-once retries, the commit-step barrier and truncateAfter, new writes, a clean reopen.
import { decodeDetailsOk, decodeError, decodeWriteOk, encodeKeyRequest, encodeWriteRequest, Expect, Op, type WireEvent } from '../../client/wire.ts';
import { ErrorCode } from '../../client/errors.ts';
import { verifyShard } from '../../dataplane/cli/verify.ts';
import { decodeSegmentHeader } from '../../dataplane/storage/segment.ts';
import type { Disk } from '../../dataplane/storage/disk.ts';
import type { Shard } from '../../dataplane/shard/shard.ts';
import { TruncateRefusedError } from '../../dataplane/storage/shard-log.ts';
import { prng } from '../lib/prng.ts';
import { SimClock } from './sim-clock.ts';
import type { SimDisk } from './sim-disk.ts';
import { bounded, call, diskFull, Driver, indeterminate, keyOf, NUM_SHARDS, openShard, readAll, retryBody, ROUTING, sameEvent, SHARD_DIR, tooBig, writeIdOf, type Issued, type Part, type SeenBatch } from './powerloss-common.ts';
import { FakeFollower } from './powerloss-follower.ts';
import type { Rot } from './powerloss-scenarios.ts';

/** The ack barrier a power cut left: the ackedSeq of the last segment's header (null: no readable one). */
export function barrierOnDisk(disk: SimDisk): number | null {
  const segs = disk.names(SHARD_DIR).filter((n) => n.endsWith('.seg'));
  const last = segs.at(-1);
  if (last === undefined) return 0;
  const bytes = disk.peek(`${SHARD_DIR}/${last}`);
  if (bytes === null || bytes.length < 4096) return null;
  const h = decodeSegmentHeader(bytes.subarray(0, 4096));
  return h.ok ? h.header.ackedSeq : null;
}

export interface CheckContext {
  issued: Issued[];
  aggregates: number;
  memoryBudgetBytes: number;
  msPerTurn: number;
  readPageBytes: number;
  fail: (m: string) => void;
  log: (m: string) => void;
  wrap: ((disk: SimDisk) => Disk) | undefined;
  /** commit-step: the seed of the follower stand-ins of the reopened shards (null: standalone). */
  commitSeed: number | null;
  /** commit-step: what the reopen found (for the summary). */
  commitNote: string;
  rot: Rot | null;
  /** Set when the shard refused with 9200 (accepted only after log rot). */
  refused: boolean;
  /** Acknowledged writes from this seq on may be gone (rot in the unvouched tail). */
  lossFromSeq: number;
  /** The disk is still full after the power cut: writes that need a new segment may get 2008. */
  fullAtRestart: boolean;
  /** A second power cut at this step of the first reopen (recovery itself interrupted). */
  recrash: { atStep: number; rng: () => number; happened: boolean } | null;
}

/**
 * Opens (and closes) a shard on `disk` with the power cut again at step `atStep` of it; returns
 * the disk that second cut left, or `disk` when recovery finished first.
 */
export async function crashDuringRecovery(disk: SimDisk, ctx: CheckContext, recrash: NonNullable<CheckContext['recrash']>): Promise<SimDisk> {
  const clock = new SimClock();
  const driver = new Driver(clock, ctx.msPerTurn);
  const at = disk.steps + recrash.atStep;
  let second: SimDisk | null = null;
  let signal: () => void = () => {};
  const cut = new Promise<void>((r) => (signal = r));
  disk.onOp = (op) => {
    if (second === null && op.n === at) {
      second = disk.crash(recrash.rng);
      signal();
    }
  };
  const engineDisk = ctx.wrap ? ctx.wrap(disk) : disk;
  const openClose = (async () => {
    const s = await openShard(engineDisk, clock, ctx.memoryBudgetBytes, ctx.log, followerFor(ctx, clock, 0x5ec0));
    await s.close();
  })();
  await bounded(Promise.race([openClose, cut]), driver);
  driver.stop();
  disk.onOp = null;
  if (second === null) return disk;
  recrash.happened = true;
  return second;
}

/** A follower stand-in for a reopened shard of a commit-step run (never refuses); undefined standalone. */
export function followerFor(ctx: CheckContext, clock: SimClock, salt: number): FakeFollower | undefined {
  return ctx.commitSeed === null ? undefined : new FakeFollower(clock, prng(ctx.commitSeed ^ salt), ctx.msPerTurn, 0, ctx.fail);
}

/** The last seq of every acknowledged write, the largest (0: none). */
export function ackedMaxSeq(issued: Issued[], below = Infinity): number {
  return Math.max(0, ...issued.map((w) => (w.answer !== null && 'ok' in w.answer && Number(w.answer.ok.firstSeq) < below ? Number(w.answer.ok.firstSeq) + w.parts.length - 1 : 0)));
}

/**
 * commit-step, just after the reopen: the committed seq is the recovered ack barrier (the last
 * segment header's, capped at the durable end), at or above every acknowledged seq; reads serve
 * nothing above it; truncateAfter below it is refused, at it removes the speculative tail; then
 * the log ends at it and verifyShard is clean. False when the shard can no longer be checked.
 */
export async function checkCommitStep(shard: Shard, disk: SimDisk, barrier: number | null, ctx: CheckContext, driver: Driver): Promise<boolean> {
  const { fail } = ctx;
  const committed = shard.committedSeq;
  if (barrier === null) fail('after the power cut the last segment header cannot be read');
  else if (committed !== Math.min(barrier, shard.durableSeq)) fail(`after the power cut the committed seq is ${committed}; the ack barrier on disk is ${barrier} and the log ends at ${shard.durableSeq}`);
  const ackedMax = ackedMaxSeq(ctx.issued, ctx.lossFromSeq);
  if (committed < ackedMax) fail(`after the power cut the committed seq is ${committed}, below the acknowledged seq ${ackedMax}`);
  const before = await readEverything(shard, ctx, driver, 'after the power cut, before truncateAfter');
  if (before === null) return false;
  checkHistory(before, ctx, 'after the power cut, before truncateAfter');
  const dirty = before.filter((b) => b.seq > committed);
  if (dirty.length > 0) fail(`after the power cut a read served seq ${dirty[0]!.seq}, above the committed seq ${committed}`);
  if (committed > 0) {
    const below = Math.floor(prng(committed ^ ctx.issued.length)() * committed);
    const refused = await bounded(
      shard.truncateAfter(below).then(
        () => null,
        (e: unknown) => e,
      ),
      driver,
    );
    if (!(refused instanceof TruncateRefusedError)) fail(`truncateAfter(${below}), below the ack barrier ${committed}, ${refused === null ? 'succeeded or hung' : `threw ${String(refused)}, not TruncateRefusedError`}`);
    if (shard.state !== 'serving') {
      fail(`after a refused truncateAfter(${below}) the shard is ${shard.state}: ${shard.reason ?? ''}`);
      return false;
    }
  }
  const tail = shard.durableSeq - committed;
  ctx.commitNote = `; reopened at committed seq ${committed} (acknowledged up to ${ackedMax}), truncated a speculative tail of ${tail} seqs`;
  const cut = await bounded(
    shard.truncateAfter(committed).then(
      () => null,
      (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
    ),
    driver,
  );
  if (cut !== null) {
    fail(`truncateAfter(${committed}) at the ack barrier (a speculative tail of ${tail} seqs) failed: ${cut.message}`);
    return false;
  }
  if (shard.state !== 'serving') {
    fail(`after truncateAfter(${committed}) the shard is ${shard.state}: ${shard.reason ?? ''}`);
    return false;
  }
  if (shard.durableSeq !== committed || shard.placedSeq !== committed || shard.committedSeq !== committed) fail(`after truncateAfter(${committed}) placed/durable/committed are ${shard.placedSeq}/${shard.durableSeq}/${shard.committedSeq}`);
  const v = await bounded(verifyShard(disk, SHARD_DIR, 0, NUM_SHARDS, ROUTING), driver);
  if (v === null) fail(`celer verify after truncateAfter(${committed}) hung`);
  else {
    if (v.problem !== null) fail(`celer verify after truncateAfter(${committed}): ${v.problem}`);
    if (v.lastSeq !== committed) fail(`celer verify after truncateAfter(${committed}) ends at seq ${v.lastSeq}`);
  }
  return true;
}

export async function checkRecovered(crashedDisk: SimDisk, ctx: CheckContext): Promise<void> {
  const { issued, aggregates, fail } = ctx;
  const clock = new SimClock();
  const driver = new Driver(clock, ctx.msPerTurn);
  let disk = crashedDisk;
  try {
    const rot = ctx.rot;
    const v = await bounded(verifyShard(disk, SHARD_DIR, 0, NUM_SHARDS, ROUTING), driver);
    if (v === null) return fail('celer verify of the crashed image hung');
    if (rot?.kind === 'log') {
      if (rot.covered && v.problem === null) fail(`celer verify of the crashed image does not see the rotted record at ${rot.path} offset ${rot.offset}`);
    } else {
      if (v.problem !== null) fail(`celer verify of the crashed image: ${v.problem}`);
      const ackedMax = ackedMaxSeq(issued);
      if (v.lastSeq < ackedMax) fail(`celer verify of the crashed image ends at seq ${v.lastSeq}, before the acknowledged seq ${ackedMax}`);
    }
    if (ctx.recrash !== null && !(rot?.kind === 'log')) disk = await crashDuringRecovery(disk, ctx, ctx.recrash);
    const engineDisk = ctx.wrap ? ctx.wrap(disk) : disk;
    const barrier = barrierOnDisk(disk);
    const shard = await bounded(openShard(engineDisk, clock, ctx.memoryBudgetBytes, ctx.log, followerFor(ctx, clock, 0x0e0e)), driver);
    if (shard === null) return fail('reopening after the power cut hung');
    if (shard.state !== 'serving') {
      if (rot?.kind === 'log' && shard.state === 'corrupt') {
        ctx.refused = true;
        return;
      }
      return fail(`after the power cut the shard is ${shard.state}: ${shard.reason ?? ''}`);
    }
    if (ctx.commitSeed !== null && !(await checkCommitStep(shard, disk, barrier, ctx, driver))) return;
    const seen = await readEverything(shard, ctx, driver, 'after the power cut');
    if (seen === null) return;
    if (rot?.kind === 'log' && rot.covered) return fail(`the rotted record at ${rot.path} offset ${rot.offset} (acknowledged seq ${rot.seq}) was served without 9200`);
    const present = checkHistory(seen, ctx, 'after the power cut');

    // Exactly-once: acknowledged and surviving writes are refused as retries; a lost one is applied
    // once, unless the same writer's later clientSeq landed on one of its aggregates since (the
    // floor is a high-water mark: a writer that moved on cannot go back).
    const floors = new Map<string, bigint>();
    const raise = (clientId: bigint, agg: number, seq: bigint): void => {
      const k = `${clientId}|${agg}`;
      if (seq > (floors.get(k) ?? 0n)) floors.set(k, seq);
    };
    for (const b of seen) {
      const w = issued[writeIdOf(b.events[0]!)];
      const p = w?.parts.find((x) => x.agg === b.agg);
      if (w !== undefined && p !== undefined) raise(w.clientId, b.agg, p.clientSeq);
    }
    for (const w of issued) {
      if (w.parts[0]!.clientSeq === 0n) continue;
      const survived = present.has(w.id);
      // An acknowledged write the rot may have taken counts as lost (retried, applied once).
      const wasAcked = w.answer !== null && 'ok' in w.answer && (survived || Number(w.answer.ok.firstSeq) < ctx.lossFromSeq);
      if (!wasAcked && !survived && !indeterminate(w) && !(w.answer !== null && 'ok' in w.answer)) continue; // refused before the cut: not a retry
      const res = await bounded(call(shard, Op.Write, retryBody(w)), driver);
      if (res === null) return fail(`retry of write ${w.id} after the power cut hung`);
      if (wasAcked || survived) {
        const code = res.op === Op.Error ? decodeError(res.body).code : 0;
        if (code !== ErrorCode.AlreadyApplied) fail(`retry of ${wasAcked ? 'acknowledged' : 'surviving'} write ${w.id} (client ${w.client}, clientSeq ${w.parts[0]!.clientSeq}) after the power cut got ${code === 0 ? 'applied again' : code}, not 2002`);
      } else if (w.parts.some((p) => p.clientSeq <= (floors.get(`${w.clientId}|${p.agg}`) ?? 0n))) {
        const code = res.op === Op.Error ? decodeError(res.body).code : 0;
        if (code !== ErrorCode.AlreadyApplied) fail(`retry of write ${w.id}, lost in the power cut but below a later clientSeq of its writer, got ${code === 0 ? 'applied' : code}, not 2002`);
      } else if (res.op !== Op.WriteOk) {
        if ((ctx.fullAtRestart && diskFull(res)) || tooBig(w, res)) continue;
        fail(`retry of write ${w.id}, lost in the power cut, got ${decodeError(res.body).code} (${decodeError(res.body).message}); it should be applied`);
      } else {
        // Applied now, by a retry without guards (a writer that lost its answer and still wants it).
        w.answer = { ok: decodeWriteOk(res.body) };
        w.parts = w.parts.map((p) => ({ ...p, mode: Expect.Any, expect: 0 }));
        for (const p of w.parts) raise(w.clientId, p.agg, p.clientSeq);
      }
    }
    const retried = await readEverything(shard, ctx, driver, 'after the retries');
    if (retried === null) return;
    checkHistory(retried, ctx, 'after the retries');
    // New writes land at the next versions.
    const versions = new Map<number, number>();
    for (const b of retried) versions.set(b.agg, Math.max(versions.get(b.agg) ?? 0, b.to));
    for (let agg = 0; agg < aggregates; agg++) {
      const v = versions.get(agg) ?? 0;
      const id = issued.length;
      const ev: WireEvent = { type: 'after', data: new Uint8Array(8) };
      new DataView(ev.data.buffer).setUint32(0, id);
      const part: Part = { agg, mode: v === 0 ? Expect.NoStream : Expect.Exact, expect: v, clientSeq: 0n, events: [ev] };
      const body = encodeWriteRequest({ clientId: 1n, writes: [{ key: keyOf(agg), expectMode: part.mode, expectVersion: BigInt(v), clientSeq: 0n, events: [ev] }] });
      const w: Issued = { id, client: -1, clientId: 1n, parts: [part], body, answer: null };
      issued.push(w);
      const res = await bounded(call(shard, Op.Write, body), driver);
      if (res === null) return fail(`a new write after the power cut hung`);
      if (res.op !== Op.WriteOk) {
        const e = decodeError(res.body);
        if (ctx.fullAtRestart && diskFull(res)) continue;
        fail(`a new write to aggregate ${agg} at version ${v + 1} after the power cut got ${e.code} (${e.message})`);
        continue;
      }
      const ok = decodeWriteOk(res.body);
      w.answer = { ok };
      if (Number(ok.ranges[0]!.fromVersion) !== v + 1) fail(`a new write to aggregate ${agg} landed at ${ok.ranges[0]!.fromVersion}, expected ${v + 1}`);
    }
    const again = await readEverything(shard, ctx, driver, 'after the new writes');
    if (again !== null) checkHistory(again, ctx, 'after the new writes');
    const closed = await bounded(shard.close(), driver);
    if (closed === null && !driver.stuck) return fail('closing the shard hung');

    // A clean restart sees the same.
    const third = await bounded(openShard(engineDisk, clock, ctx.memoryBudgetBytes, ctx.log, followerFor(ctx, clock, 0x7e1d)), driver);
    if (third === null || third.state !== 'serving') return fail(`a clean reopen did not serve: ${third?.state ?? 'hung'} ${third?.reason ?? ''}`);
    // Every write since the power cut was acknowledged: the barrier closed over the whole log.
    if (ctx.commitSeed !== null && third.committedSeq !== third.durableSeq) fail(`after a clean close and reopen the committed seq is ${third.committedSeq}, the log ends at ${third.durableSeq}`);
    const last = await readEverything(third, ctx, driver, 'after a clean reopen');
    if (last !== null) checkHistory(last, ctx, 'after a clean reopen');
    await bounded(third.close(), driver);
    const v2 = await bounded(verifyShard(disk, SHARD_DIR, 0, NUM_SHARDS, ROUTING), driver);
    if (v2 !== null && v2.problem !== null) fail(`celer verify after a clean close: ${v2.problem}`);
    if (v2 !== null && last !== null && v2.lastSeq !== last.length) fail(`celer verify after a clean close ends at seq ${v2.lastSeq}; the aggregates hold ${last.length} batches`);
  } finally {
    driver.stop();
  }
}

export async function readEverything(shard: Shard, ctx: CheckContext, driver: Driver, when: string): Promise<SeenBatch[] | null> {
  const all: SeenBatch[] = [];
  for (let agg = 0; agg < ctx.aggregates; agg++) {
    const got = await bounded(readAll(shard, agg, ctx.readPageBytes), driver);
    if (got === null) {
      ctx.fail(`${when}: reading aggregate ${agg} hung`);
      return null;
    }
    if ('code' in got) {
      if (got.code === ErrorCode.AggregateNotFound) continue;
      if (got.code === ErrorCode.ShardUnavailable && ctx.rot?.kind === 'log') {
        ctx.refused = true;
        return null;
      }
      ctx.fail(`${when}: reading aggregate ${agg} got ${got.code} (${got.message})`);
      return null;
    }
    all.push(...got.batches);
    const d = await bounded(call(shard, Op.Details, encodeKeyRequest(keyOf(agg))), driver);
    const lastTo = got.batches.at(-1)?.to ?? 0;
    if (d !== null && d.op === Op.DetailsOk) {
      const det = decodeDetailsOk(d.body);
      if (Number(det.version) !== lastTo) ctx.fail(`${when}: details of aggregate ${agg} say version ${det.version}, its events end at ${lastTo}`);
      const lastSeq = got.batches.at(-1)?.seq ?? 0;
      if (Number(det.lastSeq) !== lastSeq) ctx.fail(`${when}: details of aggregate ${agg} say last seq ${det.lastSeq}, its last batch has seq ${lastSeq}`);
    } else if (lastTo > 0) {
      ctx.fail(`${when}: details of aggregate ${agg} failed (${d === null ? 'hung' : decodeError(d.body).code})`);
    }
  }
  return all;
}

/** Checks the recovered history against what was issued; returns the ids of writes present. */
export function checkHistory(seen: SeenBatch[], ctx: CheckContext, when: string): Set<number> {
  const { issued, fail } = ctx;
  const f = (m: string): void => fail(`${when}: ${m}`);
  const present = new Map<number, Map<number, SeenBatch>>(); // write id → part index → batch
  const byAgg = new Map<number, SeenBatch[]>();
  for (const b of seen) {
    const list = byAgg.get(b.agg) ?? [];
    list.push(b);
    byAgg.set(b.agg, list);
  }
  for (const [agg, list] of byAgg) {
    let v = 0;
    for (const b of list) {
      if (b.from !== v + 1) f(`aggregate ${agg}: versions jump from ${v} to ${b.from}`);
      v = b.to;
      const first = b.events[0];
      const w = first === undefined ? undefined : issued[writeIdOf(first)];
      const p = w?.parts.findIndex((x) => x.agg === agg) ?? -1;
      if (w === undefined || p < 0) {
        f(`aggregate ${agg} versions ${b.from}..${b.to}: a batch no write of this run made`);
        continue;
      }
      const part = w.parts[p]!;
      if (part.events.length !== b.events.length || !part.events.every((e, i) => sameEvent(e, b.events[i]!))) f(`aggregate ${agg} versions ${b.from}..${b.to}: the events of write ${w.id} differ from what was written`);
      if (b.clientId !== w.clientId) f(`aggregate ${agg} versions ${b.from}..${b.to}: write ${w.id} has client ${b.clientId}, written by ${w.clientId}`);
      if (part.mode === Expect.Exact && b.from !== part.expect + 1) f(`write ${w.id} on aggregate ${agg} expected version ${part.expect} but lies at ${b.from}`);
      if (part.mode === Expect.NoStream && b.from !== 1) f(`write ${w.id} on aggregate ${agg} had guard no_stream but lies at ${b.from}`);
      if (part.mode === Expect.StreamExists && b.from === 1) f(`write ${w.id} on aggregate ${agg} had guard stream_exists but lies at version 1`);
      let parts = present.get(w.id);
      if (parts === undefined) present.set(w.id, (parts = new Map()));
      if (parts.has(p)) f(`write ${w.id} appears twice on aggregate ${agg}`);
      parts.set(p, b);
    }
  }
  // Seqs: gapless over the shard, consecutive within a write.
  const seqs = seen.map((b) => b.seq).sort((a, b) => a - b);
  for (let i = 0; i < seqs.length; i++) {
    if (seqs[i] !== i + 1) {
      f(`seqs are not gapless from 1: position ${i + 1} holds seq ${seqs[i]}`);
      break;
    }
  }
  for (const [id, parts] of present) {
    const w = issued[id]!;
    if (parts.size !== w.parts.length) f(`write ${id} survived on ${parts.size} of its ${w.parts.length} aggregates (not all or nothing)`);
    const base = parts.get(0)?.seq;
    for (const [p, b] of parts) if (base !== undefined && b.seq !== base + p) f(`write ${id}: batch ${p} has seq ${b.seq}, the write starts at ${base}`);
    if (!indeterminate(w) && w.answer !== null && 'code' in w.answer) f(`write ${id} was refused with ${w.answer.code} but is in the log`);
  }
  for (const w of issued) {
    if (w.answer === null || !('ok' in w.answer)) continue;
    const ok = w.answer.ok;
    const parts = present.get(w.id);
    if (parts === undefined) {
      if (Number(ok.firstSeq) >= ctx.lossFromSeq) continue;
      f(`acknowledged write ${w.id} (seq ${ok.firstSeq}, aggregates ${w.parts.map((p) => p.agg).join(',')}) is lost`);
      continue;
    }
    w.parts.forEach((_, j) => {
      const b = parts.get(j);
      const r = ok.ranges[j]!;
      if (b === undefined) return;
      if (b.from !== Number(r.fromVersion) || b.to !== Number(r.toVersion)) f(`acknowledged write ${w.id} lies at versions ${b.from}..${b.to}, acknowledged as ${r.fromVersion}..${r.toVersion}`);
      if (b.seq !== Number(ok.firstSeq) + j) f(`acknowledged write ${w.id} batch ${j} has seq ${b.seq}, acknowledged as ${Number(ok.firstSeq) + j}`);
    });
  }
  return new Set(present.keys());
}

// The workload driver of the power-loss harness (powerloss.ts): one seed's closed-loop clients
// against the real Shard on a SimDisk, the fault hook of its scenario, and the power cut at a
// given step; with the checks a client can make before the cut (no version acknowledged twice,
// reads see every earlier acknowledgment, a write sent twice at once applied at most once).
import { decodeDetailsOk, decodeError, decodeWriteOk, encodeKeyRequest, encodeWriteRequest, Expect, Op, type ExpectMode, type WireEvent, type WireWriteOk } from '../../client/wire.ts';
import { ErrorCode } from '../../client/errors.ts';
import type { ShardResult } from '../../dataplane/shard/shard.ts';
import { prng } from '../lib/prng.ts';
import { SimClock } from './sim-clock.ts';
import { SimDisk, type SimOp } from './sim-disk.ts';
import { bounded, call, DATA_DIR, Driver, eventBytesOf, IDLE_MS, keyOf, openShard, readAll, RECORD_FITS_BYTES, retryBody, SIM_SEGMENT_BYTES, turn, TURNS_MAX, writeIdOf, type Issued, type Part, type RunOptions } from './powerloss-common.ts';
import type { CheckContext } from './powerloss-checks.ts';
import { COMMIT_REFUSE_P, FakeFollower } from './powerloss-follower.ts';
import { engineLogInto, failureList } from './powerloss-report.ts';
import { chooseScenario, type Scenario } from './powerloss-scenarios.ts';

const te = new TextEncoder();

export interface Workload {
  scenario: Scenario;
  failures: string[];
  engineLog: string[];
  /** Kinds of the steps the run took (from the shard's first open on), by step number. */
  steps: Map<number, SimOp['kind']>;
  /** The last step of the shard's first open. */
  openSteps: number;
  /** The disk the power cut left. */
  after: SimDisk;
  summary: string;
  ctx: Omit<CheckContext, 'fail' | 'log' | 'rot' | 'refused' | 'lossFromSeq' | 'recrash' | 'fullAtRestart' | 'commitNote'>;
}

/**
 * One seed's workload up to the power cut at step `crashAt` (null: after the workload and a quiet
 * time). Everything is drawn from the seed, so a run with a cut at step N is the run without one
 * up to step N.
 */
export async function runWorkload(opts: RunOptions, crashAt: number | null): Promise<Workload> {
  const seed = opts.seed;
  const rng = prng(seed);
  const int = (n: number): number => Math.floor(rng() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const failures: string[] = [];
  const fail = failureList(failures);
  const engineLog: string[] = [];
  const log = engineLogInto(engineLog);

  const scenario = chooseScenario(rng, opts.scenario);

  // ---- the workload's shape, all from the seed ----
  const aggregates = 2 + int(10);
  const clients = 2 + int(6);
  const writesPerClient = 5 + int(30);
  const bigEvents = rng() < 0.3;
  const memoryBudgetBytes = pick([256 * 1024, 1024 * 1024, 8 * 1024 * 1024]);
  const msPerTurn = pick([0.05, 0.25, 1, 3]);
  const readPageBytes = pick([0, 600, 4096]);
  const turnsRng = prng(seed ^ 0x5eed);
  const disk = new SimDisk({ seed, turns: () => (turnsRng() < 0.2 ? 2 + Math.floor(turnsRng() * 3) : 1) });
  await disk.mkdirp(DATA_DIR);

  const clock = new SimClock();
  const driver = new Driver(clock, msPerTurn);
  const engineDisk = opts.wrap ? opts.wrap(disk) : disk;
  const commitSeed = scenario === 'commit-step' ? seed : null;
  const follower = commitSeed === null ? undefined : new FakeFollower(clock, prng(commitSeed ^ 0xf0110), msPerTurn, COMMIT_REFUSE_P, fail);

  // ---- faults and the power cut ----
  let crashed: SimDisk | null = null;
  let crashStep = 0;
  let crashKind = 'quiet';
  let opened = false;
  const steps = new Map<number, SimOp['kind']>();
  let signalCrash: () => void = () => {};
  const crashSignal = new Promise<void>((r) => (signalCrash = r));
  const crashRng = prng(seed ^ 0xc0ffee);
  let fsyncs = 0;
  let segmentFsyncs = 0;
  const eioAtFsync = scenario === 'fsync-eio' ? 1 + int(40) : -1;
  const enospcAtFsync = scenario === 'fsync-enospc' ? 1 + int(30) : -1;
  const faultRng = prng(seed ^ 0xbad5ec);
  const hook = (op: SimOp): string | undefined => {
    if (opened && op.kind === 'fsync' && ++fsyncs === eioAtFsync) return 'EIO';
    if (opened && op.kind === 'fsync' && op.path.includes('.seg') && ++segmentFsyncs === enospcAtFsync) return 'ENOSPC';
    if (opened && scenario === 'read-eio' && (op.kind === 'read' || op.kind === 'readFile') && faultRng() < 0.05) return 'EIO';
    steps.set(op.n, op.kind);
    if (crashed === null && op.n === crashAt) {
      crashStep = op.n;
      crashKind = op.kind;
      crashed = disk.crash(crashRng, opts.crash);
      signalCrash();
    }
    return undefined;
  };
  disk.onOp = hook;

  const shard = await Promise.race([bounded(openShard(engineDisk, clock, memoryBudgetBytes, log, follower), driver), crashSignal.then(() => null)]);
  if (crashed !== null) {
    // The power went while the shard was being created: nothing was written or acknowledged.
    driver.stop();
    const after: SimDisk = crashed;
    const summary = `seed ${seed} ${scenario}: power cut at step ${crashStep} (${crashKind}) while the shard was first opened, ${after.lastCrash!.style}`;
    return { scenario, failures, engineLog, steps, openSteps: crashStep, after, summary, ctx: { issued: [], aggregates, memoryBudgetBytes, msPerTurn, readPageBytes, wrap: opts.wrap, commitSeed } };
  }
  if (shard === null || shard.state !== 'serving') {
    driver.stop();
    throw new Error(`seed ${seed}: the shard did not open on an empty disk: ${shard?.state ?? 'hung'} ${shard?.reason ?? ''}`);
  }
  opened = true;
  const openSteps = disk.steps;
  if (scenario === 'disk-full') disk.capacityBytes = disk.usedBytes + int(4) * SIM_SEGMENT_BYTES + int(SIM_SEGMENT_BYTES);

  // ---- the workload: closed-loop clients ----
  const issued: Issued[] = [];
  const ackedVersions = new Map<number, Map<number, number>>(); // agg → version → write id
  const ackedUpTo = new Map<number, Set<number>>(); // agg → ids of writes acked so far
  const clientLoop = async (c: number): Promise<void> => {
    const clientId = 1000n + BigInt(c);
    const known = new Map<number, number>();
    let clientSeq = 0n;
    for (let i = 0; i < writesPerClient && crashed === null; i++) {
      if (rng() < 0.12) {
        await readDuring(int(aggregates));
        continue;
      }
      const n = Math.min(aggregates, 1 + (rng() < 0.3 ? int(3) : 0));
      const aggs: number[] = [];
      while (aggs.length < n) {
        const a = int(aggregates);
        if (!aggs.includes(a)) aggs.push(a);
      }
      const withSeq = rng() < 0.7;
      if (withSeq) clientSeq += 1n + BigInt(int(2));
      const id = issued.length;
      const parts: Part[] = aggs.map((agg, p) => {
        const k = known.get(agg) ?? 0;
        const g = rng();
        const mode: ExpectMode = g < 0.4 ? Expect.Any : g < 0.75 ? Expect.Exact : g < 0.85 ? Expect.NoStream : Expect.StreamExists;
        const expect = mode === Expect.Exact ? (rng() < 0.1 ? k + 1 : k) : 0;
        const events: WireEvent[] = [];
        const count = 1 + int(4);
        for (let e = 0; e < count; e++) {
          // Now and then one near the largest record a 64 KiB segment holds (56 KiB), or over it.
          const size = 8 + (bigEvents && rng() < 0.03 ? 40_000 + int(20_000) : bigEvents && rng() < 0.2 ? int(6000) : int(500));
          const data = new Uint8Array(size);
          for (let b = 0; b < size; b++) data[b] = int(256);
          new DataView(data.buffer).setUint32(0, id);
          data[4] = p;
          data[5] = e;
          const ev: WireEvent = { type: pick(['created', 'renamed', 'noted', 'x']), data };
          if (rng() < 0.1) ev.metadata = te.encode(`m${id}`);
          events.push(ev);
        }
        return { agg, mode, expect, clientSeq: withSeq ? clientSeq : 0n, events };
      });
      const body = encodeWriteRequest({
        clientId,
        writes: parts.map((p) => ({ key: keyOf(p.agg), expectMode: p.mode, expectVersion: BigInt(p.expect), clientSeq: p.clientSeq, events: p.events })),
      });
      const w: Issued = { id, client: c, clientId, parts, body, answer: null };
      issued.push(w);
      const eventBytes = eventBytesOf(w);
      // Now and then the same write twice at once (a client retrying before its first answer):
      // at most one may be applied, the other gets 2013 (in flight) or 2002.
      const twice = withSeq && parts.every((p) => p.mode === Expect.Any || p.mode === Expect.StreamExists) && rng() < 0.1;
      const answers = await Promise.all(twice ? [call(shard, Op.Write, body), call(shard, Op.Write, body)] : [call(shard, Op.Write, body)]);
      const oks = answers.filter((a) => a.op === Op.WriteOk);
      // A WriteOk that arrives after the cut still counts: a dead disk completes no fsync, so it
      // can only stem from one that completed before (or from acknowledging without one).
      if (oks.length > 1) fail(`write ${id}, sent twice at once with clientSeq ${clientSeq}, was applied twice`);
      // Either copy may be the one placed (each may wait for its own cold loads): the answer is
      // the one that is not about the other copy.
      const isCopy = (a: ShardResult): boolean => a.op === Op.Error && [ErrorCode.DuplicateInFlight, ErrorCode.AlreadyApplied].includes(decodeError(a.body).code as 2002 | 2013);
      const res = oks[0] ?? answers.find((a) => !isCopy(a)) ?? answers[0]!;
      if (twice && oks.length === 1) {
        const other = answers.find((a) => a !== res)!;
        if (crashed === null && !isCopy(other) && !(other.op === Op.Error && expectedRefusal(decodeError(other.body).code))) fail(`write ${id}, sent twice at once, got ${decodeError(other.body).code} for the copy (expected 2013 or 2002)`);
      }
      if (res.op !== Op.WriteOk && crashed !== null) return; // refused after the cut: left unanswered
      if (res.op === Op.WriteOk) {
        const ok = decodeWriteOk(res.body);
        w.answer = { ok };
        onAck(w, ok);
        if (crashed !== null) return;
        parts.forEach((p, j) => known.set(p.agg, Number(ok.ranges[j]!.toVersion)));
        if (withSeq && rng() < 0.15) await retryDuring(w);
      } else {
        const e = decodeError(res.body);
        w.answer = { code: e.code, detail: e.detail };
        if (e.code === ErrorCode.WrongExpectedVersion) {
          const cur = Number(e.detail['currentVersion'] ?? NaN);
          // The detail names the version of the aggregate whose guard failed; which one is not
          // said, so a writer re-reads: here, every aggregate of the write.
          for (const p of parts) if (Number.isFinite(cur)) known.set(p.agg, await detailsVersion(p.agg));
        } else if (!expectedRefusal(e.code) && !(e.code === ErrorCode.BadRequest && eventBytes > RECORD_FITS_BYTES)) {
          fail(`write ${id} got ${e.code} (${e.message}) while serving`);
        }
      }
    }
  };

  // 2008: writes stopped after a failed fsync (fsync-eio), or no room for the next segment
  // (disk-full), or a group refused after an fsync ENOSPC (fsync-enospc).
  // commit-step: 2007 for the writes of a refused commit, 2008 for those after it (writes stopped),
  // 9200 for a write placed as they stopped; only once the follower refused a range.
  const expectedRefusal = (code: number): boolean =>
    code === ErrorCode.WrongExpectedVersion ||
    (scenario !== 'plain' && scenario !== 'read-eio' && scenario !== 'commit-step' && code === ErrorCode.StorageFailed) ||
    (scenario === 'read-eio' && code === ErrorCode.ShardUnavailable) ||
    (scenario === 'commit-step' && follower!.refused.length > 0 && ([ErrorCode.NotAcknowledged, ErrorCode.StorageFailed, ErrorCode.ShardUnavailable] as number[]).includes(code));

  const onAck = (w: Issued, ok: WireWriteOk): void => {
    if (ok.ranges.length !== w.parts.length) fail(`write ${w.id}: ${ok.ranges.length} ranges acknowledged for ${w.parts.length} aggregates`);
    w.parts.forEach((p, j) => {
      const r = ok.ranges[j];
      if (r === undefined) return;
      const from = Number(r.fromVersion);
      const to = Number(r.toVersion);
      if (to - from + 1 !== p.events.length) fail(`write ${w.id}: acknowledged versions ${from}..${to} for ${p.events.length} events`);
      if (p.mode === Expect.Exact && from !== p.expect + 1) fail(`write ${w.id}: guard expected version ${p.expect} but it landed at ${from}`);
      if (p.mode === Expect.NoStream && from !== 1) fail(`write ${w.id}: guard no_stream but it landed at ${from}`);
      if (p.mode === Expect.StreamExists && from === 1) fail(`write ${w.id}: guard stream_exists but it landed at version 1`);
      let m = ackedVersions.get(p.agg);
      if (m === undefined) ackedVersions.set(p.agg, (m = new Map()));
      for (let v = from; v <= to; v++) {
        const other = m.get(v);
        if (other !== undefined) fail(`aggregate ${p.agg} version ${v} acknowledged to both write ${other} and write ${w.id}`);
        m.set(v, w.id);
      }
      let s = ackedUpTo.get(p.agg);
      if (s === undefined) ackedUpTo.set(p.agg, (s = new Set()));
      s.add(w.id);
    });
  };

  const detailsVersion = async (agg: number): Promise<number> => {
    const r = await call(shard, Op.Details, encodeKeyRequest(keyOf(agg)));
    if (r.op === Op.DetailsOk) return Number(decodeDetailsOk(r.body).version);
    return 0;
  };

  const readDuring = async (agg: number): Promise<void> => {
    const mustSee = new Set(ackedUpTo.get(agg) ?? []);
    const got = await readAll(shard, agg, readPageBytes);
    if (crashed !== null) return;
    if ('code' in got) {
      if (got.code === ErrorCode.AggregateNotFound && mustSee.size === 0) return;
      if (!expectedRefusal(got.code)) fail(`read of aggregate ${agg} while serving got ${got.code} (${got.message})`);
      return;
    }
    const seen = new Set<number>();
    let v = 0;
    for (const b of got.batches) {
      if (b.from !== v + 1) fail(`read of aggregate ${agg} while serving: batch at version ${b.from} after version ${v}`);
      v = b.to;
      if (b.events[0] !== undefined) seen.add(writeIdOf(b.events[0]));
    }
    for (const id of mustSee) if (!seen.has(id)) fail(`read of aggregate ${agg} while serving misses write ${id}, acknowledged before the read was sent`);
  };

  const retryDuring = async (w: Issued): Promise<void> => {
    const res = await call(shard, Op.Write, retryBody(w));
    if (crashed !== null) return;
    const code = res.op === Op.Error ? decodeError(res.body).code : 0;
    if (code !== ErrorCode.AlreadyApplied && !expectedRefusal(code)) fail(`retry of acknowledged write ${w.id} (clientSeq ${w.parts[0]!.clientSeq}) got ${res.op === Op.WriteOk ? 'applied again' : code}`);
  };

  const workload = Promise.all(Array.from({ length: clients }, (_, c) => clientLoop(c)));
  await Promise.race([workload, crashSignal, driver.done]);
  // Quiet time: no writes, the idle header catch-up and spare making may still touch the disk.
  for (let t = 0; crashed === null && t * msPerTurn < IDLE_MS && !driver.stuck; t++) await turn();
  if (driver.stuck && crashed === null) fail(`the workload made no progress for ${TURNS_MAX} event-loop turns (a hang)`);
  if (crashed === null) {
    crashStep = disk.steps;
    crashed = disk.crash(crashRng, opts.crash);
  }
  driver.stop();
  const after: SimDisk = crashed;
  const report = after.lastCrash!;
  const acked = issued.filter((w) => w.answer !== null && 'ok' in w.answer);
  const inFlight = issued.filter((w) => w.answer === null);
  const summary = `seed ${seed} ${scenario}: ${issued.length} writes (${acked.length} acknowledged, ${inFlight.length} in flight) over ${aggregates} aggregates, ${clients} clients; power cut at step ${crashStep} (${crashKind}), ${report.style}: ${report.sectorsKept} sectors kept, ${report.sectorsLost} lost, ${report.dirOpsKept}/${report.dirOpsKept + report.dirOpsLost} directory operations kept${follower === undefined ? '' : `; commit step: ${follower.calls} commits, up to ${follower.maxInFlight} in flight, ${follower.refused.length === 0 ? 'none refused' : `refused ${follower.refused.join(', ')}`}`}`;

  return { scenario, failures, engineLog, steps, openSteps, after, summary, ctx: { issued, aggregates, memoryBudgetBytes, msPerTurn, readPageBytes, wrap: opts.wrap, commitSeed } };
}

// The power-loss harness: one seed = one run of the real Shard (dataplane/shard/shard.ts) on a
// SimDisk with small segments, many concurrent writers, a power cut at a seeded step, and a new
// Shard on what the disk kept. The shard is driven only through `handle(op, body)` with bodies from
// the client's wire encoders, so the harness sees what a client sees and nothing of the engine.
//
// What a run checks after the power cut (`failures` lists every breach):
//   - every acknowledged write is readable with its exact events, at the versions and the seq its
//     acknowledgment gave;
//   - versions per aggregate are gapless from 1, and seqs over the shard gapless from 1;
//   - a write that was in flight is there wholly (on every aggregate it touched, at versions its
//     guards allowed) or not at all;
//   - a write refused for sure (2003, 2008 for a full disk) is not there;
//   - exactly-once survives: a retry of an acknowledged (or surviving) clientSeq gets 2002, a
//     retry of a lost in-flight write is applied once (or gets 2002 when its writer's later
//     clientSeq landed on one of its aggregates);
//   - the shard serves, or refuses with 9200 only when the run rotted synced data on purpose; it
//     never returns bytes other than those written; details agree with the events;
//   - `verifyShard` (celer verify) finds the crashed image clean and holding every acknowledged
//     seq, and finds the rot when there is some;
//   - after the checks it takes new writes at the next versions, and a clean reopen sees them all;
//   - in the commit-step scenario (a cluster's shard: a fake follower commits each group after a
//     seeded delay, or now and then refuses it), the reopened shard's committed seq is the ack
//     barrier its last segment header holds, at or above every acknowledged seq; reads serve
//     nothing above it; truncateAfter below it is refused (TruncateRefusedError), truncateAfter at
//     it removes the speculative tail and no acknowledged write, and verifyShard is clean after.
// Before the cut it checks what a client can: acknowledgments of different writes never claim the
// same version, a read shows every write acknowledged before it was sent, the same write sent
// twice at once is applied at most once (the copy gets 2013 or 2002).
import { decodeDetailsOk, decodeError, encodeError, decodeReadOk, decodeWriteOk, encodeKeyRequest, encodeReadRequest, encodeWriteRequest, Expect, Op, type ExpectMode, type WireEvent, type WireReadOk, type WireWriteOk } from '../../client/wire.ts';
import type { NormalizedKey } from '../../client/key.ts';
import { ErrorCode } from '../../client/errors.ts';
import { verifyShard } from '../../dataplane/cli/verify.ts';
import { initHashing } from '../../dataplane/storage/checksum.ts';
import { decodeSegmentFooter, decodeSegmentHeader, SEGMENT_FOOTER_BYTES } from '../../dataplane/storage/segment.ts';
import type { Disk } from '../../dataplane/storage/disk.ts';
import { Shard, type CommitStep, type ShardResult } from '../../dataplane/shard/shard.ts';
import { TruncateRefusedError } from '../../dataplane/storage/shard-log.ts';
import { prng } from '../lib/prng.ts';
import { SimClock } from './sim-clock.ts';
import { SimDisk, type CrashOptions, type SimOp } from './sim-disk.ts';

/** 64 KiB segments (the engine's minimum): a run of ~100 writes rotates a few times. */
export const SIM_SEGMENT_BYTES = 64 * 1024;
const DATA_DIR = '/data';
const SHARD_DIR = `${DATA_DIR}/shard-000`;
const NUM_SHARDS = 1;
/** Routing code of 'id' (dataplane/storage/segment.ts ROUTING_CODES). */
const ROUTING = 2;
const NODE_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xc0 + i);
/** Event bytes below which a write surely fits one record of a 64 KiB segment (56 KiB of records, less headers); above it 9100 is a fair answer. */
const RECORD_FITS_BYTES = 48 * 1024;
/** Event-loop turns a run may take before it counts as stuck (a hang in the engine). */
const TURNS_MAX = 400_000;
/** Simulated quiet time after the workload, so the idle header catch-up (50 ms) happens. */
const IDLE_MS = 120;

/**
 * What can go wrong besides the power cut, chosen per seed: nothing; one fsync fails with EIO;
 * the disk fills up (no room for the next segment); one fsync of a segment fails with ENOSPC
 * (thin provisioning, a CoW filesystem, buffered mode: the bytes are in the file, only the flush
 * failed: the engine zeroes what the group left before it refuses it as not stored); reads fail
 * with EIO now and then (a bad sector: the request gets 9200, the shard goes on).
 */
export type Scenario = 'plain' | 'fsync-eio' | 'disk-full' | 'fsync-enospc' | 'read-eio' | 'commit-step';
const SCENARIOS: readonly { s: Scenario; weight: number }[] = [
  { s: 'plain', weight: 8 },
  { s: 'fsync-eio', weight: 1 },
  { s: 'disk-full', weight: 1 },
  { s: 'fsync-enospc', weight: 1 },
  { s: 'read-eio', weight: 1 },
  { s: 'commit-step', weight: 2 },
];

/** commit-step: the chance that the follower refuses one group commit (writes then stop with 2007). */
const COMMIT_REFUSE_P = 0.03;
/** commit-step: a group's commit takes 0..COMMIT_TURNS_MAX driver turns (so several are in flight at once). */
const COMMIT_TURNS_MAX = 24;

/**
 * The commit step of a cluster's shard (dataplane/shard/shard.ts CommitStep), standing in for a
 * follower: each commit(from, to) resolves after a seeded number of driver turns, so later groups
 * may be committed before earlier ones (the engine applies them in seq order), and is refused with
 * probability `refuseP`. It checks what the engine asks: ranges gapless and in seq order from
 * the seq after the shard's committed seq at open.
 */
class FakeFollower implements CommitStep {
  calls = 0;
  inFlight = 0;
  maxInFlight = 0;
  /** The ranges it refused, e.g. "12..15". */
  readonly refused: string[] = [];
  private next = -1;
  private readonly clock: SimClock;
  private readonly rng: () => number;
  private readonly msPerTurn: number;
  private readonly refuseP: number;
  private readonly fail: (m: string) => void;

  constructor(clock: SimClock, rng: () => number, msPerTurn: number, refuseP: number, fail: (m: string) => void) {
    this.clock = clock;
    this.rng = rng;
    this.msPerTurn = msPerTurn;
    this.refuseP = refuseP;
    this.fail = fail;
  }

  /** The shard opened with this committed seq: the first range starts after it. */
  opened(committedSeq: number): void {
    this.next = committedSeq + 1;
  }

  commit(from: number, to: number): Promise<void> {
    this.calls++;
    if (this.next >= 0 && from !== this.next) this.fail(`the commit step was asked for seqs ${from}..${to}; the range after the last one starts at ${this.next}`);
    if (to < from) this.fail(`the commit step was asked for an empty range ${from}..${to}`);
    this.next = Math.max(this.next, to + 1);
    const turns = this.rng() < 0.25 ? 0 : 1 + Math.floor(this.rng() * COMMIT_TURNS_MAX);
    const refuse = this.rng() < this.refuseP;
    this.inFlight++;
    this.maxInFlight = Math.max(this.maxInFlight, this.inFlight);
    return new Promise<void>((done, failed) => {
      this.clock.after(turns * this.msPerTurn, () => {
        this.inFlight--;
        if (!refuse) return done();
        this.refused.push(`${from}..${to}`);
        failed(new Error(`the follower did not commit seqs ${from}..${to}`));
      });
    });
  }
}

/** The ack barrier a power cut left: the ackedSeq of the last segment's header (null: no readable one). */
function barrierOnDisk(disk: SimDisk): number | null {
  const segs = disk.names(SHARD_DIR).filter((n) => n.endsWith('.seg'));
  const last = segs.at(-1);
  if (last === undefined) return 0;
  const bytes = disk.peek(`${SHARD_DIR}/${last}`);
  if (bytes === null || bytes.length < 4096) return null;
  const h = decodeSegmentHeader(bytes.subarray(0, 4096));
  return h.ok ? h.header.ackedSeq : null;
}

export interface RunOptions {
  seed: number;
  /** Puts something between the engine and the SimDisk (the deliberately broken disks of the teeth tests). */
  wrap?: (disk: SimDisk) => Disk;
  /** Forces a scenario (default: seeded); a forced scenario also leaves out rot and the second power cut. */
  scenario?: Scenario;
  /** Passed to every SimDisk.crash of the run (a forced style, tearing inside sectors). */
  crash?: CrashOptions;
}

export interface RunResult {
  seed: number;
  scenario: Scenario;
  failures: string[];
  /** One line: what happened (for replay comparisons and failure messages). */
  summary: string;
  /** The engine's log lines, last ones (for failure messages). */
  log: string[];
}

interface Part {
  agg: number;
  mode: ExpectMode;
  expect: number;
  clientSeq: bigint;
  events: WireEvent[];
}

interface Issued {
  id: number;
  client: number;
  clientId: bigint;
  parts: Part[];
  body: Uint8Array;
  /** null while unanswered (in flight at the cut). */
  answer: { ok: WireWriteOk } | { code: number; detail: Record<string, unknown> } | null;
}

/** A batch as recovered by reading an aggregate. */
interface SeenBatch {
  agg: number;
  from: number;
  to: number;
  seq: number;
  clientId: bigint;
  events: WireEvent[];
}

const te = new TextEncoder();
let hashingReady: Promise<void> | null = null;

export function keyOf(agg: number): NormalizedKey {
  return { org: 7n, type: 3n, id: BigInt(agg + 1) };
}

function turn(): Promise<void> {
  return new Promise<void>((r) => setImmediate(r));
}

function sameBytes(a: Uint8Array | undefined, b: Uint8Array | undefined): boolean {
  if (a === undefined || b === undefined) return a === b;
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

function sameEvent(a: WireEvent, b: WireEvent): boolean {
  return a.type === b.type && sameBytes(a.data, b.data) && sameBytes(a.metadata, b.metadata);
}

/** Reads the write id a harness event carries in its first 4 bytes. */
function writeIdOf(e: WireEvent): number {
  return e.data.length >= 4 ? new DataView(e.data.buffer, e.data.byteOffset, 4).getUint32(0) : -1;
}

/** The command line that replays one seed (with its scenario when it was forced). */
export function replayCommand(seed: number, scenario?: Scenario): string {
  return `CELER_SIM_SEED=${seed}${scenario !== undefined ? ` CELER_SIM_SCENARIO=${scenario}` : ''} node_modules/.bin/node --test test/sim/powerloss.test.ts`;
}

/**
 * Adds failures to `into`, at most 40, and each kind once: after the shard stops serving, every
 * later request fails the same way, and one line says it (numbers aside, messages repeat).
 */
function failureList(into: string[]): (msg: string) => void {
  const kinds = new Set(into.map((m) => m.replace(/\d+/g, '#')));
  return (msg) => {
    const kind = msg.replace(/\d+/g, '#');
    if (kinds.has(kind) || into.length >= 40) return;
    kinds.add(kind);
    into.push(msg);
  };
}

/**
 * One request, answered as the worker answers it (dataplane/shard/worker.ts): a request that
 * throws (say, a read that met EIO) gets 9200.
 */
function call(shard: Shard, op: number, body: Uint8Array): Promise<ShardResult> {
  return shard.handle(op, body).catch((e: Error) => ({ op: Op.Error, body: encodeError(ErrorCode.ShardUnavailable, `internal error in shard ${shard.id}: ${e.message}`) }));
}

/** Opens the real shard on `disk` (the engine's own options; nothing else of it is used). */
async function openShard(disk: Disk, clock: SimClock, memoryBudgetBytes: number, log: (m: string) => void, commitStep?: FakeFollower): Promise<Shard> {
  const s = await Shard.open({
    disk,
    clock,
    dir: SHARD_DIR,
    shard: 0,
    numShards: NUM_SHARDS,
    routing: ROUTING,
    segmentBytes: SIM_SEGMENT_BYTES,
    memoryBudgetBytes,
    nodeId: NODE_ID,
    log,
    ...(commitStep === undefined ? {} : { commitStep }),
  });
  commitStep?.opened(s.committedSeq);
  return s;
}

/**
 * Runs the clock while `busy()` holds: one turn of the event loop per step, `msPerTurn` of
 * simulated time each. Stops at TURNS_MAX turns and says so.
 */
class Driver {
  turns = 0;
  private stopped = false;
  readonly done: Promise<void>;
  stuck = false;

  constructor(clock: SimClock, msPerTurn: number) {
    this.done = (async () => {
      while (!this.stopped) {
        await turn();
        clock.advance(msPerTurn);
        if (++this.turns > TURNS_MAX) {
          this.stuck = true;
          return;
        }
      }
    })();
  }

  stop(): void {
    this.stopped = true;
  }
}

/** Awaits `p` unless the driver gives up first (then null). */
async function bounded<T>(p: Promise<T>, driver: Driver): Promise<T | null> {
  let settled = false;
  const r = await Promise.race([
    p.finally(() => (settled = true)),
    driver.done.then(() => null),
  ]);
  return settled ? (r as T) : null;
}

interface Workload {
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
async function runWorkload(opts: RunOptions, crashAt: number | null): Promise<Workload> {
  const seed = opts.seed;
  const rng = prng(seed);
  const int = (n: number): number => Math.floor(rng() * n);
  const pick = <T>(xs: readonly T[]): T => xs[int(xs.length)]!;
  const failures: string[] = [];
  const fail = failureList(failures);
  const engineLog: string[] = [];
  const log = (m: string): void => {
    engineLog.push(m);
    if (engineLog.length > 60) engineLog.shift();
  };

  let scenario = opts.scenario;
  if (scenario === undefined) {
    let w = rng() * SCENARIOS.reduce((n, x) => n + x.weight, 0);
    scenario = SCENARIOS.find((x) => (w -= x.weight) < 0)?.s ?? 'plain';
  } else rng();

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

/** Step kinds of rotation and sidecar writing. */
const NAME_STEPS: readonly SimOp['kind'][] = ['create', 'rename', 'syncDir', 'remove'];

/**
 * One seed: the workload without a power cut, to learn which steps it takes; then again with the
 * cut at one of them: any step, an fsync (mid group commit), a step of rotation or sidecar
 * writing (create, rename, directory sync), a step of the shard's very first open, or after the
 * workload (quiet); then the checks.
 */
export async function runPowerLoss(opts: RunOptions): Promise<RunResult> {
  hashingReady ??= initHashing();
  await hashingReady;
  const dry = await runWorkload(opts, null);
  const rng = prng(opts.seed ^ 0x0c1a5);
  const all = [...dry.steps.keys()].filter((n) => n > dry.openSteps);
  const opening = [...dry.steps.keys()].filter((n) => n <= dry.openSteps);
  const fsyncs = all.filter((n) => dry.steps.get(n) === 'fsync');
  const names = all.filter((n) => NAME_STEPS.includes(dry.steps.get(n)!));
  const where = rng();
  const from = where < 0.12 ? [] : where < 0.15 ? opening : where < 0.5 ? all : where < 0.8 ? fsyncs : names;
  const crashAt = from.length === 0 ? null : from[Math.floor(rng() * from.length)]!;
  const run = crashAt === null ? dry : await runWorkload(opts, crashAt);
  const failures = [...new Set([...dry.failures, ...run.failures])];
  const fail = failureList(failures);
  const log = (m: string): void => {
    run.engineLog.push(m);
    if (run.engineLog.length > 60) run.engineLog.shift();
  };
  // After a full disk, half the seeds restart with it still full (reads must go on), half after
  // the operator freed space.
  const fullAtRestart = run.scenario === 'disk-full' && prng(opts.seed ^ 0xf011)() < 0.5;
  if (!fullAtRestart) run.after.capacityBytes = Infinity;
  const rot = opts.scenario === undefined ? rotImage(run.after, run.ctx.issued, prng(opts.seed ^ 0x2071)) : null;
  const again = prng(opts.seed ^ 0xa6a1);
  const recrashAt = opts.scenario === undefined && again() < 0.2 ? 1 + Math.floor(again() * 40) : null;
  const ctx: CheckContext = { ...run.ctx, fail, log, rot, refused: false, lossFromSeq: rot?.kind === 'log' && !rot.covered ? rot.seq : Infinity, fullAtRestart, commitNote: '', recrash: recrashAt === null ? null : { atStep: recrashAt, rng: again, happened: false } };
  await checkRecovered(run.after, ctx);
  if (ctx.recrash?.happened === true) run.summary += `; power cut again at step ${recrashAt} of recovery`;
  if (fullAtRestart) run.summary += '; restarted with the disk still full';
  run.summary += ctx.commitNote;
  const rotted = rot === null ? '' : `; rotted ${rot.path} at ${rot.offset}${rot.kind === 'log' ? ` (acknowledged seq ${rot.seq}, ${rot.covered ? 'below the durable end or ack barrier' : 'in the unvouched tail'})${ctx.refused ? ', refused with 9200' : ', served'}` : ''}`;
  return { seed: opts.seed, scenario: run.scenario, failures, summary: run.summary + rotted, log: run.engineLog };
}

/** Synced data damaged on purpose after the power cut (a bit rotting on the medium). */
type Rot = { kind: 'log'; path: string; offset: number; seq: number; covered: boolean } | { kind: 'sidecar'; path: string; offset: number };

/**
 * In a few seeds, flips one bit of synced data: inside an acknowledged record of the log (found by
 * its unique event bytes), or anywhere in a sidecar index. A record in a sealed segment, below
 * its segment header's durable end or at or below its ack barrier must then be refused (9200),
 * never served; one in the unvouched tail after them is indistinguishable from a torn group
 * commit, and may be discarded with what follows it (segment.ts: acknowledged records newer than
 * the header are protected by their checksums only). A damaged sidecar is derived data: the shard
 * must serve exactly as before.
 */
function rotImage(disk: SimDisk, issued: Issued[], rng: () => number): Rot | null {
  const r = rng();
  if (r >= 0.12) return null;
  const int = (n: number): number => Math.floor(rng() * n);
  if (r >= 0.07) {
    const idx = disk.names(SHARD_DIR).filter((n) => n.endsWith('.idx'));
    if (idx.length === 0) return null;
    const path = `${SHARD_DIR}/${idx[int(idx.length)]!}`;
    const size = disk.peek(path)!.length;
    if (size === 0) return null;
    const offset = int(size);
    disk.corrupt(path, offset, 1 << int(8));
    return { kind: 'sidecar', path, offset };
  }
  const acked = issued.filter((w) => w.answer !== null && 'ok' in w.answer && w.parts[0]!.events[0]!.data.length >= 24);
  if (acked.length === 0) return null;
  const w = acked[int(acked.length)]!;
  const marker = Buffer.from(w.parts[0]!.events[0]!.data.subarray(0, 24));
  for (const name of disk.names(SHARD_DIR).filter((n) => n.endsWith('.seg'))) {
    const path = `${SHARD_DIR}/${name}`;
    const bytes = disk.peek(path)!;
    const at = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).indexOf(marker);
    if (at < 0) continue;
    const offset = at + 8 + int(16);
    disk.corrupt(path, offset, 1 << int(8));
    const seq = Number((w.answer as { ok: WireWriteOk }).ok.firstSeq);
    const h = decodeSegmentHeader(bytes.subarray(0, 4096));
    const f = decodeSegmentFooter(bytes.subarray(bytes.length - SEGMENT_FOOTER_BYTES));
    const covered = f.ok || (h.ok && (at < h.header.durableEnd || seq <= h.header.ackedSeq));
    return { kind: 'log', path, offset, seq, covered };
  }
  return null;
}

/**
 * No answer, 9200 (the shard stopped before the write was durable), 2007, or 2008 not for a full
 * disk (a failed fsync): the write may or may not be on disk. 2008 for a full disk says nothing
 * was placed.
 */
function indeterminate(w: Issued): boolean {
  if (w.answer === null) return true;
  if (!('code' in w.answer)) return false;
  const c = w.answer.code;
  return c === ErrorCode.ShardUnavailable || c === ErrorCode.NotAcknowledged || (c === ErrorCode.StorageFailed && w.answer.detail['diskFull'] !== true);
}

function retryBody(w: Issued): Uint8Array {
  return encodeWriteRequest({
    clientId: w.clientId,
    writes: w.parts.map((p) => ({ key: keyOf(p.agg), expectMode: Expect.Any, expectVersion: 0n, clientSeq: p.clientSeq, events: p.events })),
  });
}

function eventBytesOf(w: Issued): number {
  return w.parts.reduce((n, p) => n + p.events.reduce((m, e) => m + e.data.length + (e.metadata?.length ?? 0), 0), 0);
}

/** 9100 for a write whose record would not fit in a segment: nothing was placed. */
function tooBig(w: Issued, r: ShardResult): boolean {
  return r.op === Op.Error && decodeError(r.body).code === ErrorCode.BadRequest && eventBytesOf(w) > RECORD_FITS_BYTES;
}

/** 2008 for a full disk: nothing was placed. */
function diskFull(r: ShardResult): boolean {
  if (r.op !== Op.Error) return false;
  const e = decodeError(r.body);
  return e.code === ErrorCode.StorageFailed && e.detail['diskFull'] === true;
}

type ReadResult = { batches: SeenBatch[] } | { code: number; message: string };

/** Reads an aggregate from version 1 to its end, page by page. */
async function readAll(shard: Shard, agg: number, maxBytes: number): Promise<ReadResult> {
  const batches: SeenBatch[] = [];
  let from = 1n;
  for (let page = 0; page < 10_000; page++) {
    const r: ShardResult = await call(shard, Op.Read, encodeReadRequest({ key: keyOf(agg), from, to: 0n, maxBytes, eventTypes: [] }));
    if (r.op !== Op.ReadOk) {
      const e = decodeError(r.body);
      return { code: e.code, message: e.message };
    }
    const ok: WireReadOk = decodeReadOk(r.body);
    for (const b of ok.batches) {
      batches.push({
        agg,
        from: Number(b.fromVersion),
        to: Number(b.toVersion),
        seq: Number(b.seq),
        clientId: b.clientId,
        events: b.events.map((e) => {
          const ev: WireEvent = { type: e.type, data: e.data };
          if (e.metadata !== undefined) ev.metadata = e.metadata;
          return ev;
        }),
      });
      const versions = b.events.map((e) => Number(e.version));
      for (let i = 0; i < versions.length; i++) {
        if (versions[i] !== Number(b.fromVersion) + i) return { code: -1, message: `batch ${b.fromVersion}..${b.toVersion} carries event versions ${versions.join(',')}` };
      }
    }
    if (ok.nextVersion === 0n) return { batches };
    if (ok.nextVersion <= from) return { code: -1, message: `read page from ${from} says the next starts at ${ok.nextVersion}` };
    from = ok.nextVersion;
  }
  return { code: -1, message: 'more than 10000 pages' };
}

interface CheckContext {
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
async function crashDuringRecovery(disk: SimDisk, ctx: CheckContext, recrash: NonNullable<CheckContext['recrash']>): Promise<SimDisk> {
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
function followerFor(ctx: CheckContext, clock: SimClock, salt: number): FakeFollower | undefined {
  return ctx.commitSeed === null ? undefined : new FakeFollower(clock, prng(ctx.commitSeed ^ salt), ctx.msPerTurn, 0, ctx.fail);
}

/** The last seq of every acknowledged write, the largest (0: none). */
function ackedMaxSeq(issued: Issued[], below = Infinity): number {
  return Math.max(0, ...issued.map((w) => (w.answer !== null && 'ok' in w.answer && Number(w.answer.ok.firstSeq) < below ? Number(w.answer.ok.firstSeq) + w.parts.length - 1 : 0)));
}

/**
 * commit-step, just after the reopen: the committed seq is the recovered ack barrier (the last
 * segment header's, capped at the durable end), at or above every acknowledged seq; reads serve
 * nothing above it; truncateAfter below it is refused, at it removes the speculative tail; then
 * the log ends at it and verifyShard is clean. False when the shard can no longer be checked.
 */
async function checkCommitStep(shard: Shard, disk: SimDisk, barrier: number | null, ctx: CheckContext, driver: Driver): Promise<boolean> {
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

async function checkRecovered(crashedDisk: SimDisk, ctx: CheckContext): Promise<void> {
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

async function readEverything(shard: Shard, ctx: CheckContext, driver: Driver, when: string): Promise<SeenBatch[] | null> {
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
function checkHistory(seen: SeenBatch[], ctx: CheckContext, when: string): Set<number> {
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

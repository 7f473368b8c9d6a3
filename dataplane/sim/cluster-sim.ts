// The deterministic cluster simulator: one seed = two real ClusterNodes, each with its real Shards
// on a simulated disk (sim-node.ts), over a simulated S3 bucket (sim-s3.ts) and network
// (sim-net.ts), on drifted virtual clocks derived from one scheduler (scheduler.ts); seeded
// clients write (workload.ts) while the seed's scenario injects faults (faults.ts); then the
// faults stop, the pair must converge within CONVERGE_BOUND_MS, take a new write, converge
// again, and pass the checks (checks.ts). Everything comes from the seed: no real time, no
// Math.random, no real I/O, so a run replays exactly (its trace hash says so).
import { createHash } from 'node:crypto';
import type { ClusterNodeOptions } from '../cluster/cluster-node.ts';
import { DEFAULT_TIMING, type ClusterTiming } from '../cluster/timing.ts';
import { initHashing } from '../storage/checksum.ts';
import { prng } from '../../test/lib/prng.ts';
import { AuthorityWatch, committedAgree, converged, finalChecks, lostWrites, StepDownWatch } from './checks.ts';
import { BugSignatures } from './known-bugs.ts';
import { chooseScenario, injectFaults, type FaultLog, type Scenario } from './faults.ts';
import { Scheduler } from './scheduler.ts';
import { SimBucket } from './sim-s3.ts';
import { SimNet } from './sim-net.ts';
import { SimNode } from './sim-node.ts';
import { startWorkload } from './workload.ts';

/** After the faults stop, the pair must converge within this much virtual time. */
export const CONVERGE_BOUND_MS = 30_000;

export interface SimOptions {
  seed: number;
  scenario?: Scenario;
  /** Broken protocol variants (teeth tests only). */
  unsafe?: ClusterNodeOptions['unsafe'];
  timing?: ClusterTiming;
  /** Keep the whole trace (replay, verbose); otherwise only its hash and the last lines. */
  keepTrace?: boolean;
}

export interface SimResult {
  seed: number;
  scenario: Scenario;
  failures: string[];
  summary: string;
  /** The known bug (known-bugs.ts) that explains every failure, or null. */
  knownBug: string | null;
  traceHash: string;
  trace: string[];
  virtualMs: number;
}

export function replayCommand(seed: number, scenario?: Scenario, unsafe?: SimOptions['unsafe']): string {
  return `npm run sim -- --seed ${seed}${scenario !== undefined ? ` --scenario ${scenario}` : ''}${unsafe?.ackBeforeFsync ? ' --unsafe-ack-before-fsync' : ''}${unsafe?.takeoverAfterMs !== undefined ? ` --unsafe-takeover-after-ms ${unsafe.takeoverAfterMs}` : ''}${unsafe?.handoverFromRead ? ' --unsafe-handover-from-read' : ''} --verbose`;
}

export async function runSeed(o: SimOptions): Promise<SimResult> {
  await initHashing();
  const rng = prng(o.seed);
  const int = (n: number): number => Math.floor(rng() * n);
  const timing = o.timing ?? DEFAULT_TIMING;
  const scenario = chooseScenario(rng, o.scenario, prng(o.seed ^ 0x5d0e));
  const hash = createHash('sha256');
  let traceHash: string | null = null;
  const tail: string[] = [];
  const full: string[] = [];
  const sched = new Scheduler([0.25, 0.5, 1][int(3)]!);
  const trace = (e: string): void => {
    const line = `${sched.now.toFixed(2)} ${e}`;
    // A run can leave promises behind (a broken protocol under test, a node still stopping):
    // what they trace after the end is not part of the run's hash.
    if (traceHash !== null) return;
    hash.update(line + '\n');
    if (o.keepTrace === true) full.push(line);
    tail.push(line);
    if (tail.length > 300) tail.splice(0, 100);
  };
  const failures: string[] = [];
  const signatures = new BugSignatures();
  const fail = (m: string): void => {
    if (failures.length < 40 && !failures.includes(m)) failures.push(m);
    trace(`FAIL ${m}`);
  };

  // A rejection the cluster code leaves unhandled would kill `celer serve`: a failure of the seed.
  const onUnhandled = (e: unknown): void => {
    fail(`(6) the cluster code left a promise rejection unhandled (it kills a real node): ${String((e as Error)?.stack ?? e).split('\n').slice(0, 4).join(' | ')}`);
    signatures.unhandled(e);
  };
  process.on('unhandledRejection', onUnhandled);
  const numShards = 1 + int(2);
  const bucket = new SimBucket(sched, prng(o.seed ^ 0x53335), trace);
  const net = new SimNet(sched, prng(o.seed ^ 0x4e37), trace);
  const nodes: SimNode[] = [0, 1].map((index) => {
    const setup = { index, numShards, timing, sched, bucket, net, rng: prng(o.seed * 7 + index + 1), trace, memoryBudgetBytes: 1024 * 1024,
      onNote: (m: string) => signatures.note(m),
      onCommitTo: (n: SimNode, shard: number, seq: number) => {
        const peer = nodes.find((x) => x !== n)!;
        void committedAgree(n, peer, shard, seq).then((v) => {
          if (v === null) return;
          fail(v);
          signatures.committedDivergence(v);
        });
      },
    };
    return new SimNode(o.unsafe === undefined ? setup : { ...setup, unsafe: o.unsafe });
  });
  for (const n of nodes) n.drift = { offsetMs: (rng() - 0.5) * (timing.maxClockDriftMs / 2), rate: (rng() - 0.5) * 0.002 };
  const watch = new AuthorityWatch(nodes, () => sched.now);
  const stepDowns = new StepDownWatch(nodes, () => sched.now, trace);
  sched.onTurn = () => {
    watch.check();
    stepDowns.check();
  };

  const faultMs = 3000 + int(6000);
  const faultEnd = faultMs + 500;
  const faultLog: FaultLog = { counts: {} };
  let phase = 'boot';
  const boots = nodes.map((n, i) => sched.sleep(i === 0 ? 0 : int(300)).then(() => n.start()));
  const workload = startWorkload({ sched, rng: prng(o.seed ^ 0x3011), nodes, numShards, trace, stopAtMs: faultEnd + 1000 });
  let faultsDone = false;
  const faults = injectFaults({ sched, rng: prng(o.seed ^ 0xfa17), stepRng: prng(o.seed ^ 0x57e9), stepDowns, fail, nodes, net, bucket, trace, maxClockDriftMs: timing.maxClockDriftMs, endMs: faultEnd }, scenario, faultLog).then(() => (faultsDone = true));
  let workloadDone = false;
  void workload.done.then(() => (workloadDone = true));
  void boots;
  const crashedBoot = (): string | null => nodes.find((n) => n.bootError !== null)?.bootError ?? null;

  let convergedAt = -1;
  let probe = 'not run';
  try {
    phase = 'faults';
    await sched.run(() => faultsDone || crashedBoot() !== null, faultEnd + 5000);
    void faults;
    phase = 'quiet';
    const quietFrom = sched.now;
    const bound = quietFrom + CONVERGE_BOUND_MS;
    let why: string | null = 'not checked';
    const ok = await sched.run(() => workloadDone && (why = converged(nodes)) === null, bound);
    const before = why;
    if (!ok) signatures.stalled(nodes);
    if (ok) convergedAt = sched.now - quietFrom;
    // One more write (liveness), then convergence again.
    phase = 'probe';
    let probed = false;
    void workload.probe().then((w) => {
      probed = true;
      probe = w.status;
    });
    await sched.run(() => probed, sched.now + 15_000);
    const ok2 = await sched.run(() => (why = converged(nodes)) === null, sched.now + 10_000);
    if (!ok && ok2) {
      fail(`(6) the pair converged only after a new write, not within ${CONVERGE_BOUND_MS} ms after the faults stopped: ${before ?? ''}`);
      signatures.idleLag();
    } else if (!ok) fail(`(6) no convergence within ${CONVERGE_BOUND_MS} ms after the faults stopped: ${before ?? (workloadDone ? '' : 'clients still busy')}; nor after a new write: ${why ?? ''}`);
    if (!probed || (probe !== 'acked' && probe !== 'applied-before')) fail(`(6) a write after the faults stopped was not acknowledged (${probe})`);
    if (ok && !ok2) fail(`(6) the pair did not converge again after the probe write: ${why ?? ''}`);
    if (!ok2) {
      // No convergence: still, every acknowledged write must be on the node that leads now (or the newest).
      const alive = nodes.filter((n) => n.life.alive && n.cluster !== null);
      const leader = alive.find((n) => n.cluster!.hasAuthority()) ?? alive.sort((p, q) => q.cluster!.epoch - p.cluster!.epoch)[0];
      if (leader !== undefined) {
        let checked = false;
        void lostWrites({ nodes, leader, writes: workload.writes, aggregates: workload.aggregates, numShards, bankAccounts: workload.bankAccounts, fail }).then(
          () => (checked = true),
          () => (checked = true),
        );
        await sched.run(() => checked, sched.now + 60_000);
      }
    }
    if (ok2) {
      phase = 'checks';
      const leader = nodes.find((n) => n.cluster!.hasAuthority())!;
      const follower = nodes.find((n) => n !== leader)!;
      let checked = false;
      let thrown: Error | null = null;
      const ctx = { nodes, leader, follower, writes: workload.writes, aggregates: workload.aggregates, numShards, bankAccounts: workload.bankAccounts, fail };
      void finalChecks(ctx).then(
        () => (checked = true),
        (e: Error) => ((thrown = e), (checked = true)),
      );
      await sched.run(() => checked, sched.now + 60_000);
      if (!checked) fail('the final checks did not finish (a read hung)');
      if (thrown !== null) fail(`the final checks threw: ${(thrown as Error).stack ?? (thrown as Error).message}`);
    }
  } catch (e) {
    fail(`the simulation threw in phase ${phase}: ${(e as Error).stack ?? (e as Error).message}`);
  }
  process.off('unhandledRejection', onUnhandled);
  for (const n of nodes) if (n.bootError !== null) fail(`(2) ${n.name} cannot start again after a power loss: ${n.bootError}`);
  if (watch.violation !== null) fail(`(1) ${watch.violation}`);
  if (stepDowns.violation !== null) fail(stepDowns.violation);
  if (convergedAt >= 0) for (const f of stepDowns.unresolved()) fail(f);
  const writes = workload.writes;
  const acked = writes.filter((w) => w.status === 'acked').length;
  const unknown = writes.filter((w) => w.status === 'unknown').length;
  const elections = nodes.map((n) => n.cluster?.counters.electionsWon ?? 0).join('+');
  const faultsText = Object.entries(faultLog.counts).map(([k, v]) => `${k}×${v}`).join(' ') || 'none';
  const summary = `seed ${o.seed} ${scenario}: ${numShards} shard(s), ${writes.length} writes (${acked} acked, ${unknown} unknown), faults ${faultsText}; restarts ${nodes.map((n) => n.restarts).join('+')}, elections won (last incarnations) ${elections}, S3 requests ${bucket.requests}, messages ${net.delivered}/${net.sent}; ${convergedAt >= 0 ? `converged ${Math.round(convergedAt)} ms after the faults` : 'did not converge'}, virtual ${Math.round(sched.now)} ms, ${sched.turns} turns`;
  trace(`end: ${failures.length} failures`);
  traceHash = hash.digest('hex');
  return { seed: o.seed, scenario, failures, summary, knownBug: signatures.explain(failures), traceHash, trace: o.keepTrace === true ? full : tail, virtualMs: sched.now };
}

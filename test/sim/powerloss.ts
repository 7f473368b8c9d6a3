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
//
// Where the parts live: powerloss-scenarios.ts (scenario, crash step and rot choice per seed),
// powerloss-workload.ts (the workload driver up to the cut), powerloss-checks.ts (the checks after
// it), powerloss-follower.ts (the commit-step follower), powerloss-report.ts (result, replay,
// failure list), powerloss-common.ts (layout, records, client plumbing). This file runs one seed.
import { initHashing } from '../../dataplane/storage/checksum.ts';
import { prng } from '../lib/prng.ts';
import { checkRecovered, type CheckContext } from './powerloss-checks.ts';
import type { RunOptions } from './powerloss-common.ts';
import { engineLogInto, failureList, type RunResult } from './powerloss-report.ts';
import { chooseCrashStep, rotImage } from './powerloss-scenarios.ts';
import { runWorkload } from './powerloss-workload.ts';

export { keyOf, SIM_SEGMENT_BYTES, type RunOptions } from './powerloss-common.ts';
export { replayCommand, type RunResult } from './powerloss-report.ts';
export type { Scenario } from './powerloss-scenarios.ts';

let hashingReady: Promise<void> | null = null;

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
  const crashAt = chooseCrashStep(opts.seed, dry.steps, dry.openSteps);
  const run = crashAt === null ? dry : await runWorkload(opts, crashAt);
  const failures = [...new Set([...dry.failures, ...run.failures])];
  const fail = failureList(failures);
  const log = engineLogInto(run.engineLog);
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

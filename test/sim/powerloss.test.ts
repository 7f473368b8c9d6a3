// Power loss at a seeded step, a few hundred seeds per `npm test` (see powerloss.ts for what each
// run checks). More seeds: CELER_SIM_SEEDS=5000 (from CELER_SIM_SEED_FROM, default 1); one seed:
// CELER_SIM_SEED=1234; one scenario for every seed: CELER_SIM_SCENARIO=fsync-enospc. A failing
// seed is printed with the command that replays exactly it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { replayCommand, runPowerLoss, type RunResult, type Scenario } from './powerloss.ts';

/** Seeds per `npm test`: 300 runs take ~25 s on one of our 2 cores (measured; up to ~37 s while other work shared the cores). */
const SEEDS_DEFAULT = 300;

function seedsToRun(): number[] {
  const one = process.env['CELER_SIM_SEED'];
  if (one !== undefined && one !== '') return [Number(one)];
  const count = Number(process.env['CELER_SIM_SEEDS'] ?? SEEDS_DEFAULT);
  const from = Number(process.env['CELER_SIM_SEED_FROM'] ?? 1);
  return Array.from({ length: count }, (_, i) => from + i);
}

const scenario = (process.env['CELER_SIM_SCENARIO'] || undefined) as Scenario | undefined;

function describeFailures(failed: RunResult[]): string {
  return failed
    .slice(0, 5)
    .map((r) => [`${r.summary}`, ...r.failures.slice(0, 8).map((f) => `  - ${f}`), `  replay: ${replayCommand(r.seed, scenario)}`, ...(process.env['CELER_SIM_SEED'] ? r.log.map((l) => `  log: ${l}`) : [])].join('\n'))
    .join('\n');
}

test('every acknowledged write survives a power cut at a seeded step, and the shard serves exactly it', async () => {
  const seeds = seedsToRun();
  const failed: RunResult[] = [];
  for (const seed of seeds) {
    const r = await runPowerLoss(scenario === undefined ? { seed } : { seed, scenario });
    if (r.failures.length > 0) failed.push(r);
    if (seeds.length === 1) console.log(r.summary);
  }
  assert.equal(failed.length, 0, `${failed.length} of ${seeds.length} seeds failed (seeds ${failed.map((r) => r.seed).join(', ')}):\n${describeFailures(failed)}`);
});

test('a seed replays exactly', async () => {
  for (const seed of [3, 17]) {
    const a = await runPowerLoss({ seed });
    const b = await runPowerLoss({ seed });
    assert.equal(a.summary, b.summary);
    assert.deepEqual(a.failures, b.failures);
  }
});

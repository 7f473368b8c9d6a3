// Power loss at a seeded step, a few hundred seeds per `npm test` (see powerloss.ts for what each
// run checks). More seeds: CELER_SIM_SEEDS=5000 (from CELER_SIM_SEED_FROM, default 1); one seed:
// CELER_SIM_SEED=1234; one scenario for every seed: CELER_SIM_SCENARIO=fsync-enospc. A failing
// seed is printed with the command that replays exactly it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AlignedWrite, Disk, SegmentFile } from '../../dataplane/storage/disk.ts';
import { replayCommand, runPowerLoss, type RunResult, type Scenario } from './powerloss.ts';
import type { SimDisk } from './sim-disk.ts';

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
  for (const opts of [{ seed: 3 }, { seed: 17 }, { seed: 5, scenario: 'commit-step' as const }]) {
    const a = await runPowerLoss(opts);
    const b = await runPowerLoss(opts);
    assert.equal(a.summary, b.summary);
    assert.deepEqual(a.failures, b.failures);
  }
});

/**
 * A disk that drops every header write to a segment after its activation, before the power cut
 * only: the engine believes each new ack barrier durable and acknowledges, but the barrier on disk
 * never moves past the one a segment was activated with.
 */
function dropBarrierWrites(d: SimDisk): Disk {
  if (d.lastCrash !== null) return d; // after the cut (the checks' disks): intact
  return {
    direct: d.direct,
    allocAligned: (size) => d.allocAligned(size),
    async openSegment(path, opts): Promise<SegmentFile> {
      const f = await d.openSegment(path, opts);
      // A spare's first header write activates it; every later one (and any on a reopened segment) is dropped.
      let activation = opts.create;
      const kept = (ws: readonly AlignedWrite[]): readonly AlignedWrite[] => {
        if (activation && ws.some((w) => w.offset === 0)) {
          activation = false;
          return ws;
        }
        return ws.filter((w) => w.offset !== 0);
      };
      return { path: f.path, sizeBytes: f.sizeBytes, writeAndSync: (ws) => f.writeAndSync(kept(ws)), read: (o, l) => f.read(o, l), close: () => f.close() };
    },
    mkdirp: (dir) => d.mkdirp(dir),
    list: (dir) => d.list(dir),
    readFile: (path) => d.readFile(path),
    readRange: (path, o, l) => d.readRange(path, o, l),
    writeFileDurable: (path, bytes) => d.writeFileDurable(path, bytes),
    rename: (a, b) => d.rename(a, b),
    remove: (path) => d.remove(path),
    syncDir: (dir) => d.syncDir(dir),
    lock: (path) => d.lock(path),
  };
}

// Teeth for the commit-step checks (measured over seeds 1..60: 33 fail, the first is seed 1).
test('commit-step: acknowledging on an ack barrier that never reached the disk is caught', async (t) => {
  let found: RunResult | null = null;
  for (let seed = 1; seed <= 20 && found === null; seed++) {
    const r = await runPowerLoss({ seed, scenario: 'commit-step', wrap: dropBarrierWrites });
    if (r.failures.length > 0) found = r;
  }
  assert.ok(found !== null, 'no failure in 20 seeds');
  t.diagnostic(`first failing seed ${found.seed}: ${found.failures[0]}`);
  assert.ok(found.failures.some((f) => /below the acknowledged seq|acknowledged write \d+ .*is lost/.test(f)), found.failures.join('\n'));
});

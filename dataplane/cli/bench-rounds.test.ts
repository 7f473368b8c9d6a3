// The rounds of `celer bench`: order, medians, ratios and the printed table, on made-up results.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { BenchResult } from './bench.ts';
import { formatTable, median, ratio, roundOrder, runRounds, summarize, type RoundRun } from './bench-rounds.ts';

const result = (writesPerSecond: number, p50 = 1, p99 = 10, errors = 0, conflicts = 0): BenchResult => ({
  writes: writesPerSecond * 6,
  seconds: 6,
  writesPerSecond,
  errors,
  conflicts,
  latencyMs: { p50, p90: p50, p99, p999: p99, max: p99 },
});

test('the order flips every round, so neither system always goes first', () => {
  assert.deepEqual(
    roundOrder(['celer', 'postgres'], 3).map((r) => `${r.round}${r.system}`),
    ['1celer', '1postgres', '2postgres', '2celer', '3celer', '3postgres'],
  );
  assert.deepEqual(roundOrder(['celer'], 2).map((r) => `${r.round}${r.system}`), ['1celer', '2celer']);
  assert.throws(() => roundOrder(['celer'], 0), /rounds must be an integer ≥ 1/);
});

test('median takes the middle value, or the mean of the two middle values', () => {
  assert.equal(median([3]), 3);
  assert.equal(median([9, 1, 5]), 5);
  assert.equal(median([4, 1, 3, 2]), 2.5);
  assert.throws(() => median([]), /no values/);
});

const runs: RoundRun[] = [
  { round: 1, system: 'celer', result: result(20_000, 3, 15, 1, 1) },
  { round: 1, system: 'postgres', result: result(8_000, 6, 17) },
  { round: 2, system: 'postgres', result: result(10_000, 5, 20, 2) },
  { round: 2, system: 'celer', result: result(18_000, 4, 14) },
  { round: 3, system: 'celer', result: result(30_000, 2, 30) },
  { round: 3, system: 'postgres', result: result(9_000, 7, 16) },
];

test('summaries hold the median of writes/s and of each latency, and the sum of errors', () => {
  assert.deepEqual(summarize(runs, ['celer', 'postgres']), [
    { system: 'celer', writesPerSecond: 20_000, p50: 3, p99: 15, errors: 1, conflicts: 1, runs: [20_000, 18_000, 30_000] },
    { system: 'postgres', writesPerSecond: 9_000, p50: 6, p99: 17, errors: 2, conflicts: 0, runs: [8_000, 10_000, 9_000] },
  ]);
});

test('the ratio is of the medians, with the per-round ratios beside it', () => {
  const q = ratio(runs, 'celer', 'postgres');
  assert.equal(q.ofMedians, 20_000 / 9_000);
  assert.deepEqual(q.perRound, [20_000 / 8_000, 18_000 / 10_000, 30_000 / 9_000]);
  const none = ratio([runs[0]!, { round: 1, system: 'postgres', result: result(0) }], 'celer', 'postgres');
  assert.equal(none.ofMedians, undefined);
  assert.deepEqual(none.perRound, []);
});

test('the table lists every round as run, a median row per system and the celer/postgres ratio', () => {
  const lines = formatTable(runs, ['celer', 'postgres']);
  const cells = lines.map((l) => l.trim().split(/\s+/));
  assert.deepEqual(cells[0], ['round', 'system', 'writes/s', 'p50', 'ms', 'p99', 'ms', 'errors']);
  assert.deepEqual(cells.slice(1, 7).map((c) => c.slice(0, 3)), [
    ['1', 'celer', '20000'],
    ['1', 'postgres', '8000'],
    ['2', 'postgres', '10000'],
    ['2', 'celer', '18000'],
    ['3', 'celer', '30000'],
    ['3', 'postgres', '9000'],
  ]);
  assert.deepEqual(cells[7], ['median', 'celer', '20000', '3.00', '15.00', '1']);
  assert.deepEqual(cells[8], ['median', 'postgres', '9000', '6.00', '17.00', '2']);
  assert.equal(lines[9], 'celer/postgres writes/s = 2.22 (ratio of the medians; per round 1.80–3.33)');
  assert.equal(lines.length, 10);
  assert.equal(formatTable(runs.filter((r) => r.system === 'celer'), ['celer']).length, 5, 'one system: no ratio line');
});

test('runRounds calls the systems in the flipped order and keeps each result with its round', async () => {
  const calls: string[] = [];
  const fake = (name: string, wps: number) => ({
    name,
    run: async () => {
      calls.push(name);
      return result(wps + calls.length);
    },
  });
  const lines: string[] = [];
  const got = await runRounds([fake('celer', 100), fake('postgres', 50)], 2, (l) => lines.push(l));
  assert.deepEqual(calls, ['celer', 'postgres', 'postgres', 'celer']);
  assert.deepEqual(got.map((r) => [r.round, r.system, r.result.writesPerSecond]), [
    [1, 'celer', 101],
    [1, 'postgres', 52],
    [2, 'postgres', 53],
    [2, 'celer', 104],
  ]);
  assert.deepEqual(lines, ['round 1/2: celer', 'round 1/2: postgres', 'round 2/2: postgres', 'round 2/2: celer']);
});

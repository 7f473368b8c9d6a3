// Rounds of `celer bench`: the systems compared run one after another, round after round, the
// order flipping every round (A B, B A, A B, …) so a drift of the machine during the run does not
// favour whichever system always goes first. Prints every round, the median per system and the
// ratio of the first system's median writes/s to each other system's.
import { runBench, workloadName, type BenchOptions, type BenchResult } from './bench.ts';
import { subscribersName } from './bench-subscribers.ts';

export interface RoundSystem {
  name: string;
  run(): Promise<BenchResult>;
}

export interface RoundRun {
  round: number;
  system: string;
  result: BenchResult;
}

export interface SystemSummary {
  system: string;
  /** Medians over the rounds. */
  writesPerSecond: number;
  p50: number;
  p99: number;
  /** Sums over the rounds. */
  errors: number;
  conflicts: number;
  /** writes/s of each round, in round order. */
  runs: number[];
}

/** Round r (1-based) runs the systems in the given order when r is odd and reversed when r is even. */
export function roundOrder(systems: readonly string[], rounds: number): { round: number; system: string }[] {
  if (!Number.isSafeInteger(rounds) || rounds < 1) throw new RangeError(`rounds must be an integer ≥ 1; got ${rounds}`);
  const order: { round: number; system: string }[] = [];
  for (let round = 1; round <= rounds; round++) {
    const these = round % 2 === 1 ? systems : [...systems].reverse();
    for (const system of these) order.push({ round, system });
  }
  return order;
}

/** The middle value; the mean of the two middle values for an even count. */
export function median(xs: readonly number[]): number {
  if (xs.length === 0) throw new RangeError('median of no values');
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 === 1 ? s[m]! : (s[m - 1]! + s[m]!) / 2;
}

export function summarize(runs: readonly RoundRun[], systems: readonly string[]): SystemSummary[] {
  return systems.map((system) => {
    const mine = runs.filter((r) => r.system === system).sort((a, b) => a.round - b.round);
    if (mine.length === 0) throw new RangeError(`no rounds of ${system}`);
    return {
      system,
      writesPerSecond: median(mine.map((r) => r.result.writesPerSecond)),
      p50: median(mine.map((r) => r.result.latencyMs.p50)),
      p99: median(mine.map((r) => r.result.latencyMs.p99)),
      errors: mine.reduce((n, r) => n + r.result.errors, 0),
      conflicts: mine.reduce((n, r) => n + r.result.conflicts, 0),
      runs: mine.map((r) => r.result.writesPerSecond),
    };
  });
}

/** a ÷ b writes/s: of the medians, and per round (rounds where b completed no writes are left out). */
export function ratio(runs: readonly RoundRun[], a: string, b: string): { ofMedians: number | undefined; perRound: number[] } {
  const [sa, sb] = summarize(runs, [a, b]);
  const perRound: number[] = [];
  for (const ra of runs.filter((r) => r.system === a)) {
    const rb = runs.find((r) => r.system === b && r.round === ra.round);
    if (rb !== undefined && rb.result.writesPerSecond > 0) perRound.push(ra.result.writesPerSecond / rb.result.writesPerSecond);
  }
  return { ofMedians: sb!.writesPerSecond > 0 ? sa!.writesPerSecond / sb!.writesPerSecond : undefined, perRound };
}

const row = (round: string, system: string, wps: number, p50: number, p99: number, errors: number): string =>
  `${round.padEnd(6)} ${system.padEnd(10)} ${wps.toFixed(0).padStart(9)} ${p50.toFixed(2).padStart(8)} ${p99.toFixed(2).padStart(8)} ${String(errors).padStart(7)}`;

/** The table: one row per round and system in the order run, a median row per system, then the ratios. */
export function formatTable(runs: readonly RoundRun[], systems: readonly string[]): string[] {
  const lines = [`${'round'.padEnd(6)} ${'system'.padEnd(10)} ${'writes/s'.padStart(9)} ${'p50 ms'.padStart(8)} ${'p99 ms'.padStart(8)} ${'errors'.padStart(7)}`];
  for (const r of runs) lines.push(row(String(r.round), r.system, r.result.writesPerSecond, r.result.latencyMs.p50, r.result.latencyMs.p99, r.result.errors));
  for (const s of summarize(runs, systems)) lines.push(row('median', s.system, s.writesPerSecond, s.p50, s.p99, s.errors));
  const [first, ...others] = systems;
  for (const other of others) {
    const q = ratio(runs, first!, other);
    const spread = q.perRound.length === 0 ? '' : `; per round ${Math.min(...q.perRound).toFixed(2)}–${Math.max(...q.perRound).toFixed(2)}`;
    lines.push(`${first}/${other} writes/s = ${q.ofMedians === undefined ? `n/a (${other} completed no writes)` : q.ofMedians.toFixed(2)} (ratio of the medians${spread})`);
  }
  return lines;
}

const fixed = (x: number): string => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

/**
 * Per system whose runs had subscribers: medians over the rounds of the delivery latency (after the
 * writer's ack, and after the server's placement), of the slow subscriber's lag when the writers
 * stopped, and the fast subscribers that missed writes, summed.
 */
export function formatDeliveryMedians(runs: readonly RoundRun[], systems: readonly string[]): string[] {
  const lines: string[] = [];
  for (const system of systems) {
    const mine = runs.filter((r) => r.system === system && r.result.delivery !== undefined).map((r) => r.result.delivery!);
    if (mine.length === 0) continue;
    const withFast = mine.filter((d) => d.afterAck.count > 0);
    const parts: string[] = [];
    if (withFast.length > 0) {
      const p99s = withFast.map((d) => d.afterAck.p99);
      parts.push(
        `delivered p50 ${fixed(median(withFast.map((d) => d.afterAck.p50)))} ms p99 ${fixed(median(p99s))} ms after the writer's ack ` +
          `(per round p99 ${fixed(Math.min(...p99s))}–${fixed(Math.max(...p99s))}` +
          `${withFast.length < mine.length ? `; ${withFast.length} of ${mine.length} rounds, in the others no write of the window arrived by the end` : ''}` +
          `${withFast.some((d) => d.missing > 0) ? '; of the batches that arrived by the end' : ''})`,
        `p50 ${fixed(median(withFast.map((d) => d.afterPlacement.p50)))} ms p99 ${fixed(median(withFast.map((d) => d.afterPlacement.p99)))} ms after the server placed the write`,
      );
    }
    const lags = mine.flatMap((d) => (d.slowBehindAtStop === undefined ? [] : [d.slowBehindAtStop]));
    if (lags.length > 0) parts.push(`slow subscriber (${mine[0]!.slowMs} ms/batch) ${median(lags).toFixed(0)} batches behind when the writers stopped`);
    const notQuiet = mine.filter((d) => !d.quiet).length;
    parts.push(
      `the node answered their last page reads ${(median(mine.map((d) => d.quietMs)) / 1000).toFixed(1)} s after the writers stopped` +
        (notQuiet > 0 ? ` (${notQuiet} round(s) still reading when the wait ended)` : ''),
    );
    const missing = mine.reduce((n, d) => n + d.missing, 0);
    const errors = mine.reduce((n, d) => n + d.errors.length, 0);
    parts.push(`${missing} fast subscriber run(s) short after the drain, ${errors} subscriber error(s)`);
    lines.push(`${system} (medians of ${mine.length} rounds): ${parts.join('; ')}`);
  }
  return lines;
}

/** Runs the systems round after round in roundOrder; a failing run ends the rounds. */
export async function runRounds(systems: readonly RoundSystem[], rounds: number, out: (line: string) => void): Promise<RoundRun[]> {
  const runs: RoundRun[] = [];
  const byName = new Map(systems.map((s) => [s.name, s]));
  for (const { round, system } of roundOrder([...byName.keys()], rounds)) {
    out(`round ${round}/${rounds}: ${system}`);
    runs.push({ round, system, result: await byName.get(system)!.run() });
  }
  return runs;
}

export interface BenchCommandOptions extends BenchOptions {
  rounds: number;
  /** Also run the workload against PostgreSQL, alternating with Celer. */
  vs?: 'postgres';
  /** PostgreSQL as primary + synchronous streaming standby instead of one server. */
  pgStandby: boolean;
  /** Another Celer to alternate with (e.g. a standalone node against a cluster): its addresses. */
  vsAddresses?: string[];
  /** `--subscribers 0,100`: the same workload with each of these subscriber counts, alternating; the first is the reference. */
  subscriberCounts?: number[];
}

/**
 * `celer bench`: one run as before when rounds = 1 and there is no peer; otherwise rounds of Celer
 * (and the peer, started once for all rounds and removed at the end) and the table.
 */
export async function runBenchCommand(o: BenchCommandOptions): Promise<RoundRun[]> {
  const celer: RoundSystem = { name: 'celer', run: () => runBench(o) };
  const caption = `${workloadName(o.guard)}, ${o.writers} writers, ${o.durationS}s measured after ${o.warmupS}s warm-up, ${o.rounds} round(s), order flipped every round`;
  if (o.subscriberCounts !== undefined && o.subscriberCounts.length > 1) {
    const names = o.subscriberCounts.map(subscribersName);
    const systems = o.subscriberCounts.map((n, i): RoundSystem => ({ name: names[i]!, run: () => runBench({ ...o, subscribers: n }) }));
    const runs = await runRounds(systems, o.rounds, o.out);
    o.out(`subscribers: ${caption}; against ${o.addresses.join(',')}, ${o.subscriberCounts.join(' vs ')} live subscribers (1 slow, ${o.slowSubscriberMs ?? 0} ms/batch, when ≥ 1), same run`);
    for (const l of formatTable(runs, names)) o.out(`subscribers: ${l}`);
    for (const l of formatDeliveryMedians(runs, names)) o.out(`subscribers: ${l}`);
    return runs;
  }
  if (o.vsAddresses !== undefined) {
    const other: RoundSystem = { name: 'baseline', run: () => runBench({ ...o, addresses: o.vsAddresses! }) };
    const runs = await runRounds([celer, other], o.rounds, o.out);
    o.out(`vs: ${caption}; celer = ${o.addresses.join(',')}, baseline = ${o.vsAddresses.join(',')}, same machine, same run`);
    for (const l of formatTable(runs, ['celer', 'baseline'])) o.out(`vs: ${l}`);
    for (const l of formatDeliveryMedians(runs, ['celer', 'baseline'])) o.out(`vs: ${l}`);
    return runs;
  }
  if (o.vs === undefined) {
    if (o.rounds === 1) return [{ round: 1, system: 'celer', result: await runBench(o) }];
    const runs = await runRounds([celer], o.rounds, o.out);
    o.out(`bench: ${caption}`);
    for (const l of formatTable(runs, ['celer'])) o.out(`bench: ${l}`);
    for (const l of formatDeliveryMedians(runs, ['celer'])) o.out(`bench: ${l}`);
    return runs;
  }
  const pg = await import('./bench-postgres.ts');
  pg.checkWriters(o.writers);
  pg.checkBinaries(undefined, o.pgStandby);
  o.out(`postgres: ${pg.postgresNote(o.pgStandby)}`);
  const cluster = await pg.startPostgres({ standby: o.pgStandby, out: o.out });
  let runs: RoundRun[];
  try {
    runs = await runRounds([celer, { name: 'postgres', run: () => pg.runPostgresWorkload(cluster, o) }], o.rounds, o.out);
  } finally {
    cluster.stop();
    o.out(`postgres: stopped, ${cluster.dir} removed`);
  }
  o.out(`vs: ${caption}; PostgreSQL ${o.pgStandby ? 'primary + synchronous standby' : 'single server, no standby'}, same machine, same run`);
  for (const l of formatTable(runs, ['celer', 'postgres'])) o.out(`vs: ${l}`);
  for (const l of formatDeliveryMedians(runs, ['celer'])) o.out(`vs: ${l}`);
  return runs;
}

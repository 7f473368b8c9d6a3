// `celer bench`: the W1 workload against a running node. N writers, each owning one aggregate,
// append one ~25-byte event per write and wait for its durable ack before the next (closed loop).
// Prints writes/s and latency percentiles of the measured window (warm-up excluded).
import { connect } from '@celer/client';
import { randomInt } from 'node:crypto';

export interface BenchOptions {
  address: string;
  writers: number;
  durationS: number;
  warmupS: number;
  connections: number;
  out: (line: string) => void;
}

export interface BenchResult {
  writes: number;
  seconds: number;
  writesPerSecond: number;
  errors: number;
  latencyMs: { p50: number; p90: number; p99: number; p999: number; max: number };
}

/** Latency samples kept (uniform reservoir), enough for a stable p99.9. */
const LATENCY_SAMPLES_MAX = 1_000_000;
/** The W1 payload: a "Hello World"-sized event (Celeriant's benchmark used ~25 bytes). */
const PAYLOAD = new TextEncoder().encode('{"hello":"world","n":42}!');

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const client = await connect(o.address, { connectionsPerNode: o.connections, clientId: 1 });
  const run = BigInt(Date.now()) * 1000n + BigInt(randomInt(1000));
  const samples = new Float64Array(LATENCY_SAMPLES_MAX);
  let n = 0;
  let seen = 0;
  let errors = 0;
  let measuring = false;
  let stop = false;
  const t0 = performance.now();
  o.out(`bench: W1 against ${o.address}: ${o.writers} writers, one ${PAYLOAD.length}-byte event per write, ${o.warmupS}s warm-up + ${o.durationS}s measured, ${o.connections} connections`);
  const writer = async (i: number): Promise<void> => {
    const key = { org: run, type: 1n, id: BigInt(i) };
    while (!stop) {
      const s = performance.now();
      try {
        await client.append(key, [{ type: 'Hello', data: PAYLOAD }]);
      } catch {
        errors++;
        continue;
      }
      if (!measuring) continue;
      const ms = performance.now() - s;
      seen++;
      if (n < LATENCY_SAMPLES_MAX) samples[n++] = ms;
      else {
        const j = Math.floor(Math.random() * seen);
        if (j < LATENCY_SAMPLES_MAX) samples[j] = ms;
      }
    }
  };
  const all = Array.from({ length: o.writers }, (_, i) => writer(i));
  await new Promise((r) => setTimeout(r, o.warmupS * 1000));
  measuring = true;
  const m0 = performance.now();
  const progress = setInterval(() => o.out(`bench: ${((performance.now() - m0) / 1000).toFixed(0)}s ${seen} writes`), 5000);
  await new Promise((r) => setTimeout(r, o.durationS * 1000));
  measuring = false;
  const seconds = (performance.now() - m0) / 1000;
  clearInterval(progress);
  stop = true;
  await Promise.all(all);
  await client.close();
  const sorted = samples.slice(0, n).sort();
  const result: BenchResult = {
    writes: seen,
    seconds,
    writesPerSecond: seen / seconds,
    errors,
    latencyMs: { p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), p999: percentile(sorted, 99.9), max: sorted[sorted.length - 1] ?? 0 },
  };
  const l = result.latencyMs;
  o.out(
    `bench: ${result.writesPerSecond.toFixed(0)} writes/s (${seen} durable writes in ${seconds.toFixed(1)}s, ${errors} errors); ` +
      `latency ms p50 ${l.p50.toFixed(2)} p90 ${l.p90.toFixed(2)} p99 ${l.p99.toFixed(2)} p99.9 ${l.p999.toFixed(2)} max ${l.max.toFixed(2)} (total ${((performance.now() - t0) / 1000).toFixed(1)}s)`,
  );
  return result;
}

// `celer bench`: the W1 workload against a running node. N writers, each owning one aggregate,
// append one ~25-byte event per write and wait for its durable ack before the next (closed loop).
// Prints writes/s and latency percentiles of the measured window (warm-up excluded).
import { connect } from '@celer/client';
import { randomInt } from 'node:crypto';

export interface BenchOptions {
  address: string;
  /** native: @celer/client over the framed TCP protocol; grpc: unary Append over @grpc/grpc-js. */
  transport: 'native' | 'grpc';
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
export const PAYLOAD = new TextEncoder().encode('{"hello":"world","n":42}!');

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

type AppendFn = (id: bigint) => Promise<unknown>;

async function nativeAppender(o: BenchOptions, run: bigint): Promise<{ append: AppendFn; close(): Promise<void> }> {
  const client = await connect(o.address, { connectionsPerNode: o.connections, clientId: 1 });
  return {
    append: (id) => client.append({ org: run, type: 1n, id }, [{ type: 'Hello', data: PAYLOAD }]),
    close: () => client.close(),
  };
}

/** The same workload through the gRPC service, for comparison (SPEC §8: gRPC for other languages). */
async function grpcAppender(o: BenchOptions, run: bigint): Promise<{ append: AppendFn; close(): Promise<void> }> {
  const grpc = await import('@grpc/grpc-js');
  const protoLoader = await import('@grpc/proto-loader');
  const { PROTO_PATH, PROTO_LOADER_OPTIONS } = await import('../server/grpc.ts');
  const def = grpc.loadPackageDefinition(await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS)) as unknown as {
    celer: { v1: { EventStore: new (addr: string, creds: unknown, opts: object) => Record<string, (req: unknown, cb: (e: Error | null, r: unknown) => void) => void> & { close(): void } } };
  };
  const clients = Array.from({ length: o.connections }, () =>
    new def.celer.v1.EventStore(o.address, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }),
  );
  return {
    append: (id) =>
      new Promise((resolve, reject) =>
        clients[Number(id % BigInt(clients.length))]!.Append!(
          { key: { org: String(run), type: '1', id: String(id) }, events: [{ type: 'Hello', data: Buffer.from(PAYLOAD) }], clientId: '1' },
          (e, r) => (e ? reject(e) : resolve(r)),
        ),
      ),
    close: async () => {
      for (const c of clients) c.close();
    },
  };
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const run = BigInt(Date.now()) * 1000n + BigInt(randomInt(1000));
  const client = o.transport === 'grpc' ? await grpcAppender(o, run) : await nativeAppender(o, run);
  const header = `W1 against ${o.address} over ${o.transport}: ${o.writers} writers, one ${PAYLOAD.length}-byte event per write, ${o.warmupS}s warm-up + ${o.durationS}s measured, ${o.connections} connections`;
  try {
    return await runClosedLoop(o, 'bench', header, (i) => client.append(BigInt(i)));
  } finally {
    await client.close();
  }
}

export type LoopOptions = Pick<BenchOptions, 'writers' | 'durationS' | 'warmupS' | 'out'>;

/**
 * The W1 closed loop, shared with the PostgreSQL peer (bench-postgres.ts): writer i calls append(i)
 * and waits for it before the next; only writes that finish inside the measured window count.
 */
export async function runClosedLoop(o: LoopOptions, label: string, header: string, append: (writer: number) => Promise<unknown>): Promise<BenchResult> {
  const samples = new Float64Array(LATENCY_SAMPLES_MAX);
  let n = 0;
  let seen = 0;
  let errors = 0;
  let measuring = false;
  let stop = false;
  const t0 = performance.now();
  o.out(`${label}: ${header}`);
  const writer = async (i: number): Promise<void> => {
    while (!stop) {
      const s = performance.now();
      try {
        await append(i);
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
  const progress = setInterval(() => o.out(`${label}: ${((performance.now() - m0) / 1000).toFixed(0)}s ${seen} writes`), 5000);
  await new Promise((r) => setTimeout(r, o.durationS * 1000));
  measuring = false;
  const seconds = (performance.now() - m0) / 1000;
  clearInterval(progress);
  stop = true;
  await Promise.all(all);
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
    `${label}: ${result.writesPerSecond.toFixed(0)} writes/s (${seen} durable writes in ${seconds.toFixed(1)}s, ${errors} errors); ` +
      `latency ms p50 ${l.p50.toFixed(2)} p90 ${l.p90.toFixed(2)} p99 ${l.p99.toFixed(2)} p99.9 ${l.p999.toFixed(2)} max ${l.max.toFixed(2)} (total ${((performance.now() - t0) / 1000).toFixed(1)}s)`,
  );
  return result;
}

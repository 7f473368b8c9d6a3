// `celer bench`: W1 or W2 against a running node or cluster. N writers, each owning one aggregate,
// append one ~25-byte event per write and wait for its durable ack before the next (closed loop).
// W1 sends no guard; W2 (`--guard exact`) sends each writer's exact expectedVersion, so every
// write is checked, and counts 2003 wrong-expected-version answers as errors.
// Prints writes/s and latency percentiles of the measured window (warm-up excluded).
import { connect, WrongExpectedVersionError } from '@celer/client';
import { randomInt } from 'node:crypto';
import { loadavg } from 'node:os';
import type { DeliveryReport, Subscribers } from './bench-subscribers.ts';

/** none = W1 (no guard, as Celeriant's load generator); exact = W2 (exact expectedVersion on every write). */
export type Guard = 'none' | 'exact';

export interface BenchOptions {
  /** One node, or every node of a cluster (the client follows the leader). */
  addresses: string[];
  /** native: @celer/client over the framed TCP protocol; grpc: unary Append over @grpc/grpc-js. */
  transport: 'native' | 'grpc';
  guard: Guard;
  writers: number;
  durationS: number;
  warmupS: number;
  connections: number;
  /** Live org subscribers during the run (bench-subscribers.ts); default 0. Native transport only. */
  subscribers?: number;
  /** Sleep after each batch of the one slow subscriber (when subscribers ≥ 1). */
  slowSubscriberMs?: number;
  /** Nice value of the subscribers' thread (0..19; default 0): see SUBSCRIBER_NICE_MAX. */
  subscriberNice?: number;
  out: (line: string) => void;
}

export interface BenchResult {
  writes: number;
  seconds: number;
  writesPerSecond: number;
  /** Failed writes, warm-up included; conflicts among them. */
  errors: number;
  /** Optimistic-concurrency conflicts (Celer 2003, PostgreSQL unique violation), counted in errors too. */
  conflicts: number;
  latencyMs: { p50: number; p90: number; p99: number; p999: number; max: number };
  /** With --subscribers N ≥ 1: what the subscribers received. */
  delivery?: DeliveryReport;
}

/** Latency samples kept (uniform reservoir), enough for a stable p99.9. */
const LATENCY_SAMPLES_MAX = 1_000_000;
/** The W1 payload: a "Hello World"-sized event (Celeriant's benchmark used ~25 bytes). */
export const PAYLOAD = new TextEncoder().encode('{"hello":"world","n":42}!');

export const workloadName = (guard: Guard): string => (guard === 'exact' ? 'W2' : 'W1');

export function percentile(sorted: Float64Array, p: number): number {
  if (sorted.length === 0) return 0;
  return sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))]!;
}

/** Thrown by an appender when the guard failed; carries the aggregate's version the server reported. */
export class ConflictError extends Error {
  readonly currentVersion: bigint;
  constructor(currentVersion: bigint, cause: unknown) {
    super(`wrong expected version; current version is ${currentVersion}`, { cause });
    this.currentVersion = currentVersion;
  }
}

/** Appends one event to aggregate `id`, guarded by `expected` when given; resolves with the new version. */
type AppendFn = (id: bigint, expected: bigint | undefined) => Promise<bigint>;
interface Appender {
  append: AppendFn;
  close(): Promise<void>;
}

async function nativeAppender(o: BenchOptions, run: bigint): Promise<Appender> {
  const client = await connect(o.addresses, { connectionsPerNode: o.connections, clientId: 1 });
  return {
    append: async (id, expected) => {
      try {
        const r = await client.append({ org: run, type: 1n, id }, [{ type: 'Hello', data: PAYLOAD }], expected === undefined ? {} : { expectedVersion: expected });
        return r.toVersion;
      } catch (e) {
        if (e instanceof WrongExpectedVersionError) throw new ConflictError(e.currentVersion, e);
        throw e;
      }
    },
    close: () => client.close(),
  };
}

type GrpcError = Error & { metadata?: { get(k: string): unknown[] } };

/** The same workload through the gRPC service, for comparison (SPEC §8: gRPC for other languages). */
async function grpcAppender(o: BenchOptions, run: bigint): Promise<Appender> {
  if (o.addresses.length !== 1) throw new RangeError('--transport grpc takes one address (the gRPC client does not follow a leader)');
  const grpc = await import('@grpc/grpc-js');
  const protoLoader = await import('@grpc/proto-loader');
  const { PROTO_PATH, PROTO_LOADER_OPTIONS, CELER_CODE_KEY, CELER_DETAIL_KEY } = await import('../server/grpc.ts');
  const def = grpc.loadPackageDefinition(await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS)) as unknown as {
    celer: { v1: { EventStore: new (addr: string, creds: unknown, opts: object) => Record<string, (req: unknown, cb: (e: GrpcError | null, r: { toVersion: string }) => void) => void> & { close(): void } } };
  };
  const clients = Array.from({ length: o.connections }, () =>
    new def.celer.v1.EventStore(o.addresses[0]!, grpc.credentials.createInsecure(), { 'grpc.use_local_subchannel_pool': 1 }),
  );
  const conflict = (e: GrpcError): ConflictError | undefined => {
    if (String(e.metadata?.get(CELER_CODE_KEY)[0]) !== '2003') return undefined;
    const detail = JSON.parse(String(e.metadata?.get(CELER_DETAIL_KEY)[0] ?? '{}')) as { currentVersion?: string };
    return new ConflictError(BigInt(detail.currentVersion ?? '0'), e);
  };
  return {
    append: (id, expected) =>
      new Promise((resolve, reject) =>
        clients[Number(id % BigInt(clients.length))]!.Append!(
          {
            key: { org: String(run), type: '1', id: String(id) },
            events: [{ type: 'Hello', data: Buffer.from(PAYLOAD) }],
            clientId: '1',
            ...(expected === undefined ? {} : { expectedVersion: { exact: String(expected) } }),
          },
          (e, r) => (e ? reject(conflict(e) ?? e) : resolve(BigInt(r.toVersion))),
        ),
      ),
    close: async () => {
      for (const c of clients) c.close();
    },
  };
}

export async function runBench(o: BenchOptions): Promise<BenchResult> {
  const run = BigInt(Date.now()) * 1000n + BigInt(randomInt(1000));
  const subscribers = o.subscribers ?? 0;
  if (subscribers > 0 && o.transport !== 'native') throw new RangeError('--subscribers needs --transport native');
  const client = o.transport === 'grpc' ? await grpcAppender(o, run) : await nativeAppender(o, run);
  const w = workloadName(o.guard);
  const guard = o.guard === 'exact' ? 'exact expectedVersion on every write' : 'no guard';
  const header =
    `${w} against ${o.addresses.join(',')} over ${o.transport}: ${o.writers} writers, one ${PAYLOAD.length}-byte event per write, ${guard}, ` +
    `${o.warmupS}s warm-up + ${o.durationS}s measured, ${o.connections} connections${o.transport === 'native' ? ' per node' : ''}` +
    (subscribers > 0 ? `, ${subscribers} live subscribers on org ${run}` : '');
  // W2: each writer's aggregate version as it last saw it (every aggregate of a run starts at 0).
  const versions = new Array<bigint>(o.writers).fill(0n);
  const appendOne =
    o.guard === 'exact'
      ? async (i: number): Promise<bigint> => {
          try {
            return (versions[i] = await client.append(BigInt(i), versions[i]!));
          } catch (e) {
            // Re-sync to the version the server reported, as a client handling 2003 would, then count it.
            if (e instanceof ConflictError) versions[i] = e.currentVersion;
            throw e;
          }
        }
      : (i: number): Promise<bigint> => client.append(BigInt(i), undefined);
  let subs: Subscribers | undefined;
  try {
    if (subscribers > 0) {
      const { startSubscribers } = await import('./bench-subscribers.ts');
      subs = await startSubscribers({ addresses: o.addresses, org: run, subscribers, slowMs: o.slowSubscriberMs ?? 0, nice: o.subscriberNice ?? 0, writers: o.writers });
    }
    // Other work on the machine moves the figures; this says how much there was.
    o.out(`celer: load average ${loadavg().map((l) => l.toFixed(2)).join(' ')} (1, 5, 15 min) at the start`);
    const s = subs;
    const append = s === undefined ? appendOne : async (i: number): Promise<void> => s.acked(i, await appendOne(i));
    const result = await runClosedLoop(o, 'celer', header, append, (e) => e instanceof ConflictError, s && { open: () => s.windowOpen(), close: () => s.windowClose() });
    if (s !== undefined) {
      subs = undefined;
      result.delivery = await s.stop();
      const { formatDelivery } = await import('./bench-subscribers.ts');
      for (const l of formatDelivery(result.delivery)) o.out(`celer: ${l}`);
    }
    return result;
  } finally {
    await subs?.terminate();
    await client.close();
  }
}

export type LoopOptions = Pick<BenchOptions, 'writers' | 'durationS' | 'warmupS' | 'out'>;

/**
 * The closed loop, shared with the PostgreSQL peer (bench-postgres.ts): writer i calls append(i)
 * and waits for it before the next; only writes that finish inside the measured window count.
 * `isConflict` picks the failures that are optimistic-concurrency conflicts.
 */
export async function runClosedLoop(
  o: LoopOptions,
  label: string,
  header: string,
  append: (writer: number) => Promise<unknown>,
  isConflict: (e: unknown) => boolean = () => false,
  window?: { open(): void; close(): void },
): Promise<BenchResult> {
  const samples = new Float64Array(LATENCY_SAMPLES_MAX);
  let n = 0;
  let seen = 0;
  let errors = 0;
  let conflicts = 0;
  let measuring = false;
  let stop = false;
  const t0 = performance.now();
  o.out(`${label}: ${header}`);
  const writer = async (i: number): Promise<void> => {
    while (!stop) {
      const s = performance.now();
      try {
        await append(i);
      } catch (e) {
        errors++;
        if (isConflict(e)) conflicts++;
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
  window?.open();
  const m0 = performance.now();
  const progress = setInterval(() => o.out(`${label}: ${((performance.now() - m0) / 1000).toFixed(0)}s ${seen} writes`), 5000);
  await new Promise((r) => setTimeout(r, o.durationS * 1000));
  measuring = false;
  window?.close();
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
    conflicts,
    latencyMs: { p50: percentile(sorted, 50), p90: percentile(sorted, 90), p99: percentile(sorted, 99), p999: percentile(sorted, 99.9), max: sorted[sorted.length - 1] ?? 0 },
  };
  const l = result.latencyMs;
  o.out(
    `${label}: ${result.writesPerSecond.toFixed(0)} writes/s (${seen} durable writes in ${seconds.toFixed(1)}s, ${errors} errors incl. ${conflicts} conflicts); ` +
      `latency ms p50 ${l.p50.toFixed(2)} p90 ${l.p90.toFixed(2)} p99 ${l.p99.toFixed(2)} p99.9 ${l.p999.toFixed(2)} max ${l.max.toFixed(2)} (total ${((performance.now() - t0) / 1000).toFixed(1)}s)`,
  );
  return result;
}

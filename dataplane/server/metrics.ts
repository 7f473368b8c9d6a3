// Prometheus metrics of one node: one prom-client Registry on the main thread, every name
// prefixed celer_ (SPEC §8), served by http.ts at /metrics.
//
// Shard workers do not use prom-client. A worker keeps a WorkerStatsBuffer, and periodically
// posts `buffer.take()` (a plain, structured-cloneable WorkerStats) to the main thread, which
// calls applyWorkerStats. The fsync samples in one post are bounded (FSYNC_SAMPLES_MAX), so a
// stalled main thread cannot make a worker's buffer grow without limit.
//
// Metrics (labels in braces):
//   celer_requests_total{op,result}            every request, op = write|read|details|ping|...
//   celer_writes_total{result}                 write requests; result = ok or the error code
//   celer_write_latency_seconds                histogram, 100 µs .. 10 s
//   celer_reads_total{result}                  read requests (Op.Read)
//   celer_read_latency_seconds                 histogram, 100 µs .. 10 s
//   celer_fsync_latency_seconds                histogram, 25 µs .. 10 s (from workers)
//   celer_fsync_batch_size                     histogram of writes per fsync (group commit)
//   celer_fsync_samples_dropped_total          fsync samples not kept (beyond the bound)
//   celer_cache_hits_total{cache}              cache hits per cache name
//   celer_cache_misses_total{cache}            cache misses per cache name
//   celer_node_role{role}                      1 for the current role, 0 for the others
//   celer_epoch                                leadership epoch (0 standalone)
//   celer_lease_ttl_remaining_seconds          until this node's lease expires; 0 when it holds none
//   celer_replication_lag_records              leader commitSeq - peer's acked seq, summed over
//                                              shards; 0 standalone, NaN when unknown
//   celer_shard_write_seq{shard}               highest seq written and fdatasync'd
//   celer_shard_commit_seq{shard}              highest committed seq
//   celer_process_*, celer_nodejs_*            Node.js default metrics
import { collectDefaultMetrics, Counter, Gauge, Histogram, Registry } from 'prom-client';
import { Op } from '../../client/wire.ts';
import type { NodeRole, NodeStatus } from './status.ts';

/** Largest number of fsync samples one WorkerStats carries. */
export const FSYNC_SAMPLES_MAX = 4096;
/** Largest number of cache names one WorkerStats may report (label cardinality bound). */
export const CACHE_NAMES_MAX = 16;
/** Largest number of shard entries one WorkerStats may report. */
export const SHARDS_PER_STATS_MAX = 1024;

/** Request latency buckets, 100 µs .. 10 s. */
export const LATENCY_BUCKETS: readonly number[] = [
  0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10,
];
/** fsync latency buckets: NVMe fdatasync can finish well under 100 µs. */
export const FSYNC_BUCKETS: readonly number[] = [0.000025, 0.00005, ...LATENCY_BUCKETS];
/** Writes per fsync. */
export const BATCH_SIZE_BUCKETS: readonly number[] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

/** Every role, so celer_node_role can report 0 for the roles the node is not in. */
const ROLES: Record<NodeRole, true> = { standalone: true, boot: true, follower: true, 'catching-up': true, promoting: true, leader: true, fenced: true };

const CACHE_NAME_RE = /^[A-Za-z0-9_.-]{1,64}$/;
const SEQ_RE = /^[0-9]{1,20}$/;

/**
 * What a shard worker posts to the main thread. Counters are deltas since the previous post.
 * Plain data only (structured-cloneable).
 */
export interface WorkerStats {
  /** fsync durations in seconds; parallel to fsyncBatchSizes. At most FSYNC_SAMPLES_MAX. */
  fsyncSeconds: number[];
  /** Writes made durable by each fsync; parallel to fsyncSeconds. */
  fsyncBatchSizes: number[];
  /** fsyncs completed since the previous post but not in the arrays (the buffer was full). */
  fsyncDropped: number;
  /** Hits and misses per cache name since the previous post. */
  cache: Record<string, { hits: number; misses: number }>;
  /** Current positions of the worker's shards (decimal strings, u64). */
  shards: { shard: number; writeSeq: string; commitSeq: string }[];
}

/**
 * Worker-side accumulator for WorkerStats (no prom-client objects are created by it). When more
 * fsyncs happen between two posts than FSYNC_SAMPLES_MAX, it keeps a uniform random sample of
 * them (reservoir sampling) and counts the rest in fsyncDropped.
 */
export class WorkerStatsBuffer {
  private seconds: number[] = [];
  private sizes: number[] = [];
  private seen = 0;
  private cache: Record<string, { hits: number; misses: number }> = {};
  private shards = new Map<number, { shard: number; writeSeq: string; commitSeq: string }>();
  private readonly max: number;
  private readonly random: () => number;

  /** `random` (in [0, 1)) picks which samples a full buffer keeps; tests pass their own. */
  constructor(max: number = FSYNC_SAMPLES_MAX, random: () => number = Math.random) {
    this.max = Math.min(max, FSYNC_SAMPLES_MAX);
    this.random = random;
  }

  recordFsync(seconds: number, batchSize: number): void {
    this.seen++;
    if (this.seconds.length < this.max) {
      this.seconds.push(seconds);
      this.sizes.push(batchSize);
      return;
    }
    const j = Math.floor(this.random() * this.seen);
    if (j < this.max) {
      this.seconds[j] = seconds;
      this.sizes[j] = batchSize;
    }
  }

  cacheHit(cache: string, n = 1): void {
    (this.cache[cache] ??= { hits: 0, misses: 0 }).hits += n;
  }

  cacheMiss(cache: string, n = 1): void {
    (this.cache[cache] ??= { hits: 0, misses: 0 }).misses += n;
  }

  setShard(shard: number, writeSeq: bigint, commitSeq: bigint): void {
    this.shards.set(shard, { shard, writeSeq: writeSeq.toString(), commitSeq: commitSeq.toString() });
  }

  /** The stats since the previous take; resets the deltas (shard positions are kept). */
  take(): WorkerStats {
    const stats: WorkerStats = {
      fsyncSeconds: this.seconds,
      fsyncBatchSizes: this.sizes,
      fsyncDropped: this.seen - this.seconds.length,
      cache: this.cache,
      shards: [...this.shards.values()],
    };
    this.seconds = [];
    this.sizes = [];
    this.seen = 0;
    this.cache = {};
    return stats;
  }
}

// ---------------------------------------------------------------------------------------------
// Main-thread registry (created on first use, so a worker importing this module for
// WorkerStatsBuffer creates no metrics).

interface Metrics {
  registry: Registry;
  requests: Counter<'op' | 'result'>;
  writes: Counter<'result'>;
  writeLatency: Histogram;
  reads: Counter<'result'>;
  readLatency: Histogram;
  fsyncLatency: Histogram;
  fsyncBatch: Histogram;
  fsyncDropped: Counter;
  cacheHits: Counter<'cache'>;
  cacheMisses: Counter<'cache'>;
  role: Gauge<'role'>;
  epoch: Gauge;
  lag: Gauge;
  writeSeq: Gauge<'shard'>;
  commitSeq: Gauge<'shard'>;
  leaseExpiresAtMs: number | null;
}

let state: Metrics | undefined;

function metrics(): Metrics {
  if (state) return state;
  const registry = new Registry();
  const registers = [registry];
  collectDefaultMetrics({ register: registry, prefix: 'celer_' });
  const m: Metrics = {
    registry,
    requests: new Counter({ name: 'celer_requests_total', help: 'Requests by op and result (ok or the Celer error code).', labelNames: ['op', 'result'], registers }),
    writes: new Counter({ name: 'celer_writes_total', help: 'Write requests by result (ok or the Celer error code).', labelNames: ['result'], registers }),
    writeLatency: new Histogram({ name: 'celer_write_latency_seconds', help: 'Write request latency, dispatch to response.', buckets: [...LATENCY_BUCKETS], registers }),
    reads: new Counter({ name: 'celer_reads_total', help: 'Read requests by result (ok or the Celer error code).', labelNames: ['result'], registers }),
    readLatency: new Histogram({ name: 'celer_read_latency_seconds', help: 'Read request latency, dispatch to response.', buckets: [...LATENCY_BUCKETS], registers }),
    fsyncLatency: new Histogram({ name: 'celer_fsync_latency_seconds', help: 'fdatasync duration in shard workers.', buckets: [...FSYNC_BUCKETS], registers }),
    fsyncBatch: new Histogram({ name: 'celer_fsync_batch_size', help: 'Writes made durable by one fsync (group commit).', buckets: [...BATCH_SIZE_BUCKETS], registers }),
    fsyncDropped: new Counter({ name: 'celer_fsync_samples_dropped_total', help: 'fsyncs not in the fsync histograms because a worker report was full.', registers }),
    cacheHits: new Counter({ name: 'celer_cache_hits_total', help: 'Cache hits by cache.', labelNames: ['cache'], registers }),
    cacheMisses: new Counter({ name: 'celer_cache_misses_total', help: 'Cache misses by cache.', labelNames: ['cache'], registers }),
    role: new Gauge({ name: 'celer_node_role', help: 'The node role: 1 for the current role, 0 for the others.', labelNames: ['role'], registers }),
    epoch: new Gauge({ name: 'celer_epoch', help: 'Leadership epoch (0 standalone).', registers }),
    lag: new Gauge({ name: 'celer_replication_lag_records', help: "Records committed on the leader and not yet acknowledged by the peer, over all shards (NaN when unknown).", registers }),
    writeSeq: new Gauge({ name: 'celer_shard_write_seq', help: "Highest position written and fdatasync'd on this node, per shard.", labelNames: ['shard'], registers }),
    commitSeq: new Gauge({ name: 'celer_shard_commit_seq', help: 'Highest committed position, per shard.', labelNames: ['shard'], registers }),
    leaseExpiresAtMs: null,
  };
  new Gauge({
    name: 'celer_lease_ttl_remaining_seconds',
    help: "Seconds until this node's lease expires; 0 when it holds none.",
    registers,
    collect() {
      const at = m.leaseExpiresAtMs;
      this.set(at === null ? 0 : Math.max(0, (at - Date.now()) / 1000));
    },
  });
  new Gauge({
    name: 'celer_feed_waits',
    help: 'Shard feed long polls waiting at the tail (subscriptions and watches, native and gRPC), at most FEED_WAITS_PER_NODE_MAX.',
    registers,
    collect() {
      this.set(feedWaitsOf?.() ?? 0);
    },
  });
  setNodeRoleOn(m, 'boot');
  state = m;
  return m;
}

let feedWaitsOf: (() => number) | undefined;

/** Where celer_feed_waits reads the node's feed long polls in flight (the router's count). */
export function setFeedWaitsSource(read: () => number): void {
  feedWaitsOf = read;
}

/** The node's registry (what /metrics serves). */
export function metricsRegistry(): Registry {
  return metrics().registry;
}

const OP_NAMES: Record<number, string> = {
  [Op.Write]: 'write',
  [Op.Read]: 'read',
  [Op.Details]: 'details',
  [Op.Ping]: 'ping',
  [Op.RegisterSchema]: 'register_schema',
  [Op.ListSchemas]: 'list_schemas',
  [Op.ReadShard]: 'read_shard',
  [Op.Delete]: 'delete',
  [Op.Trim]: 'trim',
};

/**
 * Records one request: `op` is the request's Op code, `result` 'ok' or the Celer error code,
 * `seconds` the time from dispatch to response.
 */
// Labelled children are looked up once per (op, result): prom-client hashes the label set on
// every inc() otherwise, and this runs once per request on the main thread.
const requestChildren = new Map<string, { requests: { inc(): void }; byOp: { inc(): void } | null }>();

export function observeRequest(op: number, result: number | 'ok', seconds: number): void {
  const m = metrics();
  const id = `${op}:${result}`;
  let c = requestChildren.get(id);
  if (c === undefined) {
    const r = String(result);
    c = {
      requests: m.requests.labels({ op: OP_NAMES[op] ?? 'other', result: r }),
      byOp: op === Op.Write ? m.writes.labels({ result: r }) : op === Op.Read ? m.reads.labels({ result: r }) : null,
    };
    requestChildren.set(id, c);
  }
  c.requests.inc();
  c.byOp?.inc();
  if (!(seconds >= 0 && Number.isFinite(seconds))) return;
  if (op === Op.Write) m.writeLatency.observe(seconds);
  else if (op === Op.Read) m.readLatency.observe(seconds);
}

function isCount(n: unknown): n is number {
  return typeof n === 'number' && Number.isFinite(n) && n >= 0;
}

/**
 * Folds one worker report into the registry. Defensive: at most FSYNC_SAMPLES_MAX samples are
 * taken (the surplus is counted as dropped), sample pairs beyond the shorter array and
 * non-finite or negative values are ignored, at most CACHE_NAMES_MAX well-formed cache names
 * and SHARDS_PER_STATS_MAX shards are read.
 */
export function applyWorkerStats(stats: WorkerStats): void {
  const m = metrics();
  const secs = Array.isArray(stats.fsyncSeconds) ? stats.fsyncSeconds : [];
  const sizes = Array.isArray(stats.fsyncBatchSizes) ? stats.fsyncBatchSizes : [];
  const pairs = Math.min(secs.length, sizes.length);
  const n = Math.min(pairs, FSYNC_SAMPLES_MAX);
  for (let i = 0; i < n; i++) {
    const s = secs[i];
    const b = sizes[i];
    if (!isCount(s) || !isCount(b)) continue;
    m.fsyncLatency.observe(s);
    m.fsyncBatch.observe(b);
  }
  const dropped = (isCount(stats.fsyncDropped) ? Math.floor(stats.fsyncDropped) : 0) + (pairs - n);
  if (dropped > 0) m.fsyncDropped.inc(dropped);

  if (stats.cache !== null && typeof stats.cache === 'object') {
    let names = 0;
    for (const [cache, c] of Object.entries(stats.cache)) {
      if (names >= CACHE_NAMES_MAX) break;
      if (!CACHE_NAME_RE.test(cache) || c === null || typeof c !== 'object') continue;
      names++;
      if (isCount(c.hits) && c.hits > 0) m.cacheHits.inc({ cache }, c.hits);
      if (isCount(c.misses) && c.misses > 0) m.cacheMisses.inc({ cache }, c.misses);
    }
  }

  if (Array.isArray(stats.shards)) {
    for (const s of stats.shards.slice(0, SHARDS_PER_STATS_MAX)) setShardSeqsOn(m, s);
  }
}

function setShardSeqsOn(m: Metrics, s: { shard: unknown; writeSeq: unknown; commitSeq: unknown }): void {
  if (typeof s.shard !== 'number' || !Number.isInteger(s.shard) || s.shard < 0) return;
  const shard = String(s.shard);
  if (typeof s.writeSeq === 'string' && SEQ_RE.test(s.writeSeq)) m.writeSeq.set({ shard }, Number(s.writeSeq));
  if (typeof s.commitSeq === 'string' && SEQ_RE.test(s.commitSeq)) m.commitSeq.set({ shard }, Number(s.commitSeq));
}

function setNodeRoleOn(m: Metrics, role: NodeRole): void {
  for (const r of Object.keys(ROLES)) m.role.set({ role: r }, r === role ? 1 : 0);
}

/** The node-level gauges. `lagRecords` null = unknown (NaN); standalone nodes pass 0. */
export function setNodeState(s: { role: NodeRole; epoch: number; leaseExpiresAtMs: number | null; lagRecords: number | null }): void {
  const m = metrics();
  setNodeRoleOn(m, s.role);
  m.epoch.set(s.epoch);
  m.leaseExpiresAtMs = s.leaseExpiresAtMs;
  m.lag.set(s.lagRecords ?? Number.NaN);
}

/** Sets every node-level and per-shard gauge from a /status snapshot (http.ts does this per scrape). */
export function updateFromStatus(status: NodeStatus): void {
  const m = metrics();
  setNodeState({
    role: status.role,
    epoch: status.epoch,
    leaseExpiresAtMs: status.leaseExpiresAtMs,
    lagRecords: status.peer === null ? 0 : status.peer.lagRecords,
  });
  for (const s of status.shards) setShardSeqsOn(m, s);
}

/** Bytes each cache holds and may hold, per worker thread (summed over workers at scrape time). */
export interface CacheUsage {
  [cache: string]: { bytes: number; capacityBytes: number };
}

const cacheUsage = new Map<number, CacheUsage>();
let cacheGaugesMade = false;

/** Records the cache usage a worker reported; exported as celer_cache_bytes / celer_cache_capacity_bytes. */
export function setCacheUsage(worker: number, usage: CacheUsage): void {
  cacheUsage.set(worker, usage);
  if (cacheGaugesMade) return;
  cacheGaugesMade = true;
  const registers = [metrics().registry];
  const sum = (field: 'bytes' | 'capacityBytes'): Map<string, number> => {
    const totals = new Map<string, number>();
    for (const u of cacheUsage.values()) for (const [name, v] of Object.entries(u)) totals.set(name, (totals.get(name) ?? 0) + v[field]);
    return totals;
  };
  new Gauge({
    name: 'celer_cache_bytes',
    help: 'Bytes held by each cache (aggregate states are counted at their size estimate).',
    labelNames: ['cache'],
    registers,
    collect() {
      for (const [name, v] of sum('bytes')) this.set({ cache: name }, v);
    },
  });
  new Gauge({
    name: 'celer_cache_capacity_bytes',
    help: 'Bytes each cache may hold: its share of --memory-budget-mb.',
    labelNames: ['cache'],
    registers,
    collect() {
      for (const [name, v] of sum('capacityBytes')) this.set({ cache: name }, v);
    },
  });
}

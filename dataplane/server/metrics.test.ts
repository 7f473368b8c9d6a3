import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Op } from '../../client/wire.ts';
import {
  applyWorkerStats,
  CACHE_NAMES_MAX,
  FSYNC_SAMPLES_MAX,
  metricsRegistry,
  observeRequest,
  setNodeState,
  SHARDS_PER_STATS_MAX,
  WorkerStatsBuffer,
  type WorkerStats,
} from './metrics.ts';

/** The value of one sample (metricName may carry a _count/_sum/_bucket suffix); 0 when absent. */
async function sample(metric: string, sampleName: string, labels: Record<string, string> = {}): Promise<number> {
  const m = metricsRegistry().getSingleMetric(metric);
  assert.ok(m, `metric ${metric} is registered`);
  const { values } = await m.get();
  const hit = values.find(
    (v) => ((v as { metricName?: string }).metricName ?? metric) === sampleName && Object.entries(labels).every(([k, want]) => String((v.labels as Record<string, unknown>)[k]) === want),
  );
  return hit?.value ?? 0;
}

const fsyncCount = () => sample('celer_fsync_latency_seconds', 'celer_fsync_latency_seconds_count');
const batchCount = () => sample('celer_fsync_batch_size', 'celer_fsync_batch_size_count');
const batchSum = () => sample('celer_fsync_batch_size', 'celer_fsync_batch_size_sum');
const dropped = () => sample('celer_fsync_samples_dropped_total', 'celer_fsync_samples_dropped_total');

function stats(over: Partial<WorkerStats>): WorkerStats {
  return { fsyncSeconds: [], fsyncBatchSizes: [], fsyncDropped: 0, cache: {}, shards: [], ...over };
}

describe('applyWorkerStats', () => {
  test('takes at most FSYNC_SAMPLES_MAX fsync samples and counts the surplus as dropped', async () => {
    const [c0, d0] = [await fsyncCount(), await dropped()];
    const n = FSYNC_SAMPLES_MAX + 10;
    applyWorkerStats(stats({ fsyncSeconds: new Array<number>(n).fill(0.0002), fsyncBatchSizes: new Array<number>(n).fill(3), fsyncDropped: 5 }));
    assert.equal((await fsyncCount()) - c0, FSYNC_SAMPLES_MAX);
    assert.equal((await dropped()) - d0, 10 + 5);
  });

  test('pairs samples only up to the shorter array and skips values that are not finite non-negative numbers', async () => {
    const [c0, b0, s0] = [await fsyncCount(), await batchCount(), await batchSum()];
    applyWorkerStats(
      stats({
        fsyncSeconds: [0.001, Number.NaN, -1, 0.002, Number.POSITIVE_INFINITY, 'x' as unknown as number, 0.003, 0.004],
        fsyncBatchSizes: [2, 1, 1, 7, 1, 1, -3],
      }),
    );
    // Valid pairs: (0.001, 2) and (0.002, 7); 0.004 has no batch size, (0.003, -3) is invalid.
    assert.equal((await fsyncCount()) - c0, 2);
    assert.equal((await batchCount()) - b0, 2);
    assert.equal((await batchSum()) - s0, 9);
  });

  test('counts cache hits and misses for at most CACHE_NAMES_MAX well-formed cache names', async () => {
    const cache: WorkerStats['cache'] = { 'bad name"}': { hits: 100, misses: 100 }, index: { hits: 4, misses: -2 } };
    for (let i = 0; i < CACHE_NAMES_MAX + 5; i++) cache[`c${i}`] = { hits: 1, misses: 2 };
    const before = await sample('celer_cache_hits_total', 'celer_cache_hits_total', { cache: 'index' });
    applyWorkerStats(stats({ cache }));
    assert.equal((await sample('celer_cache_hits_total', 'celer_cache_hits_total', { cache: 'index' })) - before, 4);
    assert.equal(await sample('celer_cache_misses_total', 'celer_cache_misses_total', { cache: 'index' }), 0, 'a negative count is ignored');
    assert.equal(await sample('celer_cache_misses_total', 'celer_cache_misses_total', { cache: 'c0' }), 2);
    const { values } = await metricsRegistry().getSingleMetric('celer_cache_hits_total')!.get();
    const names = new Set(values.map((v) => String(v.labels.cache)));
    assert.equal(names.size, CACHE_NAMES_MAX, 'the malformed name is skipped and the names beyond the bound are not read');
    assert.ok(!names.has('bad name"}'));
  });

  test('sets shard positions from decimal strings, ignores malformed entries and reads at most SHARDS_PER_STATS_MAX', async () => {
    const shards: WorkerStats['shards'] = [
      { shard: 0, writeSeq: '12', commitSeq: '10' },
      { shard: 1, writeSeq: '-5', commitSeq: '1e3' },
      { shard: -1, writeSeq: '1', commitSeq: '1' },
    ];
    for (let i = 0; i < SHARDS_PER_STATS_MAX; i++) shards.push({ shard: 100 + i, writeSeq: '1', commitSeq: '1' });
    applyWorkerStats(stats({ shards }));
    assert.equal(await sample('celer_shard_write_seq', 'celer_shard_write_seq', { shard: '0' }), 12);
    assert.equal(await sample('celer_shard_commit_seq', 'celer_shard_commit_seq', { shard: '0' }), 10);
    const { values } = await metricsRegistry().getSingleMetric('celer_shard_commit_seq')!.get();
    const shardsSeen = new Set(values.map((v) => String(v.labels.shard)));
    assert.ok(!shardsSeen.has('1'), 'malformed seqs are ignored');
    assert.ok(!shardsSeen.has('-1'));
    assert.ok(shardsSeen.has(String(100 + SHARDS_PER_STATS_MAX - 4)), 'entries inside the bound are read');
    assert.ok(!shardsSeen.has(String(100 + SHARDS_PER_STATS_MAX - 3)), 'entries beyond the bound are not');
  });

  test('accepts what a WorkerStatsBuffer produces after a structured clone', async () => {
    const buf = new WorkerStatsBuffer();
    buf.recordFsync(0.0005, 4);
    buf.cacheHit('segment');
    buf.cacheMiss('segment', 3);
    buf.setShard(7, 99n, 98n);
    const c0 = await fsyncCount();
    applyWorkerStats(structuredClone(buf.take()));
    assert.equal((await fsyncCount()) - c0, 1);
    assert.equal(await sample('celer_cache_misses_total', 'celer_cache_misses_total', { cache: 'segment' }), 3);
    assert.equal(await sample('celer_shard_write_seq', 'celer_shard_write_seq', { shard: '7' }), 99);
  });
});

describe('WorkerStatsBuffer', () => {
  test('keeps at most its bound of fsync samples and reports the rest as dropped', () => {
    const buf = new WorkerStatsBuffer(8);
    for (let i = 0; i < 20; i++) buf.recordFsync(i, i + 1);
    const s = buf.take();
    assert.equal(s.fsyncSeconds.length, 8);
    assert.equal(s.fsyncBatchSizes.length, 8);
    assert.equal(s.fsyncDropped, 12);
    // The arrays stay parallel: each kept pair is one recorded observation.
    s.fsyncSeconds.forEach((sec, i) => assert.equal(s.fsyncBatchSizes[i], sec + 1));
  });

  test('once full, replaces a kept sample with the probability the reservoir draw gives', () => {
    // A draw of 0 always lands on slot 0; a draw just below 1 lands beyond the kept slots.
    const always = new WorkerStatsBuffer(4, () => 0);
    const never = new WorkerStatsBuffer(4, () => 0.999);
    for (let i = 0; i < 10; i++) {
      always.recordFsync(i, i);
      never.recordFsync(i, i);
    }
    assert.deepEqual(always.take().fsyncSeconds, [9, 1, 2, 3]);
    assert.deepEqual(never.take().fsyncSeconds, [0, 1, 2, 3]);
  });

  test('never exceeds FSYNC_SAMPLES_MAX even when asked for more', () => {
    const buf = new WorkerStatsBuffer(FSYNC_SAMPLES_MAX * 2);
    for (let i = 0; i < FSYNC_SAMPLES_MAX + 1; i++) buf.recordFsync(0.001, 1);
    assert.equal(buf.take().fsyncSeconds.length, FSYNC_SAMPLES_MAX);
  });

  test('take resets the deltas and keeps the shard positions', () => {
    const buf = new WorkerStatsBuffer();
    buf.recordFsync(0.001, 1);
    buf.cacheHit('index', 2);
    buf.setShard(1, 5n, 4n);
    buf.take();
    const s = buf.take();
    assert.deepEqual(s, { fsyncSeconds: [], fsyncBatchSizes: [], fsyncDropped: 0, cache: {}, shards: [{ shard: 1, writeSeq: '5', commitSeq: '4' }] });
  });
});

describe('request and node metrics', () => {
  test('observeRequest counts writes and reads by result and records their latency', async () => {
    observeRequest(Op.Write, 'ok', 0.002);
    observeRequest(Op.Write, 2003, 0.001);
    observeRequest(Op.Read, 1001, 0.0003);
    observeRequest(Op.Details, 'ok', 0.0001);
    assert.equal(await sample('celer_writes_total', 'celer_writes_total', { result: 'ok' }), 1);
    assert.equal(await sample('celer_writes_total', 'celer_writes_total', { result: '2003' }), 1);
    assert.equal(await sample('celer_reads_total', 'celer_reads_total', { result: '1001' }), 1);
    assert.equal(await sample('celer_write_latency_seconds', 'celer_write_latency_seconds_count'), 2);
    assert.equal(await sample('celer_write_latency_seconds', 'celer_write_latency_seconds_bucket', { le: '0.001' }), 1);
    assert.equal(await sample('celer_read_latency_seconds', 'celer_read_latency_seconds_count'), 1, 'details is not a read');
    assert.equal(await sample('celer_requests_total', 'celer_requests_total', { op: 'details', result: 'ok' }), 1);
  });

  test('the role gauge is 1 for the current role only, and the lease TTL counts down from the expiry', async () => {
    setNodeState({ role: 'leader', epoch: 7, leaseExpiresAtMs: Date.now() + 60_000, lagRecords: 12 });
    assert.equal(await sample('celer_node_role', 'celer_node_role', { role: 'leader' }), 1);
    assert.equal(await sample('celer_node_role', 'celer_node_role', { role: 'follower' }), 0);
    assert.equal(await sample('celer_epoch', 'celer_epoch'), 7);
    assert.equal(await sample('celer_replication_lag_records', 'celer_replication_lag_records'), 12);
    const ttl = await sample('celer_lease_ttl_remaining_seconds', 'celer_lease_ttl_remaining_seconds');
    assert.ok(ttl > 0 && ttl <= 60, `ttl ${ttl}`);
    setNodeState({ role: 'standalone', epoch: 0, leaseExpiresAtMs: null, lagRecords: null });
    assert.equal(await sample('celer_node_role', 'celer_node_role', { role: 'leader' }), 0);
    assert.equal(await sample('celer_lease_ttl_remaining_seconds', 'celer_lease_ttl_remaining_seconds'), 0);
    assert.ok(Number.isNaN(await sample('celer_replication_lag_records', 'celer_replication_lag_records')));
  });

  test('every metric of the registry is prefixed celer_, including the Node.js defaults', async () => {
    const names = (await metricsRegistry().getMetricsAsJSON()).map((m) => m.name);
    assert.ok(names.some((n) => n.startsWith('celer_nodejs_')), 'default metrics are present');
    assert.deepEqual(names.filter((n) => !n.startsWith('celer_')), []);
  });
});

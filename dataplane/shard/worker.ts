// Entry point of a shard worker thread. Each worker owns the shards `shard % workers === index`,
// opens them (crash recovery), then serves the requests the main thread routes to it.
//
// Messages (structured clone over the worker's port):
//   main → worker  { t: 'req', items, buf }   one message per main-thread tick: items is a flat
//                  Float64Array of [id, op, shard, offset, length] per request, buf one transferred
//                  ArrayBuffer holding every request body (a view of a socket chunk would clone
//                  the whole chunk, so bodies are packed)
//   worker → main  { t: 'res', items, buf }   one message per worker tick: [id, op, offset, length]
//                  { t: 'ready', shards: ShardInfo[], io: string }   once, after every shard opened
//                  { t: 'stats', stats: WorkerStats, shards: ShardInfo[] }   every STATS_INTERVAL_MS
//                  { t: 'log', msg }
//   main → worker  { t: 'close' }  → worker closes its shards and replies { t: 'closed' }
//   cluster nodes only:
//   worker → main  { t: 'send', shard, buf }   a leader's group, just before its local write (the
//                  early hand-off: replicated while the local fdatasync runs)
//   worker → main  { t: 'commit', id, shard, from, to, buf }   a group's commit step (buf: its
//                  records, empty when the 'send' before it carried them)
//   main → worker  { t: 'commitRes', id, ok, msg? }
//   main → worker  { t: 'crpc', id, shard, op, a }   ClusterRpc: the cluster drives a shard
//   worker → main  { t: 'crpcRes', id, ok, v | e }
import { parentPort, workerData } from 'node:worker_threads';
import { join } from 'node:path';
import { ErrorCode } from '../../client/errors.ts';
import { encodeError, Op, Writer } from '../../client/wire.ts';
import { STATS_INTERVAL_MS } from '../constants.ts';
import { initHashing } from '../storage/checksum.ts';
import { openFileIo } from '../storage/io.ts';
import { systemClock } from '../storage/disk.ts';
import { RealDisk } from '../storage/real-disk.ts';
import { nodeIdBytes } from '../storage/meta.ts';
import { WorkerStatsBuffer } from '../server/metrics.ts';
import type { ShardState } from '../server/status.ts';
import { ReplicaRejectError, Shard, type ShardResult } from './shard.ts';
import { localShardPort } from '../cluster/local-shard.ts';
import { lastSeqOf, packRecords, unpackRecords } from '../cluster/records-pack.ts';
import type { ShardPort } from '../cluster/ports.ts';

export interface WorkerConfig {
  index: number;
  workers: number;
  dataDir: string;
  numShards: number;
  routing: number;
  segmentBytes: number;
  memoryBudgetPerShardBytes: number;
  unsafeNoDirectIo: boolean;
  forceSyncIo: boolean;
  nodeId: string;
  /** A cluster node: shards open as replicas, and their commit step is the main thread's replication. */
  cluster: boolean;
}

export interface ShardInfo {
  shard: number;
  state: ShardState;
  reason?: string;
  writeSeq: string;
  commitSeq: string;
  writable?: boolean;
  placedSeq?: string;
  durableSeq?: string;
  committedSeq?: string;
}

/** Numbers per request in a 'req' message's items, and per response in a 'res' message's. */
export const REQ_ITEM_WIDTH = 5;
export const RES_ITEM_WIDTH = 4;

export function shardDir(dataDir: string, shard: number): string {
  return join(dataDir, `shard-${String(shard).padStart(3, '0')}`);
}

async function main(): Promise<void> {
  const port = parentPort;
  if (port === null) throw new Error('worker.ts must run as a worker thread');
  const cfg = workerData as WorkerConfig;
  const log = (msg: string): void => port.postMessage({ t: 'log', msg });
  await initHashing();
  const io = await openFileIo({ dir: cfg.dataDir, unsafeNoDirectIo: cfg.unsafeNoDirectIo, forceSync: cfg.forceSyncIo, log: cfg.index === 0 ? log : () => {} });
  const disk = new RealDisk(io);
  const nodeId = nodeIdBytes(cfg.nodeId);
  const shards = new Map<number, Shard>();
  // Cluster: the commit step asks the main thread (replication to the follower, or S3).
  let nextCommit = 1;
  const commits = new Map<number, { done: () => void; fail: (e: Error) => void }>();
  const commitStep = (shard: number) => {
    if (!cfg.cluster) return undefined;
    // Highest seq whose record went to the main thread with a 'send' (its commit needs no copy).
    let sentTo = 0;
    return {
      send: (records: readonly Uint8Array[]): void => {
        const last = records[records.length - 1];
        if (last === undefined) return;
        sentTo = lastSeqOf(last);
        const buf = packRecords(records);
        port.postMessage({ t: 'send', shard, buf }, [buf]);
      },
      commit: (from: number, to: number, records: readonly Uint8Array[]): Promise<void> =>
        new Promise<void>((done, fail) => {
          const id = nextCommit++;
          commits.set(id, { done, fail });
          const buf = packRecords(to === sentTo ? [] : records);
          port.postMessage({ t: 'commit', id, shard, from, to, buf }, [buf]);
        }),
    };
  };
  for (let s = cfg.index; s < cfg.numShards; s += cfg.workers) {
    const step = commitStep(s);
    shards.set(
      s,
      await Shard.open({
        ...(step !== undefined ? { commitStep: step, replica: true } : {}),
        disk,
        clock: systemClock,
        nodeId,
        dir: shardDir(cfg.dataDir, s),
        shard: s,
        numShards: cfg.numShards,
        routing: cfg.routing,
        segmentBytes: cfg.segmentBytes,
        memoryBudgetBytes: cfg.memoryBudgetPerShardBytes,
        log,
      }),
    );
  }
  const info = (): ShardInfo[] =>
    [...shards.values()].map((s) => ({
      shard: s.id,
      state: s.state,
      ...(s.reason !== undefined ? { reason: s.reason } : {}),
      ...(s.reason === undefined && s.writesRefused !== null ? { reason: `writes refused: ${s.writesRefused}` } : {}),
      writable: s.writesRefused === null,
      writeSeq: String(s.writeSeq),
      commitSeq: String(s.commitSeq),
      placedSeq: String(s.placedSeq),
      durableSeq: String(s.durableSeq),
      committedSeq: String(s.committedSeq),
    }));

  // Reused across ticks: only the used bytes are copied out and transferred.
  let items: number[] = [];
  const bodies = new Writer(64 * 1024);
  let flushScheduled = false;
  const flush = (): void => {
    flushScheduled = false;
    const meta = Float64Array.from(items);
    const buf = bodies.buf.slice(0, bodies.pos).buffer;
    port.postMessage({ t: 'res', items: meta, buf }, [buf, meta.buffer]);
    items = [];
    bodies.pos = 0;
  };
  const reply = (id: number, r: ShardResult): void => {
    items.push(id, r.op, bodies.pos, r.body.length);
    bodies.bytes(r.body);
    if (!flushScheduled) {
      flushScheduled = true;
      setImmediate(flush);
    }
  };

  const stats = new WorkerStatsBuffer();
  const lastCache = new Map<number, { sh: number; sm: number; rh: number; rm: number }>();
  const statsTimer = setInterval(() => {
    for (const s of shards.values()) {
      for (const f of s.fsyncSamples.splice(0)) stats.recordFsync(f.seconds, f.records);
      const c = s.cacheStats;
      const prev = lastCache.get(s.id) ?? { sh: 0, sm: 0, rh: 0, rm: 0 };
      stats.cacheHit('aggregate_state', c.states.hits - prev.sh);
      stats.cacheMiss('aggregate_state', c.states.misses - prev.sm);
      stats.cacheHit('recent_records', c.recent.hits - prev.rh);
      stats.cacheMiss('recent_records', c.recent.misses - prev.rm);
      lastCache.set(s.id, { sh: c.states.hits, sm: c.states.misses, rh: c.recent.hits, rm: c.recent.misses });
      stats.setShard(s.id, BigInt(s.writeSeq), BigInt(s.commitSeq));
    }
    const caches: Record<string, { bytes: number; capacityBytes: number }> = {};
    for (const s of shards.values()) {
      for (const [name, u] of Object.entries(s.cacheUsage)) {
        const c = (caches[name] ??= { bytes: 0, capacityBytes: 0 });
        c.bytes += u.bytes;
        c.capacityBytes += u.capacityBytes;
      }
    }
    port.postMessage({ t: 'stats', stats: stats.take(), shards: info(), caches, worker: cfg.index });
  }, STATS_INTERVAL_MS);

  const ports = new Map<number, ShardPort>();
  for (const [id, sh] of shards) ports.set(id, localShardPort(sh));
  const rpc = (m: ClusterRpc): void => {
    const p = ports.get(m.shard);
    const answer = (v: unknown, transfer: ArrayBuffer[] = []): void => port.postMessage({ t: 'crpcRes', id: m.id, ok: true, v }, transfer);
    const refuse = (e: Error): void =>
      port.postMessage({ t: 'crpcRes', id: m.id, ok: false, e: { name: e.name, message: e.message, reason: (e as ReplicaRejectError).reason, placedSeq: (e as ReplicaRejectError).placedSeq } });
    if (p === undefined) return refuse(new Error(`shard ${m.shard} is not owned by worker ${cfg.index}`));
    const a = m.a;
    let work: Promise<void>;
    switch (m.op) {
      case 'tip':
        work = p.tip().then((t) => answer(t));
        break;
      case 'recordAt':
        work = p.recordAt(a[0] as number).then((r) => answer(r));
        break;
      case 'readDurable':
        work = p.readDurable(a[0] as number, a[1] as number, a[2] as number).then((r) => {
          const buf = packRecords(r);
          answer(buf, [buf]);
        });
        break;
      case 'applyReplicated':
        work = p.applyReplicated(unpackRecords(a[0] as ArrayBuffer), a[1] as number | undefined).then((r) => answer(r));
        break;
      case 'commitTo':
        work = p.commitTo(a[0] as number).then((r) => answer(r));
        break;
      case 'becomeLeader':
        work = p.becomeLeader(a[0] as number).then(() => answer(null));
        break;
      case 'becomeReplica':
        work = p.becomeReplica(a[0] as number).then(() => answer(null));
        break;
      case 'quiesce':
        work = p.quiesce().then(() => answer(null));
        break;
      case 'truncateAfter':
        work = p.truncateAfter(a[0] as number).then(() => answer(null));
        break;
      case 'untilCommitted':
        // The schema registry's (server/router.ts), not the cluster protocol's: no ShardPort op.
        work = shards.get(m.shard)!.untilCommitted(a[0] as number).then((r) => answer(r));
        break;
      default:
        work = Promise.reject(new Error(`unknown cluster operation ${String(m.op)}`));
    }
    work.catch((e: Error) => refuse(e));
  };

  port.on('message', (m: { t: 'req'; items: Float64Array; buf: ArrayBuffer } | { t: 'close' } | ClusterRpc | { t: 'commitRes'; id: number; ok: boolean; msg?: string }) => {
    if (m.t === 'crpc') {
      rpc(m);
      return;
    }
    if (m.t === 'commitRes') {
      const c = commits.get(m.id);
      commits.delete(m.id);
      if (c === undefined) return;
      if (m.ok) c.done();
      else c.fail(new Error(m.msg ?? 'not committed'));
      return;
    }
    if (m.t === 'close') {
      clearInterval(statsTimer);
      void (async () => {
        for (const s of shards.values()) await s.close();
        io.close();
        port.postMessage({ t: 'closed' });
      })();
      return;
    }
    const all = new Uint8Array(m.buf);
    for (let i = 0; i < m.items.length; i += REQ_ITEM_WIDTH) {
      const id = m.items[i]!;
      const op = m.items[i + 1]!;
      const shardId = m.items[i + 2]!;
      const body = all.subarray(m.items[i + 3]!, m.items[i + 3]! + m.items[i + 4]!);
      const shard = shards.get(shardId);
      if (shard === undefined) {
        reply(id, { op: Op.Error, body: encodeError(ErrorCode.BadRequest, `shard ${shardId} is not owned by worker ${cfg.index}`) });
        continue;
      }
      shard.handle(op, body).then(
        (r) => reply(id, r),
        (e: Error) => {
          log(`shard ${shardId}: internal error: ${e.stack ?? e.message}`);
          reply(id, { op: Op.Error, body: encodeError(ErrorCode.ShardUnavailable, `internal error in shard ${shardId}: ${e.message}`) });
        },
      );
    }
  });
  port.postMessage({ t: 'ready', shards: info(), io: `${io.kind}${io.direct ? '+O_DIRECT' : ' (buffered: --unsafe-no-direct-io)'}` });
}

/** main → worker: one cluster operation on one shard (server/cluster-rpc.ts). */
export interface ClusterRpc {
  t: 'crpc';
  id: number;
  shard: number;
  op: 'tip' | 'recordAt' | 'readDurable' | 'applyReplicated' | 'commitTo' | 'becomeLeader' | 'becomeReplica' | 'quiesce' | 'truncateAfter' | 'untilCommitted';
  a: unknown[];
}

main().catch((e: Error) => {
  parentPort?.postMessage({ t: 'fatal', msg: e.message });
});

// A standalone Celer node: data directory identity, shard workers, and the three front ends
// (native protocol, gRPC, HTTP). `celer serve` and the end-to-end tests start nodes through this.
import { availableParallelism, networkInterfaces, totalmem } from 'node:os';
import { readFileSync } from 'node:fs';
import { MEMORY_BUDGET_BYTES_CAP, MEMORY_BUDGET_FRACTION, SEGMENT_BYTES_DEFAULT, SEGMENT_BYTES_MAX, SEGMENT_BYTES_MIN } from '../constants.ts';
import { ConfigError, openDataMeta } from '../storage/meta.ts';
import { lockDataDir } from '../storage/lock.ts';
import type { Routing } from '../storage/segment.ts';
import { startGrpcServer } from './grpc.ts';
import { startHttpServer } from './http.ts';
import { setNodeState } from './metrics.ts';
import { splitHostPort, startNativeServer } from './native.ts';
import { Router } from './router.ts';
import type { NodeStatus, StepDownResult } from './status.ts';
import { ClusterNode } from '../cluster/cluster-node.ts';
import { S3ObjectStore } from '../cluster/s3-store.ts';
import { TcpTransport } from '../cluster/tcp-transport.ts';
import { validateTiming, type ClusterTiming } from '../cluster/timing.ts';
import { systemClock, type Clock } from '../storage/disk.ts';
import { workerShardPorts } from './cluster-shards.ts';
import { observeS3Request, registerClusterMetrics } from './cluster-metrics.ts';
import { checkDiskIdentity, checkS3Identity, IDENTITY_KEY, markS3Verified, validateClusterId } from '../cluster/identity.ts';

/** A cluster node's settings (SPEC §7); absent for --standalone. */
export interface ClusterOptions {
  /** The node's cluster identity (the lease names it; letters, digits and '-'). */
  nodeId: string;
  /** Replication listen address; undefined = listen host, listen port + 3. */
  replication?: string | undefined;
  /** The peer's replication address, a comma-separated list (own entry skipped), or a DNS name. */
  peers: string;
  /** Host the peer and clients dial when the listen host is 0.0.0.0. */
  advertise?: string | undefined;
  s3: { bucket: string; prefix?: string | undefined; endpoint?: string | undefined; region?: string | undefined };
  timing: ClusterTiming;
  /**
   * The cluster's identity (the operator passes the CelerCluster's uid). Recorded in celer.json
   * and in S3 (cluster/identity.json) on first use; a mismatch refuses to start (9300,
   * cluster/identity.ts). Undefined: no identity check.
   */
  clusterId?: string | undefined;
  /** Tests only: offset of this node's wall clock, to exercise the clock-drift check. */
  clockOffsetMs?: number | undefined;
}

/** The default replication port: client port + 3 (SPEC §7, the operator's Service). */
export const REPLICATION_PORT_OFFSET = 3;
const NODE_ID_RE = /^[A-Za-z0-9-]{1,64}$/;

export const VERSION: string = (JSON.parse(readFileSync(new URL('../../package.json', import.meta.url), 'utf8')) as { version: string }).version;

export interface NodeOptions {
  dataDir: string;
  /** Undefined = from the data directory, or the default (cores) for new data. */
  shards?: number | undefined;
  routing?: Routing | undefined;
  listen: string;
  /** Undefined = listen host, listen port + 1 (0 when listen port is 0). */
  http?: string | undefined;
  /** Undefined = listen host, listen port + 2 (0 when listen port is 0); 'off' disables gRPC. */
  grpc?: string | undefined;
  workers?: number | undefined;
  memoryBudgetBytes?: number | undefined;
  segmentBytes?: number | undefined;
  unsafeNoDirectIo?: boolean | undefined;
  forceSyncIo?: boolean | undefined;
  cluster?: ClusterOptions | undefined;
  log: (msg: string) => void;
}

export interface RunningNode {
  listen: { native: string; grpc: string | null; http: string };
  status(): NodeStatus;
  close(): Promise<void>;
}

/** The first non-internal IPv4 address of this machine (what a pod's IP is), if any. */
function firstExternalAddress(): string | undefined {
  for (const list of Object.values(networkInterfaces())) for (const a of list ?? []) if (a.family === 'IPv4' && !a.internal) return a.address;
  return undefined;
}

/**
 * Whether a --peers entry names this node: its replication address, or a host that is the node
 * id or begins with `<node-id>.` (a StatefulSet pod's stable DNS name `<pod>.<service>.<ns>.svc`,
 * so every pod of a cluster can be given the same list).
 */
function isSelfEntry(entry: string, nodeId: string, self: Set<string>): boolean {
  if (self.has(entry)) return true;
  const host = entry.includes(':') ? entry.slice(0, entry.lastIndexOf(':')) : entry;
  return host === nodeId || host.startsWith(`${nodeId}.`);
}

/** A cluster node's addresses, from its flags (ConfigError when they do not add up). */
export function clusterAddresses(co: ClusterOptions, listen: string): { host: string; advertise: string; replListen: string; replPort: number; peer: string } {
  const { host, port } = splitHostPort(listen);
  const advertise = co.advertise ?? (host === '0.0.0.0' || host === '::' ? firstExternalAddress() : host);
  if (advertise === undefined) throw new ConfigError('--advertise HOST is required when --listen is 0.0.0.0 and this machine has no non-loopback IPv4 address (the peer and clients must know where to dial)');
  if (port === 0 && co.replication === undefined) throw new ConfigError('a cluster node needs a fixed --listen port (or an explicit --replication HOST:PORT)');
  const replListen = co.replication ?? `${host}:${port + REPLICATION_PORT_OFFSET}`;
  const replPort = splitHostPort(replListen).port;
  const self = new Set([replListen, `${advertise}:${replPort}`, `${host}:${replPort}`]);
  const peer = co.peers
    .split(',')
    .map((p) => p.trim())
    .filter((p) => p !== '' && !isSelfEntry(p, co.nodeId, self))[0];
  if (peer === undefined) throw new ConfigError(`--peers "${co.peers}" names no node other than this one`);
  return { host, advertise, replListen, replPort, peer };
}

/**
 * Every check of a cluster member's flags that needs no I/O: node id, lease timings, addresses.
 * `celer serve` runs it before opening anything; the operator's contract test runs it on the
 * arguments it generates for each pod.
 */
export function checkClusterOptions(co: ClusterOptions, listen: string): ReturnType<typeof clusterAddresses> {
  if (!NODE_ID_RE.test(co.nodeId)) throw new ConfigError(`--node-id must be 1 to 64 letters, digits or '-' (got "${co.nodeId}")`);
  validateTiming(co.timing);
  if (co.clusterId !== undefined) validateClusterId(co.clusterId);
  return clusterAddresses(co, listen);
}

const s3Location = (co: ClusterOptions): { bucket: string; prefix: string } => ({ bucket: co.s3.bucket, prefix: co.s3.prefix ?? '' });

/** The peer's replication address as configured (for /status). */
function peerAddress(a: { peer: string } | null): string | null {
  return a?.peer ?? null;
}

function sibling(listen: string, offset: number): string {
  const { host, port } = splitHostPort(listen);
  return `${host}:${port === 0 ? 0 : port + offset}`;
}

export function defaultMemoryBudgetBytes(): number {
  return Math.min(MEMORY_BUDGET_BYTES_CAP, Math.floor(totalmem() * MEMORY_BUDGET_FRACTION));
}

export async function startNode(o: NodeOptions): Promise<RunningNode> {
  const segmentBytes = o.segmentBytes ?? SEGMENT_BYTES_DEFAULT;
  if (!Number.isSafeInteger(segmentBytes) || segmentBytes < SEGMENT_BYTES_MIN || segmentBytes > SEGMENT_BYTES_MAX || segmentBytes % 4096 !== 0) {
    throw new ConfigError(`--segment-mb gives ${segmentBytes} bytes; a segment must be a multiple of 4 KiB from ${SEGMENT_BYTES_MIN} bytes to ${SEGMENT_BYTES_MAX / 1048576} MiB`);
  }
  // The lock first: a second process must not touch celer.json before it learns the directory is taken.
  const lock = await lockDataDir(o.dataDir, { log: o.log });
  const unlock = (): void => void lock.release();
  let meta: ReturnType<typeof openDataMeta>;
  try {
    meta = openDataMeta(o.dataDir, { numShards: o.shards, routing: o.routing }, { numShards: availableParallelism(), routing: 'id' });
  } catch (e) {
    await lock.release();
    throw e;
  }
  const workers = Math.max(1, Math.min(o.workers ?? availableParallelism(), meta.numShards));
  const co = o.cluster;
  let clusterAddrs: ReturnType<typeof clusterAddresses> | null = null;
  /** The S3 identity object was verified for this directory's cluster id on an earlier start. */
  let identityInS3 = true;
  if (co !== undefined) {
    try {
      clusterAddrs = checkClusterOptions(co, o.listen);
      if (co.clusterId !== undefined) identityInS3 = checkDiskIdentity(o.dataDir, co.clusterId, s3Location(co)).verifiedInS3;
    } catch (e) {
      await lock.release();
      throw e;
    }
  }
  let cluster: ClusterNode | null = null;
  let router: Router;
  try {
    router = await Router.start({
      dataDir: o.dataDir,
      numShards: meta.numShards,
      routing: meta.routing,
      workers,
      segmentBytes,
      memoryBudgetBytes: o.memoryBudgetBytes ?? defaultMemoryBudgetBytes(),
      unsafeNoDirectIo: o.unsafeNoDirectIo ?? false,
      forceSyncIo: o.forceSyncIo ?? false,
      nodeId: meta.nodeId,
      log: o.log,
      ...(co !== undefined
        ? {
            cluster: {
              commit: (shard: number, from: number, to: number, records: Uint8Array[]) =>
                cluster === null ? Promise.reject(new Error('the cluster is not started')) : cluster.replicator.commit(shard, from, to, records),
              send: (shard: number, records: Uint8Array[]) => cluster?.replicator.send(shard, records),
              writeGate: () => (cluster === null ? { message: 'not the leader: the node is starting', leader: null } : cluster.writeGate()),
              // The schema registry's cache is complete per epoch; while the node is not taking
              // writes (promoting: still catching up from S3) no read of it counts for any epoch.
              epoch: () => (cluster !== null && cluster.writeGate() === null ? cluster.epoch : -1),
            },
          }
        : {}),
    });
  } catch (e) {
    unlock();
    throw e;
  }
  o.log(`data ${o.dataDir}: ${meta.numShards} shards routed by ${meta.routing}, ${workers} worker threads, disk I/O ${router.io}`);
  // If a listener cannot start (address in use), stop what did start, so the process exits.
  const started: { close(): Promise<void> }[] = [];
  const startOrUnwind = async <T extends { close(): Promise<void> }>(what: string, start: () => Promise<T>): Promise<T> => {
    try {
      const h = await start();
      started.push(h);
      return h;
    } catch (e) {
      for (const h of started.reverse()) await h.close().catch(() => {});
      await router.close();
      unlock();
      throw new ConfigError(`cannot listen for ${what}: ${(e as Error).message}`);
    }
  };
  const native = await startOrUnwind('the native protocol', () => startNativeServer(router, o.listen, o.log));
  let transport: TcpTransport | null = null;
  if (co !== undefined && clusterAddrs !== null) {
    const { host, advertise, replListen, replPort, peer } = clusterAddrs;
    const port = splitHostPort(native.address).port;
    transport = await startOrUnwind('replication', async () => {
      const t = new TcpTransport({ nodeId: co.nodeId, listen: replListen, peer, defaultPort: 7400 + REPLICATION_PORT_OFFSET, selfAddresses: [`${advertise}:${replPort}`, `${host}:${replPort}`], log: o.log });
      await t.start();
      return t;
    });
    const store = new S3ObjectStore({ bucket: co.s3.bucket, prefix: co.s3.prefix, endpoint: co.s3.endpoint, region: co.s3.region, observe: (kind, result) => observeS3Request(kind, result) });
    if (!identityInS3 && co.clusterId !== undefined) {
      // Before the node takes part in elections: a prefix of another cluster is never joined.
      const loc = s3Location(co);
      try {
        await checkS3Identity(store, co.clusterId, `s3://${loc.bucket}/${loc.prefix}`);
        markS3Verified(o.dataDir, loc, co.clusterId);
      } catch (e) {
        for (const h of started.reverse()) await h.close().catch(() => {});
        await router.close();
        unlock();
        throw e instanceof ConfigError ? e : new ConfigError(`cannot check the cluster identity in S3 (s3://${loc.bucket}/${loc.prefix}${IDENTITY_KEY}): ${(e as Error).message}`);
      }
    }
    const offset = co.clockOffsetMs ?? 0;
    const clock: Clock = offset === 0 ? systemClock : { nowMs: () => systemClock.nowMs() + offset, monoMs: () => systemClock.monoMs(), after: (ms, fn) => systemClock.after(ms, fn) };
    const clientAddress = `${advertise}:${port}`;
    cluster = new ClusterNode({
      nodeId: co.nodeId,
      clientAddress,
      replicationAddress: `${advertise}:${replPort}`,
      timing: co.timing,
      clock,
      store,
      transport,
      shards: workerShardPorts(router, meta.numShards),
      log: (m) => o.log(m),
    });
    registerClusterMetrics(() => cluster);
    o.log(`cluster node ${co.nodeId}: replication on ${transport.address}, peer ${peer}, S3 bucket ${co.s3.bucket}${co.s3.prefix ? ` prefix ${co.s3.prefix}` : ''}, lease TTL ${co.timing.leaseTtlMs} ms`);
    void cluster.start();
  }
  const grpcAddr = o.grpc === 'off' ? null : (o.grpc ?? sibling(o.listen, 2));
  const grpc = grpcAddr === null ? null : await startOrUnwind('gRPC', () => startGrpcServer(router, grpcAddr));
  const status = (): NodeStatus => {
    const shards = router.shardInfo().map((s) => ({ ...s }));
    const serving = shards.length === meta.numShards && shards.every((s) => s.state === 'serving');
    if (cluster === null) {
      return {
        nodeId: meta.nodeId,
        version: VERSION,
        role: 'standalone',
        epoch: 0,
        leaseExpiresAtMs: null,
        leaseRemainingMs: null,
        leaseTiming: null,
        leader: native.address,
        listen: { client: native.address, grpc: grpc?.address ?? null, http: httpAddress },
        ready: serving && shards.every((s) => s.writable !== false),
        numShards: meta.numShards,
        routing: meta.routing,
        shards,
        peer: null,
      };
    }
    const c = cluster;
    const remaining = c.leaseRemainingMs();
    const peer = c.peerInfo();
    return {
      nodeId: co!.nodeId,
      version: VERSION,
      role: c.role,
      epoch: c.epoch,
      leaseExpiresAtMs: remaining === null ? null : Date.now() + remaining,
      leaseRemainingMs: remaining,
      leaseTiming: { leaseTtlMs: co!.timing.leaseTtlMs, renewDeadlineMs: co!.timing.renewDeadlineMs, renewIntervalMs: co!.timing.renewIntervalMs, maxClockDriftMs: co!.timing.maxClockDriftMs },
      leader: c.leader?.client ?? null,
      listen: { client: native.address, grpc: grpc?.address ?? null, http: httpAddress },
      // Ready = serving its role: the leader takes writes, a follower replicates.
      ready: serving && (c.role === 'leader' ? shards.every((s) => s.writable !== false) : c.role === 'follower'),
      numShards: meta.numShards,
      routing: meta.routing,
      shards,
      peer: { address: peerAddress(clusterAddrs), client: peer.client, connected: peer.connected, lagRecords: peer.lagRecords },
      s3Fallback: { active: c.replicator.fallbackActive, batches: c.counters.s3FallbackBatches },
    };
  };
  let httpAddress = '';
  const stepDown = (handoverTtlMs: number): Promise<StepDownResult> =>
    cluster === null ? Promise.resolve({ steppedDown: false, reason: 'this node runs --standalone: there is no other node to hand leadership to' }) : cluster.stepDown(handoverTtlMs);
  const http = await startOrUnwind('HTTP', () => startHttpServer({ address: o.http ?? sibling(o.listen, 1), status, stepDown }));
  httpAddress = http.address;
  if (cluster === null) setNodeState({ role: 'standalone', epoch: 0, leaseExpiresAtMs: null, lagRecords: null });
  let closing: Promise<void> | null = null;
  return {
    listen: { native: native.address, grpc: grpc?.address ?? null, http: http.address },
    status,
    close: () =>
      (closing ??= (async () => {
        await cluster?.stop();
        await native.close();
        await grpc?.close();
        await transport?.close();
        await router.close();
        await http.close();
        unlock();
      })()),
  };
}

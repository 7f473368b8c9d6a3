// A standalone Celer node: data directory identity, shard workers, and the three front ends
// (native protocol, gRPC, HTTP). `celer serve` and the end-to-end tests start nodes through this.
import { availableParallelism, totalmem } from 'node:os';
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
  log: (msg: string) => void;
}

export interface RunningNode {
  listen: { native: string; grpc: string | null; http: string };
  status(): NodeStatus;
  close(): Promise<void>;
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
  const grpcAddr = o.grpc === 'off' ? null : (o.grpc ?? sibling(o.listen, 2));
  const grpc = grpcAddr === null ? null : await startOrUnwind('gRPC', () => startGrpcServer(router, grpcAddr));
  const status = (): NodeStatus => {
    const shards = router.shardInfo().map((s) => ({ ...s }));
    return {
      nodeId: meta.nodeId,
      version: VERSION,
      role: 'standalone',
      epoch: 0,
      leaseExpiresAtMs: null,
      leaseRemainingMs: null,
      leader: native.address,
      listen: { client: native.address, grpc: grpc?.address ?? null, http: httpAddress },
      ready: shards.length === meta.numShards && shards.every((s) => s.state === 'serving' && s.writable !== false),
      numShards: meta.numShards,
      routing: meta.routing,
      shards,
      peer: null,
    };
  };
  let httpAddress = '';
  const stepDown = (): Promise<StepDownResult> => Promise.resolve({ steppedDown: false, reason: 'this node runs --standalone: there is no other node to hand leadership to' });
  const http = await startOrUnwind('HTTP', () => startHttpServer({ address: o.http ?? sibling(o.listen, 1), status, stepDown }));
  httpAddress = http.address;
  setNodeState({ role: 'standalone', epoch: 0, leaseExpiresAtMs: null, lagRecords: null });
  let closing: Promise<void> | null = null;
  return {
    listen: { native: native.address, grpc: grpc?.address ?? null, http: http.address },
    status,
    close: () =>
      (closing ??= (async () => {
        await native.close();
        await grpc?.close();
        await router.close();
        await http.close();
        unlock();
      })()),
  };
}

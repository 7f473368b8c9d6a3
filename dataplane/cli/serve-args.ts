// `celer serve`'s command line → node options. Apart from main.ts (which runs the CLI when
// imported) so the operator's contract test can parse the arguments it generates.
import { resolve } from 'node:path';
import { isRouting } from '../storage/meta.ts';
import { int, parse, UsageError } from './args.ts';

/**
 * `celer serve`'s flags as node options, with every check that needs no I/O (cluster flags
 * through checkClusterOptions). Exported for the operator's contract test, which feeds it the
 * arguments the operator generates: a flag refused here is a pod that would crash-loop.
 */
export async function parseServeArgs(args: string[]): Promise<Omit<import('../server/node.ts').NodeOptions, 'log'>> {
  const { values } = parse(args, {
    standalone: { type: 'boolean' },
    'data-dir': { type: 'string' },
    shards: { type: 'string' },
    routing: { type: 'string' },
    listen: { type: 'string' },
    http: { type: 'string' },
    grpc: { type: 'string' },
    'memory-budget-mb': { type: 'string' },
    'segment-mb': { type: 'string' },
    workers: { type: 'string' },
    'sync-io': { type: 'boolean' },
    'unsafe-no-direct-io': { type: 'boolean' },
    'node-id': { type: 'string' },
    replication: { type: 'string' },
    peers: { type: 'string' },
    advertise: { type: 'string' },
    's3-bucket': { type: 'string' },
    's3-prefix': { type: 'string' },
    's3-endpoint': { type: 'string' },
    's3-region': { type: 'string' },
    'lease-ttl-ms': { type: 'string' },
    'renew-deadline-ms': { type: 'string' },
    'renew-interval-ms': { type: 'string' },
    'max-clock-drift-ms': { type: 'string' },
    'test-clock-offset-ms': { type: 'string' },
    'cluster-id': { type: 'string' },
  });
  const clusterFlags = ['node-id', 'replication', 'peers', 'advertise', 's3-bucket', 's3-prefix', 's3-endpoint', 's3-region', 'lease-ttl-ms', 'renew-deadline-ms', 'renew-interval-ms', 'max-clock-drift-ms', 'test-clock-offset-ms', 'cluster-id'] as const;
  const given = clusterFlags.filter((f) => values[f] !== undefined);
  if (values.standalone && given.length > 0) throw new UsageError(`--standalone takes no cluster flags (got --${given.join(', --')})`);
  let cluster: import('../server/node.ts').ClusterOptions | undefined;
  if (!values.standalone) {
    const missing = (['node-id', 'peers', 's3-bucket'] as const).filter((f) => values[f] === undefined);
    if (missing.length > 0) throw new UsageError(`a cluster node needs --${missing.join(', --')} (or run one node with --standalone)`);
    const { DEFAULT_TIMING } = await import('../cluster/timing.ts');
    const offset = values['test-clock-offset-ms'];
    if (offset !== undefined && !/^-?\d+$/.test(offset)) throw new UsageError(`--test-clock-offset-ms must be an integer; got "${offset}"`);
    cluster = {
      nodeId: values['node-id']!,
      replication: values.replication,
      peers: values.peers!,
      advertise: values.advertise,
      s3: { bucket: values['s3-bucket']!, prefix: values['s3-prefix'], endpoint: values['s3-endpoint'], region: values['s3-region'] },
      timing: {
        leaseTtlMs: int(values['lease-ttl-ms'], '--lease-ttl-ms', 1) ?? DEFAULT_TIMING.leaseTtlMs,
        renewDeadlineMs: int(values['renew-deadline-ms'], '--renew-deadline-ms', 1) ?? DEFAULT_TIMING.renewDeadlineMs,
        renewIntervalMs: int(values['renew-interval-ms'], '--renew-interval-ms', 1) ?? DEFAULT_TIMING.renewIntervalMs,
        maxClockDriftMs: int(values['max-clock-drift-ms'], '--max-clock-drift-ms', 1) ?? DEFAULT_TIMING.maxClockDriftMs,
      },
      clockOffsetMs: offset === undefined ? undefined : Number(offset),
      clusterId: values['cluster-id'],
    };
  }
  const dataDir = values['data-dir'];
  if (!dataDir) throw new UsageError('--data-dir DIR is required');
  if (values.routing !== undefined && !isRouting(values.routing)) throw new UsageError(`--routing must be org, type or id; got "${values.routing}"`);
  const memMb = int(values['memory-budget-mb'], '--memory-budget-mb', 16);
  const segMb = int(values['segment-mb'], '--segment-mb', 1);
  const listen = values.listen ?? '127.0.0.1:7400';
  if (cluster !== undefined) (await import('../server/node.ts')).checkClusterOptions(cluster, listen);
  return {
    dataDir: resolve(dataDir),
    shards: int(values.shards, '--shards', 1),
    routing: values.routing as 'org' | 'type' | 'id' | undefined,
    listen,
    http: values.http,
    grpc: values.grpc,
    workers: int(values.workers, '--workers', 1),
    memoryBudgetBytes: memMb === undefined ? undefined : memMb * 1024 * 1024,
    segmentBytes: segMb === undefined ? undefined : segMb * 1024 * 1024,
    unsafeNoDirectIo: values['unsafe-no-direct-io'],
    forceSyncIo: values['sync-io'] || process.env.CELER_IO === 'sync',
    cluster,
  };
}

// Cluster metrics (on the node's registry): S3 requests by kind and result, elections, fencings,
// rewound records, S3 fallback batches and whether fallback is active. Role, epoch, lease and lag
// are the node gauges of metrics.ts, set from /status.
import { Counter, Gauge } from 'prom-client';
import type { ClusterNode } from '../cluster/cluster-node.ts';
import type { S3RequestKind, S3RequestResult } from '../cluster/object-store.ts';
import { metricsRegistry } from './metrics.ts';

let s3Requests: Counter<'kind' | 'result'> | null = null;

/** Counts one S3 request (the S3 store's observer). */
export function observeS3Request(kind: S3RequestKind, result: S3RequestResult): void {
  s3Requests ??= new Counter({ name: 'celer_s3_requests_total', help: 'S3 requests by kind and result.', labelNames: ['kind', 'result'], registers: [metricsRegistry()] });
  s3Requests.inc({ kind, result });
}

let registered = false;

/** Exports the cluster node's counters (call once per process). */
export function registerClusterMetrics(node: () => ClusterNode | null): void {
  if (registered) return;
  registered = true;
  const registers = [metricsRegistry()];
  observeS3Request('get', 'ok');
  s3Requests!.reset();
  const counter = (name: string, help: string, read: (n: ClusterNode) => number): void =>
    void new Gauge({
      name,
      help,
      registers,
      collect() {
        const n = node();
        this.set(n === null ? 0 : read(n));
      },
    });
  counter('celer_elections_total', 'Lease acquisitions this node attempted (conditional writes of a new epoch).', (n) => n.counters.elections);
  counter('celer_elections_won_total', 'Lease acquisitions this node won.', (n) => n.counters.electionsWon);
  counter('celer_fencings_total', 'Times this node stopped leading because its authority expired or was taken over.', (n) => n.counters.fencings);
  counter('celer_rewound_records_total', 'Records removed from this node’s unacknowledged tail (after losing leadership, or diverging from the leader).', (n) => n.counters.rewoundRecords);
  counter('celer_s3_fallback_batches_total', 'Group commits this node, as leader, stored in S3 because the follower could not take them.', (n) => n.counters.s3FallbackBatches);
  counter('celer_s3_fallback_active', '1 while group commits go to S3 (the follower is unreachable), else 0.', (n) => (n.replicator.fallbackActive ? 1 : 0));
  counter('celer_heartbeats_sent_total', 'Heartbeats sent as leader.', (n) => n.counters.heartbeatsSent);
  counter('celer_heartbeats_acked_total', 'Heartbeats the follower acknowledged.', (n) => n.counters.heartbeatsAcked);
  counter('celer_replication_appends_total', 'Append frames (one or more group commits of a shard) sent to the follower as leader.', (n) => n.counters.appendsSent);
  counter('celer_replication_bytes_total', 'Record bytes sent to the follower as leader.', (n) => n.counters.appendBytesSent);
  counter('celer_replication_acks_total', 'Append acknowledgements (the follower fdatasync\'d) received as leader.', (n) => n.counters.appendAcks);
  counter('celer_lease_renewals_s3_total', 'Lease renewals written to S3 (only while heartbeats fail).', (n) => n.counters.leaseRenewalsS3);
}

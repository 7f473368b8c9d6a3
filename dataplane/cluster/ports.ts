// The seams of the cluster protocol. cluster-node.ts (election, lease, heartbeats, promotion,
// demotion) and replicator.ts (the leader's per-shard streams, S3 fallback) touch the world only
// through these, so the same code runs in `celer serve` (real TCP, the node's shard worker
// threads, S3 through @aws-sdk/client-s3, the system clock) and in the deterministic simulator
// (dataplane/sim: simulated network, shards on the simulated disk in-process, simulated S3, a
// virtual clock with drift).
import type { ShardTip } from '../shard/shard.ts';
import type { ClusterMessage } from './messages.ts';

export type { Clock } from '../storage/disk.ts';
export type { ShardTip } from '../shard/shard.ts';

/** What the cluster does with one shard of this node. Real: RPC to its worker thread; sim: the Shard itself. */
export interface ShardPort {
  readonly id: number;
  tip(): Promise<ShardTip>;
  /** Chain hash and epoch of the durable record that ends at `seq` (zeros/0 for seq 0); null if no record ends there. */
  recordAt(seq: number): Promise<{ hash: Uint8Array; epoch: number } | null>;
  /** Durable records from the one holding `fromSeq` up to `toSeq`, about `maxBytes` (at least one). */
  readDurable(fromSeq: number, toSeq: number, maxBytes: number): Promise<Uint8Array[]>;
  /**
   * Replica: append the leader's records; resolves with the durable seq; rejects with
   * ReplicaRejectError. `commitTo`: the leader's committed seq, applied once they are durable.
   */
  applyReplicated(records: readonly Uint8Array[], commitTo?: number): Promise<number>;
  /** Make records up to `seq` visible and acknowledged (never truncated); returns the committed seq. */
  commitTo(seq: number): Promise<number>;
  becomeLeader(epoch: number): Promise<void>;
  becomeReplica(epoch: number): Promise<void>;
  /** Wait until nothing is in flight (writes, commit steps, appends). */
  quiesce(): Promise<void>;
  /** Remove the records after `seq` (refused at or below the ack barrier). */
  truncateAfter(seq: number): Promise<void>;
}

export type Channel = 'control' | 'data';

/**
 * The link to the other node. Messages may be lost, delayed, duplicated or reordered (the
 * simulator does all of these; TCP does them across reconnects); the protocol tolerates each.
 * Two channels, so heartbeats never queue behind replicated data.
 */
export interface PeerTransport {
  /** Sends to the peer; false when there is no connection on that channel now (the message is dropped). */
  send(channel: Channel, msg: ClusterMessage): boolean;
  /** True while this node has a connection to the peer on `channel`. */
  connected(channel: Channel): boolean;
  /** Bytes queued on the channel and not yet written to the socket (backpressure). */
  queuedBytes(channel: Channel): number;
  onMessage(handler: (channel: Channel, msg: ClusterMessage) => void): void;
  onLinkChange(handler: (channel: Channel, up: boolean) => void): void;
}

/** Counters the node exports as metrics (and the simulator asserts on). */
export interface ClusterCounters {
  elections: number;
  electionsWon: number;
  fencings: number;
  rewoundRecords: number;
  s3FallbackBatches: number;
  heartbeatsSent: number;
  heartbeatsAcked: number;
  leaseRenewalsS3: number;
  /** Append frames sent to the follower (leader), their record bytes, and acknowledgements received. */
  appendsSent: number;
  appendBytesSent: number;
  appendAcks: number;
}

export function newCounters(): ClusterCounters {
  return { elections: 0, electionsWon: 0, fencings: 0, rewoundRecords: 0, s3FallbackBatches: 0, heartbeatsSent: 0, heartbeatsAcked: 0, leaseRenewalsS3: 0, appendsSent: 0, appendBytesSent: 0, appendAcks: 0 };
}

// The JSON shape of a node's HTTP endpoints. The operator and `celer cluster status` read these;
// change them only together with their readers (operator/, test/e2e/).
//
//   GET  /livez            200 "ok" while the process runs its event loop.
//   GET  /readyz           200 "ready" once every shard is open and serving and the node can take
//                          requests for its role; 503 with a one-line reason otherwise.
//   GET  /status           200 NodeStatus (below), always (also while not ready).
//   GET  /metrics          Prometheus text format, every metric prefixed celer_.
//   POST /admin/step-down  hand leadership over now (for upgrades). 200 StepDownResult when the
//                          node was leader and has stepped down; 409 StepDownResult when it
//                          cannot (standalone, or not leader).

/** A node's role. 'standalone' is the only role a --standalone node ever has. */
export type NodeRole = 'standalone' | 'boot' | 'follower' | 'catching-up' | 'promoting' | 'leader' | 'fenced';

export type ShardState = 'opening' | 'serving' | 'corrupt' | 'failed';

export interface ShardStatus {
  shard: number;
  state: ShardState;
  /** Why a shard is not serving (corrupt record location, fsync failure). */
  reason?: string;
  /** Highest position (seq) written and fdatasync'd on this node, as a decimal string. */
  writeSeq: string;
  /** Highest position committed (visible to reads), as a decimal string. */
  commitSeq: string;
  /** The three watermarks (placed ≥ durable ≥ committed), as decimal strings: reserved in the log, fdatasync'd, committed. */
  /** False after a failed fdatasync: the shard serves reads of committed data but refuses writes (2008). */
  writable?: boolean;
  placedSeq?: string;
  durableSeq?: string;
  committedSeq?: string;
}

export interface NodeStatus {
  nodeId: string;
  /** Celer version (package.json version). */
  version: string;
  role: NodeRole;
  /** Leadership epoch; 0 for standalone. */
  epoch: number;
  /** Wall-clock ms at which this node's lease expires; null when it holds none. */
  leaseExpiresAtMs: number | null;
  /**
   * Leader: ms until it stops accepting writes unless its authority is renewed (heartbeat ack or
   * S3). Follower: ms until it may challenge for the lease. Null when standalone or unknown.
   */
  leaseRemainingMs: number | null;
  /**
   * The lease timings this node runs with (its --lease-ttl-ms, --renew-deadline-ms,
   * --renew-interval-ms, --max-clock-drift-ms); null when standalone. The operator's lease
   * retuning observes each step here.
   */
  leaseTiming?: { leaseTtlMs: number; renewDeadlineMs: number; renewIntervalMs: number; maxClockDriftMs: number } | null;
  /** Client address of the current leader when known ("host:port"), else null. */
  leader: string | null;
  /** Addresses this node listens on. */
  listen: { client: string; grpc: string | null; http: string };
  ready: boolean;
  numShards: number;
  routing: 'org' | 'type' | 'id';
  shards: ShardStatus[];
  /**
   * Replication peer; null when standalone. address: its replication address; client: its client
   * address when known; connected: the replication link is up; lagRecords: on the leader, its
   * durable seq minus the peer's, summed over shards (on a follower, what it knows it lacks).
   */
  peer: { address: string | null; client?: string | null; connected?: boolean; lagRecords: number | null } | null;
  /** Leader only: whether group commits currently go to S3 because the follower is not reachable. */
  s3Fallback?: { active: boolean; batches: number };
}

export interface StepDownResult {
  steppedDown: boolean;
  reason: string;
}

// Client options and their defaults. Every bound the client enforces is named here, with where
// its value comes from.
import type { KeyPart } from './key.ts';

export interface ClientOptions {
  /**
   * TCP connections per node. Requests are multiplexed, so a few suffice; requests for one
   * aggregate always use the same connection (order is kept for pipelined writes).
   */
  connectionsPerNode?: number;
  /** How long a request may wait for its answer before it fails with TimeoutError. */
  requestTimeoutMs?: number;
  /** How long opening a TCP connection may take before it fails with ConnectFailedError. */
  connectTimeoutMs?: number;
  /** Requests on the wire per connection; further requests wait, in order, for a free slot. */
  maxInFlightPerConnection?: number;
  /** Requests that may wait per connection; beyond it a request fails with RequestQueueFullError. */
  maxQueuedPerConnection?: number;
  /** Consecutive failed connects to one node that open its circuit breaker. */
  circuitBreakerThreshold?: number;
  /** While the breaker is open, requests to that node fail at once with ConnectFailedError. */
  circuitBreakerOpenMs?: number;
  /**
   * How long one request may keep looking for a leader (a failover: the old leader unreachable
   * or answering "not leader", an election running) before the last error is thrown. Only
   * requests that certainly did not take effect are tried again: a connect that failed, 2011
   * not leader, 2012 busy, an open circuit breaker; reads and pings also after a lost
   * connection or a timeout. 0: no waiting (each node is still tried once). The clock starts
   * when the request is issued; each try still has its own requestTimeoutMs.
   */
  failoverTimeoutMs?: number;
  /** The first wait between rounds of tries while looking for a leader; waits double per round. */
  failoverBackoffInitialMs?: number;
  /** The longest wait between rounds of tries (each wait is jittered into its upper half). */
  failoverBackoffMaxMs?: number;
  /**
   * A backstop on further tries per request (redirects, other nodes, rounds after a wait);
   * failoverTimeoutMs is what normally ends a search for the leader.
   */
  maxLeaderRetries?: number;
  /**
   * Writer identity used when a write names none. For exactly-once writes it must be stable per
   * logical writer (one per service, the same across restarts and replicas' retries), never
   * random per process or per request: a fresh id disables deduplication.
   */
  clientId?: KeyPart;
}

export const DEFAULTS = {
  /** Two, so one slow large request does not stall every aggregate behind it; more buys little with multiplexing. */
  connectionsPerNode: 2,
  /** 30 s, as Celeriant's pools: longer than a failover (SPEC §7: under 2 s) plus a slow fsync. */
  requestTimeoutMs: 30_000,
  /** 5 s, as Celeriant's pools: a reachable node on a LAN answers a SYN in milliseconds. */
  connectTimeoutMs: 5_000,
  /** Enough for group commit to fill batches (thousands of writers), small enough to bound memory. */
  maxInFlightPerConnection: 4_096,
  /** 16 × the in-flight bound: a burst waits rather than fails, a runaway producer fails fast. */
  maxQueuedPerConnection: 65_536,
  /** One failed connect trips the breaker, as Celeriant's .NET pool. */
  circuitBreakerThreshold: 1,
  /** 2 s, as Celeriant's .NET pool: about a failover, so a restarted node is retried soon. */
  circuitBreakerOpenMs: 2_000,
  /**
   * 5 s: the SPEC §7 failover target (under 2 s, of which an election takes most) plus 3 s for
   * a slow S3 lease write and the new leader opening its shards.
   */
  failoverTimeoutMs: 5_000,
  /** 25 ms: a leader that is about to answer is found again quickly. */
  failoverBackoffInitialMs: 25,
  /** 100 ms: a round costs a request or two per node, so a new leader is found within 0.1 s of taking over (SPEC §7: failover under 2 s). */
  failoverBackoffMaxMs: 100,
  /**
   * 1 000: never reached within failoverTimeoutMs at the default backoff (a two-node cluster
   * takes at most 3 tries per round, at most about 40 rounds in 5 s); it only stops a runaway loop.
   */
  maxLeaderRetries: 1_000,
} as const;

/** Hard ceilings on options (a typo such as 1e9 connections fails at connect, not at runtime). */
export const OPTION_MAX = {
  connectionsPerNode: 64,
  maxInFlightPerConnection: 1 << 20,
  maxQueuedPerConnection: 1 << 24,
  /** setTimeout's ceiling (2^31 - 1 ms). */
  timeoutMs: 2_147_483_647,
} as const;

export interface ResolvedOptions {
  connectionsPerNode: number;
  requestTimeoutMs: number;
  connectTimeoutMs: number;
  maxInFlightPerConnection: number;
  maxQueuedPerConnection: number;
  circuitBreakerThreshold: number;
  circuitBreakerOpenMs: number;
  failoverTimeoutMs: number;
  failoverBackoffInitialMs: number;
  failoverBackoffMaxMs: number;
  maxLeaderRetries: number;
  clientId: KeyPart | undefined;
}

function intOption(options: ClientOptions, name: keyof ClientOptions, def: number, min: number, max: number): number {
  const v = options[name];
  if (v === undefined) return def;
  if (typeof v !== 'number' || !Number.isInteger(v) || v < min || v > max) {
    throw new RangeError(`option ${name} must be an integer ${min}..${max}; got ${String(v)}`);
  }
  return v;
}

export function resolveOptions(options: ClientOptions = {}): ResolvedOptions {
  return {
    connectionsPerNode: intOption(options, 'connectionsPerNode', DEFAULTS.connectionsPerNode, 1, OPTION_MAX.connectionsPerNode),
    requestTimeoutMs: intOption(options, 'requestTimeoutMs', DEFAULTS.requestTimeoutMs, 1, OPTION_MAX.timeoutMs),
    connectTimeoutMs: intOption(options, 'connectTimeoutMs', DEFAULTS.connectTimeoutMs, 1, OPTION_MAX.timeoutMs),
    maxInFlightPerConnection: intOption(options, 'maxInFlightPerConnection', DEFAULTS.maxInFlightPerConnection, 1, OPTION_MAX.maxInFlightPerConnection),
    maxQueuedPerConnection: intOption(options, 'maxQueuedPerConnection', DEFAULTS.maxQueuedPerConnection, 0, OPTION_MAX.maxQueuedPerConnection),
    circuitBreakerThreshold: intOption(options, 'circuitBreakerThreshold', DEFAULTS.circuitBreakerThreshold, 1, 1_000),
    circuitBreakerOpenMs: intOption(options, 'circuitBreakerOpenMs', DEFAULTS.circuitBreakerOpenMs, 0, OPTION_MAX.timeoutMs),
    failoverTimeoutMs: intOption(options, 'failoverTimeoutMs', DEFAULTS.failoverTimeoutMs, 0, OPTION_MAX.timeoutMs),
    failoverBackoffInitialMs: intOption(options, 'failoverBackoffInitialMs', DEFAULTS.failoverBackoffInitialMs, 1, OPTION_MAX.timeoutMs),
    failoverBackoffMaxMs: intOption(options, 'failoverBackoffMaxMs', DEFAULTS.failoverBackoffMaxMs, 1, OPTION_MAX.timeoutMs),
    maxLeaderRetries: intOption(options, 'maxLeaderRetries', DEFAULTS.maxLeaderRetries, 0, 100_000),
    clientId: options.clientId,
  };
}

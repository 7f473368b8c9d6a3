// Lease timings and their rules. The defaults match the operator's (operator/api/defaults.ts).
//
// Authority is measured on each node's own monotonic clock, from moments both sides can name:
//   - the leader may accept and acknowledge writes until `grant + renewDeadlineMs`, where grant is
//     when it *sent* the heartbeat (or S3 renewal) that was later acknowledged;
//   - the follower may challenge only `leaseTtlMs` after the later of the last heartbeat it
//     acknowledged and the first time it saw the current lease object (ETag) in S3 — the time
//     of that heartbeat when it named this very ETag: the object was written before it was sent.
// The heartbeat was sent before the follower acknowledged it, so with
// renewDeadlineMs + maxClockDriftMs < leaseTtlMs the leader has stopped before the follower may
// start, with maxClockDriftMs to spare for clock-rate differences and scheduling delays.
import { ConfigError } from '../storage/meta.ts';

export interface ClusterTiming {
  leaseTtlMs: number;
  renewDeadlineMs: number;
  /** Heartbeat interval; also the S3 poll interval of a follower that hears no heartbeats. */
  renewIntervalMs: number;
  maxClockDriftMs: number;
}

export const DEFAULT_TIMING: ClusterTiming = { leaseTtlMs: 1500, renewDeadlineMs: 1000, renewIntervalMs: 250, maxClockDriftMs: 200 };

/** How long a group commit waits for the follower's fdatasync before it goes to S3 instead. */
export function replicationTimeoutMs(t: ClusterTiming): number {
  return Math.max(50, Math.floor(t.renewDeadlineMs / 2));
}

export function validateTiming(t: ClusterTiming): ClusterTiming {
  for (const [k, v] of Object.entries(t)) {
    if (!Number.isSafeInteger(v) || v <= 0) throw new ConfigError(`--${k.replace(/[A-Z]/g, (c) => '-' + c.toLowerCase())} must be a positive integer (got ${v})`);
  }
  if (t.renewDeadlineMs + t.maxClockDriftMs >= t.leaseTtlMs) {
    throw new ConfigError(
      `lease timings are unsafe: --renew-deadline-ms ${t.renewDeadlineMs} + --max-clock-drift-ms ${t.maxClockDriftMs} must be below --lease-ttl-ms ${t.leaseTtlMs}, so the leader stops before the follower may take over`,
    );
  }
  if (t.renewIntervalMs * 2 > t.renewDeadlineMs) {
    throw new ConfigError(`--renew-interval-ms ${t.renewIntervalMs} must be at most half of --renew-deadline-ms ${t.renewDeadlineMs}, so one lost heartbeat does not fence the leader`);
  }
  return t;
}

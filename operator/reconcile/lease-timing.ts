// Lease timings on running nodes, changed in an order that never lets the leader write while
// the follower may already take over.
//
// The danger is a mix: nodes pick up new timings one pod restart at a time, so for a while the
// leader and the follower disagree. The leader fences itself at renewDeadlineMs (+ drift); the
// follower takes over after leaseTtlMs. Safety needs, for every pair of old/new values in
// play at once: leader's renewDeadlineMs + maxClockDriftMs < follower's leaseTtlMs.
//
// So a change goes through an intermediate step that is safe against both ends:
//   shorter TTL:  first every node gets the shorter renew deadline (TTL unchanged), then the TTL.
//   longer TTL:   first every node gets the longer TTL (deadline unchanged), then the deadline.
// The intermediate takes the larger TTL and the smaller deadline and interval, which keeps the
// invariants and is safe next to both ends whenever the drift is unchanged (lease-timing.test.ts
// checks this over many random pairs).

import type { LeaseSpec } from '../api/types.ts';

export function leaseEqual(a: LeaseSpec, b: LeaseSpec): boolean {
  return a.leaseTtlMs === b.leaseTtlMs && a.renewDeadlineMs === b.renewDeadlineMs
    && a.renewIntervalMs === b.renewIntervalMs && a.maxClockDriftMs === b.maxClockDriftMs;
}

/** The invariants the CRD and validator enforce; true when `l` may run on a node. */
export function leaseInvariantsHold(l: LeaseSpec): boolean {
  return l.renewIntervalMs * 2 <= l.renewDeadlineMs && l.renewDeadlineMs + l.maxClockDriftMs < l.leaseTtlMs;
}

/**
 * True when nodes running `a` and nodes running `b` may coexist: whichever is leader fences
 * itself (renew deadline + drift) before whichever is follower may take over (TTL).
 */
export function safeTogether(a: LeaseSpec, b: LeaseSpec): boolean {
  const drift = Math.max(a.maxClockDriftMs, b.maxClockDriftMs);
  return Math.max(a.renewDeadlineMs, b.renewDeadlineMs) + drift < Math.min(a.leaseTtlMs, b.leaseTtlMs);
}

/**
 * The step between `from` and `to`: the larger TTL and drift, the smaller deadline and
 * interval. With an unchanged drift it is safe next to both ends and keeps the invariants.
 */
export function intermediateLease(from: LeaseSpec, to: LeaseSpec): LeaseSpec {
  return {
    leaseTtlMs: Math.max(from.leaseTtlMs, to.leaseTtlMs),
    renewDeadlineMs: Math.min(from.renewDeadlineMs, to.renewDeadlineMs),
    renewIntervalMs: Math.min(from.renewIntervalMs, to.renewIntervalMs),
    maxClockDriftMs: Math.max(from.maxClockDriftMs, to.maxClockDriftMs),
  };
}

export interface LeaseStep {
  /** The timings to configure the pods with now. */
  effective: LeaseSpec;
  /** True when `effective` equals the target. */
  done: boolean;
}

/**
 * Next timings to roll out. `current` is what the pods are configured with (kept in status),
 * `target` the spec; `settled` is true when every pod runs `current` and is ready, so the
 * previous step is complete everywhere. When the drift itself grows, no order makes the old
 * timings safe under the new drift; then the step goes straight on as far as it can.
 */
export function nextLeaseStep(current: LeaseSpec | null, target: LeaseSpec, settled: boolean): LeaseStep {
  if (current === null || leaseEqual(current, target)) return { effective: target, done: true };
  if (!settled) return { effective: current, done: false };
  if (safeTogether(current, target)) return { effective: target, done: true };
  const mid = intermediateLease(current, target);
  if (leaseEqual(mid, current) || !leaseInvariantsHold(mid) || !safeTogether(mid, target)) return { effective: target, done: true };
  return { effective: mid, done: false };
}

/**
 * The TTL the leader writes when it hands over on purpose (POST /admin/step-down). It has
 * already stopped writing, so the follower need only allow for clock drift and its own next
 * poll; that bounds a planned switchover by the renew interval rather than the full TTL.
 */
export function handoverTtlMs(l: LeaseSpec): number {
  return Math.min(l.leaseTtlMs, l.maxClockDriftMs + l.renewIntervalMs);
}

/** Flags for `celer serve` in two-node mode. */
export function leaseFlags(l: LeaseSpec): string[] {
  return [
    '--lease-ttl-ms', String(l.leaseTtlMs),
    '--renew-deadline-ms', String(l.renewDeadlineMs),
    '--renew-interval-ms', String(l.renewIntervalMs),
    '--max-clock-drift-ms', String(l.maxClockDriftMs),
  ];
}

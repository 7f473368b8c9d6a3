// Bounds on spec fields. The CRD schema states the same numbers as minimum/maximum;
// api/crd.test.ts reads the CRD and checks they match, so change both together.

export const LIMITS = {
  /** Below 500 ms one slow S3 conditional PUT (p99 of a few hundred ms) would expire the lease. */
  leaseTtlMsMin: 500,
  /** Five minutes: past that a crashed leader stalls writes too long to call it failover. */
  leaseTtlMsMax: 300_000,
  /** The leader needs at least one S3 round trip between renew attempts and its deadline. */
  renewDeadlineMsMin: 100,
  renewDeadlineMsMax: 299_000,
  /** 50 ms caps renewals at 20 PUT/s per cluster, well inside S3's per-prefix request rate. */
  renewIntervalMsMin: 50,
  renewIntervalMsMax: 149_000,
  maxClockDriftMsMin: 0,
  /** Ten seconds of drift means NTP is broken; refuse rather than paper over it. */
  maxClockDriftMsMax: 10_000,
  shardsMin: 1,
  /** One owner thread per shard (SPEC §2); 256 is far past any core count we run on. */
  shardsMax: 256,
  replicasMin: 1,
  /** Two data nodes (SPEC §7). */
  replicasMax: 2,
} as const;

/** Image tags: what an OCI reference allows after the colon. */
export const VERSION_PATTERN = '^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$';
/** A Kubernetes quantity, restricted to what a volume size sensibly is. */
export const SIZE_PATTERN = '^[0-9]+(\\.[0-9]+)?(Ki|Mi|Gi|Ti|Pi|Ei|k|M|G|T|P|E)?$';

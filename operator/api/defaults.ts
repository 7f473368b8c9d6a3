// Defaults for a CelerCluster spec. The CRD schema carries the same values as `default:` so
// that `kubectl get -o yaml` shows them; api/crd.test.ts checks the two agree. The operator
// applies them itself as well, because an object created before a default was added to the
// schema (or sent to an apiserver that skipped defaulting) still has to reconcile.

import type { CelerClusterSpec, DeletionPolicy, LeaseSpec, MonitoringSpec, Routing, UpgradePolicy } from './types.ts';

/** Image repository when spec.image is empty; the chart passes the operator's own repository. */
export const DEFAULT_IMAGE = 'celer';

/**
 * Lease timings. SPEC §7 targets failover under 2 s after a leader crash, and the follower
 * takes over only after the full TTL, so the TTL leaves room for one renew interval (to notice
 * the expiry) and the promotion: 1500 + 250 + promotion < 2000.
 */
export const DEFAULT_LEASE: LeaseSpec = {
  leaseTtlMs: 1500,
  // The leader stops accepting writes at the renew deadline: 1000 + 200 (drift) = 1200 < 1500
  // keeps 300 ms for writes already in flight to stop before the follower may act.
  renewDeadlineMs: 1000,
  // Four renew attempts fit before the deadline, so one slow S3 PUT does not fence the leader.
  renewIntervalMs: 250,
  // NTP-disciplined hosts in one region stay within a few ms; 200 ms is a wide margin that
  // still fits the 2 s failover budget above.
  maxClockDriftMs: 200,
};

export const DEFAULT_ROUTING: Routing = 'id';
export const DEFAULT_UPGRADE_POLICY: UpgradePolicy = 'automatic';
export const DEFAULT_DELETION_POLICY: DeletionPolicy = 'Retain';
export const DEFAULT_MONITORING: Required<Omit<MonitoringSpec, 'serviceMonitorLabels'>> = {
  serviceMonitor: false,
  scrapeAnnotations: true,
};
/** Until the two-node data plane lands every node runs with --standalone. */
export const DEFAULT_STANDALONE = true;

/** A spec with every default filled in; what reconcile works from. */
export interface DefaultedSpec extends CelerClusterSpec {
  image: string;
  standalone: boolean;
  replicas: number;
  lease: LeaseSpec;
  routing: Routing;
  upgradePolicy: UpgradePolicy;
  deletionPolicy: DeletionPolicy;
  monitoring: MonitoringSpec & { serviceMonitor: boolean; scrapeAnnotations: boolean };
  imagePullPolicy: 'Always' | 'IfNotPresent' | 'Never';
}

export function withDefaults(spec: CelerClusterSpec, defaultImage: string = DEFAULT_IMAGE): DefaultedSpec {
  const standalone = spec.standalone ?? DEFAULT_STANDALONE;
  return {
    ...spec,
    image: spec.image !== undefined && spec.image !== '' ? spec.image : defaultImage,
    imagePullPolicy: spec.imagePullPolicy ?? 'IfNotPresent',
    standalone,
    replicas: spec.replicas ?? (standalone ? 1 : 2),
    lease: { ...DEFAULT_LEASE, ...spec.lease },
    routing: spec.routing ?? DEFAULT_ROUTING,
    upgradePolicy: spec.upgradePolicy ?? DEFAULT_UPGRADE_POLICY,
    deletionPolicy: spec.deletionPolicy ?? DEFAULT_DELETION_POLICY,
    monitoring: { ...DEFAULT_MONITORING, ...spec.monitoring },
  };
}

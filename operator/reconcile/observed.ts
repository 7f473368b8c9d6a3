// What one reconcile pass sees: the CelerCluster, what it owns, and each node's /status.
// The controller builds this from its informer caches and HTTP calls; reconcile() reads it and
// nothing else, so tests construct it directly.

import type { V1StatefulSet } from '@kubernetes/client-node';
import type { NodeStatus } from '../../dataplane/server/status.ts';
import type { CelerCluster, LeaseSpec } from '../api/types.ts';

export type PdbApiVersion = 'policy/v1' | 'policy/v1beta1';

/** What the apiserver serves, from API discovery. */
export interface Capabilities {
  /** null: the apiserver serves no PodDisruptionBudget API at all. */
  pdbApiVersion: PdbApiVersion | null;
  /** monitoring.coreos.com/v1 ServiceMonitor is installed. */
  serviceMonitor: boolean;
}

export interface ObservedPod {
  name: string;
  /** Ordinal within the StatefulSet. */
  ordinal: number;
  /** The celer.io/template-hash annotation the pod was created with; null if absent. */
  templateHash: string | null;
  /** The pod's Ready condition is True. */
  ready: boolean;
  /** The pod has a deletionTimestamp. */
  terminating: boolean;
  /** The operator-maintained role label, if any. */
  roleLabel: string | null;
  /** Pod phase (Pending, Running, ...). */
  phase: string;
  /** The lease timings in the pod's own container args (leaseFlags()); null when it has none. */
  lease?: LeaseSpec | null;
  /** Why its containers last stopped (terminated.message of state and lastState), newest first. */
  terminationMessages?: string[];
  /** spec.nodeName: the Kubernetes node the pod is bound to; null or absent while unscheduled. */
  nodeName?: string | null;
}

export interface ObservedNode {
  /** Parsed /status, or null when it could not be fetched. */
  status: NodeStatus | null;
  /** Why /status is missing (connection refused, timeout, bad JSON). */
  error?: string;
}

/** An owned object that exists, by kind; used to delete what is no longer desired. */
export interface OwnedRef {
  apiVersion: string;
  kind: string;
  name: string;
}

export interface ObservedState {
  cluster: CelerCluster;
  statefulSet: V1StatefulSet | null;
  pods: ObservedPod[];
  /** Keyed by pod name. */
  nodes: Record<string, ObservedNode>;
  /** Owned objects of kinds that may stop being desired (PDB, ServiceMonitor). */
  owned: OwnedRef[];
  capabilities: Capabilities;
  /** Wall-clock ms, for condition timestamps and lease expiry. */
  nowMs: number;
  /** Image repository when spec.image is empty. */
  defaultImage: string;
  /** Kubernetes nodes with spec.unschedulable (cordoned, e.g. by `kubectl drain`); absent: none known. */
  unschedulableNodes?: readonly string[];
}

/** The flags leaseFlags() writes, by LeaseSpec field. */
const LEASE_FLAGS: Record<keyof LeaseSpec, string> = {
  leaseTtlMs: '--lease-ttl-ms',
  renewDeadlineMs: '--renew-deadline-ms',
  renewIntervalMs: '--renew-interval-ms',
  maxClockDriftMs: '--max-clock-drift-ms',
};

/** The lease timings in a `celer serve` argument list; null unless all four flags carry integers. */
export function leaseFromArgs(args: readonly string[] | undefined): LeaseSpec | null {
  if (args === undefined) return null;
  const out: Partial<LeaseSpec> = {};
  for (const [field, flag] of Object.entries(LEASE_FLAGS) as [keyof LeaseSpec, string][]) {
    const i = args.lastIndexOf(flag);
    const v = i < 0 ? NaN : Number(args[i + 1]);
    if (!Number.isInteger(v)) return null;
    out[field] = v;
  }
  return out as LeaseSpec;
}

/** The lease timings of the `celer` container in a pod spec (a pod's, or a StatefulSet template's). */
export function leaseOfPodSpec(spec: { containers?: { name: string; args?: string[] }[] } | undefined): LeaseSpec | null {
  const containers = spec?.containers ?? [];
  const c = containers.find((x) => x.name === 'celer') ?? containers[0];
  return leaseFromArgs(c?.args);
}

/**
 * What the nodes are configured with, observed rather than remembered: the StatefulSet's
 * template (the last step the operator wrote; every pod restarted since runs it), else, with no
 * StatefulSet, the pods' own args (the lowest ordinal that has them). Null: nothing runs yet.
 */
export function observedLease(obs: Pick<ObservedState, 'statefulSet' | 'pods'>): LeaseSpec | null {
  const fromSts = leaseOfPodSpec(obs.statefulSet?.spec?.template?.spec);
  if (fromSts !== null) return fromSts;
  const pods = [...obs.pods].sort((a, b) => a.ordinal - b.ordinal);
  return pods.find((p) => p.lease !== undefined && p.lease !== null)?.lease ?? null;
}

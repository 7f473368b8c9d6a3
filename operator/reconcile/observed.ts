// What one reconcile pass sees: the CelerCluster, what it owns, and each node's /status.
// The controller builds this from its informer caches and HTTP calls; reconcile() reads it and
// nothing else, so tests construct it directly.

import type { V1StatefulSet } from '@kubernetes/client-node';
import type { NodeStatus } from '../../dataplane/server/status.ts';
import type { CelerCluster } from '../api/types.ts';

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
}

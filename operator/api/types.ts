// TypeScript shape of the CelerCluster custom resource (celer.io/v1alpha1). The OpenAPI schema
// in crds/celer.io_celerclusters.yaml is the source of truth for users; keep the two in step
// (api/crd.test.ts checks that every spec field named here exists in the schema).

import type { V1Affinity, V1ObjectMeta, V1ResourceRequirements, V1Toleration } from '@kubernetes/client-node';

export type Routing = 'org' | 'type' | 'id';
export type UpgradePolicy = 'automatic' | 'supervised';
export type DeletionPolicy = 'Retain' | 'Delete';

export interface StorageSpec {
  storageClassName?: string;
  /** A Kubernetes quantity, e.g. "100Gi". */
  size: string;
}

export interface PlacementSpec {
  nodeSelector?: Record<string, string>;
  tolerations?: V1Toleration[];
  /** Merged with the required pod anti-affinity on kubernetes.io/hostname the operator adds. */
  affinity?: V1Affinity;
}

export interface S3Spec {
  endpoint?: string;
  region?: string;
  bucket: string;
  /** Key prefix for everything the cluster writes; "" or ending in "/". */
  prefix?: string;
  /** Secret with keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY. */
  credentialsSecret?: string;
}

export interface LeaseSpec {
  leaseTtlMs: number;
  renewDeadlineMs: number;
  renewIntervalMs: number;
  maxClockDriftMs: number;
}

export interface TlsSpec {
  /** A kubernetes.io/tls Secret (tls.crt, tls.key, optional ca.crt) mounted into the nodes. */
  secretName: string;
}

export interface MonitoringSpec {
  /** Create a monitoring.coreos.com/v1 ServiceMonitor (only when that CRD is installed). */
  serviceMonitor?: boolean;
  /** Put prometheus.io/scrape, port and path annotations on the pods. */
  scrapeAnnotations?: boolean;
  /** Extra labels for the ServiceMonitor, e.g. the release label a Prometheus selects. */
  serviceMonitorLabels?: Record<string, string>;
}

export interface CelerClusterSpec {
  /** Image repository; the tag is `version`. */
  image?: string;
  version: string;
  imagePullPolicy?: 'Always' | 'IfNotPresent' | 'Never';
  /** Run every node with --standalone (no S3, no replication). */
  standalone?: boolean;
  replicas?: number;
  storage: StorageSpec;
  placement?: PlacementSpec;
  resources?: V1ResourceRequirements;
  s3?: S3Spec;
  lease?: Partial<LeaseSpec>;
  shards?: number;
  routing?: Routing;
  tls?: TlsSpec;
  monitoring?: MonitoringSpec;
  upgradePolicy?: UpgradePolicy;
  deletionPolicy?: DeletionPolicy;
}

export type ConditionType = 'Ready' | 'Progressing' | 'Degraded' | 'LeaseHealthy';
export type ConditionStatus = 'True' | 'False' | 'Unknown';

export interface Condition {
  type: ConditionType;
  status: ConditionStatus;
  reason: string;
  message: string;
  observedGeneration: number;
  lastTransitionTime: string;
}

export interface NodeStatusSummary {
  name: string;
  role: string;
  version: string;
  lagRecords: number | null;
  /** What the node reports as left of its lease (leader) or until it may challenge (follower), ms. */
  leaseRemainingMs?: number | null;
  ready: boolean;
}

export interface UpgradeStatus {
  /** `<version>-<template hash>`: what supervised approval must name. */
  targetRevision: string;
  /** Pods not yet running the target revision. */
  pendingPods: string[];
  /** The last POST /admin/step-down of this rollout, so it is not repeated while in progress. */
  stepDown?: { pod: string; at: string } | null;
}

export interface LeaseStatus {
  /** The lease timings the pods are configured with now (the operator steps towards spec). */
  effective: LeaseSpec;
  /** The spec's lease timings, once reached. */
  target: LeaseSpec;
}

export interface CelerClusterStatus {
  phase?: string;
  reason?: string;
  leader?: string | null;
  epoch?: number;
  readyReplicas?: string;
  nodes?: NodeStatusSummary[];
  conditions?: Condition[];
  observedGeneration?: number;
  upgrade?: UpgradeStatus | null;
  lease?: LeaseStatus | null;
  /** shards/routing the data was created with; the operator refuses later changes. */
  dataLayout?: { shards: number | null; routing: Routing; s3Bucket: string | null; s3Prefix: string | null } | null;
}

export interface CelerCluster {
  apiVersion: string;
  kind: string;
  metadata: V1ObjectMeta & { name: string; namespace: string };
  spec: CelerClusterSpec;
  status?: CelerClusterStatus;
}

// Builders of observed states for reconcile tests: a cluster, its pods and their /status.

import type { V1StatefulSet } from '@kubernetes/client-node';
import type { NodeRole, NodeStatus } from '../../dataplane/server/status.ts';
import type { CelerCluster, CelerClusterSpec, CelerClusterStatus } from '../api/types.ts';
import type { ObservedNode, ObservedPod, ObservedState } from './observed.ts';
import { ANNOTATION_TEMPLATE_HASH } from '../api/constants.ts';
import { reconcile } from './reconcile.ts';

export const NOW_MS = Date.parse('2026-09-01T12:00:00Z');

export const standaloneSpec: CelerClusterSpec = { version: '1.0.0', storage: { size: '10Gi' }, shards: 4 };
export const twoNodeSpec: CelerClusterSpec = {
  version: '1.0.0', storage: { size: '10Gi' }, standalone: false, replicas: 2, shards: 4,
  s3: { bucket: 'celer-test', prefix: 'c1/' },
};

export function cluster(spec: CelerClusterSpec, extra: { status?: CelerClusterStatus; annotations?: Record<string, string>; finalizers?: string[]; deleting?: boolean; generation?: number } = {}): CelerCluster {
  return {
    apiVersion: 'celer.io/v1alpha1',
    kind: 'CelerCluster',
    metadata: {
      name: 'c1', namespace: 'ns', uid: 'uid-1', generation: extra.generation ?? 1,
      ...(extra.annotations !== undefined ? { annotations: extra.annotations } : {}),
      ...(extra.finalizers !== undefined ? { finalizers: extra.finalizers } : {}),
      ...(extra.deleting === true ? { deletionTimestamp: new Date(NOW_MS - 1000) } : {}),
    },
    spec,
    ...(extra.status !== undefined ? { status: extra.status } : {}),
  };
}

export interface PodSketch {
  ordinal: number;
  hash: string | null;
  ready?: boolean;
  terminating?: boolean;
  roleLabel?: string | null;
  /** /status role; null = /status unavailable. */
  role?: NodeRole | null;
  epoch?: number;
  /** Only meaningful on the leader: the follower's lag. */
  peerLag?: number | null;
  version?: string;
  /** The Kubernetes node the pod is bound to (spec.nodeName). */
  kubeNode?: string;
}

export function nodeStatus(p: PodSketch): NodeStatus {
  return {
    nodeId: `c1-${p.ordinal}`, version: p.version ?? '1.0.0', role: p.role ?? 'standalone', epoch: p.epoch ?? 0,
    leaseExpiresAtMs: p.role === 'leader' ? NOW_MS + 1000 : null, leader: null,
    leaseRemainingMs: p.role === 'leader' ? 1000 : null,
    listen: { client: '0.0.0.0:7400', grpc: null, http: '0.0.0.0:7401' }, ready: p.ready ?? true,
    numShards: 4, routing: 'id', shards: [{ shard: 0, state: 'serving', writeSeq: '10', commitSeq: '10' }],
    peer: p.role === 'standalone' || p.role === undefined ? null : { address: null, lagRecords: p.peerLag ?? null },
  };
}

export function observe(c: CelerCluster, pods: PodSketch[], stsHash: string | null, extra: Partial<ObservedState> = {}): ObservedState {
  const observedPods: ObservedPod[] = pods.map((p) => ({
    name: `c1-${p.ordinal}`, ordinal: p.ordinal, templateHash: p.hash, ready: p.ready ?? true,
    terminating: p.terminating ?? false, roleLabel: p.roleLabel ?? null, phase: 'Running',
    ...(p.kubeNode !== undefined ? { nodeName: p.kubeNode } : {}),
  }));
  const nodes: Record<string, ObservedNode> = {};
  for (const p of pods) {
    nodes[`c1-${p.ordinal}`] = p.role === null ? { status: null, error: 'connect ECONNREFUSED' } : { status: nodeStatus(p) };
  }
  const statefulSet: V1StatefulSet | null = stsHash === null ? null : {
    metadata: { name: 'c1' },
    spec: {
      selector: {}, serviceName: 'c1-nodes',
      template: { metadata: { annotations: { [ANNOTATION_TEMPLATE_HASH]: stsHash } } },
      volumeClaimTemplates: [{ metadata: { name: 'data' }, spec: { resources: { requests: { storage: '10Gi' } } } }],
    },
  };
  return {
    cluster: c, statefulSet, pods: observedPods, nodes, owned: [],
    capabilities: { pdbApiVersion: 'policy/v1beta1', serviceMonitor: false }, nowMs: NOW_MS, defaultImage: 'celer',
    ...extra,
  };
}

/** The pod template hash reconcile wants for `c` (from a pass over an empty observation). */
export function desiredHash(c: CelerCluster): string {
  const r = reconcile(observe(c, [], null));
  const sts = r.apply.find((o) => o.kind === 'StatefulSet') as V1StatefulSet | undefined;
  const hash = sts?.spec?.template.metadata?.annotations?.[ANNOTATION_TEMPLATE_HASH];
  if (hash === undefined) throw new Error('reconcile produced no StatefulSet');
  return hash;
}

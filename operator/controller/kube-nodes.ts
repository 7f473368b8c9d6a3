// Kubernetes Nodes, for drains (reconcile/drain.ts): which nodes are cordoned
// (spec.unschedulable, what `kubectl drain` sets first), and which clusters a Node change
// concerns, those with a pod bound to it. Cluster-scoped and unlabelled, so the controller
// watches all Nodes (chart ClusterRole: get/list/watch nodes) and maps a change to clusters
// through its pod cache instead of ownerKey().

import type { KubernetesObject, V1Node, V1Pod } from '@kubernetes/client-node';
import type { ResourceRef } from './kube-sources.ts';
import { LABEL_CLUSTER } from '../api/constants.ts';

export const NODES_REF: ResourceRef = { apiVersion: 'v1', kind: 'Node', plural: 'nodes', namespace: null };

/** Only a cordon or uncordon matters: Node status (heartbeats, every ~10 s per node) never does. */
export function nodeChangeMatters(before: V1Node, after: V1Node): boolean {
  return (before.spec?.unschedulable === true) !== (after.spec?.unschedulable === true);
}

/** Names of the cordoned nodes, sorted. */
export function unschedulableNodeNames(nodes: readonly V1Node[]): string[] {
  return nodes.filter((n) => n.spec?.unschedulable === true).map((n) => n.metadata?.name ?? '').filter((n) => n !== '').sort();
}

/** Work-queue keys of the clusters with a pod on `node`. */
export function clustersOnNode(node: string, pods: readonly (V1Pod & KubernetesObject)[]): string[] {
  const keys = new Set<string>();
  for (const p of pods) {
    const cluster = p.metadata?.labels?.[LABEL_CLUSTER];
    if (p.spec?.nodeName === node && cluster !== undefined && p.metadata?.namespace !== undefined) keys.add(`${p.metadata.namespace}/${cluster}`);
  }
  return [...keys].sort();
}

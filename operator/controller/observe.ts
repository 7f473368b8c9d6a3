// From cached Kubernetes objects to reconcile's ObservedState, and from any watched object to
// the key of the CelerCluster that owns it.

import type { KubernetesObject, V1Pod } from '@kubernetes/client-node';
import type { ObservedPod } from '../reconcile/observed.ts';
import { ANNOTATION_TEMPLATE_HASH, LABEL_CLUSTER, LABEL_ROLE } from '../api/constants.ts';
import { podOrdinal } from '../reconcile/names.ts';
import { leaseOfPodSpec } from '../reconcile/observed.ts';

/** Work-queue key of the CelerCluster an object belongs to; null for objects not ours. */
export function ownerKey(obj: KubernetesObject): string | null {
  const ns = obj.metadata?.namespace;
  if (ns === undefined) return null;
  if (obj.kind === 'CelerCluster') return obj.metadata?.name === undefined ? null : `${ns}/${obj.metadata.name}`;
  const cluster = obj.metadata?.labels?.[LABEL_CLUSTER];
  return cluster === undefined || cluster === '' ? null : `${ns}/${cluster}`;
}

export function splitKey(key: string): { namespace: string; name: string } {
  const i = key.indexOf('/');
  return { namespace: key.slice(0, i), name: key.slice(i + 1) };
}

/** A pod of `cluster` as reconcile sees it; null for a pod whose name is not `<cluster>-<n>`. */
export function observedPod(cluster: string, pod: V1Pod): ObservedPod | null {
  const name = pod.metadata?.name ?? '';
  const ordinal = podOrdinal(cluster, name);
  if (ordinal === null) return null;
  const ready = (pod.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
  const deletion = pod.metadata?.deletionTimestamp;
  return {
    name,
    ordinal,
    templateHash: pod.metadata?.annotations?.[ANNOTATION_TEMPLATE_HASH] ?? null,
    ready,
    terminating: deletion !== undefined && deletion !== null,
    roleLabel: pod.metadata?.labels?.[LABEL_ROLE] ?? null,
    phase: pod.status?.phase ?? 'Unknown',
    lease: leaseOfPodSpec(pod.spec),
    terminationMessages: (pod.status?.containerStatuses ?? []).flatMap((c) => [c.state?.terminated?.message, c.lastState?.terminated?.message])
      .filter((m): m is string => m !== undefined && m !== ''),
    nodeName: pod.spec?.nodeName ?? null,
  };
}

// Which watched changes are worth a reconcile, and which status changes are worth a write.
//
// Every status write is itself a MODIFIED event of the CelerCluster, and status carries figures
// that move all the time (the follower's lag, condition messages quoting it). Enqueuing on every
// event made each write trigger the next pass, which re-applied every object and wrote status
// again: a loop as fast as the apiserver answers. So a cluster is enqueued only for changes the
// user or another controller makes (generation, labels, annotations, finalizers, deletion), a pod
// for what reconcile reads of it, and the status is patched only when something other than the
// volatile figures changed, or when the last write is a resync period old.

import type { KubernetesObject, V1Pod } from '@kubernetes/client-node';
import type { CelerClusterStatus } from '../api/types.ts';

type Meta = KubernetesObject['metadata'];

function same(a: unknown, b: unknown): boolean {
  return JSON.stringify(a ?? null) === JSON.stringify(b ?? null);
}

function metadataChanged(a: Meta, b: Meta): boolean {
  return !same(a?.labels, b?.labels) || !same(a?.annotations, b?.annotations) || !same(a?.finalizers, b?.finalizers)
    || !same(a?.deletionTimestamp, b?.deletionTimestamp) || !same(a?.ownerReferences, b?.ownerReferences);
}

/** A CelerCluster update that is not only a status write (status is /status: it never moves generation). */
export function clusterChangeMatters(before: KubernetesObject, after: KubernetesObject): boolean {
  return before.metadata?.generation !== after.metadata?.generation || metadataChanged(before.metadata, after.metadata);
}

function ready(p: V1Pod): boolean {
  return (p.status?.conditions ?? []).some((c) => c.type === 'Ready' && c.status === 'True');
}

/** A pod update that changes what reconcile observes: spec, labels, annotations, readiness, phase, IP, deletion. */
export function podChangeMatters(before: V1Pod, after: V1Pod): boolean {
  return metadataChanged(before.metadata, after.metadata) || !same(before.spec, after.spec) || ready(before) !== ready(after)
    || before.status?.phase !== after.status?.phase || before.status?.podIP !== after.status?.podIP;
}

/** Other owned objects (StatefulSet, Services, PVCs): their spec or metadata, never their status alone. */
export function ownedChangeMatters(before: KubernetesObject, after: KubernetesObject): boolean {
  const spec = (o: KubernetesObject): unknown => (o as { spec?: unknown }).spec;
  return before.metadata?.generation !== after.metadata?.generation || metadataChanged(before.metadata, after.metadata)
    || !same(spec(before), spec(after));
}

/**
 * The status without its volatile figures: per-node lag and lease remaining, and condition messages (which quote lag
 * and pod names while a gate holds). Two statuses with the same projection need no new write
 * within a resync period; transitions (condition status or reason, phase, leader, epoch,
 * readiness, upgrade progress, lease step) always get one.
 */
export function stableStatus(s: CelerClusterStatus | undefined): string {
  if (s === undefined) return 'null';
  return JSON.stringify({
    ...s,
    nodes: s.nodes?.map((n) => ({
      ...n,
      lagRecords: n.lagRecords === null ? null : 'known',
      leaseRemainingMs: n.leaseRemainingMs === null || n.leaseRemainingMs === undefined ? null : 'known',
    })),
    conditions: s.conditions?.map((c) => ({ ...c, message: '' })),
  });
}

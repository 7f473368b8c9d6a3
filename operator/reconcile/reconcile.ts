// reconcile(): observed state in, desired state out. Pure: no I/O, no clock, no randomness,
// so every situation an operator meets (a fresh cluster, a lost pod, an upgrade interrupted by
// an operator restart, a paused or invalid cluster, deletion) is a unit test. The controller
// executes the result: server-side apply of `apply`, deletion of `prune`, `actions` in order
// (stopping at the first failure), the finalizer change, `events`, then the status.

import type { KubernetesObject } from '@kubernetes/client-node';
import type { CelerClusterStatus, LeaseSpec, S3Spec } from '../api/types.ts';
import type { ConditionInput } from './conditions.ts';
import type { Gate } from './gates.ts';
import { observedLease, type ObservedState, type OwnedRef } from './observed.ts';
import type { RolloutPod, RolloutStep } from './rollout.ts';
import type { ClusterView } from './node-view.ts';
import { ANNOTATION_APPROVE_UPGRADE, ANNOTATION_PAUSED, ANNOTATION_TEMPLATE_HASH, FINALIZER, S3_LEASE_OBJECT_KEYS } from '../api/constants.ts';
import { withDefaults, type DefaultedSpec } from '../api/defaults.ts';
import { describeIssues, validateSpec } from '../api/validate.ts';
import { mergeConditions } from './conditions.ts';
import { identityMismatch } from './identity.ts';
import { handoverTtlMs, nextLeaseStep } from './lease-timing.ts';
import { desiredRoleLabel, summarize, viewNodes } from './node-view.ts';
import { planRollout } from './rollout.ts';
import { planDrain } from './drain.ts';
import { configMap } from './objects/config-map.ts';
import { leaderDisruptionBudget, podDisruptionBudget } from './objects/pdb.ts';
import { nodeRole, nodeRoleBinding, nodeServiceAccount } from './objects/rbac.ts';
import { serviceMonitor } from './objects/service-monitor.ts';
import { clientService, headlessService } from './objects/services.ts';
import { observedStorage, statefulSet } from './objects/statefulset.ts';

/** Steady state: /status (lag, epoch, role) changes without a watch event, so poll it every 30 s. */
export const RESYNC_MS = 30_000;
/** While a gate holds or pods recover, look again every 2 s: the readiness probe's period. */
export const PROGRESS_POLL_MS = 2_000;
/** After a step-down, two TTLs for the follower to see the released lease and promote, plus 5 s of polling. */
export function stepDownWaitMs(lease: LeaseSpec): number {
  return 2 * lease.leaseTtlMs + 5_000;
}

export type Action =
  | { kind: 'deletePod'; pod: string }
  | { kind: 'stepDown'; pod: string; handoverTtlMs: number }
  | { kind: 'labelPod'; pod: string; role: string }
  | { kind: 'deleteS3LeaseObjects'; s3: S3Spec; keys: readonly string[] };

export interface ClusterEvent {
  type: 'Normal' | 'Warning';
  reason: string;
  message: string;
  /**
   * Identity for deduplication when the message carries volatile figures (a gate's wait quotes
   * the current lag): the same key within the dedup window is one Event. Default: reason + message.
   */
  key?: string;
}

export interface ReconcileResult {
  /** Objects to server-side apply, in order (the StatefulSet after what it references). */
  apply: KubernetesObject[];
  /** Owned objects that are no longer desired. */
  prune: OwnedRef[];
  actions: Action[];
  events: ClusterEvent[];
  finalizer: 'add' | 'remove' | null;
  status: CelerClusterStatus;
  /** The gate holding a rollout back, for the deferral metric; null when none. */
  deferredGate: Gate | null;
  requeueAfterMs: number;
}

function baseResult(status: CelerClusterStatus): ReconcileResult {
  return { apply: [], prune: [], actions: [], events: [], finalizer: null, status, deferredGate: null, requeueAfterMs: RESYNC_MS };
}

/** Ready and LeaseHealthy as observed, whatever the operator is allowed to do about them. */
function observedConditions(view: ClusterView, spec: DefaultedSpec): { ready: ConditionInput; lease: ConditionInput } {
  const leaderOk = spec.standalone || view.leader !== null;
  const ready: ConditionInput = view.readyCount >= spec.replicas && leaderOk
    ? { type: 'Ready', status: 'True', reason: 'NodesReady', message: `${view.readyCount}/${spec.replicas} nodes ready` }
    : !leaderOk
      ? { type: 'Ready', status: 'False', reason: 'NoLeader', message: 'no node reports itself leader' }
      : { type: 'Ready', status: 'False', reason: 'PodNotReady', message: `${view.readyCount}/${spec.replicas} nodes ready` };
  let lease: ConditionInput;
  if (spec.standalone) {
    lease = { type: 'LeaseHealthy', status: 'True', reason: 'Standalone', message: 'standalone nodes hold no lease' };
  } else if (view.leader === null) {
    lease = { type: 'LeaseHealthy', status: 'False', reason: 'NoLeader', message: 'no node holds the lease' };
  } else if (view.leader.leaseRemainingMs === null) {
    lease = { type: 'LeaseHealthy', status: 'Unknown', reason: 'LeaseUnknown', message: `${view.leader.pod} reports no remaining lease time` };
  } else if (view.leader.leaseRemainingMs > 0) {
    // Measured by the leader on its own clock: no comparison of two machines' wall clocks.
    lease = { type: 'LeaseHealthy', status: 'True', reason: 'LeaseHeld',
      message: `${view.leader.pod} holds the lease at epoch ${view.leader.epoch ?? 0}` };
  } else {
    lease = { type: 'LeaseHealthy', status: 'False', reason: 'LeaseExpired', message: `${view.leader.pod} reports no authority left on its lease` };
  }
  return { ready, lease };
}

function statusBase(obs: ObservedState, spec: DefaultedSpec, view: ClusterView): CelerClusterStatus {
  const prev = obs.cluster.status ?? {};
  return {
    ...prev,
    leader: view.leader?.pod ?? null,
    epoch: view.leader?.epoch ?? prev.epoch ?? 0,
    readyReplicas: `${view.readyCount}/${spec.replicas}`,
    nodes: summarize(view),
    observedGeneration: obs.cluster.metadata.generation ?? 0,
  };
}

function withConditions(obs: ObservedState, status: CelerClusterStatus, conditions: ConditionInput[]): CelerClusterStatus {
  const nowIso = new Date(obs.nowMs).toISOString();
  return { ...status, conditions: mergeConditions(obs.cluster.status?.conditions, conditions, obs.cluster.metadata.generation ?? 0, nowIso) };
}

export function reconcile(obs: ObservedState): ReconcileResult {
  const cluster = obs.cluster;
  const spec = withDefaults(cluster.spec, obs.defaultImage);
  const view = viewNodes(obs, spec.standalone);
  const base = statusBase(obs, spec, view);
  const { ready, lease } = observedConditions(view, spec);
  const hasFinalizer = (cluster.metadata.finalizers ?? []).includes(FINALIZER);

  if (cluster.metadata.deletionTimestamp !== undefined && cluster.metadata.deletionTimestamp !== null) {
    return reconcileDeletion(obs, spec, base, hasFinalizer, [ready, lease]);
  }

  if (cluster.metadata.annotations?.[ANNOTATION_PAUSED] === 'true') {
    const status = withConditions(obs, { ...base, phase: 'Paused', reason: 'Paused' }, [
      ready,
      { type: 'Progressing', status: 'False', reason: 'Paused', message: `${ANNOTATION_PAUSED} is "true": the operator changes nothing` },
      { type: 'Degraded', status: 'False', reason: 'Paused', message: 'not evaluated while paused' },
      lease,
    ]);
    return baseResult(status);
  }

  const prev = cluster.status ?? {};
  const issues = validateSpec(cluster.spec, {
    shards: prev.dataLayout?.shards,
    routing: prev.dataLayout?.routing,
    s3Bucket: prev.dataLayout?.s3Bucket,
    s3Prefix: prev.dataLayout?.s3Prefix,
    storage: observedStorage(obs.statefulSet),
  });
  if (issues.length > 0) {
    const message = describeIssues(issues);
    const status = withConditions(obs, { ...base, phase: 'Invalid spec', reason: 'InvalidSpec' }, [
      { ...ready, status: 'False', reason: 'InvalidSpec', message },
      { type: 'Progressing', status: 'False', reason: 'InvalidSpec', message: 'the operator acts on no invalid spec; fix it to continue' },
      { type: 'Degraded', status: 'True', reason: 'InvalidSpec', message },
      lease,
    ]);
    const result = baseResult(status);
    result.events.push({ type: 'Warning', reason: 'InvalidSpec', message });
    return result;
  }
  return reconcileValid(obs, spec, view, base, hasFinalizer, { ready, lease });
}

function reconcileDeletion(
  obs: ObservedState, spec: DefaultedSpec, base: CelerClusterStatus, hasFinalizer: boolean, observed: ConditionInput[],
): ReconcileResult {
  const status = withConditions(obs, { ...base, phase: 'Deleting', reason: 'Deleting' }, [
    observed[0]!,
    { type: 'Progressing', status: 'True', reason: 'Deleting', message: 'the CelerCluster is being deleted' },
    { type: 'Degraded', status: 'False', reason: 'Deleting', message: 'the CelerCluster is being deleted' },
    observed[1]!,
  ]);
  const result = baseResult(status);
  if (!hasFinalizer) return result;
  if (spec.deletionPolicy === 'Delete' && spec.s3 !== undefined) {
    result.actions.push({ kind: 'deleteS3LeaseObjects', s3: spec.s3, keys: S3_LEASE_OBJECT_KEYS });
    result.events.push({ type: 'Normal', reason: 'DeletingLeaseObjects', message: `deleting lease objects under s3://${spec.s3.bucket}/${spec.s3.prefix ?? ''}` });
  }
  result.finalizer = 'remove';
  return result;
}

function rolloutPods(view: ClusterView, desiredHash: string): RolloutPod[] {
  return view.nodes.map((n) => ({
    name: n.pod, ordinal: n.ordinal, upToDate: n.templateHash === desiredHash, ready: n.ready,
    terminating: n.terminating, role: n.role, lagRecords: n.lagRecords,
  }));
}

function reconcileValid(
  obs: ObservedState, spec: DefaultedSpec, view: ClusterView, base: CelerClusterStatus, hasFinalizer: boolean,
  observed: { ready: ConditionInput; lease: ConditionInput },
): ReconcileResult {
  const cluster = obs.cluster;
  const prev = cluster.status ?? {};
  const result = baseResult(base);

  // Lease timings: two-node clusters step towards the spec in a safe order (lease-timing.ts),
  // from what the StatefulSet (or, without one, the pods) runs: never from status, which may be
  // lost or stale, so a lost status cannot skip the intermediate step.
  const current = spec.standalone ? null : observedLease(obs);
  const currentHash = current === null ? null : statefulSet(cluster, spec, current).templateHash;
  const settled = view.nodes.length === spec.replicas && view.nodes.every((n) => n.ready && !n.terminating && n.templateHash === currentHash);
  const leaseStep = nextLeaseStep(current, spec.lease, settled);
  const plan = statefulSet(cluster, spec, leaseStep.effective);

  result.apply.push(
    nodeServiceAccount(cluster), nodeRole(cluster), nodeRoleBinding(cluster), configMap(cluster, spec, leaseStep.effective),
    headlessService(cluster), clientService(cluster), plan.statefulSet,
  );
  if (obs.capabilities.pdbApiVersion !== null) {
    result.apply.push(podDisruptionBudget(cluster, obs.capabilities.pdbApiVersion));
    if (!spec.standalone) result.apply.push(leaderDisruptionBudget(cluster, obs.capabilities.pdbApiVersion));
  }
  if (spec.monitoring.serviceMonitor) {
    if (obs.capabilities.serviceMonitor) result.apply.push(serviceMonitor(cluster, spec));
    else result.events.push({ type: 'Warning', reason: 'ServiceMonitorUnavailable', message: 'spec.monitoring.serviceMonitor is set but the monitoring.coreos.com CRDs are not installed' });
  }
  const desiredKinds = new Set(result.apply.map((o) => `${o.kind}/${o.metadata?.name ?? ''}`));
  result.prune = obs.owned.filter((o) => !desiredKinds.has(`${o.kind}/${o.name}`));

  const needsFinalizer = spec.deletionPolicy === 'Delete' && spec.s3 !== undefined;
  if (needsFinalizer && !hasFinalizer) result.finalizer = 'add';
  if (!needsFinalizer && hasFinalizer) result.finalizer = 'remove';

  for (const n of view.nodes) {
    const role = desiredRoleLabel(n, view.leader, spec.standalone, { pod: prev.leader ?? null, epoch: prev.epoch ?? 0 });
    if (role !== null && role !== n.roleLabel && !n.terminating) result.actions.push({ kind: 'labelPod', pod: n.pod, role });
  }

  const targetRevision = `${spec.version}-${plan.templateHash}`;
  const stsHash = obs.statefulSet?.spec?.template?.metadata?.annotations?.[ANNOTATION_TEMPLATE_HASH];
  const stepDownPrev = prev.upgrade?.stepDown ?? null;
  const rolloutStep = planRollout({
    standalone: spec.standalone,
    replicas: spec.replicas,
    pods: rolloutPods(view, plan.templateHash),
    statefulSetUpToDate: stsHash === plan.templateHash,
    supervised: spec.upgradePolicy === 'supervised',
    approved: cluster.metadata.annotations?.[ANNOTATION_APPROVE_UPGRADE] === targetRevision,
    stepDown: stepDownPrev === null ? null : { pod: stepDownPrev.pod, atMs: Date.parse(stepDownPrev.at) },
    nowMs: obs.nowMs,
    stepDownWaitMs: stepDownWaitMs(leaseStep.effective),
  });
  // No rollout step to take: a cordoned leader's node (a drain) may need a switchover.
  const step = rolloutStep.kind !== 'idle' ? rolloutStep : drainStep(obs, spec, view, stepDownPrev, leaseStep.effective);
  applyStep(result, step, leaseStep.effective);

  const pendingPods = view.nodes.filter((n) => n.templateHash !== plan.templateHash).map((n) => n.pod);
  const stepDown = step.kind === 'stepDown' ? { pod: step.pod, at: new Date(obs.nowMs).toISOString() } : stepDownPrev;
  // The last restarted pod coming back is still part of the upgrade, not a fault.
  const finishing = step.kind === 'idle' && prev.upgrade !== undefined && prev.upgrade !== null && view.readyCount < spec.replicas;
  const status: CelerClusterStatus = {
    ...base,
    upgrade: step.kind === 'idle' && !finishing ? null : { targetRevision, pendingPods, stepDown },
    lease: spec.standalone ? null : { effective: leaseStep.effective, target: spec.lease },
    dataLayout: {
      shards: prev.dataLayout?.shards ?? spec.shards ?? null,
      routing: prev.dataLayout?.routing ?? spec.routing,
      s3Bucket: prev.dataLayout?.s3Bucket ?? spec.s3?.bucket ?? null,
      s3Prefix: prev.dataLayout?.s3Prefix ?? (spec.s3 === undefined ? null : spec.s3.prefix ?? ''),
    },
  };
  const { phase, reason, progressing, degraded } = describeProgress(obs, spec, view, step, leaseStep.done, finishing);
  status.phase = phase;
  status.reason = reason;
  result.status = withConditions(obs, status, [observed.ready, progressing, degraded, observed.lease]);
  const busy = step.kind !== 'idle' || !leaseStep.done || view.readyCount < spec.replicas;
  result.requeueAfterMs = busy ? PROGRESS_POLL_MS : RESYNC_MS;
  return result;
}

function drainStep(
  obs: ObservedState, spec: DefaultedSpec, view: ClusterView, stepDownPrev: { pod: string; at: string } | null, lease: LeaseSpec,
): RolloutStep {
  const cordoned = new Set(obs.unschedulableNodes ?? []);
  const nodeOf = new Map(obs.pods.map((p) => [p.name, p.nodeName ?? null]));
  const step = planDrain({
    standalone: spec.standalone,
    pods: view.nodes.map((n) => {
      const nodeName = nodeOf.get(n.pod) ?? null;
      return { name: n.pod, ready: n.ready, terminating: n.terminating, role: n.role, lagRecords: n.lagRecords, nodeUnschedulable: nodeName !== null && cordoned.has(nodeName) };
    }),
    stepDown: stepDownPrev === null ? null : { pod: stepDownPrev.pod, atMs: Date.parse(stepDownPrev.at) },
    nowMs: obs.nowMs,
    stepDownWaitMs: stepDownWaitMs(lease),
  });
  return step.kind === 'wait' ? { kind: 'wait', gate: step.gate, phase: step.phase, message: step.message, reason: step.reason } : step;
}

function applyStep(result: ReconcileResult, step: RolloutStep, lease: LeaseSpec): void {
  switch (step.kind) {
    case 'idle':
      return;
    case 'wait':
      result.deferredGate = step.gate;
      // One Event per gate and phase of a wait, not one per pass as its message's lag moves.
      result.events.push({ type: 'Normal', reason: step.reason ?? step.gate, message: step.message, key: `${step.reason ?? step.gate}/${step.phase}` });
      return;
    case 'deletePod':
      result.actions.push({ kind: 'deletePod', pod: step.pod });
      result.events.push({ type: 'Normal', reason: step.reason, message: step.message });
      return;
    case 'stepDown':
      result.actions.push({ kind: 'stepDown', pod: step.pod, handoverTtlMs: handoverTtlMs(lease) });
      result.events.push({ type: 'Normal', reason: 'SteppingDownLeader', message: step.message });
      return;
    default: {
      const never: never = step;
      throw new Error(`unknown rollout step ${JSON.stringify(never)}`);
    }
  }
}

interface Progress {
  phase: string;
  reason: string;
  progressing: ConditionInput;
  degraded: ConditionInput;
}

function describeProgress(
  obs: ObservedState, spec: DefaultedSpec, view: ClusterView, step: RolloutStep, leaseDone: boolean, finishing: boolean,
): Progress {
  const failed = view.nodes.flatMap((n) => n.failedShards.map((f) => `${n.pod}: ${f}`));
  const missing = spec.replicas - view.readyCount;
  const creating = obs.statefulSet === null || ['Creating', undefined].includes(obs.cluster.status?.phase);
  let degraded: ConditionInput = { type: 'Degraded', status: 'False', reason: 'AsExpected', message: 'no fault observed' };
  const identity = identityMismatch(obs.pods);
  if (identity !== null) degraded = identity;
  else if (failed.length > 0) degraded = { type: 'Degraded', status: 'True', reason: 'ShardFailed', message: failed.join('; ') };
  else if (missing > 0 && step.kind === 'idle' && !creating && !finishing) {
    degraded = { type: 'Degraded', status: 'True', reason: 'PodNotReady', message: `${missing} of ${spec.replicas} nodes not ready` };
  }

  switch (step.kind) {
    case 'idle': {
      if (!leaseDone) {
        return { phase: 'Changing lease timings', reason: 'LeaseTimingsChanging', degraded,
          progressing: { type: 'Progressing', status: 'True', reason: 'LeaseTimingsChanging', message: 'rolling the next safe step of the lease timings' } };
      }
      if (finishing) {
        const waiting = view.nodes.filter((n) => !n.ready || n.terminating).map((n) => n.pod);
        const message = `waiting for ${waiting.length > 0 ? waiting.join(', ') : 'restarted pods'} to be Ready`;
        return { phase: 'Finishing upgrade', reason: 'PodReady', degraded,
          progressing: { type: 'Progressing', status: 'True', reason: 'PodReady', message } };
      }
      if (missing > 0) {
        const phase = creating ? 'Creating' : 'Recovering';
        return { phase, reason: creating ? 'Creating' : 'PodNotReady', degraded,
          progressing: { type: 'Progressing', status: 'True', reason: phase, message: `waiting for ${missing} node(s) to be ready` } };
      }
      return { phase: 'Running', reason: 'NodesReady', degraded,
        progressing: { type: 'Progressing', status: 'False', reason: 'UpToDate', message: `every node runs ${spec.version}` } };
    }
    case 'wait':
      return { phase: step.phase, reason: step.reason ?? step.gate, degraded,
        progressing: { type: 'Progressing', status: 'True', reason: step.reason ?? step.gate, message: step.message } };
    case 'deletePod':
      return { phase: step.phase, reason: step.reason, degraded,
        progressing: { type: 'Progressing', status: 'True', reason: step.reason, message: step.message } };
    case 'stepDown':
      return { phase: step.phase, reason: 'SteppingDownLeader', degraded,
        progressing: { type: 'Progressing', status: 'True', reason: 'SteppingDownLeader', message: step.message } };
    default: {
      const never: never = step;
      throw new Error(`unknown rollout step ${JSON.stringify(never)}`);
    }
  }
}

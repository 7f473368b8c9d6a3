// Carries out a ReconcileResult against the cluster. Order matters:
//  0. relabel pods first (celer.io/role): the client Service follows a new leader at once, and
//     a label depends on nothing else here;
//  1. add the finalizer first, so S3 cleanup is owed before any node can write to S3;
//  2. server-side apply the desired objects (field manager celer-operator, forced: the
//     operator owns these fields), then delete owned objects no longer desired;
//  3. run actions in order and stop at the first failure: a deletePod after a failed apply
//     could restart a pod onto the old template;
//  4. remove the finalizer only when every action (the S3 cleanup) succeeded;
//  5. record events, then write status last, so status never claims what did not happen.

import type { KubernetesObject } from '@kubernetes/client-node';
import type { CelerCluster, CelerClusterStatus, S3Spec } from '../api/types.ts';
import type { OwnedRef } from '../reconcile/observed.ts';
import type { Action, ClusterEvent, ReconcileResult } from '../reconcile/reconcile.ts';
import { LABEL_ROLE } from '../api/constants.ts';

/** Everything the executor needs from the Kubernetes API; kube-ops.ts implements it. */
export interface KubeOps {
  apply(obj: KubernetesObject): Promise<void>;
  deleteOwned(namespace: string, ref: OwnedRef): Promise<void>;
  deletePod(namespace: string, name: string): Promise<void>;
  labelPod(namespace: string, name: string, labels: Record<string, string>): Promise<void>;
  addFinalizer(cluster: CelerCluster): Promise<void>;
  removeFinalizer(cluster: CelerCluster): Promise<void>;
  patchStatus(cluster: CelerCluster, status: CelerClusterStatus): Promise<void>;
  recordEvent(cluster: CelerCluster, event: ClusterEvent): Promise<void>;
}

export interface NodeOps {
  stepDown(cluster: CelerCluster, pod: string, handoverTtlMs: number): Promise<void>;
  deleteS3LeaseObjects(cluster: CelerCluster, s3: S3Spec, keys: readonly string[]): Promise<void>;
}

export interface ExecutionReport {
  /** Names of actions carried out, for the actions metric. */
  done: Action['kind'][];
  /** The first error, if any; the controller retries with backoff. */
  error: { stage: string; err: unknown } | null;
  /** The status was patched (false: skipped as unchanged, or the patch failed). */
  statusWritten: boolean;
}

export interface ExecuteOptions {
  /** True when writing `status` would change nothing that matters (triggers.ts stableStatus); the patch is skipped. */
  statusUnchanged?: (status: CelerClusterStatus) => boolean;
}

export async function execute(
  cluster: CelerCluster, result: ReconcileResult, kube: KubeOps, nodes: NodeOps, options: ExecuteOptions = {},
): Promise<ExecutionReport> {
  const report: ExecutionReport = { done: [], error: null, statusWritten: false };
  const ns = cluster.metadata.namespace;
  const step = async (stage: string, fn: () => Promise<void>): Promise<boolean> => {
    if (report.error !== null) return false;
    try {
      await fn();
      return true;
    } catch (err) {
      report.error = { stage, err };
      return false;
    }
  };

  const labels = result.actions.filter((a) => a.kind === 'labelPod');
  for (const action of labels) {
    const ok = await step(`action ${action.kind}`, () => runAction(cluster, action, kube, nodes));
    if (ok) report.done.push(action.kind);
  }
  if (result.finalizer === 'add') await step('finalizer', () => kube.addFinalizer(cluster));
  for (const obj of result.apply) await step(`apply ${obj.kind}/${obj.metadata?.name}`, () => kube.apply(obj));
  for (const ref of result.prune) await step(`prune ${ref.kind}/${ref.name}`, () => kube.deleteOwned(ns, ref));
  for (const action of result.actions.filter((a) => a.kind !== 'labelPod')) {
    const ok = await step(`action ${action.kind}`, () => runAction(cluster, action, kube, nodes));
    if (ok) report.done.push(action.kind);
  }
  if (result.finalizer === 'remove') await step('finalizer', () => kube.removeFinalizer(cluster));

  // Events and status are written even after a failure: they are how the failure is seen.
  for (const event of result.events) {
    try {
      await kube.recordEvent(cluster, event);
    } catch {
      // An event that cannot be recorded must not block the status update.
    }
  }
  const status: CelerClusterStatus = report.error === null ? result.status : {
    ...result.status,
    reason: 'ReconcileError',
    conditions: result.status.conditions?.map((c) => c.type === 'Degraded' && c.status !== 'True'
      ? { ...c, status: 'True', reason: 'ReconcileError', message: `${report.error!.stage}: ${describe(report.error!.err)}` }
      : c),
  };
  if (report.error === null && options.statusUnchanged?.(status) === true) return report;
  try {
    await kube.patchStatus(cluster, status);
    report.statusWritten = true;
  } catch (err) {
    if (report.error === null) report.error = { stage: 'status', err };
  }
  return report;
}

async function runAction(cluster: CelerCluster, action: Action, kube: KubeOps, nodes: NodeOps): Promise<void> {
  const ns = cluster.metadata.namespace;
  switch (action.kind) {
    case 'deletePod':
      return kube.deletePod(ns, action.pod);
    case 'labelPod':
      return kube.labelPod(ns, action.pod, { [LABEL_ROLE]: action.role });
    case 'stepDown':
      return nodes.stepDown(cluster, action.pod, action.handoverTtlMs);
    case 'deleteS3LeaseObjects':
      return nodes.deleteS3LeaseObjects(cluster, action.s3, action.keys);
    default: {
      const never: never = action;
      throw new Error(`unknown action ${JSON.stringify(never)}`);
    }
  }
}

export function describe(err: unknown): string {
  if (err instanceof Error) {
    const body = (err as { body?: unknown }).body;
    const detail = typeof body === 'string' ? body : body !== undefined ? JSON.stringify(body) : '';
    return `${err.message}${detail !== '' ? ` ${detail.slice(0, 300)}` : ''}`;
  }
  return String(err);
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { KubernetesObject } from '@kubernetes/client-node';
import type { CelerCluster, CelerClusterStatus } from '../api/types.ts';
import type { ReconcileResult } from '../reconcile/reconcile.ts';
import { execute, type KubeOps, type NodeOps } from './executor.ts';

const cluster: CelerCluster = { apiVersion: 'celer.io/v1alpha1', kind: 'CelerCluster', metadata: { name: 'c1', namespace: 'ns' }, spec: { version: '1', storage: { size: '1Gi' } } };

function recorder(failOn: string | null = null) {
  const calls: string[] = [];
  let status: CelerClusterStatus | null = null;
  const rec = (name: string) => async () => {
    calls.push(name);
    if (name === failOn) throw new Error(`${name} refused`);
  };
  const kube: KubeOps = {
    apply: async (o: KubernetesObject) => rec(`apply ${o.kind}`)(),
    deleteOwned: async (_ns, r) => rec(`prune ${r.kind}`)(),
    deletePod: async (_ns, n) => rec(`deletePod ${n}`)(),
    labelPod: async (_ns, n, l) => rec(`labelPod ${n} ${JSON.stringify(l)}`)(),
    addFinalizer: rec('addFinalizer'),
    removeFinalizer: rec('removeFinalizer'),
    patchStatus: async (_c, s) => { status = s; calls.push('status'); },
    recordEvent: async (_c, e) => rec(`event ${e.reason}`)(),
  };
  const nodes: NodeOps = {
    stepDown: async (_c, pod) => rec(`stepDown ${pod}`)(),
    deleteS3LeaseObjects: async () => rec('deleteS3')(),
  };
  return { calls, kube, nodes, status: () => status };
}

function result(over: Partial<ReconcileResult>): ReconcileResult {
  return {
    apply: [], prune: [], actions: [], events: [], finalizer: null, deferredGate: null, requeueAfterMs: 1,
    status: { phase: 'Running', conditions: [{ type: 'Degraded', status: 'False', reason: 'AsExpected', message: '', observedGeneration: 1, lastTransitionTime: 't' }] },
    ...over,
  };
}

test('the executor relabels, adds the finalizer, applies, prunes, acts, records events and writes status, in that order', async () => {
  const r = recorder();
  const report = await execute(cluster, result({
    finalizer: 'add',
    apply: [{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' } }, { apiVersion: 'apps/v1', kind: 'StatefulSet', metadata: { name: 'x' } }],
    prune: [{ apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor', name: 'x' }],
    actions: [{ kind: 'labelPod', pod: 'c1-0', role: 'leader' }, { kind: 'deletePod', pod: 'c1-1' }],
    events: [{ type: 'Normal', reason: 'RestartingFollower', message: 'm' }],
  }), r.kube, r.nodes);
  assert.equal(report.error, null);
  assert.deepEqual(report.done, ['labelPod', 'deletePod']);
  // The role label first: the client Service follows a new leader before eight applies go out.
  assert.deepEqual(r.calls, [
    'labelPod c1-0 {"celer.io/role":"leader"}', 'addFinalizer', 'apply ConfigMap', 'apply StatefulSet', 'prune ServiceMonitor',
    'deletePod c1-1', 'event RestartingFollower', 'status',
  ]);
  assert.equal(report.statusWritten, true);
});

test('a status that only changed volatile figures is not written; after a failure it always is', async () => {
  const r = recorder();
  const report = await execute(cluster, result({}), r.kube, r.nodes, { statusUnchanged: () => true });
  assert.equal(report.statusWritten, false);
  assert.ok(!r.calls.includes('status'));
  const failing = recorder('apply ConfigMap');
  const failed = await execute(cluster, result({ apply: [{ apiVersion: 'v1', kind: 'ConfigMap', metadata: { name: 'x' } }] }), failing.kube, failing.nodes, { statusUnchanged: () => true });
  assert.ok(failing.calls.includes('status'));
  assert.equal(failed.statusWritten, true);
});

test('a failed apply stops every later step but still records events and a degraded status', async () => {
  const r = recorder('apply StatefulSet');
  const report = await execute(cluster, result({
    apply: [{ apiVersion: 'apps/v1', kind: 'StatefulSet', metadata: { name: 'x' } }],
    actions: [{ kind: 'deletePod', pod: 'c1-1' }],
    events: [{ type: 'Normal', reason: 'RestartingFollower', message: 'm' }],
  }), r.kube, r.nodes);
  assert.equal(report.error?.stage, 'apply StatefulSet/x');
  assert.deepEqual(r.calls, ['apply StatefulSet', 'event RestartingFollower', 'status']);
  const degraded = r.status()?.conditions?.find((c) => c.type === 'Degraded');
  assert.equal(degraded?.status, 'True');
  assert.equal(degraded?.reason, 'ReconcileError');
  assert.match(degraded?.message ?? '', /StatefulSet refused/);
});

test('the finalizer stays when the S3 cleanup fails', async () => {
  const r = recorder('deleteS3');
  const report = await execute(cluster, result({
    actions: [{ kind: 'deleteS3LeaseObjects', s3: { bucket: 'b' }, keys: ['k'] }], finalizer: 'remove',
  }), r.kube, r.nodes);
  assert.equal(report.error?.stage, 'action deleteS3LeaseObjects');
  assert.ok(!r.calls.includes('removeFinalizer'));
});

test('a step-down goes to the node, not the Kubernetes API', async () => {
  const r = recorder();
  await execute(cluster, result({ actions: [{ kind: 'stepDown', pod: 'c1-0', handoverTtlMs: 450 }] }), r.kube, r.nodes);
  assert.deepEqual(r.calls, ['stepDown c1-0', 'status']);
});

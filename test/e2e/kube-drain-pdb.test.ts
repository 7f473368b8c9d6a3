// The two PodDisruptionBudgets of a two-node CelerCluster (operator/reconcile/objects/pdb.ts)
// against a real kube-apiserver and the kube-controller-manager's disruption controller
// (hack/kube-up.sh): the Eviction API refuses the pod labelled leader, allows the follower, and
// once one pod is gone refuses the other whatever its label (never both down). The pods are
// a StatefulSet's (the disruption controller needs their controller) with status patched Ready;
// no kubelet runs them.
//
// CELER_E2E_KUBE_RUN_DIR reuses a running control plane (kube-env.ts).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import type { CelerCluster } from '../../operator/api/types.ts';
import { leaderDisruptionBudget, podDisruptionBudget } from '../../operator/reconcile/objects/pdb.ts';
import { selectorLabels } from '../../operator/reconcile/names.ts';
import { startKube, waitFor, type KubeEnv } from './kube-env.ts';

/** The disruption controller recomputes a PDB's status within a few seconds of a pod change. */
const PDB_SYNC_TIMEOUT_MS = 60_000;
const NS = `drain-${process.pid}`;
const CLUSTER = 'c1';

let kube: KubeEnv;
/** What the apiserver serves (1.20 has only policy/v1beta1), as the operator's discovery picks. */
let policy: 'policy/v1' | 'policy/v1beta1' = 'policy/v1';

before(async () => {
  kube = await startKube('drain');
  await kube.kubectlOk(['create', 'namespace', NS]);
  if (!(await kube.kubectlOk(['api-versions'])).split('\n').includes('policy/v1')) policy = 'policy/v1beta1';
});

after(async () => {
  if (kube === undefined) return;
  await kube.kubectl(['delete', 'namespace', NS, '--wait=false']);
  await kube.stop();
});

const cluster = { apiVersion: 'celer.io/v1alpha1', kind: 'CelerCluster', metadata: { name: CLUSTER, namespace: NS, uid: 'none' }, spec: {} } as unknown as CelerCluster;

/** A StatefulSet of two: the disruption controller needs each pod's controller (for maxUnavailable). No kubelet runs them. */
function statefulSet(): unknown {
  return {
    apiVersion: 'apps/v1', kind: 'StatefulSet', metadata: { name: CLUSTER, namespace: NS },
    spec: {
      replicas: 2, serviceName: `${CLUSTER}-nodes`, selector: { matchLabels: selectorLabels(CLUSTER) },
      template: { metadata: { labels: selectorLabels(CLUSTER) }, spec: { containers: [{ name: 'celer', image: 'celer' }] } },
    },
  };
}

async function markReady(name: string): Promise<void> {
  const status = { status: { phase: 'Running', conditions: [{ type: 'Ready', status: 'True', lastTransitionTime: new Date().toISOString() }] } };
  await kube.kubectlOk(['-n', NS, 'patch', 'pod', name, '--subresource=status', '--type=merge', '-p', JSON.stringify(status)]);
}

async function evict(name: string): Promise<{ code: number; stderr: string }> {
  const body = JSON.stringify({ apiVersion: policy, kind: 'Eviction', metadata: { name, namespace: NS } });
  const r = await kube.kubectl(['create', '--raw', `/api/v1/namespaces/${NS}/pods/${name}/eviction`, '-f', '-'], body);
  return { code: r.code, stderr: r.stderr };
}

async function pdbAllowed(name: string, expectedPods: number): Promise<number> {
  return waitFor(`PDB ${name} status observed over ${expectedPods} pod(s)`, async () => {
    const out = JSON.parse(await kube.kubectlOk(['-n', NS, 'get', 'pdb', name, '-o', 'json'])) as { status?: { expectedPods?: number; disruptionsAllowed?: number; observedGeneration?: number } };
    return out.status?.expectedPods === expectedPods && out.status.disruptionsAllowed !== undefined ? out.status.disruptionsAllowed : undefined;
  }, PDB_SYNC_TIMEOUT_MS);
}

test('the leader PDB refuses evicting the leader, the follower is evicted, and then neither pod may go', async () => {
  for (const pdb of [podDisruptionBudget(cluster, policy), leaderDisruptionBudget(cluster, policy)]) {
    // No owner: there is no CelerCluster here, and the garbage collector would remove an orphan.
    const { ownerReferences: _owner, ...meta } = pdb.metadata!;
    await kube.kubectlOk(['apply', '-f', '-'], JSON.stringify({ ...pdb, metadata: meta }));
  }
  await kube.kubectlOk(['apply', '-f', '-'], JSON.stringify(statefulSet()));
  for (const [i, role] of [[0, 'leader'], [1, 'follower']] as const) {
    const name = `${CLUSTER}-${i}`;
    await waitFor(`pod ${name} created`, async () => (await kube.kubectl(['-n', NS, 'get', 'pod', name])).code === 0, PDB_SYNC_TIMEOUT_MS);
    await kube.kubectlOk(['-n', NS, 'label', 'pod', name, `celer.io/role=${role}`, '--overwrite']);
    await markReady(name);
  }
  assert.equal(await pdbAllowed(CLUSTER, 2), 1);
  // expectedPods comes from the StatefulSet's scale (2) with maxUnavailable, whatever the selector.
  assert.equal(await pdbAllowed(`${CLUSTER}-leader`, 2), 0);

  const leader = await evict(`${CLUSTER}-0`);
  assert.notEqual(leader.code, 0, 'the leader must not be evicted');
  console.log(`# leader eviction refused: ${leader.stderr.trim()}`);
  assert.match(leader.stderr, /disruption budget|DisruptionBudget/i);

  const follower = await evict(`${CLUSTER}-1`);
  assert.equal(follower.code, 0, `the follower is evicted: ${follower.stderr}`);

  // The follower is gone (the StatefulSet recreates it, not Ready: no kubelet): relabel the old
  // leader a follower, as after a step-down; the all-pods PDB refuses it, so a drain never
  // takes both.
  await kube.kubectlOk(['-n', NS, 'label', 'pod', `${CLUSTER}-0`, 'celer.io/role=follower', '--overwrite']);
  await waitFor('the all-pods PDB allows no disruption with one pod gone', async () => {
    const out = JSON.parse(await kube.kubectlOk(['-n', NS, 'get', 'pdb', CLUSTER, '-o', 'json'])) as { status?: { disruptionsAllowed?: number; currentHealthy?: number } };
    return out.status?.currentHealthy === 1 && out.status.disruptionsAllowed === 0 ? true : undefined;
  }, PDB_SYNC_TIMEOUT_MS);
  const last = await evict(`${CLUSTER}-0`);
  assert.notEqual(last.code, 0, 'the last serving pod must not be evicted');
  console.log(`# last pod eviction refused: ${last.stderr.trim()}`);
  assert.match(last.stderr, /disruption budget|TooManyRequests|429/i);
});

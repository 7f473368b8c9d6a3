// The operator end to end on a real Kubernetes 1.20 control plane: the chart installed with real
// helm (operator Deployment scaled to 0), the operator run as a local process with only the
// chart's ServiceAccount and RBAC, the test agent (test/agent/) as kubelet running real
// `bin/celer serve` nodes. One control plane, operator and agent for the whole suite.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { TestAgent } from '../agent/agent.ts';
import { celerEntrypoint, defaultExecutables } from '../agent/celer.ts';
import { KubeError, type KubeObject } from '../agent/kube.ts';
import type { Pod, PersistentVolumeClaim } from '../agent/types.ts';
import {
  celerRead,
  celerWrite,
  clusterPath,
  condition,
  getCluster,
  helmInstall,
  serviceAccountKubeconfig,
  startLocalOperator,
  type CelerClusterObject,
  type LocalOperator,
} from './kube-celer.ts';
import { createNamespace, helmPath, runOk, startKube, waitFor, type KubeEnv } from './kube-env.ts';

const RELEASE = 'celer-operator';
const CLUSTER = 'demo';

let env: KubeEnv;
let helm: string;
let agent: TestAgent;
let operator: LocalOperator;
let opNs: string;
let ns: string;

interface Owned extends KubeObject {
  spec?: Record<string, unknown>;
}

function cluster(name: string, spec: Record<string, unknown>): CelerClusterObject {
  return { apiVersion: 'celer.io/v1alpha1', kind: 'CelerCluster', metadata: { name, namespace: ns }, spec };
}

// One standalone node: a second standalone replica would be an orphan store (refused, below).
// Two-node clusters, their placement and their follower-first rollout: kube-cluster.test.ts.
const demoSpec = { version: '0.1.0', standalone: true, replicas: 1, shards: 2, routing: 'id', storage: { size: '1Gi' } };

async function pods(): Promise<Pod[]> {
  const l = await env.client.list<Pod>(`/api/v1/namespaces/${ns}/pods`, { labelSelector: `celer.io/cluster=${CLUSTER}` });
  return l.items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
}

const isReady = (p: Pod): boolean => p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;

/** Diagnostics appended to a failed wait: operator log, agent events, node logs. */
function diagnostics(): string {
  return [
    '--- operator',
    operator?.process.output(30) ?? '',
    '--- agent',
    ...(agent?.events.slice(-25) ?? []),
    agent?.podLogs(ns, `${CLUSTER}-0`, 2000) ?? '',
  ].join('\n');
}

async function waitForClusterReady(generation: number): Promise<CelerClusterObject> {
  return waitFor(
    `CelerCluster ${CLUSTER} Ready at generation ${generation}`,
    async () => {
      const c = await getCluster(env, ns, CLUSTER);
      const ready = condition(c, 'Ready');
      return c.metadata.generation === generation && ready?.status === 'True' && ready.observedGeneration === generation ? c : undefined;
    },
    180_000,
  ).catch((err: Error) => {
    throw new Error(`${err.message}\n${diagnostics()}`);
  });
}

describe('Celer operator on a real 1.20 control plane', () => {
  before(async () => {
    env = await startKube('operator');
    helm = await helmPath();
    opNs = await createNamespace(env, 'celer-system');
    ns = await createNamespace(env, 'apps');
    await helmInstall(env, helm, RELEASE, opNs, ['--set', 'replicaCount=0']);
    await env.kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/celerclusters.celer.io']);
    const kubeconfig = await serviceAccountKubeconfig(env, opNs, RELEASE, path.join(env.runDir, `operator-${opNs}.kubeconfig`));
    operator = await startLocalOperator(kubeconfig, path.join(env.runDir, 'operator.log'), ['--leader-elect', '--lease-namespace', opNs, '--identity', 'e2e-operator']);
    agent = await TestAgent.start({
      kubeconfig: env.kubeconfig,
      workDir: path.join(env.runDir, 'agent'),
      namespaces: [ns],
      executables: defaultExecutables(),
      entrypoint: celerEntrypoint,
    });
  });

  after(async () => {
    await operator?.process.stop();
    await agent?.stop();
    await env?.stop();
  });

  test('helm created every object of the release in the cluster', async () => {
    const manifest = await runOk(helm, ['get', 'manifest', RELEASE, '--namespace', opNs], { env: { ...process.env, KUBECONFIG: env.kubeconfig } });
    const docs = parseAllDocuments(manifest)
      .map((d) => d.toJS() as KubeObject | null)
      .filter((d): d is KubeObject => d !== null);
    assert.deepEqual(docs.map((d) => d.kind).sort(), ['ClusterRole', 'ClusterRoleBinding', 'Deployment', 'Role', 'RoleBinding', 'Service', 'ServiceAccount']);
    for (const d of docs) {
      // kubectl exits non-zero (NotFound) when the object is missing.
      const out = await env.kubectlOk(['get', `${d.kind}/${d.metadata.name}`, '-n', opNs, '-o', 'name']);
      assert.equal(out.trim().split('/').pop(), d.metadata.name);
    }
  });

  test('the operator, with only the chart\'s ServiceAccount and RBAC, takes its leader-election Lease and is healthy', async () => {
    const lease = await waitFor('the operator Lease held by e2e-operator', async () => {
      const l = await env.client.getOrUndefined<KubeObject & { spec: { holderIdentity?: string } }>(
        `/apis/coordination.k8s.io/v1/namespaces/${opNs}/leases/celer-operator`,
      );
      return l?.spec.holderIdentity === 'e2e-operator' ? l : undefined;
    });
    assert.equal(lease.metadata.namespace, opNs);
    const res = await fetch(`${operator.metricsUrl}/healthz`);
    assert.equal(res.status, 200);
    const deployment = await env.client.get<{ spec: { replicas: number } }>(`/apis/apps/v1/namespaces/${opNs}/deployments/${RELEASE}`);
    assert.equal(deployment.spec.replicas, 0, 'the chart\'s operator Deployment is scaled to 0 (the operator runs locally)');
  });

  test('a standalone CelerCluster gets its ServiceAccount, RBAC, ConfigMap, Services, StatefulSet, claims and a policy/v1beta1 PDB, all owned by it', async () => {
    const created = await env.client.create<CelerClusterObject>(clusterPath(ns), cluster(CLUSTER, demoSpec));
    const uid = created.metadata.uid;
    const expected: [string, string][] = [
      [`/api/v1/namespaces/${ns}/serviceaccounts/${CLUSTER}-node`, 'ServiceAccount'],
      [`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles/${CLUSTER}-node`, 'Role'],
      [`/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings/${CLUSTER}-node`, 'RoleBinding'],
      [`/api/v1/namespaces/${ns}/configmaps/${CLUSTER}-config`, 'ConfigMap'],
      [`/api/v1/namespaces/${ns}/services/${CLUSTER}-nodes`, 'Service'],
      [`/api/v1/namespaces/${ns}/services/${CLUSTER}`, 'Service'],
      [`/apis/apps/v1/namespaces/${ns}/statefulsets/${CLUSTER}`, 'StatefulSet'],
      [`/apis/policy/v1beta1/namespaces/${ns}/poddisruptionbudgets/${CLUSTER}`, 'PodDisruptionBudget'],
    ];
    for (const [p, kind] of expected) {
      const obj = await waitFor(`${kind} ${p}`, () => env.client.getOrUndefined<Owned>(p), 60_000).catch((err: Error) => {
        throw new Error(`${err.message}\n${diagnostics()}`);
      });
      const owner = obj.metadata.ownerReferences?.find((o) => o.controller === true);
      assert.ok(owner !== undefined, `${kind} ${obj.metadata.name} has a controller owner reference`);
      assert.deepEqual([owner.apiVersion, owner.kind, owner.name, owner.uid], ['celer.io/v1alpha1', 'CelerCluster', CLUSTER, uid], `${kind} ${obj.metadata.name}`);
      assert.equal(obj.metadata.labels?.['celer.io/cluster'], CLUSTER, `${kind} ${obj.metadata.name} carries the cluster label`);
    }
    const headless = await env.client.get<Owned>(`/api/v1/namespaces/${ns}/services/${CLUSTER}-nodes`);
    assert.equal((headless.spec as { clusterIP?: string }).clusterIP, 'None');
    for (const port of (headless.spec as { ports: { protocol?: string }[] }).ports) assert.equal(port.protocol, 'TCP');
    const sts = await env.client.get<Owned & { spec: { replicas: number; updateStrategy: { type: string } } }>(`/apis/apps/v1/namespaces/${ns}/statefulsets/${CLUSTER}`);
    assert.equal(sts.spec.replicas, 1);
    assert.equal(sts.spec.updateStrategy.type, 'OnDelete', 'the operator, not the StatefulSet controller, orders restarts');
    const claims = await waitFor('the data claim Bound', async () => {
      const l = await env.client.list<PersistentVolumeClaim>(`/api/v1/namespaces/${ns}/persistentvolumeclaims`);
      return l.items.length === 1 && l.items.every((c) => c.status?.phase === 'Bound') ? l.items : undefined;
    });
    assert.deepEqual(claims.map((c) => c.metadata.name).sort(), [`data-${CLUSTER}-0`]);
    for (const c of claims) assert.equal(c.spec.resources?.requests?.storage, '1Gi');
  });

  test('the agent runs real Celer nodes on separate hosts, and they take writes', async () => {
    const ready = await waitFor('the Celer pod Ready', async () => {
      const ps = await pods();
      return ps.length === 1 && ps.every(isReady) ? ps : undefined;
    }, 120_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    for (const p of ready) {
      const ip = p.status?.podIP ?? '';
      const status = (await (await fetch(`http://${ip}:7401/status`)).json()) as { role: string; version: string; numShards: number; ready: boolean; routing: string };
      assert.equal(status.role, 'standalone');
      assert.equal(status.ready, true);
      assert.equal(status.numShards, 2);
      assert.equal(status.routing, 'id');
      assert.equal((await fetch(`http://${ip}:7401/readyz`)).status, 200);
      await celerWrite(`${ip}:7400`, '1/2/3', 'Created', `{"pod":"${p.metadata.name}"}`);
      const read = await celerRead(`${ip}:7400`, '1/2/3');
      assert.match(read, new RegExp(p.metadata.name));
    }
  });

  test('the CelerCluster reaches Ready, with every condition carrying the current observedGeneration', async () => {
    const c = await waitForClusterReady(1);
    assert.equal(c.status?.observedGeneration, 1);
    for (const cond of c.status?.conditions ?? []) assert.equal(cond.observedGeneration, 1, `condition ${cond.type}`);
    assert.equal(condition(c, 'Degraded')?.status, 'False');
    assert.deepEqual(
      (c.status?.nodes ?? []).map((n) => [n.name, n.role, n.ready]).sort(),
      [
        [`${CLUSTER}-0`, 'standalone', true],
      ],
    );
  });

  test('specs that break schema rules are refused by the apiserver', async () => {
    const cases: [Record<string, unknown>, RegExp][] = [
      [{ ...demoSpec, routing: 'bogus' }, /spec\.routing: Unsupported value: "bogus"/],
      [{ ...demoSpec, replicas: 3 }, /spec\.replicas: Invalid value: 3: spec\.replicas in body should be less than or equal to 2/],
      [{ ...demoSpec, shards: 0 }, /spec\.shards: Invalid value: 0/],
      [{ standalone: true, storage: { size: '1Gi' } }, /spec\.version: Required value/],
      [{ ...demoSpec, storage: { size: 'lots' } }, /spec\.storage\.size/],
    ];
    for (const [i, [spec, message]] of cases.entries()) {
      await assert.rejects(env.client.create(clusterPath(ns), cluster(`invalid-${i}`, spec)), (err: unknown) => {
        assert.ok(err instanceof KubeError, String(err));
        assert.equal(err.status, 422, err.message);
        assert.match(err.message, message);
        return true;
      });
    }
  });

  test('a spec that breaks a CEL-only rule is stored by 1.20 and reported by the operator as InvalidSpec, without creating nodes', async () => {
    const name = 'cel-only';
    await env.client.create(clusterPath(ns), cluster(name, { version: '0.1.0', standalone: false, replicas: 2, shards: 2, storage: { size: '1Gi' } }));
    const c = await waitFor(`${name} reported InvalidSpec`, async () => {
      const x = await getCluster(env, ns, name);
      const ready = condition(x, 'Ready');
      return ready?.reason === 'InvalidSpec' && ready.observedGeneration === x.metadata.generation ? x : undefined;
    }, 60_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    const ready = condition(c, 'Ready');
    assert.equal(ready?.status, 'False');
    assert.match(ready?.message ?? '', /a two-node cluster \(standalone: false\) needs spec\.s3 for its lease and catch-up/);
    assert.equal(condition(c, 'Degraded')?.status, 'True');
    assert.equal(condition(c, 'Degraded')?.reason, 'InvalidSpec');
    assert.equal(await env.client.getOrUndefined(`/apis/apps/v1/namespaces/${ns}/statefulsets/${name}`), undefined);
    await env.client.delete(clusterPath(ns, name));
  });

  test('two standalone replicas and spec.tls are reported as InvalidSpec, without creating nodes', async () => {
    const specs: [string, Record<string, unknown>, RegExp][] = [
      ['orphan', { ...demoSpec, replicas: 2 }, /spec\.replicas: .*orphan store.*set replicas: 1/],
      ['tls', { ...demoSpec, tls: { secretName: 'celer-tls' } }, /spec\.tls: spec\.tls is not supported yet/],
    ];
    for (const [name, spec, message] of specs) {
      await env.client.create(clusterPath(ns), cluster(name, spec));
      const c = await waitFor(`${name} reported InvalidSpec`, async () => {
        const x = await getCluster(env, ns, name);
        return condition(x, 'Ready')?.reason === 'InvalidSpec' ? x : undefined;
      }, 60_000).catch((err: Error) => {
        throw new Error(`${err.message}\n${diagnostics()}`);
      });
      assert.match(condition(c, 'Ready')?.message ?? '', message);
      assert.equal(await env.client.getOrUndefined(`/apis/apps/v1/namespaces/${ns}/statefulsets/${name}`), undefined);
      await env.client.delete(clusterPath(ns, name));
    }
  });

  test('changing the version restarts the pod once, and the cluster is Ready again at the new generation', async () => {
    const before = await pods();
    const oldUids = new Map(before.map((p) => [p.metadata.name, p.metadata.uid]));
    // Every pod change in order, to check the invariant at each deletion.
    const seen: Pod[] = [];
    const list = await env.client.list<Pod>(`/api/v1/namespaces/${ns}/pods`, { labelSelector: `celer.io/cluster=${CLUSTER}` });
    const watch = env.client.watch<Pod>(`/api/v1/namespaces/${ns}/pods`, list.metadata.resourceVersion, (ev) => {
      if (ev.type === 'ADDED' || ev.type === 'MODIFIED' || ev.type === 'DELETED') seen.push(ev.object);
    });
    try {
      const patched = await env.client.patch<CelerClusterObject>(clusterPath(ns, CLUSTER), { spec: { version: '0.1.1' } });
      const generation = patched.metadata.generation ?? 0;
      assert.equal(generation, 2);
      await waitFor('the pod replaced, Ready, running celer:0.1.1', async () => {
        const ps = await pods();
        return (
          ps.length === 1 &&
          ps.every((p) => isReady(p) && p.metadata.uid !== oldUids.get(p.metadata.name) && p.spec.containers[0]?.image === 'celer:0.1.1')
        );
      }, 240_000).catch((err: Error) => {
        throw new Error(`${err.message}\n${diagnostics()}`);
      });
      const c = await waitForClusterReady(generation);
      for (const cond of c.status?.conditions ?? []) assert.equal(cond.observedGeneration, generation, `condition ${cond.type}`);
    } finally {
      watch.abort();
    }
    // Replay: the moment an old pod is marked for deletion, every other pod must be Ready and
    // not terminating; the first old pod deleted must be the highest ordinal.
    const latest = new Map<string, Pod>(before.map((p) => [p.metadata.name, p]));
    const deletions: string[] = [];
    for (const p of seen) {
      const prev = latest.get(p.metadata.name);
      const newlyTerminating = p.metadata.deletionTimestamp !== undefined && oldUids.get(p.metadata.name) === p.metadata.uid && prev?.metadata.deletionTimestamp === undefined;
      if (newlyTerminating) {
        deletions.push(p.metadata.name);
        for (const [name, other] of latest) {
          if (name === p.metadata.name) continue;
          assert.ok(isReady(other) && other.metadata.deletionTimestamp === undefined, `${name} was Ready when ${p.metadata.name} was deleted`);
        }
      }
      latest.set(p.metadata.name, p);
    }
    assert.deepEqual(deletions, [`${CLUSTER}-0`]);
  });

  test('deleting the CelerCluster removes everything it owned and stops its nodes', async () => {
    const pids = [0].map((i) => agent.pid(ns, `${CLUSTER}-${i}`));
    assert.ok(pids.every((p) => p !== undefined), 'the node runs before the deletion');
    await env.client.delete(clusterPath(ns, CLUSTER));
    const gone = [
      `/apis/apps/v1/namespaces/${ns}/statefulsets/${CLUSTER}`,
      `/api/v1/namespaces/${ns}/services/${CLUSTER}`,
      `/api/v1/namespaces/${ns}/services/${CLUSTER}-nodes`,
      `/api/v1/namespaces/${ns}/configmaps/${CLUSTER}-config`,
      `/api/v1/namespaces/${ns}/serviceaccounts/${CLUSTER}-node`,
      `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/roles/${CLUSTER}-node`,
      `/apis/rbac.authorization.k8s.io/v1/namespaces/${ns}/rolebindings/${CLUSTER}-node`,
      `/apis/policy/v1beta1/namespaces/${ns}/poddisruptionbudgets/${CLUSTER}`,
      clusterPath(ns, CLUSTER),
    ];
    await waitFor('every owned object deleted', async () => {
      for (const p of gone) if ((await env.client.getOrUndefined(p)) !== undefined) return undefined;
      return true;
    }, 90_000);
    await waitFor('every pod gone', async () => (await pods()).length === 0, 90_000);
    for (const pid of pids) assert.throws(() => process.kill(pid as number, 0), /ESRCH/, `node process ${pid} stopped`);
  });

  test('the operator met no RBAC denial during the suite', () => {
    const denials = readFileSync(path.join(env.runDir, 'operator.log'), 'utf8').split('\n').filter((l) => /forbidden/i.test(l));
    assert.deepEqual(denials, []);
  });
});

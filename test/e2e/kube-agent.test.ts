// The test agent (test/agent/) against the real apiserver and controller-manager, with a stand-in
// server (test/agent/standin.ts): the other kube-* suites trust it to behave like a kubelet, so
// this suite pins down scheduling, volumes, pod status, restarts and deletion.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { existsSync, readFileSync } from 'node:fs';
import path from 'node:path';
import { TestAgent } from '../agent/agent.ts';
import { defaultExecutables } from '../agent/celer.ts';
import { KubeClient, KubeError, loadKubeconfig } from '../agent/kube.ts';
import type { Pod, PersistentVolumeClaim } from '../agent/types.ts';
import { createNamespace, repoRoot, startKube, waitFor, type KubeEnv } from './kube-env.ts';

let env: KubeEnv;
let agent: TestAgent;
let ns: string;

function statefulSet(name: string, replicas: number, extraArgs: string[] = []): unknown {
  const labels = { app: name };
  return {
    apiVersion: 'apps/v1',
    kind: 'StatefulSet',
    metadata: { name, namespace: ns },
    spec: {
      serviceName: name,
      replicas,
      selector: { matchLabels: labels },
      template: {
        metadata: { labels },
        spec: {
          terminationGracePeriodSeconds: 5,
          affinity: {
            podAntiAffinity: { requiredDuringSchedulingIgnoredDuringExecution: [{ topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: labels } }] },
          },
          containers: [
            {
              name: 'server',
              image: 'example.com/standin:1',
              command: ['node', '/agent/standin.ts'],
              args: ['--data-dir', '/var/lib/data', '--listen', '0.0.0.0:7400', '--http', '0.0.0.0:7401', ...extraArgs],
              env: [
                { name: 'CELER_NODE_ID', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
                { name: 'CELER_POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
              ],
              ports: [
                { name: 'client', containerPort: 7400, protocol: 'TCP' },
                { name: 'http', containerPort: 7401, protocol: 'TCP' },
              ],
              readinessProbe: { httpGet: { path: '/readyz', port: 'http' }, periodSeconds: 1 },
              livenessProbe: { httpGet: { path: '/livez', port: 'http' }, periodSeconds: 1, failureThreshold: 3 },
              volumeMounts: [{ name: 'data', mountPath: '/var/lib/data' }],
            },
          ],
        },
      },
      volumeClaimTemplates: [{ metadata: { name: 'data' }, spec: { accessModes: ['ReadWriteOnce'], resources: { requests: { storage: '1Gi' } } } }],
    },
  };
}

async function pods(app: string): Promise<Pod[]> {
  const l = await env.client.list<Pod>(`/api/v1/namespaces/${ns}/pods`, { labelSelector: `app=${app}` });
  return l.items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
}

const isReady = (p: Pod): boolean => p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;

async function getJson(url: string): Promise<Record<string, unknown>> {
  const res = await fetch(url);
  assert.equal(res.status, 200, `${url}: ${res.status}`);
  return (await res.json()) as Record<string, unknown>;
}

describe('test agent on a real apiserver', () => {
  before(async () => {
    env = await startKube('agent');
    ns = await createNamespace(env, 'agent');
    agent = await TestAgent.start({
      kubeconfig: env.kubeconfig,
      workDir: path.join(env.runDir, 'agent'),
      nodes: [{ name: 'node-a' }, { name: 'node-b' }],
      namespaces: [ns],
      executables: defaultExecutables(),
      pathMap: { '/agent': path.join(repoRoot, 'test', 'agent') },
    });
  });

  after(async () => {
    await agent?.stop();
    await env?.stop();
  });

  test('registers its virtual nodes as Ready Node objects', async () => {
    const nodes = await env.client.list<{ metadata: { name: string }; status: { conditions: { type: string; status: string }[] } }>('/api/v1/nodes');
    const names = nodes.items.map((n) => n.metadata.name).sort();
    assert.deepEqual(names, ['node-a', 'node-b']);
    for (const n of nodes.items) assert.ok(n.status.conditions.some((c) => c.type === 'Ready' && c.status === 'True'));
  });

  test('a StatefulSet gets bound claims, pods on different nodes, and Ready pods serving on their pod IPs', async () => {
    await env.client.create(`/apis/apps/v1/namespaces/${ns}/statefulsets`, statefulSet('web', 2));
    const ready = await waitFor(
      'both pods of web Ready',
      async () => {
        const ps = await pods('web');
        return ps.length === 2 && ps.every(isReady) ? ps : undefined;
      },
      90_000,
    ).catch((err: Error) => {
      throw new Error(`${err.message}\n${agent.events.slice(-30).join('\n')}\n${agent.podLogs(ns, 'web-0')}`);
    });
    const [p0, p1] = ready as [Pod, Pod];
    assert.notEqual(p0.spec.nodeName, p1.spec.nodeName, 'required anti-affinity keeps the pods apart');
    assert.notEqual(p0.status?.podIP, p1.status?.podIP);
    for (const p of ready) {
      assert.equal(p.status?.phase, 'Running');
      assert.match(p.status?.podIP ?? '', /^127\.\d+\.\d+\.\d+$/);
      const cs = p.status?.containerStatuses?.[0];
      assert.equal(cs?.name, 'server');
      assert.equal(cs?.ready, true);
      assert.ok(cs?.state.running !== undefined);
      const status = await getJson(`http://${p.status?.podIP}:7401/status`);
      assert.equal(status.nodeId, p.metadata.name, 'fieldRef metadata.name reaches the process');
      assert.deepEqual((status.env as Record<string, string>).CELER_POD_IP, p.status?.podIP);
      assert.equal(status.dataDir, agent.volumeDir(ns, `data-${p.metadata.name}`), 'the data dir is the claim directory');
    }
    // The process got its ServiceAccount's credentials, as a token mount would give it.
    const status0 = await getJson(`http://${p0.status?.podIP}:7401/status`);
    const saKubeconfig = (status0.env as Record<string, string>).KUBECONFIG;
    assert.ok(saKubeconfig !== undefined, 'KUBECONFIG is set for the pod');
    const asPod = new KubeClient(loadKubeconfig(saKubeconfig));
    try {
      await assert.rejects(asPod.list(`/api/v1/namespaces/${ns}/secrets`), (err: unknown) => {
        assert.ok(err instanceof KubeError);
        assert.equal(err.status, 403);
        assert.match(err.message, new RegExp(`system:serviceaccount:${ns}:default`));
        return true;
      });
    } finally {
      asPod.close();
    }
    const claims = await env.client.list<PersistentVolumeClaim>(`/api/v1/namespaces/${ns}/persistentvolumeclaims`);
    assert.deepEqual(claims.items.map((c) => [c.metadata.name, c.status?.phase]).sort(), [
      ['data-web-0', 'Bound'],
      ['data-web-1', 'Bound'],
    ]);
  });

  test('a third replica is reported unschedulable under required anti-affinity on two nodes', async () => {
    await env.client.patch(`/apis/apps/v1/namespaces/${ns}/statefulsets/web`, { spec: { replicas: 3 } });
    const cond = await waitFor('web-2 PodScheduled=False', async () => {
      const p = (await pods('web')).find((x) => x.metadata.name === 'web-2');
      return p?.status?.conditions?.find((c) => c.type === 'PodScheduled' && c.status === 'False');
    });
    assert.equal(cond.reason, 'Unschedulable');
    assert.match(cond.message ?? '', /anti-affinity/);
    await env.client.patch(`/apis/apps/v1/namespaces/${ns}/statefulsets/web`, { spec: { replicas: 2 } });
    await waitFor('web-2 gone', async () => (await pods('web')).every((p) => p.metadata.name !== 'web-2'));
  });

  test('a crashed container is restarted and its restart count and last state are reported', async () => {
    const pid = agent.pid(ns, 'web-0');
    assert.ok(pid !== undefined);
    process.kill(pid, 'SIGKILL');
    const p = await waitFor('web-0 restarted and Ready', async () => {
      const x = (await pods('web')).find((q) => q.metadata.name === 'web-0');
      const cs = x?.status?.containerStatuses?.[0];
      return x !== undefined && cs !== undefined && cs.restartCount >= 1 && cs.ready && isReady(x) ? x : undefined;
    });
    const cs = p.status?.containerStatuses?.[0];
    assert.equal(cs?.lastState.terminated?.exitCode, 137);
    assert.notEqual(agent.pid(ns, 'web-0'), pid);
    const started = readFileSync(path.join(agent.volumeDir(ns, 'data-web-0'), 'standin-started'), 'utf8').trim().split('\n');
    assert.equal(started.length, 2, 'the restarted process found the first run\'s file in the same claim directory');
  });

  test('a deleted pod has its process terminated, and its replacement reuses the claim directory', async () => {
    const before = (await pods('web')).find((p) => p.metadata.name === 'web-1');
    const pid = agent.pid(ns, 'web-1');
    assert.ok(before !== undefined && pid !== undefined);
    await env.client.delete(`/api/v1/namespaces/${ns}/pods/web-1`);
    const replacement = await waitFor('web-1 replaced and Ready', async () => {
      const x = (await pods('web')).find((q) => q.metadata.name === 'web-1');
      return x !== undefined && x.metadata.uid !== before.metadata.uid && isReady(x) ? x : undefined;
    });
    assert.throws(() => process.kill(pid, 0), /ESRCH/, 'the old process is gone');
    assert.equal(replacement.status?.containerStatuses?.[0]?.restartCount, 0);
    const started = readFileSync(path.join(agent.volumeDir(ns, 'data-web-1'), 'standin-started'), 'utf8').trim().split('\n');
    assert.equal(started.length, 2);
  });

  test('a container that keeps exiting is reported in CrashLoopBackOff with its exit code', async () => {
    await env.client.create(`/apis/apps/v1/namespaces/${ns}/statefulsets`, statefulSet('crashy', 1, ['--exit-after-ms', '300']));
    const cs = await waitFor('crashy-0 in CrashLoopBackOff after exiting', async () => {
      const x = (await pods('crashy'))[0];
      const s = x?.status?.containerStatuses?.[0];
      return s?.state.waiting?.reason === 'CrashLoopBackOff' && s.restartCount >= 1 && s.lastState.terminated !== undefined ? s : undefined;
    });
    assert.equal(cs.lastState.terminated?.exitCode, 3);
    assert.equal(cs.lastState.terminated?.reason, 'Error');
  });

  test('a pod with restartPolicy Never whose process exits non-zero is reported Failed with the exit code', async () => {
    await env.client.create(`/api/v1/namespaces/${ns}/pods`, {
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: { name: 'once', namespace: ns, labels: { app: 'once' } },
      spec: {
        restartPolicy: 'Never',
        containers: [{ name: 'server', image: 'example.com/standin:1', command: ['node', '/agent/standin.ts'], args: ['--data-dir', 'data', '--exit-after-ms', '200'] }],
      },
    });
    const p = await waitFor('pod once Failed', async () => {
      const x = (await pods('once'))[0];
      return x?.status?.phase === 'Failed' ? x : undefined;
    });
    const cs = p.status?.containerStatuses?.[0];
    assert.equal(cs?.state.terminated?.exitCode, 3);
    assert.equal(cs?.restartCount, 0);
    assert.equal(isReady(p), false);
    await env.client.delete(`/api/v1/namespaces/${ns}/pods/once`);
    await waitFor('pod once removed', async () => (await pods('once')).length === 0);
  });

  test('a container that is not ready keeps the pod Running but not Ready', async () => {
    await env.client.create(`/apis/apps/v1/namespaces/${ns}/statefulsets`, statefulSet('unready', 1, ['--not-ready']));
    const p = await waitFor('unready-0 Running with a started container', async () => {
      const x = (await pods('unready'))[0];
      return x?.status?.phase === 'Running' && x.status.containerStatuses?.[0]?.state.running !== undefined ? x : undefined;
    });
    const status = await waitFor('unready-0 serving /status', () => getJson(`http://${p.status?.podIP}:7401/status`));
    assert.equal(status.ready, false);
    // The agent probes every second; three probe rounds later the pod must still be unready.
    await waitFor('three readiness probes of unready-0', async () => {
      const m = await (await fetch(`http://${p.status?.podIP}:7401/metrics`)).text();
      const n = Number(/celer_standin_requests_total (\d+)/.exec(m)?.[1] ?? 0);
      return n >= 8 ? n : undefined;
    });
    const again = (await pods('unready'))[0];
    assert.equal(isReady(again as Pod), false);
    assert.equal(again?.status?.containerStatuses?.[0]?.ready, false);
  });

  test('deleting the StatefulSets removes every pod, process and (with its claims) every volume', async () => {
    const pids = ['web-0', 'web-1'].map((n) => agent.pid(ns, n));
    for (const name of ['web', 'crashy', 'unready']) {
      await env.client.delete(`/apis/apps/v1/namespaces/${ns}/statefulsets/${name}`, { propagationPolicy: 'Foreground' });
    }
    await waitFor('every pod gone', async () => (await env.client.list<Pod>(`/api/v1/namespaces/${ns}/pods`)).items.length === 0, 90_000);
    for (const pid of pids) if (pid !== undefined) assert.throws(() => process.kill(pid, 0), /ESRCH/);
    await env.kubectlOk(['-n', ns, 'delete', 'pvc', '--all', '--wait=false']);
    await waitFor('claims and volumes gone', async () => {
      const claims = await env.client.list<PersistentVolumeClaim>(`/api/v1/namespaces/${ns}/persistentvolumeclaims`);
      const pvs = await env.client.list<{ spec: { claimRef?: { namespace?: string } } }>('/api/v1/persistentvolumes');
      return claims.items.length === 0 && pvs.items.every((pv) => pv.spec.claimRef?.namespace !== ns);
    });
    await waitFor('claim directories removed', () => !existsSync(agent.volumeDir(ns, 'data-web-0')));
  });
});

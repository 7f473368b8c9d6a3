// Monitoring end to end: Prometheus (Debian's package) runs the chart's scrape jobs
// (charts/celer-operator/files/prometheus-scrape-config.yaml) with their relabel rules as
// shipped. Pod discovery must find a real Celer node and the operator, which here runs as the
// chart's own Deployment (the test agent runs the pod with the chart's ServiceAccount), and the
// named metrics must arrive. Debian's Prometheus has no Kubernetes discovery compiled in, so the
// jobs discover pods of this apiserver through test/agent/pod-sd.ts (HTTP SD, same meta labels).
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { TestAgent } from '../agent/agent.ts';
import { celerEntrypoint, defaultExecutables } from '../agent/celer.ts';
import { servePodDiscovery } from '../agent/pod-sd.ts';
import type { Pod } from '../agent/types.ts';
import { celerWrite, clusterPath, condition, getCluster, helmInstall } from './kube-celer.ts';
import { createNamespace, helmPath, repoRoot, startKube, waitFor, type KubeEnv } from './kube-env.ts';
import { isOperatorQuery, loadDashboard, panelQueries, withVariables } from '../lib/monitoring.ts';
import { Prometheus, type Sample } from './lib/prometheus.ts';

const RELEASE = 'celer-operator';
const CLUSTER = 'mon';

let env: KubeEnv;
let agent: TestAgent;
let prometheus: Prometheus | undefined;
let discovery: { url: string; close: () => Promise<void> } | undefined;
let opNs: string;
let ns: string;

/** Scrape, evaluation and discovery refresh interval. */
const INTERVAL_S = 2;

async function query(q: string): Promise<Sample[]> {
  return prometheus!.query(q);
}

async function podsOf(namespace: string, selector: string): Promise<Pod[]> {
  return (await env.client.list<Pod>(`/api/v1/namespaces/${namespace}/pods`, selector === '' ? {} : { labelSelector: selector })).items;
}

const isReady = (p: Pod): boolean => p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;

function diagnostics(): string {
  return ['--- agent', ...(agent?.events.slice(-25) ?? []), '--- prometheus', prometheus?.output(20) ?? ''].join('\n');
}

describe('Prometheus scrapes Celer nodes and the operator with the chart\'s scrape configuration', () => {
  before(async () => {
    env = await startKube('prometheus');
    const helm = await helmPath();
    opNs = await createNamespace(env, 'celer-system');
    ns = await createNamespace(env, 'apps');
    agent = await TestAgent.start({
      kubeconfig: env.kubeconfig,
      workDir: path.join(env.runDir, 'agent'),
      namespaces: [opNs, ns],
      executables: defaultExecutables(),
      entrypoint: celerEntrypoint,
      // The image's WORKDIR: the operator Deployment runs `node /app/operator/main.ts`.
      pathMap: { '/app': repoRoot },
    });
    // The chart as released: one operator replica with leader election, scrape annotations on.
    await helmInstall(env, helm, RELEASE, opNs);
    discovery = await servePodDiscovery(async () => [...(await podsOf(opNs, '')), ...(await podsOf(ns, ''))]);
    prometheus = await Prometheus.start({ dir: path.join(env.runDir, 'prometheus'), sdUrl: discovery.url, intervalS: INTERVAL_S });
  });

  after(async () => {
    await prometheus?.stop();
    await discovery?.close();
    await agent?.stop();
    await env?.stop();
  });

  test('the chart\'s operator Deployment runs under the test agent with the chart\'s ServiceAccount and becomes Ready', async () => {
    const pod = await waitFor('the operator pod Ready', async () => {
      const ps = await podsOf(opNs, `app.kubernetes.io/name=celer-operator,app.kubernetes.io/instance=${RELEASE}`);
      return ps.length === 1 && ps[0] !== undefined && isReady(ps[0]) ? ps[0] : undefined;
    }, 120_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}\n${agent.podLogs(opNs, '')}`);
    });
    assert.equal(pod.spec.serviceAccountName, RELEASE);
    const healthz = await fetch(`http://${pod.status?.podIP}:8080/healthz`);
    assert.equal(healthz.status, 200);
  });

  test('a CelerCluster created now is reconciled by that operator to a Ready node', async () => {
    await env.client.create(clusterPath(ns), {
      apiVersion: 'celer.io/v1alpha1',
      kind: 'CelerCluster',
      metadata: { name: CLUSTER, namespace: ns },
      spec: { version: '0.1.0', standalone: true, replicas: 1, shards: 2, storage: { size: '1Gi' } },
    });
    await waitFor('CelerCluster mon Ready', async () => condition(await getCluster(env, ns, CLUSTER), 'Ready')?.status === 'True', 180_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}\n${agent.podLogs(ns, `${CLUSTER}-0`, 3000)}`);
    });
    const [node] = await podsOf(ns, `celer.io/cluster=${CLUSTER}`);
    assert.equal(node?.metadata.annotations?.['prometheus.io/scrape'], 'true');
    for (let i = 0; i < 5; i++) await celerWrite(`${node?.status?.podIP}:7400`, `1/1/${i + 1}`, 'Created', '{"n":1}');
  });

  test('Prometheus discovers the node and operator pods listed by the apiserver, and both targets are up', async () => {
    const [node] = await podsOf(ns, `celer.io/cluster=${CLUSTER}`);
    const [op] = await podsOf(opNs, 'app.kubernetes.io/name=celer-operator');
    const targets = await waitFor('both scrape jobs up', async () => {
      const activeTargets = await prometheus!.targets();
      const byJob = (job: string): (typeof activeTargets)[number] | undefined => activeTargets.find((t) => t.scrapePool === job);
      const n = byJob('celer-nodes');
      const o = byJob('celer-operator');
      return n?.health === 'up' && o?.health === 'up' ? { node: n, operator: o, all: activeTargets } : undefined;
    }, 90_000).catch((err: Error) => {
      throw new Error(`${err.message}\n${diagnostics()}`);
    });
    assert.equal(targets.node.scrapeUrl, `http://${node?.status?.podIP}:7401/metrics`);
    assert.equal(targets.node.labels.namespace, ns);
    assert.equal(targets.node.labels.pod, `${CLUSTER}-0`);
    assert.equal(targets.node.labels.celer_cluster, CLUSTER);
    assert.equal(targets.operator.scrapeUrl, `http://${op?.status?.podIP}:8080/metrics`);
    assert.equal(targets.operator.labels.namespace, opNs);
    // Each job keeps only its own pods.
    assert.deepEqual(targets.all.filter((t) => t.scrapePool === 'celer-nodes').map((t) => t.labels.pod), [`${CLUSTER}-0`]);
    assert.deepEqual(targets.all.filter((t) => t.scrapePool === 'celer-operator').map((t) => t.labels.pod), [op?.metadata.name]);
  });

  test('the node\'s write counter and latency histogram and the operator\'s reconcile metrics reach Prometheus', async () => {
    const writes = await waitFor('celer_writes_total of the node reflects the writes', async () => {
      const r = await query(`sum(celer_writes_total{job="celer-nodes",celer_cluster="${CLUSTER}"})`);
      return r.length === 1 && Number(r[0]?.value[1]) >= 5 ? r : undefined;
    }, 60_000);
    assert.ok(Number(writes[0]?.value[1]) >= 5);
    const buckets = await waitFor('celer_write_latency_seconds_bucket series', async () => {
      const r = await query(`celer_write_latency_seconds_bucket{job="celer-nodes",pod="${CLUSTER}-0"}`);
      return r.length > 0 ? r : undefined;
    });
    assert.ok(buckets.some((b) => b.metric.le === '+Inf' && Number(b.value[1]) >= 5), 'the +Inf bucket counts every write');
    const reconciles = await waitFor('celer_operator_reconciles_total from the operator job', async () => {
      const r = await query('sum(celer_operator_reconciles_total{job="celer-operator"})');
      return r.length === 1 && Number(r[0]?.value[1]) > 0 ? r : undefined;
    });
    assert.ok(Number(reconciles[0]?.value[1]) > 0);
    const duration = await query('celer_operator_reconcile_duration_seconds_count{job="celer-operator"}');
    assert.ok(duration.length > 0, 'the reconcile duration histogram is scraped');
    const leader = await query('celer_operator_is_leader{job="celer-operator"}');
    assert.equal(leader[0]?.value[1], '1', 'the only operator replica holds the Lease');
  });

  test('every operator panel query of the dashboard returns data from the operator job', async () => {
    // The node panels are checked against a two-node cluster in cluster-prometheus.test.ts.
    const ops = panelQueries(loadDashboard()).filter((q) => isOperatorQuery(q.expr));
    assert.ok(ops.length >= 2, `only ${ops.length} operator queries`);
    for (const q of ops) {
      const expr = withVariables(q.expr, { namespace: ns, cluster: CLUSTER });
      const r = await waitFor(`panel "${q.panel}" ${q.refId} to return data: ${expr}`, async () => {
        const x = await query(expr);
        return x.length > 0 ? x : undefined;
      }, 60_000);
      console.log(`operator panel "${q.panel}" ${q.refId}: ${r.length} series, e.g. ${JSON.stringify(r[0]?.metric)} ${r[0]?.value[1]}`);
    }
    // Teeth: the same check on a renamed metric finds nothing.
    assert.deepEqual(await query('sum by (gate) (rate(celer_operator_gate_deferals_total[5m]))'), []);
  });
});

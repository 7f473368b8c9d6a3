// The Grafana dashboard and the CelerNoWritableNode alert against a real two-node cluster and a
// real Prometheus. Two `celer serve` nodes (real RGW) take a little write and read load, with a
// few deliberate errors (2003, 2011, 1001). Prometheus (Debian's, hack/prometheus.sh) runs the
// chart's scrape job and relabel rules unchanged, with files/alerts.yaml as its rule file. Its pod
// discovery is test/agent/pod-sd.ts serving two pods built from the operator's own StatefulSet
// pod template (labels and prometheus.io annotations as the operator makes them, celer.io/role
// from each node's /status as the operator sets it); only the prometheus.io/port annotation is
// each node's real HTTP port, since both nodes share 127.0.0.1.
// Then every node panel query of files/dashboard.json, with its variables resolved the way
// Grafana would, must return data, with both pods where it keeps the pod label; a renamed metric
// or a wrong cluster label must not (the check has teeth). The operator panel's queries are only
// checked to parse here: kube-prometheus.test.ts runs the operator and checks their data.
// CelerNoWritableNode: quiet with a leader; pending (for: 1m) once both nodes are stopped while
// still discovered (the up clause, with the cluster labels), and once the pods are gone as well
// (the absent() clause); the rule as it was before stays empty in both states.
import { after, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { AggregateNotFoundError, NotLeaderError, WrongExpectedVersionError, type CelerClient } from '@celer/client';
import { withDefaults } from '../../operator/api/defaults.ts';
import { LABEL_ROLE } from '../../operator/api/constants.ts';
import type { CelerCluster, CelerClusterSpec } from '../../operator/api/types.ts';
import { podName } from '../../operator/reconcile/names.ts';
import { statefulSet } from '../../operator/reconcile/objects/statefulset.ts';
import { servePodDiscovery } from '../agent/pod-sd.ts';
import type { Pod } from '../agent/types.ts';
import { alertRule, ALERTS_FILE, isOperatorQuery, loadDashboard, loadRules, panelQueries, withVariables, type PanelQuery } from '../lib/monitoring.ts';
import { clusterSuite, Load, now, sleep, te, withLogs } from './lib/cluster.ts';
import { Prometheus, type Sample } from './lib/prometheus.ts';

const NAMESPACE = 'e2e-mon';
const CLUSTER = 'mon';
/** Scrape, rule evaluation and discovery refresh interval: short, so staleness shows in seconds. */
const INTERVAL_S = 1;
/** Longest wait for one panel query to return data (rate() and increase() need two samples). */
const PANEL_DATA_TIMEOUT_MS = 30_000;
/** Longest wait for the alert expression to change after the nodes stop or the pods go. */
const ALERT_TIMEOUT_MS = 30_000;
/** Pause between a reader's reads, so the load stays light on the shared cores. */
const READ_PAUSE_MS = 20;
/** The expression of CelerNoWritableNode before it had the up and absent() clauses. */
const OLD_NO_WRITABLE_EXPR = 'sum by (namespace, celer_cluster) (celer_node_role{role=~"leader|standalone"}) < 1';

const suite = clusterSuite();
let prom: Prometheus | undefined;
let discovery: { url: string; close: () => Promise<void> } | undefined;
/** The celer.io/role label of each pod, as the operator would set it from /status. */
const roleLabels = ['', ''];
/** Whether discovery lists the pods (false: they were deleted). */
let podsListed = true;

after(async () => {
  await prom?.stop();
  await discovery?.close();
});

/** The two node pods as the operator's StatefulSet would make them, placed on the test's nodes. */
async function nodePods(): Promise<Pod[]> {
  if (!podsListed) return [];
  const c = suite.c;
  const spec: CelerClusterSpec = { version: '0.0.0-e2e', storage: { size: '1Gi' }, standalone: false, replicas: 2, s3: { bucket: c.s3.env.CELER_S3_BUCKET!, prefix: c.prefix } };
  const owner: CelerCluster = { apiVersion: 'celer.io/v1alpha1', kind: 'CelerCluster', metadata: { name: CLUSTER, namespace: NAMESPACE, uid: 'uid-e2e-mon' }, spec };
  const defaulted = withDefaults(spec);
  const template = statefulSet(owner, defaulted, defaulted.lease).statefulSet.spec!.template;
  const pods: Pod[] = [];
  for (const i of [0, 1]) {
    const st = c.running(i) ? await c.status(i).catch(() => null) : null;
    if (st !== null) roleLabels[i] = st.role;
    pods.push({
      apiVersion: 'v1',
      kind: 'Pod',
      metadata: {
        name: podName(CLUSTER, i),
        namespace: NAMESPACE,
        uid: `uid-${i}`,
        labels: { ...template.metadata?.labels, ...(roleLabels[i] !== '' ? { [LABEL_ROLE]: roleLabels[i]! } : {}) },
        annotations: { ...template.metadata?.annotations, 'prometheus.io/port': c.nodes[i]!.http.split(':')[1]! },
      },
      spec: template.spec as unknown as Pod['spec'],
      status: { phase: 'Running', podIP: '127.0.0.1', hostIP: '127.0.0.1', conditions: [{ type: 'Ready', status: st?.ready === true ? 'True' : 'False' }] },
    } as Pod);
  }
  return pods;
}

/** Reads the writers' aggregates from one node until stopped; counts what it read. */
function readLoop(client: CelerClient, load: Load, stop: { stopped: boolean }): Promise<number> {
  return (async () => {
    let n = 0;
    while (!stop.stopped) {
      for (const w of load.writers) {
        if (stop.stopped) break;
        try {
          await client.read(w.key);
          n++;
        } catch (e) {
          if (!(e instanceof AggregateNotFoundError)) throw e;
        }
        await sleep(READ_PAUSE_MS);
      }
    }
    return n;
  })();
}

const short = (samples: Sample[]): string =>
  samples.slice(0, 4).map((s) => `${Object.entries(s.metric).map(([k, v]) => `${k}=${v}`).join(',') || '{}'} ${Number(s.value[1]).toPrecision(3)}`).join('; ') + (samples.length > 4 ? `; … (${samples.length})` : '');

test('every node panel of the dashboard returns data from a running two-node cluster, and CelerNoWritableNode fires once both nodes are down', { timeout: 600_000 }, () =>
  withLogs(suite.c, async () => {
    const c = suite.c;
    await c.startBoth();
    const roles = await c.waitForRoles();
    console.log(`leader n${roles.leader}, epoch ${roles.epoch}`);

    discovery = await servePodDiscovery(nodePods);
    prom = await Prometheus.start({ dir: path.join(c.dir, 'prometheus'), sdUrl: discovery.url, intervalS: INTERVAL_S, ruleFiles: [ALERTS_FILE] });
    const p = prom;

    const load = new Load({ writers: 4, exactlyOnce: 2, org: 7, thinkMs: 5 });
    await load.start(c);
    const readers = await Promise.all([c.clientOf(0), c.clientOf(1)]);
    const stopReads = { stopped: false };
    const reads = readers.map((r) => readLoop(r, load, stopReads));
    try {
      await load.waitAcks(200);
      // One error of each kind for the errors-by-code panel: a failed guard on the leader, a
      // write to the follower, a read of an aggregate that does not exist.
      // Through a client of their own: after the follower's 2011 a client follows the leader hint,
      // and the readers must stay on their node.
      const probe = await c.clientOf(roles.follower);
      try {
        await assert.rejects(probe.read({ org: 7, type: 9, id: 404 }), AggregateNotFoundError);
        // The follower answers 2011 naming the leader; the client then writes there.
        await probe.append({ org: 7, type: 9, id: 2 }, [{ type: 'X', data: te.encode('x') }]).catch((e: unknown) => assert.ok(e instanceof NotLeaderError, String(e)));
        await assert.rejects(probe.append({ org: 7, type: 9, id: 1 }, [{ type: 'X', data: te.encode('x') }], { expectedVersion: 5n }), WrongExpectedVersionError);
      } finally {
        await probe.close();
      }
      assert.ok((await c.metric(roles.follower, 'celer_requests_total', 'result="2011"')) > 0, 'the follower counted a 2011');
      assert.ok((await c.metric(roles.follower, 'celer_reads_total', 'result="1001"')) > 0, 'the follower counted a 1001');
      assert.ok((await c.metric(roles.leader, 'celer_writes_total', 'result="2003"')) > 0, 'the leader counted a 2003');

      const targets = await c.waitFor('both node targets up in job celer-nodes', async () => {
        const ts = (await p.targets()).filter((t) => t.scrapePool === 'celer-nodes');
        return ts.length === 2 && ts.every((t) => t.health === 'up') ? ts : null;
      }, 60_000);
      for (const i of [0, 1]) {
        const t = targets.find((x) => x.labels.pod === podName(CLUSTER, i));
        assert.ok(t !== undefined, `a target for pod ${podName(CLUSTER, i)}: ${JSON.stringify(targets.map((x) => x.labels))}`);
        assert.equal(t.scrapeUrl, `http://${c.nodes[i]!.http}/metrics`);
        assert.equal(t.labels.namespace, NAMESPACE);
        assert.equal(t.labels.celer_cluster, CLUSTER);
        assert.equal(t.labels.celer_role, i === roles.leader ? 'leader' : 'follower');
      }

      // The variables, as Grafana resolves them: label_values(celer_epoch, namespace), then
      // label_values(celer_epoch{namespace=~"$namespace"}, celer_cluster).
      const dashboard = loadDashboard();
      const vars = dashboard.templating.list;
      assert.deepEqual(vars.filter((v) => v.type === 'query').map((v) => v.name), ['namespace', 'cluster']);
      const namespaces = await c.waitFor('$namespace values', async () => {
        const vs = await p.labelValues('namespace', 'celer_epoch');
        return vs.length > 0 ? vs : null;
      });
      assert.deepEqual(namespaces, [NAMESPACE]);
      assert.deepEqual(await p.labelValues('celer_cluster', `celer_epoch{namespace=~"${NAMESPACE}"}`), [CLUSTER]);
      const values = { namespace: NAMESPACE, cluster: CLUSTER };

      // The load has been scraped for a while: both nodes serve reads, the leader replicates.
      const busy = await c.waitFor('read rates > 0 on both pods and replication traffic from the leader', async () => {
        const r = await p.query(`sum by (pod) (rate(celer_reads_total{result="ok", celer_cluster="${CLUSTER}"}[1m])) > 0`);
        const repl = await p.query(`sum by (pod) (rate(celer_replication_bytes_total{celer_cluster="${CLUSTER}"}[1m])) > 0`);
        if (r.length < 2 || repl.length < 1) await sleep(200);
        return r.length === 2 && repl.length === 1 ? { r, repl } : null;
      }, PANEL_DATA_TIMEOUT_MS);
      assert.equal(busy.repl[0]!.metric.pod, podName(CLUSTER, roles.leader), 'only the leader sends replication traffic');
      console.log(`reads/s by pod: ${short(busy.r)}; replication bytes/s: ${short(busy.repl)}`);

      const queries = panelQueries(dashboard);
      const nodeQueries = queries.filter((q) => !isOperatorQuery(q.expr));
      const operatorQueries = queries.filter((q) => isOperatorQuery(q.expr));
      assert.ok(nodeQueries.length >= 25, `only ${nodeQueries.length} node queries`);
      const name = (q: PanelQuery): string => `"${q.panel}" ${q.refId}`;
      const t0 = now();
      const lines: string[] = [];
      const failures: string[] = [];
      for (const q of nodeQueries) {
        const expr = withVariables(q.expr, values);
        const result = await c.waitFor(`panel ${name(q)} to return data: ${expr}`, async () => {
          const r = await p.query(expr);
          if (r.length === 0) await sleep(200);
          return r.length > 0 ? r : null;
        }, PANEL_DATA_TIMEOUT_MS).catch((e: Error) => {
          failures.push(`${name(q)}: no data (${e.message.split('\n')[0]})`);
          return [] as Sample[];
        });
        if (result.some((s) => s.metric.pod !== undefined)) {
          const pods = new Set(result.map((s) => s.metric.pod));
          for (const i of [0, 1]) if (!pods.has(podName(CLUSTER, i))) failures.push(`${name(q)}: no series for pod ${podName(CLUSTER, i)} (${short(result)})`);
        }
        lines.push(`  ${name(q)}: ${short(result)}`);
      }
      console.log(`node panel queries (${nodeQueries.length}), all answered within ${((now() - t0) / 1000).toFixed(1)} s:\n${lines.join('\n')}`);
      assert.deepEqual(failures, []);
      for (const q of operatorQueries) {
        // No operator runs here: the query must parse and run; kube-prometheus checks its data.
        const r = await p.query(withVariables(q.expr, values));
        console.log(`operator panel ${name(q)}: accepted, ${r.length} series (checked with data in kube-prometheus)`);
      }

      // Teeth: the same check, on queries that are wrong, finds no data.
      const reads = nodeQueries.find((q) => q.expr.includes('celer_reads_total'));
      assert.ok(reads !== undefined);
      const renamed = withVariables(reads.expr.replace('celer_reads_total', 'celer_read_requests_total'), values);
      assert.deepEqual(await p.query(renamed), [], `a renamed metric returned data: ${renamed}`);
      const otherCluster = withVariables(reads.expr, { namespace: NAMESPACE, cluster: 'not-mon' });
      assert.deepEqual(await p.query(otherCluster), [], `another cluster's selection returned data: ${otherCluster}`);
      assert.ok((await p.query(withVariables(reads.expr, values))).length > 0, 'the unbroken query still has data');

      const rule = alertRule(loadRules(), 'CelerNoWritableNode');
      assert.ok(rule !== undefined);
      assert.deepEqual(await p.query(rule.expr), [], 'CelerNoWritableNode with a leader');
      await c.waitFor('the rules evaluated once', async () => (await p.alert('CelerNoWritableNode')).state === 'inactive');
      console.log(`with leader n${roles.leader}: CelerNoWritableNode ${JSON.stringify(await p.alert('CelerNoWritableNode'))}`);
    } finally {
      stopReads.stopped = true;
      const counts = await Promise.allSettled(reads);
      console.log(`reads: ${counts.map((r) => (r.status === 'fulfilled' ? r.value : `failed: ${String(r.reason)}`)).join(', ')}`);
      await load.stop();
      await Promise.all(readers.map((r) => r.close()));
    }
    console.log(`writes acknowledged: ${load.acks}; client errors: ${load.errorSummary()}`);
    assert.deepEqual(load.errors, [], 'no write of the load failed');

    // Both nodes stop; the pods are still discovered (a crash loop keeps the pod and its IP).
    const rule = alertRule(loadRules(), 'CelerNoWritableNode')!;
    const tStop = now();
    await Promise.all([c.stop(0), c.stop(1)]);
    const down = await c.waitFor('CelerNoWritableNode expression non-empty with both nodes down', async () => {
      const r = await prom!.query(rule.expr);
      if (r.length === 0) await sleep(100);
      return r.length > 0 ? r : null;
    }, ALERT_TIMEOUT_MS);
    console.log(`both nodes stopped: the expression returned ${short(down)} after ${((now() - tStop) / 1000).toFixed(1)} s`);
    assert.equal(down.length, 1);
    assert.equal(down[0]!.metric.namespace, NAMESPACE);
    assert.equal(down[0]!.metric.celer_cluster, CLUSTER);
    const pending = await c.waitFor('CelerNoWritableNode pending', async () => {
      const a = await prom!.alert('CelerNoWritableNode');
      return a.state === 'pending' || a.state === 'firing' ? a : null;
    }, ALERT_TIMEOUT_MS);
    console.log(`rule state: ${JSON.stringify(pending)}`);
    assert.ok(pending.alerts.some((l) => l.celer_cluster === CLUSTER && l.namespace === NAMESPACE));
    // The rule can turn pending while one node is still scraped as a follower (clause 1 sees a
    // sum of 0 then). The old expression is checked once both scrapes have failed: each failed
    // scrape writes up = 0 and the staleness markers of that target's series together.
    await c.waitFor('both node targets down', async () => {
      const r = await prom!.query('up{job="celer-nodes"} == 0');
      if (r.length < 2) await sleep(100);
      return r.length === 2 ? r : null;
    }, ALERT_TIMEOUT_MS);
    assert.deepEqual(await prom!.query(OLD_NO_WRITABLE_EXPR), [], 'the old expression sees nothing with both nodes down');

    // The pods go away too: no target, no series: only absent() can say so.
    podsListed = false;
    const tGone = now();
    const gone = await c.waitFor('CelerNoWritableNode expression from absent() once the pods are gone', async () => {
      const r = await prom!.query(rule.expr);
      if (r.length !== 1 || r[0]!.metric.celer_cluster !== undefined) await sleep(100);
      return r.length === 1 && r[0]!.metric.celer_cluster === undefined ? r : null;
    }, ALERT_TIMEOUT_MS);
    console.log(`pods gone: the expression returned ${short(gone)} after ${((now() - tGone) / 1000).toFixed(1)} s`);
    assert.deepEqual(await prom!.query('up{job="celer-nodes"}'), [], 'no node target is left');
    assert.deepEqual(await prom!.query(OLD_NO_WRITABLE_EXPR), [], 'the old expression sees nothing with the pods gone');
    const state = await c.waitFor('CelerNoWritableNode pending without cluster labels', async () => {
      const a = await prom!.alert('CelerNoWritableNode');
      return (a.state === 'pending' || a.state === 'firing') && a.alerts.some((l) => l.celer_cluster === undefined) ? a : null;
    }, ALERT_TIMEOUT_MS);
    console.log(`rule state: ${JSON.stringify(state)}`);
  }),
);

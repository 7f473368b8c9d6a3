// The chart's dashboard and alert rules against what the node and the operator export: every
// panel has a query, every metric a query or rule names is one a registry really has, the
// dashboard covers the agreed cluster views, and CelerNoWritableNode also fires when every node
// is down (checked by `promtool test rules` with series that go stale or never exist). The
// Prometheus e2e suites (test/e2e/cluster-prometheus.test.ts, kube-prometheus.test.ts) evaluate
// the same queries against a real Prometheus.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { stringify } from 'yaml';
import {
  ALERTS_FILE, alertRule, dataPanels, exportedMetricNames, loadDashboard, loadRules, metricNames, panelQueries, unknownMetrics, variableMetricNames,
} from '../test/lib/monitoring.ts';

const promtool = '/usr/bin/promtool';
const dashboard = loadDashboard();
const rules = loadRules();

test('metricNames finds the selected metrics and nothing else (functions, keywords, labels, numbers, durations)', () => {
  assert.deepEqual(
    metricNames('histogram_quantile(0.99, sum by (pod, le) (rate(celer_fsync_latency_seconds_bucket{namespace=~"$namespace", result!="ok"}[1m]))) > 1e-3'),
    ['celer_fsync_latency_seconds_bucket'],
  );
  assert.deepEqual(
    metricNames('sum(a_total) by (x) / on (pod) group_left (role) b or absent(c{role=~"leader|standalone"}) unless d offset 5m and e == bool 1'),
    ['a_total', 'b', 'c', 'd', 'e'],
  );
  assert.deepEqual(metricNames('max by (pod) (up{celer_cluster!=""}) == 0 or on() vector(0)'), ['up']);
  assert.deepEqual(variableMetricNames('label_values(celer_epoch{namespace=~"$namespace"}, celer_cluster)'), ['celer_epoch']);
});

test('every dashboard panel has at least one query, and every query a refId', () => {
  const panels = dataPanels(dashboard);
  assert.ok(panels.length >= 20, `only ${panels.length} panels`);
  for (const p of panels) {
    assert.ok((p.targets ?? []).length > 0, `panel "${p.title}" has no query`);
    for (const t of p.targets ?? []) {
      assert.ok(typeof t.expr === 'string' && t.expr.trim() !== '', `panel "${p.title}" ${t.refId}: empty expr`);
      assert.ok(metricNames(t.expr).length > 0, `panel "${p.title}" ${t.refId}: the query selects no metric: ${t.expr}`);
    }
    const ids = (p.targets ?? []).map((t) => t.refId);
    assert.equal(new Set(ids).size, ids.length, `panel "${p.title}": duplicate refIds ${ids.join(',')}`);
  }
  const ids = [...dashboard.panels.filter((p) => p.type === 'row').map((p) => p.id), ...panels.map((p) => p.id)];
  assert.equal(new Set(ids).size, ids.length, 'panel ids are unique');
});

test('every metric the dashboard, its variables and the alert rules use is exported by the node or the operator', async () => {
  const known = await exportedMetricNames();
  // The registries were really read: a few names each side must be there.
  for (const n of ['celer_writes_total', 'celer_read_latency_seconds_bucket', 'celer_fencings_total', 'celer_s3_requests_total', 'celer_cache_bytes', 'celer_operator_reconciles_total']) {
    assert.ok(known.has(n), `${n} is not among the exported names (${known.size})`);
  }
  const queries = [
    ...panelQueries(dashboard).map((q) => ({ where: `panel "${q.panel}" ${q.refId}`, expr: q.expr })),
    ...dashboard.templating.list.filter((v) => v.type === 'query').flatMap((v) => variableMetricNames(v.query).map((n) => ({ where: `variable $${v.name}`, expr: n }))),
    ...rules.groups.flatMap((g) => g.rules).map((r) => ({ where: `alert ${r.alert}`, expr: r.expr })),
  ];
  assert.deepEqual(unknownMetrics(queries, known), []);
  assert.ok(dashboard.templating.list.filter((v) => v.type === 'query').every((v) => variableMetricNames(v.query).length === 1), 'each variable reads one metric');
});

test('teeth: a query with a renamed metric is reported as unknown', async () => {
  const known = await exportedMetricNames();
  const q = panelQueries(dashboard).find((x) => x.expr.includes('celer_reads_total'));
  assert.ok(q !== undefined, 'the dashboard has a reads panel');
  const broken = q.expr.replace('celer_reads_total', 'celer_read_requests_total');
  assert.deepEqual(unknownMetrics([{ where: 'broken', expr: broken }], known), ['broken: celer_read_requests_total']);
  assert.deepEqual(unknownMetrics([{ where: 'ok', expr: q.expr }], known), []);
});

test('the dashboard charts role and epoch per node, replication, S3 fallback, elections and fencings, reads, read latency and errors by code', () => {
  const byMetric = (m: string): string[] => panelQueries(dashboard).filter((q) => metricNames(q.expr).includes(m)).map((q) => q.panel);
  const wanted: [string, string][] = [
    ['celer_node_role', 'role'], ['celer_epoch', 'epoch'], ['celer_replication_lag_records', 'replication lag'],
    ['celer_replication_bytes_total', 'replication traffic'], ['celer_replication_acks_total', 'replication acks'],
    ['celer_s3_fallback_active', 'S3 fallback'], ['celer_s3_fallback_batches_total', 'S3 fallback batches'],
    ['celer_elections_total', 'elections'], ['celer_fencings_total', 'fencings'],
    ['celer_reads_total', 'reads'], ['celer_read_latency_seconds_bucket', 'read latency'], ['celer_requests_total', 'errors by code'],
  ];
  for (const [metric, what] of wanted) assert.ok(byMetric(metric).length > 0, `no panel charts ${what} (${metric})`);
  // Per node: the role and epoch queries keep the pod label.
  for (const m of ['celer_node_role', 'celer_epoch']) {
    for (const q of panelQueries(dashboard).filter((x) => metricNames(x.expr).includes(m))) assert.match(q.expr, /by \(pod\b/, `${q.panel}: not per pod`);
  }
  const errors = panelQueries(dashboard).find((q) => metricNames(q.expr).includes('celer_requests_total'));
  assert.match(errors?.expr ?? '', /result!="ok"/, 'the errors panel leaves out successes');
  assert.match(errors?.expr ?? '', /by \(op, result\)/, 'the errors panel is by operation and code');
});

test('CelerNoWritableNode has an absent() clause (it fires when no node reports a role at all)', () => {
  const rule = alertRule(rules, 'CelerNoWritableNode');
  assert.ok(rule !== undefined, 'files/alerts.yaml has CelerNoWritableNode');
  assert.match(rule.expr, /\babsent\(\s*celer_node_role\{[^}]*role=~"leader\|standalone"[^}]*\}\s*\)/);
  assert.match(rule.expr, /\bup\{/, 'a clause on up keeps the cluster labels while the down nodes are still discovered');
});

/** What CelerNoWritableNode was before it learnt about down nodes. */
const OLD_NO_WRITABLE_EXPR = 'sum by (namespace, celer_cluster) (celer_node_role{role=~"leader|standalone"}) < 1';

/** Runs `promtool test rules` over the rule file and returns its exit code and output. */
function promtoolTest(ruleFile: string): { code: number; output: string } {
  assert.ok(existsSync(promtool), `${promtool} is missing: run hack/deps.sh, which installs the Debian prometheus package`);
  const dir = mkdtempSync(path.join(tmpdir(), 'celer-rules-'));
  try {
    const series = (pod: string, role: string, values: string): { series: string; values: string } =>
      ({ series: `celer_node_role{namespace="ns",celer_cluster="c1",pod="${pod}",role="${role}"}`, values });
    const up = (pod: string, values: string): { series: string; values: string } =>
      ({ series: `up{job="celer-nodes",namespace="ns",celer_cluster="c1",pod="${pod}"}`, values });
    // The summary names the cluster when the firing clause knows it.
    const description = alertRule(loadRules(), 'CelerNoWritableNode')?.annotations?.description ?? '';
    const firing = (labels: Record<string, string>, summary: string): unknown =>
      ({ exp_labels: { severity: 'critical', ...labels }, exp_annotations: { summary, description } });
    const spec = {
      rule_files: [ruleFile],
      evaluation_interval: '15s',
      tests: [
        {
          // A leader and a follower for 3 minutes; then both nodes stop answering scrapes: their
          // series go stale and up drops to 0 while the pods are still discovered.
          interval: '15s',
          input_series: [
            series('c1-0', 'leader', '1x11 stale'), series('c1-0', 'follower', '0x11 stale'),
            series('c1-1', 'leader', '0x11 stale'), series('c1-1', 'follower', '1x11 stale'),
            up('c1-0', '1x11 0x20'), up('c1-1', '1x11 0x20'),
          ],
          alert_rule_test: [
            { eval_time: '2m', alertname: 'CelerNoWritableNode', exp_alerts: [] },
            { eval_time: '5m', alertname: 'CelerNoWritableNode', exp_alerts: [firing({ namespace: 'ns', celer_cluster: 'c1' }, 'Celer cluster ns/c1 has no writable node')] },
          ],
        },
        {
          // Two followers and no leader: the nodes answer, nobody can write.
          interval: '15s',
          input_series: [series('c1-0', 'leader', '0x20'), series('c1-0', 'follower', '1x20'), series('c1-1', 'follower', '1x20'), up('c1-0', '1x20'), up('c1-1', '1x20')],
          alert_rule_test: [{ eval_time: '3m', alertname: 'CelerNoWritableNode', exp_alerts: [firing({ namespace: 'ns', celer_cluster: 'c1' }, 'Celer cluster ns/c1 has no writable node')] }],
        },
        {
          // Nothing at all: the pods are gone (no role series, no targets).
          interval: '15s',
          input_series: [{ series: 'unrelated_metric', values: '1x20' }],
          alert_rule_test: [{ eval_time: '3m', alertname: 'CelerNoWritableNode', exp_alerts: [firing({}, 'No Celer node reports a role')] }],
        },
      ],
    };
    const testFile = path.join(dir, 'no-writable-node.test.yaml');
    writeFileSync(testFile, stringify(spec));
    try {
      return { code: 0, output: execFileSync(promtool, ['test', 'rules', testFile], { encoding: 'utf8', stdio: 'pipe' }) };
    } catch (e) {
      const x = e as { status?: number; stdout?: string; stderr?: string };
      return { code: x.status ?? -1, output: `${x.stdout ?? ''}${x.stderr ?? ''}` };
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
}

test('promtool: CelerNoWritableNode stays quiet with a leader, fires with two followers, with every node down, and with no node at all', () => {
  const r = promtoolTest(ALERTS_FILE);
  assert.equal(r.code, 0, r.output);
});

test('teeth: the rule as it was (no up and absent clauses) fails that promtool test', () => {
  const old = loadRules();
  const rule = alertRule(old, 'CelerNoWritableNode');
  assert.ok(rule !== undefined);
  rule.expr = OLD_NO_WRITABLE_EXPR;
  const dir = mkdtempSync(path.join(tmpdir(), 'celer-rules-old-'));
  try {
    const file = path.join(dir, 'alerts.yaml');
    writeFileSync(file, stringify(old));
    assert.equal(readFileSync(file, 'utf8').includes('absent('), false);
    const r = promtoolTest(file);
    assert.notEqual(r.code, 0, `the old rule passed:\n${r.output}`);
    assert.match(r.output, /CelerNoWritableNode/);
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

// Renders the celer-operator chart with the real helm binary (hack/helm.sh provides it) and
// checks the properties that the apiserver or a reviewer would otherwise catch late.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';

const root = fileURLToPath(new URL('../', import.meta.url));
const chart = `${root}charts/celer-operator`;
const helm = execFileSync('bash', [`${root}hack/helm.sh`], { encoding: 'utf8' }).trim().split('\n').pop();

function render(args = []) {
  const out = execFileSync(helm, ['template', 'r1', chart, '--namespace', 'celer-system', ...args], { encoding: 'utf8' });
  return parseAllDocuments(out).map((d) => d.toJS()).filter((d) => d !== null);
}

const all = ['--set', 'monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true,replicaCount=2'];

test('helm lint accepts the chart', () => {
  execFileSync(helm, ['lint', '--strict', chart], { encoding: 'utf8' });
});

test('by default the chart renders the operator, its RBAC and metrics Service, and no monitoring objects', () => {
  const kinds = render().map((d) => d.kind).sort();
  assert.deepEqual(kinds, ['ClusterRole', 'ClusterRoleBinding', 'Deployment', 'Role', 'RoleBinding', 'Service', 'ServiceAccount']);
});

test('every monitoring toggle renders its object and the operator gets a PDB with two replicas', () => {
  const kinds = render(all).map((d) => d.kind).sort();
  for (const k of ['ServiceMonitor', 'PrometheusRule', 'ConfigMap', 'PodDisruptionBudget']) assert.ok(kinds.includes(k), k);
});

test('the PDB uses policy/v1 only where the apiserver serves it (1.20 has only policy/v1beta1)', () => {
  const old = render(all).find((d) => d.kind === 'PodDisruptionBudget');
  assert.equal(old.apiVersion, 'policy/v1beta1');
  const current = render([...all, '--api-versions', 'policy/v1/PodDisruptionBudget']).find((d) => d.kind === 'PodDisruptionBudget');
  assert.equal(current.apiVersion, 'policy/v1');
});

test('every port names protocol TCP, which server-side apply on 1.20 requires', () => {
  let ports = 0;
  for (const d of render(all)) {
    const lists = d.kind === 'Service' ? [d.spec.ports] : d.kind === 'Deployment' ? d.spec.template.spec.containers.map((c) => c.ports) : [];
    for (const list of lists) for (const p of list ?? []) { ports += 1; assert.equal(p.protocol, 'TCP', `${d.kind} ${d.metadata.name}`); }
  }
  assert.ok(ports >= 2);
});

test('the operator runs node operator/main.ts with leader election, the watch namespace and the node image', () => {
  const dep = render(['--set', 'watchNamespace=apps,image.repository=registry.example/celer,image.tag=9.9.9']).find((d) => d.kind === 'Deployment');
  const c = dep.spec.template.spec.containers[0];
  assert.equal(c.image, 'registry.example/celer:9.9.9');
  assert.deepEqual(c.command, ['node', '/app/operator/main.ts']);
  assert.ok(c.args.includes('--leader-elect'));
  const env = Object.fromEntries(c.env.filter((e) => e.value !== undefined).map((e) => [e.name, e.value]));
  assert.equal(env.WATCH_NAMESPACE, 'apps');
  assert.equal(env.CELER_DEFAULT_IMAGE, 'registry.example/celer');
  assert.equal(c.livenessProbe.httpGet.path, '/healthz');
});

test('the ClusterRole grants no wildcard and no write on Secrets, Nodes or PersistentVolumes', () => {
  const role = render().find((d) => d.kind === 'ClusterRole');
  for (const rule of role.rules) {
    assert.ok(!rule.verbs.includes('*') && !rule.resources.includes('*') && !rule.apiGroups.includes('*'), JSON.stringify(rule));
    if (rule.resources.includes('secrets')) assert.deepEqual(rule.verbs, ['get']);
    assert.ok(!rule.resources.includes('nodes') && !rule.resources.includes('persistentvolumes'));
  }
  const grants = (group, resource, verb) => role.rules.some((r) => r.apiGroups.includes(group) && r.resources.includes(resource) && r.verbs.includes(verb));
  for (const [g, r, v] of [['celer.io', 'celerclusters/status', 'patch'], ['apps', 'statefulsets', 'patch'], ['', 'pods', 'delete'], ['policy', 'poddisruptionbudgets', 'create']]) {
    assert.ok(grants(g, r, v), `${v} ${g}/${r}`);
  }
});

test('the PrometheusRule carries exactly the groups of the plain rule file', () => {
  const rule = render(all).find((d) => d.kind === 'PrometheusRule');
  assert.deepEqual(rule.spec.groups, parse(readFileSync(`${chart}/files/alerts.yaml`, 'utf8')).groups);
});

test('the plain rule file passes promtool when promtool is installed', (t) => {
  if (!existsSync('/usr/bin/promtool')) {
    t.skip('promtool is not installed (apt-get install prometheus)');
    return;
  }
  execFileSync('/usr/bin/promtool', ['check', 'rules', `${chart}/files/alerts.yaml`], { encoding: 'utf8' });
});

test('the dashboard ConfigMap carries the dashboard, which charts every agreed node metric', () => {
  const cm = render(all).find((d) => d.kind === 'ConfigMap');
  const dash = JSON.parse(cm.data['celer.json']);
  const exprs = dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)).join('\n');
  for (const m of ['celer_writes_total', 'celer_write_latency_seconds', 'celer_fsync_latency_seconds', 'celer_fsync_batch_size',
    'celer_cache_hits_total', 'celer_cache_misses_total', 'celer_replication_lag_records', 'celer_node_role', 'celer_epoch',
    'celer_lease_ttl_remaining_seconds']) {
    assert.ok(exprs.includes(m), `dashboard lacks ${m}`);
  }
  assert.equal(cm.metadata.labels.grafana_dashboard, '1');
});

test('every value in values.yaml is documented in the chart README', () => {
  const values = parse(readFileSync(`${chart}/values.yaml`, 'utf8'));
  const readme = readFileSync(`${chart}/README.md`, 'utf8');
  const leaves = [];
  const walk = (obj, path) => {
    for (const [k, v] of Object.entries(obj)) {
      const p = [...path, k];
      // Maps of free-form settings are documented as one entry.
      const opaque = ['resources', 'podSecurityContext', 'securityContext', 'labels'].includes(k);
      if (v !== null && typeof v === 'object' && !Array.isArray(v) && Object.keys(v).length > 0 && !opaque) walk(v, p);
      else leaves.push(p.join('.'));
    }
  };
  walk(values, []);
  assert.ok(leaves.length > 20);
  for (const leaf of leaves) assert.ok(readme.includes(`\`${leaf}\``), `README lacks ${leaf}`);
});

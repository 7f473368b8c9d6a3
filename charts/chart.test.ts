// Renders the celer-operator chart with the real helm binary (hack/helm.sh provides it) and
// checks the properties that the apiserver or a reviewer would otherwise catch late.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';

// The fields of rendered manifests that these tests read. Fields every test relies on for a given
// kind are declared required: a manifest that lacks one makes the test fail, never pass vacuously.
interface Port { name?: string; port?: number; containerPort?: number; protocol?: string }
interface EnvVar { name: string; value?: string }
interface Container {
  image: string;
  command: string[];
  args: string[];
  env: EnvVar[];
  ports?: Port[];
  livenessProbe: { httpGet: { path: string } };
}
interface PolicyRule { apiGroups: string[]; resources: string[]; verbs: string[] }
interface K8sDoc {
  apiVersion: string;
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec?: { ports?: Port[]; template?: { spec: { containers: Container[] } }; groups?: unknown };
  rules?: PolicyRule[];
  data?: Record<string, string>;
}
interface Dashboard { panels: { targets?: { expr: string }[] }[] }

function isRecord(v: unknown): v is Record<string, unknown> {
  return typeof v === 'object' && v !== null && !Array.isArray(v);
}

function isK8sDoc(v: unknown): v is K8sDoc {
  return isRecord(v) && typeof v['apiVersion'] === 'string' && typeof v['kind'] === 'string' && isRecord(v['metadata']);
}

function isDashboard(v: unknown): v is Dashboard {
  return isRecord(v) && Array.isArray(v['panels']);
}

/** Returns v, failing the test with a clear message when it is absent. */
function must<T>(v: T | undefined, what: string): T {
  if (v === undefined) assert.fail(`missing ${what}`);
  return v;
}

const root = fileURLToPath(new URL('../', import.meta.url));
const chart = `${root}charts/celer-operator`;
const helm = must(execFileSync('bash', [`${root}hack/helm.sh`], { encoding: 'utf8' }).trim().split('\n').pop(), 'helm path from hack/helm.sh');
const promtool = '/usr/bin/promtool';

function render(args: string[] = []): K8sDoc[] {
  const out = execFileSync(helm, ['template', 'r1', chart, '--namespace', 'celer-system', ...args], { encoding: 'utf8' });
  const docs = parseAllDocuments(out).map((d): unknown => d.toJS()).filter((d) => d !== null);
  for (const d of docs) assert.ok(isK8sDoc(d), `not a Kubernetes manifest: ${JSON.stringify(d)}`);
  return docs.filter(isK8sDoc);
}

function find(docs: K8sDoc[], kind: string): K8sDoc {
  return must(docs.find((d) => d.kind === kind), `${kind} in the rendered chart`);
}

const all = ['--set', 'monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true,replicaCount=2'];

test('helm lint --strict accepts the chart, also with two replicas (a PDB) and with every toggle on', () => {
  execFileSync(helm, ['lint', '--strict', chart], { encoding: 'utf8' });
  execFileSync(helm, ['lint', '--strict', chart, '--set', 'replicaCount=2'], { encoding: 'utf8' });
  execFileSync(helm, ['lint', '--strict', chart, ...all], { encoding: 'utf8' });
  // The version a 1.20 install picks passes lint for that version (no deprecation warning there).
  execFileSync(helm, ['lint', '--strict', chart, '--set', 'replicaCount=2', '--kube-version', '1.20.2'], { encoding: 'utf8' });
});

test('by default the chart renders the operator, its RBAC and metrics Service, and no monitoring objects', () => {
  const kinds = render().map((d) => d.kind).sort();
  assert.deepEqual(kinds, ['ClusterRole', 'ClusterRoleBinding', 'Deployment', 'Role', 'RoleBinding', 'Service', 'ServiceAccount']);
});

test('every monitoring toggle renders its object and the operator gets a PDB with two replicas', () => {
  const kinds = render(all).map((d) => d.kind).sort();
  for (const k of ['ServiceMonitor', 'PrometheusRule', 'ConfigMap', 'PodDisruptionBudget']) assert.ok(kinds.includes(k), k);
});

const pdbVersion = (args: string[]): string => find(render([...all, ...args]), 'PodDisruptionBudget').apiVersion;

test('without a view of the API (helm template, GitOps) the PDB is policy/v1', () => {
  assert.equal(pdbVersion([]), 'policy/v1');
});

test('the PDB is policy/v1beta1 only where the target is known to be older than 1.21', () => {
  // A real install passes the apiserver's version as .Capabilities.KubeVersion; --kube-version sets it here.
  assert.equal(pdbVersion(['--kube-version', '1.20.2']), 'policy/v1beta1');
  assert.equal(pdbVersion(['--kube-version', 'v1.20.15-gke.1000']), 'policy/v1beta1');
  assert.equal(pdbVersion(['--kube-version', '1.21.0']), 'policy/v1');
  assert.equal(pdbVersion(['--kube-version', '1.30.1']), 'policy/v1');
  // An apiserver that lists the resource wins over an old-looking version.
  assert.equal(pdbVersion(['--kube-version', '1.20.2', '--api-versions', 'policy/v1/PodDisruptionBudget']), 'policy/v1');
});

test('podDisruptionBudget.apiVersion overrides the choice, and anything but the two versions is refused', () => {
  assert.equal(pdbVersion(['--set', 'podDisruptionBudget.apiVersion=policy/v1beta1']), 'policy/v1beta1');
  assert.equal(pdbVersion(['--kube-version', '1.20.2', '--set', 'podDisruptionBudget.apiVersion=policy/v1']), 'policy/v1');
  assert.throws(() => render([...all, '--set', 'podDisruptionBudget.apiVersion=policy/v2']), /podDisruptionBudget\.apiVersion must be "", "policy\/v1" or "policy\/v1beta1"/);
});

test('every port names protocol TCP, which server-side apply on 1.20 requires', () => {
  let ports = 0;
  for (const d of render(all)) {
    const what = `${d.kind} ${d.metadata.name}`;
    const lists = d.kind === 'Service' ? [must(d.spec, `${what} spec`).ports]
      : d.kind === 'Deployment' ? must(must(d.spec, `${what} spec`).template, `${what} pod template`).spec.containers.map((c) => c.ports)
      : [];
    for (const list of lists) for (const p of list ?? []) { ports += 1; assert.equal(p.protocol, 'TCP', what); }
  }
  assert.ok(ports >= 2);
});

test('the operator runs node operator/main.ts with leader election, the watch namespace and the node image', () => {
  const dep = find(render(['--set', 'watchNamespace=apps,image.repository=registry.example/celer,image.tag=9.9.9']), 'Deployment');
  const c = must(must(must(dep.spec, 'Deployment spec').template, 'pod template').spec.containers[0], 'operator container');
  assert.equal(c.image, 'registry.example/celer:9.9.9');
  assert.deepEqual(c.command, ['node', '/app/operator/main.ts']);
  assert.ok(c.args.includes('--leader-elect'));
  const env = new Map(c.env.filter((e) => e.value !== undefined).map((e) => [e.name, e.value]));
  assert.equal(env.get('WATCH_NAMESPACE'), 'apps');
  assert.equal(env.get('CELER_DEFAULT_IMAGE'), 'registry.example/celer');
  assert.equal(c.livenessProbe.httpGet.path, '/healthz');
});

test('the ClusterRole grants no wildcard and no write on Secrets, Nodes or PersistentVolumes', () => {
  const rules = must(find(render(), 'ClusterRole').rules, 'ClusterRole rules');
  for (const rule of rules) {
    assert.ok(!rule.verbs.includes('*') && !rule.resources.includes('*') && !rule.apiGroups.includes('*'), JSON.stringify(rule));
    if (rule.resources.includes('secrets')) assert.deepEqual(rule.verbs, ['get']);
    assert.ok(!rule.resources.includes('persistentvolumes'), JSON.stringify(rule));
    // Nodes: read-only, for drains (the operator sees a cordon of the leader's node).
    if (rule.resources.includes('nodes')) assert.deepEqual([...rule.verbs].sort(), ['get', 'list', 'watch'], JSON.stringify(rule));
  }
  const grants = (group: string, resource: string, verb: string): boolean =>
    rules.some((r) => r.apiGroups.includes(group) && r.resources.includes(resource) && r.verbs.includes(verb));
  const wanted: [group: string, resource: string, verb: string][] = [
    ['celer.io', 'celerclusters/status', 'patch'], ['apps', 'statefulsets', 'patch'], ['', 'pods', 'delete'], ['policy', 'poddisruptionbudgets', 'create'],
  ];
  for (const [g, r, v] of wanted) {
    assert.ok(grants(g, r, v), `${v} ${g}/${r}`);
  }
});

test('the PrometheusRule carries exactly the groups of the plain rule file', () => {
  const rule = find(render(all), 'PrometheusRule');
  const plain: unknown = parse(readFileSync(`${chart}/files/alerts.yaml`, 'utf8'));
  assert.ok(isRecord(plain), 'files/alerts.yaml is not a mapping');
  assert.ok(Array.isArray(plain['groups']) && plain['groups'].length > 0, 'files/alerts.yaml has no rule groups');
  assert.deepEqual(must(rule.spec, 'PrometheusRule spec').groups, plain['groups']);
});

test('the plain rule file passes promtool (hack/deps.sh installs it with the prometheus package)', () => {
  assert.ok(existsSync(promtool), `${promtool} is missing: run hack/deps.sh, which installs the Debian prometheus package`);
  execFileSync(promtool, ['check', 'rules', `${chart}/files/alerts.yaml`], { encoding: 'utf8' });
});

test('the dashboard ConfigMap carries the dashboard, which charts every agreed node metric', () => {
  const cm = find(render(all), 'ConfigMap');
  const dash: unknown = JSON.parse(must(must(cm.data, 'ConfigMap data')['celer.json'], 'celer.json in the ConfigMap'));
  if (!isDashboard(dash)) assert.fail('celer.json has no panels');
  const exprs = dash.panels.flatMap((p) => (p.targets ?? []).map((t) => t.expr)).join('\n');
  for (const m of ['celer_writes_total', 'celer_write_latency_seconds', 'celer_fsync_latency_seconds', 'celer_fsync_batch_size',
    'celer_cache_hits_total', 'celer_cache_misses_total', 'celer_replication_lag_records', 'celer_node_role', 'celer_epoch',
    'celer_lease_ttl_remaining_seconds']) {
    assert.ok(exprs.includes(m), `dashboard lacks ${m}`);
  }
  assert.equal(must(cm.metadata.labels, 'ConfigMap labels')['grafana_dashboard'], '1');
});

test('every value in values.yaml is documented in the chart README', () => {
  const values: unknown = parse(readFileSync(`${chart}/values.yaml`, 'utf8'));
  assert.ok(isRecord(values), 'values.yaml is not a mapping');
  const readme = readFileSync(`${chart}/README.md`, 'utf8');
  const leaves: string[] = [];
  const walk = (obj: Record<string, unknown>, path: string[]): void => {
    for (const [k, v] of Object.entries(obj)) {
      const p = [...path, k];
      // Maps of free-form settings are documented as one entry.
      const opaque = ['resources', 'podSecurityContext', 'securityContext', 'labels'].includes(k);
      if (isRecord(v) && Object.keys(v).length > 0 && !opaque) walk(v, p);
      else leaves.push(p.join('.'));
    }
  };
  walk(values, []);
  assert.ok(leaves.length > 20);
  for (const leaf of leaves) assert.ok(readme.includes(`\`${leaf}\``), `README lacks ${leaf}`);
});

// The celer-operator Helm chart against a real Kubernetes 1.20 apiserver: helm lint, and a
// server-side dry run of every manifest the chart renders (with the capabilities the apiserver
// reports, so the PDB's policy version is the served one), both as a plain create and as
// server-side apply (which on 1.20 rejects a port without `protocol`). Without a view of the API
// (helm template, GitOps) the PDB is policy/v1; v1beta1 only for a target known older than 1.21.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFileSync } from 'node:fs';
import path from 'node:path';
import { parseAllDocuments } from 'yaml';
import { createNamespace, helmPath, repoRoot, run, runOk, startKube, type KubeEnv } from './kube-env.ts';

const chart = path.join(repoRoot, 'charts', 'celer-operator');

interface Manifest {
  apiVersion: string;
  kind: string;
  metadata: { name: string; namespace?: string };
}

// Value sets that between them render every template of the chart.
const valueSets: Record<string, string[]> = {
  defaults: [],
  'two replicas (PDB), every monitoring object, a watch namespace, an operator ServiceAccount annotation': [
    '--set',
    'replicaCount=2,monitoring.serviceMonitor.enabled=true,monitoring.prometheusRule.enabled=true,monitoring.dashboard.enabled=true,watchNamespace=apps',
    '--set-string',
    'serviceAccount.annotations.example\\.com/role=celer',
  ],
  'no RBAC, no ServiceAccount, no leader election': ['--set', 'rbac.create=false,serviceAccount.create=false,serviceAccount.name=existing,leaderElection.enabled=false'],
};

// The Prometheus Operator's CRDs are not part of this chart. These stand-ins only make the kinds
// exist, so the dry run checks the ServiceMonitor's and PrometheusRule's metadata and routing;
// their spec is not validated.
function monitoringCrd(plural: string, kind: string): unknown {
  return {
    apiVersion: 'apiextensions.k8s.io/v1',
    kind: 'CustomResourceDefinition',
    metadata: { name: `${plural}.monitoring.coreos.com` },
    spec: {
      group: 'monitoring.coreos.com',
      scope: 'Namespaced',
      names: { plural, singular: kind.toLowerCase(), kind, listKind: `${kind}List` },
      versions: [{ name: 'v1', served: true, storage: true, schema: { openAPIV3Schema: { type: 'object', 'x-kubernetes-preserve-unknown-fields': true } } }],
    },
  };
}

let env: KubeEnv;
let helm: string;
let ns: string;

/** Renders the chart as `helm install --dry-run=server` does: with the apiserver's capabilities. */
async function renderAgainstServer(release: string, args: string[]): Promise<{ manifest: string; docs: Manifest[] }> {
  const out = await runOk(helm, ['install', release, chart, '--namespace', ns, '--dry-run=server', '--output', 'json', ...args], {
    env: { ...process.env, KUBECONFIG: env.kubeconfig },
  });
  const manifest = (JSON.parse(out) as { manifest: string }).manifest;
  const docs = parseAllDocuments(manifest)
    .map((d) => d.toJS() as Manifest | null)
    .filter((d): d is Manifest => d !== null);
  return { manifest, docs };
}

describe('celer-operator chart on a real 1.20 apiserver', () => {
  before(async () => {
    env = await startKube('chart');
    helm = await helmPath();
    ns = await createNamespace(env, 'chart');
    await env.kubectlOk(['apply', '-f', '-'], JSON.stringify({ apiVersion: 'v1', kind: 'List', items: [monitoringCrd('servicemonitors', 'ServiceMonitor'), monitoringCrd('prometheusrules', 'PrometheusRule')] }));
    await env.kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/servicemonitors.monitoring.coreos.com', 'crd/prometheusrules.monitoring.coreos.com']);
  });

  after(async () => {
    await env?.stop();
  });

  test('helm lint --strict accepts the chart, also with two replicas (the operator PDB)', async () => {
    for (const args of [[], ['--set', 'replicaCount=2']]) {
      const r = await run(helm, ['lint', '--strict', chart, ...args]);
      assert.equal(r.code, 0, `helm lint --strict ${args.join(' ')}:\n${r.stdout}${r.stderr}`);
      assert.match(r.stdout, /1 chart\(s\) linted, 0 chart\(s\) failed/);
      assert.doesNotMatch(r.stdout, /\[WARNING\]/);
    }
  });

  test('the chart\'s CRD passes a server-side dry run as a create and as a client-side apply with --validate=false', async () => {
    const crd = path.join(chart, 'crds');
    const created = await env.kubectlOk(['create', '--validate=false', '--dry-run=server', '-f', crd]);
    assert.match(created, /customresourcedefinition\.apiextensions\.k8s\.io\/celerclusters\.celer\.io created \(server dry run\)/);
    await env.kubectlOk(['apply', '--validate=false', '--dry-run=server', '-f', crd]);
  });

  test('the CRD upgrade command the chart README gives for clusters older than 1.25 is accepted by 1.20', async () => {
    // charts/celer-operator/README.md and crds/README.md: kubectl apply --validate=false -f crds/
    // (client-side: a server-side apply is refused there, see the next test's sibling below).
    const r = await env.kubectl(['apply', '--validate=false', '--dry-run=server', '-f', path.join(chart, 'crds')]);
    assert.equal(r.code, 0, r.stderr);
    assert.match(r.stdout, /celerclusters\.celer\.io (created|configured|unchanged) \(server dry run\)/);
  });

  test('a server-side apply of the CRD is refused by 1.20 even without client validation, so the README does not offer it', async () => {
    const r = await env.kubectl(['apply', '--server-side', '--force-conflicts', '--validate=false', '--dry-run=server', '-f', path.join(chart, 'crds')]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /x-kubernetes-validations/);
  });

  test('without --validate=false kubectl refuses the CRD on 1.20 because of its CEL rules, as the README warns', async () => {
    const r = await env.kubectl(['apply', '--server-side', '--dry-run=server', '-f', path.join(chart, 'crds')]);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /unknown field "x-kubernetes-validations"/);
  });

  for (const [name, args] of Object.entries(valueSets)) {
    test(`every manifest rendered with ${name} passes a server-side dry run, as create and as server-side apply`, async () => {
      const { manifest, docs } = await renderAgainstServer('celer', args);
      assert.ok(docs.length > 0, 'the chart rendered something');
      const file = path.join(env.runDir, `chart-${Object.keys(valueSets).indexOf(name)}.yaml`);
      writeFileSync(file, manifest);
      const created = await env.kubectlOk(['apply', '--dry-run=server', '-n', ns, '-f', file]);
      const applied = await env.kubectlOk(['apply', '--server-side', '--dry-run=server', '--field-manager=e2e', '-n', ns, '-f', file]);
      // kubectl prints one line per object; every rendered object must be among them.
      for (const d of docs) {
        const needle = `${d.kind.toLowerCase()}.`;
        const line = (out: string): boolean => out.split('\n').some((l) => l.startsWith(needle) || l.includes(`/${d.metadata.name} `));
        assert.ok(line(created), `${d.kind}/${d.metadata.name} in dry-run create output:\n${created}`);
        assert.ok(line(applied), `${d.kind}/${d.metadata.name} in dry-run server-side apply output:\n${applied}`);
      }
    });
  }

  test('with two replicas, installed against 1.20 (its real capabilities), the operator\'s PDB uses policy/v1beta1, the version 1.20 serves', async () => {
    const { docs } = await renderAgainstServer('celer', ['--set', 'replicaCount=2']);
    const pdb = docs.find((d) => d.kind === 'PodDisruptionBudget');
    assert.ok(pdb !== undefined, 'a PDB is rendered');
    assert.equal(pdb.apiVersion, 'policy/v1beta1');
    const served = await env.kubectlOk(['api-versions']);
    assert.ok(!served.split('\n').includes('policy/v1'), 'the apiserver does not serve policy/v1');
  });

  test('helm template, without a view of the API, renders a policy/v1 PDB; with the server\'s --kube-version, the v1beta1 one 1.20 accepts', async () => {
    const template = async (args: string[]): Promise<{ file: string; pdb: Manifest }> => {
      const out = await runOk(helm, ['template', 'celer', chart, '--namespace', ns, '--set', 'replicaCount=2', ...args]);
      const pdb = parseAllDocuments(out).map((d) => d.toJS() as Manifest | null).find((d) => d?.kind === 'PodDisruptionBudget');
      assert.ok(pdb !== undefined && pdb !== null, `a PDB in:\n${out}`);
      const file = path.join(env.runDir, `chart-template-pdb-${pdb.apiVersion.replace('/', '-')}.yaml`);
      writeFileSync(file, JSON.stringify(pdb));
      return { file, pdb };
    };
    // helm template never contacts the apiserver (no KUBECONFIG here, on purpose).
    const plain = await template([]);
    assert.equal(plain.pdb.apiVersion, 'policy/v1');
    const version = (JSON.parse(await env.kubectlOk(['version', '-o', 'json'])) as { serverVersion: { gitVersion: string } }).serverVersion.gitVersion;
    assert.match(version, /^v1\.20\./);
    const old = await template(['--kube-version', version]);
    assert.equal(old.pdb.apiVersion, 'policy/v1beta1');
    await env.kubectlOk(['apply', '--dry-run=server', '-n', ns, '-f', old.file]);
    const refused = await env.kubectl(['apply', '--dry-run=server', '-n', ns, '-f', plain.file]);
    assert.notEqual(refused.code, 0, 'a 1.20 apiserver has no policy/v1');
  });

  test('a chart that asked for an API version the apiserver does not serve would be refused by the same dry run', async () => {
    // Guards the guard: the dry run above must be able to fail.
    const bad = 'apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: x}\nspec: {maxUnavailable: 1, selector: {matchLabels: {a: b}}}\n';
    const r = await env.kubectl(['apply', '--dry-run=server', '-n', ns, '-f', '-'], bad);
    assert.notEqual(r.code, 0);
    assert.match(r.stderr, /no matches for kind "PodDisruptionBudget" in version "policy\/v1"/);
  });
});

// The CRD file, the chart's copy of it, and the operator's defaults and limits describe one
// thing; these tests fail when one of them is edited alone.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { readFileSync, readdirSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';
import { applySchemaDefaults, CRD_PATH, loadCrdSchema, schemaAt } from './crd-schema.ts';
import { withDefaults } from './defaults.ts';
import { LIMITS, SIZE_PATTERN, VERSION_PATTERN } from './limits.ts';
import { validateSpec } from './validate.ts';
import type { CelerCluster, CelerClusterSpec } from './types.ts';

const root = fileURLToPath(new URL('../../', import.meta.url));
const schema = loadCrdSchema();

test('the chart ships byte-identical copies of every CRD in crds/', () => {
  const sources = readdirSync(`${root}crds`).filter((f) => f.endsWith('.yaml'));
  assert.ok(sources.length > 0);
  const copies = readdirSync(`${root}charts/celer-operator/crds`).filter((f) => f.endsWith('.yaml')).sort();
  assert.deepEqual(copies, [...sources].sort(), 'run hack/sync-crds.sh');
  for (const f of sources) {
    assert.equal(
      readFileSync(`${root}charts/celer-operator/crds/${f}`, 'utf8'), readFileSync(`${root}crds/${f}`, 'utf8'),
      `charts/celer-operator/crds/${f} differs from crds/${f}: run hack/sync-crds.sh`,
    );
  }
});

test('the CRD serves celer.io/v1alpha1 CelerCluster with a status subresource and the agreed printer columns', () => {
  const crd = parse(readFileSync(CRD_PATH, 'utf8')) as {
    apiVersion: string;
    spec: { group: string; names: { kind: string }; versions: { name: string; subresources?: { status?: unknown }; additionalPrinterColumns: { name: string }[] }[] };
  };
  assert.equal(crd.apiVersion, 'apiextensions.k8s.io/v1');
  assert.equal(crd.spec.group, 'celer.io');
  assert.equal(crd.spec.names.kind, 'CelerCluster');
  const v = crd.spec.versions[0]!;
  assert.equal(v.name, 'v1alpha1');
  assert.deepEqual(v.subresources?.status, {});
  const columns = v.additionalPrinterColumns.map((c) => c.name);
  for (const name of ['Phase', 'Leader', 'Epoch', 'Ready', 'Age']) assert.ok(columns.includes(name), name);
});

test('the schema defaults equal the operator defaults', () => {
  const spec: CelerClusterSpec = { version: '1.0.0', storage: { size: '1Gi' } };
  const fromSchema = applySchemaDefaults(spec, schemaAt(schema, ['spec'])!) as CelerClusterSpec;
  const fromOperator = withDefaults(spec);
  assert.equal(fromSchema.standalone, fromOperator.standalone);
  assert.equal(fromSchema.routing, fromOperator.routing);
  assert.equal(fromSchema.imagePullPolicy, fromOperator.imagePullPolicy);
  assert.equal(fromSchema.upgradePolicy, fromOperator.upgradePolicy);
  assert.equal(fromSchema.deletionPolicy, fromOperator.deletionPolicy);
  assert.deepEqual(fromSchema.lease, fromOperator.lease);
  assert.equal(fromSchema.monitoring?.serviceMonitor, fromOperator.monitoring.serviceMonitor);
  assert.equal(fromSchema.monitoring?.scrapeAnnotations, fromOperator.monitoring.scrapeAnnotations);
});

test('the schema bounds and patterns equal the validator limits', () => {
  const bound = (path: string[]): [number | undefined, number | undefined] => {
    const node = schemaAt(schema, ['spec', ...path]);
    assert.ok(node, path.join('.'));
    return [node.minimum, node.maximum];
  };
  assert.deepEqual(bound(['lease', 'leaseTtlMs']), [LIMITS.leaseTtlMsMin, LIMITS.leaseTtlMsMax]);
  assert.deepEqual(bound(['lease', 'renewDeadlineMs']), [LIMITS.renewDeadlineMsMin, LIMITS.renewDeadlineMsMax]);
  assert.deepEqual(bound(['lease', 'renewIntervalMs']), [LIMITS.renewIntervalMsMin, LIMITS.renewIntervalMsMax]);
  assert.deepEqual(bound(['lease', 'maxClockDriftMs']), [LIMITS.maxClockDriftMsMin, LIMITS.maxClockDriftMsMax]);
  assert.deepEqual(bound(['shards']), [LIMITS.shardsMin, LIMITS.shardsMax]);
  assert.deepEqual(bound(['replicas']), [LIMITS.replicasMin, LIMITS.replicasMax]);
  assert.equal(schemaAt(schema, ['spec', 'version'])?.pattern, VERSION_PATTERN);
  assert.equal(schemaAt(schema, ['spec', 'storage', 'size'])?.pattern, SIZE_PATTERN);
});

test('every spec field the operator reads is declared in the schema', () => {
  const fields = [
    'image', 'version', 'imagePullPolicy', 'standalone', 'replicas', 'storage', 'placement', 'resources', 's3', 'lease',
    'shards', 'routing', 'tls', 'monitoring', 'upgradePolicy', 'deletionPolicy',
  ] satisfies (keyof CelerClusterSpec)[];
  for (const f of fields) assert.ok(schemaAt(schema, ['spec', f]), `spec.${f} missing from the CRD`);
});

test('the example CelerClusters are valid', () => {
  const dirs = [`${root}crds/examples`, `${root}charts/celer-operator/examples`];
  let seen = 0;
  for (const dir of dirs) {
    for (const f of readdirSync(dir).filter((n) => n.endsWith('.yaml'))) {
      for (const doc of parseAllDocuments(readFileSync(`${dir}/${f}`, 'utf8'))) {
        const obj = doc.toJS() as CelerCluster;
        if (obj?.kind !== 'CelerCluster') continue;
        seen += 1;
        assert.deepEqual(validateSpec(obj.spec), [], `${dir}/${f}`);
      }
    }
  }
  assert.ok(seen >= 2, 'expected example CelerClusters');
});

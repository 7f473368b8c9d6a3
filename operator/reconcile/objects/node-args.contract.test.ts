// Contract between the operator and the node: every command line the operator generates, for
// every spec shape it accepts, must get through `celer serve`'s own argument parser and its
// cluster checks (node id, lease timings, listen/advertise/peer addresses). A flag the node
// refuses is a pod that crash-loops, so it has to fail here first.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1Container } from '@kubernetes/client-node';
import type { CelerCluster, CelerClusterSpec, LeaseSpec } from '../../api/types.ts';
import { DEFAULT_LEASE, withDefaults } from '../../api/defaults.ts';
import { validateSpec } from '../../api/validate.ts';
import { PORT_REPLICATION } from '../../api/constants.ts';
import { parseServeArgs } from '../../../dataplane/cli/serve-args.ts';
import { checkClusterOptions } from '../../../dataplane/server/node.ts';
import { statefulSet } from './statefulset.ts';

const twoNode: CelerClusterSpec = {
  version: '1.0.0', storage: { size: '10Gi' }, standalone: false, replicas: 2, shards: 4, s3: { bucket: 'celer-data' },
};

/** Every shape of spec the operator accepts, standalone and two-node. */
const SHAPES: Record<string, CelerClusterSpec> = {
  'standalone, defaults': { version: '1.0.0', storage: { size: '10Gi' } },
  'standalone, shards and routing org': { version: '1.0.0', storage: { size: '10Gi' }, standalone: true, replicas: 1, shards: 8, routing: 'org' },
  'standalone, routing type, monitoring': {
    version: '1.0.0', storage: { size: '1Gi' }, shards: 1, routing: 'type', monitoring: { scrapeAnnotations: true, serviceMonitor: true },
  },
  'two-node, bucket only': twoNode,
  'two-node, endpoint, region, prefix, credentials': {
    ...twoNode, s3: { bucket: 'celer-data', prefix: 'prod/eu/', endpoint: 'http://rgw.storage.svc:7480', region: 'eu-west-1', credentialsSecret: 's3-creds' },
  },
  'two-node, lease timings': { ...twoNode, lease: { leaseTtlMs: 3000, renewDeadlineMs: 2000, renewIntervalMs: 500, maxClockDriftMs: 200 } },
  'two-node, routing org, supervised, Delete': { ...twoNode, routing: 'org', upgradePolicy: 'supervised', deletionPolicy: 'Delete' },
};

function cluster(spec: CelerClusterSpec): CelerCluster {
  return { apiVersion: 'celer.io/v1alpha1', kind: 'CelerCluster', metadata: { name: 'orders', namespace: 'prod', uid: 'uid-1' }, spec };
}

/** Kubernetes' $(VAR) expansion of container args from the container's env (fieldRefs filled in). */
function expand(container: V1Container, pod: { name: string; namespace: string; ip: string }): string[] {
  const values = new Map<string, string>();
  for (const e of container.env ?? []) {
    if (e.value !== undefined) values.set(e.name, e.value);
    const field = e.valueFrom?.fieldRef?.fieldPath;
    if (field === 'metadata.name') values.set(e.name, pod.name);
    if (field === 'metadata.namespace') values.set(e.name, pod.namespace);
    if (field === 'status.podIP') values.set(e.name, pod.ip);
  }
  return (container.args ?? []).map((a) => a.replace(/\$\(([A-Za-z_][A-Za-z0-9_]*)\)/g, (whole, name: string) => {
    const v = values.get(name);
    assert.ok(v !== undefined, `argument ${a} names $(${name}), which the container's env does not define`);
    return v;
  }));
}

function containerOf(spec: CelerClusterSpec, lease: LeaseSpec = DEFAULT_LEASE): V1Container {
  const c = cluster(spec);
  const container = statefulSet(c, withDefaults(spec), lease).statefulSet.spec?.template.spec?.containers[0];
  assert.ok(container !== undefined);
  return container;
}

for (const [shape, spec] of Object.entries(SHAPES)) {
  test(`the node accepts the operator's arguments: ${shape}`, async () => {
    assert.deepEqual(validateSpec(spec), [], 'the shape is one the operator accepts');
    const replicas = withDefaults(spec).replicas;
    const container = containerOf(spec, { ...DEFAULT_LEASE, ...spec.lease });
    assert.deepEqual(container.command, ['celer']);
    for (let ordinal = 0; ordinal < replicas; ordinal++) {
      const pod = { name: `orders-${ordinal}`, namespace: 'prod', ip: `10.0.0.${10 + ordinal}` };
      const args = expand(container, pod);
      assert.equal(args[0], 'serve');
      const options = await parseServeArgs(args.slice(1));
      if (withDefaults(spec).standalone) {
        assert.equal(options.cluster, undefined);
        continue;
      }
      assert.ok(options.cluster !== undefined);
      // Each pod skips its own entry of the shared --peers list and dials the other pod.
      const addrs = checkClusterOptions(options.cluster, options.listen);
      const other = `orders-${1 - ordinal}.orders-nodes.prod.svc:${PORT_REPLICATION}`;
      assert.equal(addrs.peer, other, `${pod.name} dials the other pod`);
      assert.equal(addrs.advertise, pod.ip);
      assert.equal(addrs.replPort, PORT_REPLICATION, 'the declared replication port is the one the node listens on');
      const declared = new Set((container.ports ?? []).map((p) => p.containerPort));
      assert.ok(declared.has(addrs.replPort), 'the replication port is declared on the container');
    }
  });
}

test('a flag the node does not know is refused by the same parser (the contract has teeth)', async () => {
  await assert.rejects(parseServeArgs(['--standalone', '--data-dir', '/d', '--tls-cert', '/etc/celer/tls/tls.crt']), /Unknown option '--tls-cert'/);
  await assert.rejects(parseServeArgs(['--node-id', 'orders-0', '--data-dir', '/d', '--listen', '0.0.0.0:7400', '--advertise', '10.0.0.1', '--peers', 'orders-0.orders-nodes.prod.svc:7403', '--s3-bucket', 'b']), /names no node other than this one/);
});

test('spec.tls is refused before any pod exists: the node has no TLS flags', () => {
  const issues = validateSpec({ ...twoNode, tls: { secretName: 'orders-tls' } });
  assert.deepEqual(issues.map((i) => i.field), ['spec.tls']);
  assert.ok(!containerOf({ ...twoNode, tls: { secretName: 'orders-tls' } }).args?.some((a) => a.startsWith('--tls')));
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { KubernetesObject, V1Pod } from '@kubernetes/client-node';
import { clustersOnNode, nodeChangeMatters, unschedulableNodeNames } from './kube-nodes.ts';

test('only a cordon or uncordon of a Node matters; a status heartbeat does not', () => {
  assert.equal(nodeChangeMatters({ spec: {} }, { spec: { unschedulable: true } }), true);
  assert.equal(nodeChangeMatters({ spec: { unschedulable: true } }, { spec: { unschedulable: false } }), true);
  assert.equal(nodeChangeMatters({ spec: {}, status: { phase: 'Running' } }, { spec: { unschedulable: false }, status: { phase: 'x' } }), false);
});

test('cordoned node names, and the clusters with a pod on a node', () => {
  assert.deepEqual(unschedulableNodeNames([
    { metadata: { name: 'b' }, spec: { unschedulable: true } }, { metadata: { name: 'a' }, spec: { unschedulable: true } }, { metadata: { name: 'c' } },
  ]), ['a', 'b']);
  const pod = (ns: string, cluster: string | undefined, node: string): V1Pod & KubernetesObject => ({
    metadata: { namespace: ns, name: 'p', labels: cluster === undefined ? {} : { 'celer.io/cluster': cluster } }, spec: { containers: [], nodeName: node },
  });
  assert.deepEqual(clustersOnNode('k1', [pod('ns', 'c1', 'k1'), pod('ns', 'c1', 'k1'), pod('b', 'c2', 'k1'), pod('ns', 'c3', 'k2'), pod('ns', undefined, 'k1')]), ['b/c2', 'ns/c1']);
});

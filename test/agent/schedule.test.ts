import { test } from 'node:test';
import assert from 'node:assert/strict';
import { matchesLabelSelector, schedule, type VirtualNode } from './schedule.ts';
import type { Pod } from './types.ts';

const nodes: VirtualNode[] = ['a', 'b'].map((n) => ({ name: n, labels: { 'kubernetes.io/hostname': n, zone: n === 'a' ? 'z1' : 'z2' } }));

function pod(name: string, nodeName?: string, extra: Partial<Pod['spec']> = {}): Pod {
  return {
    metadata: { name, namespace: 'ns', uid: name, labels: { 'celer.io/cluster': 'c1' } },
    spec: { containers: [], ...(nodeName !== undefined ? { nodeName } : {}), ...extra },
  };
}

const antiAffinity = {
  podAntiAffinity: {
    requiredDuringSchedulingIgnoredDuringExecution: [{ topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: { 'celer.io/cluster': 'c1' } } }],
  },
};

test('label selectors follow matchLabels and every matchExpressions operator', () => {
  const labels = { a: '1', b: '2' };
  assert.equal(matchesLabelSelector({ matchLabels: { a: '1' } }, labels), true);
  assert.equal(matchesLabelSelector({ matchLabels: { a: '2' } }, labels), false);
  assert.equal(matchesLabelSelector({ matchExpressions: [{ key: 'b', operator: 'In', values: ['2', '3'] }] }, labels), true);
  assert.equal(matchesLabelSelector({ matchExpressions: [{ key: 'b', operator: 'NotIn', values: ['2'] }] }, labels), false);
  assert.equal(matchesLabelSelector({ matchExpressions: [{ key: 'c', operator: 'DoesNotExist' }] }, labels), true);
  assert.equal(matchesLabelSelector({ matchExpressions: [{ key: 'c', operator: 'Exists' }] }, labels), false);
  assert.equal(matchesLabelSelector(undefined, labels), false);
  assert.equal(matchesLabelSelector({}, labels), true);
});

test('required anti-affinity on hostname puts the second pod on the other node', () => {
  const first = pod('c1-0', 'a', { affinity: antiAffinity });
  assert.deepEqual(schedule(pod('c1-1', undefined, { affinity: antiAffinity }), nodes, [first]), { node: 'b' });
});

test('a third pod with required anti-affinity on two nodes is unschedulable', () => {
  const result = schedule(pod('c1-2', undefined, { affinity: antiAffinity }), nodes, [pod('c1-0', 'a'), pod('c1-1', 'b')]);
  assert.ok('unschedulable' in result);
  assert.match(result.unschedulable, /0\/2 nodes are available/);
});

test('nodeSelector restricts the choice to matching nodes', () => {
  assert.deepEqual(schedule(pod('p', undefined, { nodeSelector: { zone: 'z2' } }), nodes, []), { node: 'b' });
});

test('without constraints the least loaded node wins', () => {
  assert.deepEqual(schedule(pod('p'), nodes, [pod('q', 'a')]), { node: 'b' });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1Pod } from '@kubernetes/client-node';
import { leaseFlags } from '../reconcile/lease-timing.ts';
import { observedPod, ownerKey, splitKey } from './observe.ts';

test('a CelerCluster is its own key and a child maps to its cluster label', () => {
  assert.equal(ownerKey({ kind: 'CelerCluster', metadata: { name: 'c1', namespace: 'ns' } }), 'ns/c1');
  assert.equal(ownerKey({ kind: 'Pod', metadata: { name: 'c1-0', namespace: 'ns', labels: { 'celer.io/cluster': 'c1' } } }), 'ns/c1');
  assert.equal(ownerKey({ kind: 'Pod', metadata: { name: 'other', namespace: 'ns' } }), null);
  assert.deepEqual(splitKey('ns/c1'), { namespace: 'ns', name: 'c1' });
});

test('a pod is observed with its ordinal, template hash, readiness, role label and termination', () => {
  const pod: V1Pod = {
    metadata: {
      name: 'c1-1', annotations: { 'celer.io/template-hash': 'abc' }, labels: { 'celer.io/role': 'follower' },
      deletionTimestamp: new Date(0),
    },
    status: {
      phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }],
      containerStatuses: [{ name: 'celer', image: 'celer', imageID: '', ready: true, restartCount: 1, lastState: { terminated: { exitCode: 1, message: 'error 9300: refusing to start' } } }],
    },
  };
  assert.deepEqual(observedPod('c1', pod), {
    name: 'c1-1', ordinal: 1, templateHash: 'abc', ready: true, terminating: true, roleLabel: 'follower', phase: 'Running', lease: null,
    terminationMessages: ['error 9300: refusing to start'], nodeName: null,
  });
  assert.equal(observedPod('c1', { metadata: { name: 'c1-0' }, spec: { containers: [], nodeName: 'k1' } })?.nodeName, 'k1');
  assert.equal(observedPod('c1', { metadata: { name: 'c1-x' } }), null);
  assert.equal(observedPod('c1', { metadata: { name: 'c1-0' }, status: { conditions: [{ type: 'Ready', status: 'False' }] } })?.ready, false);
});

test("a pod's lease timings are read back from its own container args, as leaseFlags() wrote them", () => {
  const lease = { leaseTtlMs: 3000, renewDeadlineMs: 1000, renewIntervalMs: 250, maxClockDriftMs: 200 };
  const pod: V1Pod = {
    metadata: { name: 'c1-0' },
    spec: { containers: [{ name: 'celer', args: ['serve', '--node-id', '$(POD_NAME)', ...leaseFlags(lease), '--shards', '4'] }] },
  };
  assert.deepEqual(observedPod('c1', pod)?.lease, lease);
  const partial: V1Pod = { metadata: { name: 'c1-0' }, spec: { containers: [{ name: 'celer', args: ['serve', '--lease-ttl-ms', '3000'] }] } };
  assert.equal(observedPod('c1', partial)?.lease, null);
});

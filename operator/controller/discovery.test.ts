import { test } from 'node:test';
import assert from 'node:assert/strict';
import { capabilitiesFrom } from './discovery.ts';

test('policy/v1 is preferred when served', () => {
  assert.deepEqual(capabilitiesFrom(['policy/v1', 'policy/v1beta1', 'apps/v1']), { pdbApiVersion: 'policy/v1', serviceMonitor: false });
});

test('a 1.20 apiserver gets policy/v1beta1 PodDisruptionBudgets', () => {
  assert.equal(capabilitiesFrom(['policy/v1beta1']).pdbApiVersion, 'policy/v1beta1');
});

test('no policy group means no PodDisruptionBudget, and ServiceMonitor follows the monitoring.coreos.com CRDs', () => {
  assert.deepEqual(capabilitiesFrom(['apps/v1', 'monitoring.coreos.com/v1']), { pdbApiVersion: null, serviceMonitor: true });
});

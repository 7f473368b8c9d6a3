import { test } from 'node:test';
import assert from 'node:assert/strict';
import { parseFlags } from './flags.ts';

test('with no flags the operator watches every namespace without leader election', () => {
  const o = parseFlags([], {});
  assert.equal(o.namespace, null);
  assert.equal(o.leaderElect, false);
  assert.equal(o.metricsAddress, ':8080');
  assert.equal(o.kubeconfig, null);
  assert.equal(o.leaseNamespace, 'default');
  assert.equal(o.defaultImage, 'celer');
});

test('flags win over the environment', () => {
  const o = parseFlags(['--namespace', 'ns1', '--kubeconfig', '/k', '--no-leader-elect', '--metrics-address', '127.0.0.1:0'], {
    WATCH_NAMESPACE: 'ns2', KUBECONFIG: '/env', CELER_OPERATOR_LEADER_ELECT: 'true', CELER_OPERATOR_METRICS_ADDRESS: ':9',
  });
  assert.deepEqual([o.namespace, o.kubeconfig, o.leaderElect, o.metricsAddress], ['ns1', '/k', false, '127.0.0.1:0']);
  assert.equal(o.leaseNamespace, 'ns1');
});

test('the environment configures what the chart sets', () => {
  const o = parseFlags([], { WATCH_NAMESPACE: 'all', CELER_OPERATOR_LEADER_ELECT: 'true', POD_NAMESPACE: 'celer-system', POD_NAME: 'op-1' });
  assert.equal(o.namespace, null);
  assert.equal(o.leaderElect, true);
  assert.equal(o.leaseNamespace, 'celer-system');
  assert.equal(o.identity, 'op-1');
});

test('unknown flags and unreadable booleans are refused', () => {
  assert.throws(() => parseFlags(['--bogus'], {}));
  assert.throws(() => parseFlags([], { CELER_OPERATOR_LEADER_ELECT: 'maybe' }), RangeError);
});

test('the role poll interval defaults to ROLE_POLL_INTERVAL_MS and must stay above the poll timeout', () => {
  assert.equal(parseFlags([], {}).rolePollIntervalMs, 500);
  assert.equal(parseFlags(['--role-poll-interval-ms', '1000'], { CELER_OPERATOR_ROLE_POLL_INTERVAL_MS: '700' }).rolePollIntervalMs, 1000);
  assert.equal(parseFlags([], { CELER_OPERATOR_ROLE_POLL_INTERVAL_MS: '700' }).rolePollIntervalMs, 700);
  assert.throws(() => parseFlags(['--role-poll-interval-ms', '100'], {}), /above the poll timeout/);
  assert.throws(() => parseFlags(['--role-poll-interval-ms', 'soon'], {}), RangeError);
});

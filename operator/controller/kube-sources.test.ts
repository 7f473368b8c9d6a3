import { test } from 'node:test';
import assert from 'node:assert/strict';
import { withSetupDeadline, WATCH_SETUP_TIMEOUT_MS } from './kube-sources.ts';
import { LEASE_DURATION_MS, RENEW_DEADLINE_MS } from './leader-election.ts';

test('a watch setup that does not answer in time is given up, and aborted if it answers later', async () => {
  let answer: (v: string) => void = () => {};
  const late = new Promise<string>((r) => { answer = r; });
  const abandoned: string[] = [];
  await assert.rejects(withSetupDeadline(late, 20, 'watch of /api/v1/pods', (v) => abandoned.push(v)), /did not start within 20 ms/);
  answer('handle');
  await new Promise((r) => setImmediate(r));
  assert.deepEqual(abandoned, ['handle']);
  assert.equal(await withSetupDeadline(Promise.resolve('ok'), 20, 'x', () => assert.fail('not abandoned')), 'ok');
  assert.ok(RENEW_DEADLINE_MS + WATCH_SETUP_TIMEOUT_MS < LEASE_DURATION_MS);
});

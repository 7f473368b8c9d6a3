import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import { CoreV1Api, KubeConfig, KubernetesObjectApi } from '@kubernetes/client-node';
import { KUBE_REQUEST_TIMEOUT_MS, withRequestDeadline } from './api-deadline.ts';
import { LEASE_DURATION_MS, RENEW_DEADLINE_MS } from './leader-election.ts';

/** An "apiserver" that accepts connections and never answers. */
async function hangingServer(): Promise<{ server: Server; kc: KubeConfig; requests: () => number }> {
  let n = 0;
  const server = createServer(() => { n += 1; });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const address = server.address();
  const port = typeof address === 'object' && address !== null ? address.port : 0;
  const kc = new KubeConfig();
  kc.loadFromOptions({
    clusters: [{ name: 'c', server: `http://127.0.0.1:${port}`, skipTLSVerify: true }],
    users: [{ name: 'u', token: 't' }],
    contexts: [{ name: 'x', cluster: 'c', user: 'u' }],
    currentContext: 'x',
  });
  return { server, kc, requests: () => n };
}

function close(server: Server): void {
  server.closeAllConnections();
  server.close();
}

test('a request to an apiserver that never answers is aborted at the deadline, for typed and generic clients', async () => {
  const { server, kc, requests } = await hangingServer();
  try {
    const bounded = withRequestDeadline(kc, 50);
    await assert.rejects(bounded.makeApiClient(CoreV1Api).readNamespacedPod({ name: 'p', namespace: 'ns' }), /did not answer within 50 ms/);
    await assert.rejects(KubernetesObjectApi.makeApiClient(bounded).read({ apiVersion: 'v1', kind: 'Pod', metadata: { name: 'p', namespace: 'ns' } }), /did not answer within 50 ms/);
    assert.ok(requests() >= 2, 'the requests reached the server');
  } finally {
    close(server);
  }
});

test('stop aborts requests in flight at once, whatever their deadline', async () => {
  const { server, kc } = await hangingServer();
  try {
    const stop = new AbortController();
    const bounded = withRequestDeadline(kc, 600_000, stop.signal);
    const call = bounded.makeApiClient(CoreV1Api).readNamespacedPod({ name: 'p', namespace: 'ns' });
    setTimeout(() => stop.abort(new Error('operator lost its Lease')), 20);
    await assert.rejects(call, /lost its Lease/);
  } finally {
    close(server);
  }
});

test('a request issued just before the Lease was lost ends before another replica may take over', () => {
  assert.ok(RENEW_DEADLINE_MS + KUBE_REQUEST_TIMEOUT_MS < LEASE_DURATION_MS);
});

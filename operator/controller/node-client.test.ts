import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer, type Server } from 'node:http';
import type { AddressInfo } from 'node:net';
import type { NodeStatus } from '../../dataplane/server/status.ts';
import { DEFAULT_NODE_URL_TEMPLATE, fetchNodeStatus, nodeBaseUrl, requestStepDown } from './node-client.ts';

const status: NodeStatus = {
  nodeId: 'n0', version: '1.0.0', role: 'leader', epoch: 4, leaseExpiresAtMs: 5, leaseRemainingMs: null, leader: '10.0.0.1:7400',
  listen: { client: '0.0.0.0:7400', grpc: null, http: '0.0.0.0:7401' }, ready: true, numShards: 1, routing: 'id',
  shards: [{ shard: 0, state: 'serving', writeSeq: '3', commitSeq: '3' }], peer: { address: '10.0.0.2:7400', lagRecords: 0 },
};

async function serve(handler: Parameters<typeof createServer>[1]): Promise<{ server: Server; url: string }> {
  const server = createServer(handler);
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  return { server, url: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
}

test('the node URL template fills every placeholder and needs a pod IP only when it uses one', () => {
  const a = { pod: 'c1-1', podIP: '10.1.2.3', namespace: 'ns', cluster: 'c1', ordinal: 1, service: 'c1-nodes' };
  assert.equal(nodeBaseUrl(DEFAULT_NODE_URL_TEMPLATE, a), 'http://10.1.2.3:7401');
  assert.equal(nodeBaseUrl('http://{pod}.{service}.{namespace}.svc:7401/', a), 'http://c1-1.c1-nodes.ns.svc:7401');
  assert.equal(nodeBaseUrl('http://127.0.0.1:1740{ordinal}', { ...a, podIP: null }), 'http://127.0.0.1:17401');
  assert.equal(nodeBaseUrl(DEFAULT_NODE_URL_TEMPLATE, { ...a, podIP: null }), null);
});

test('fetchNodeStatus parses /status and refuses a body of another shape', async () => {
  let body: unknown = status;
  const { server, url } = await serve((_req, res) => { res.setHeader('content-type', 'application/json'); res.end(JSON.stringify(body)); });
  try {
    assert.deepEqual(await fetchNodeStatus(url), status);
    body = { hello: 'world' };
    await assert.rejects(fetchNodeStatus(url), /unexpected shape/);
  } finally {
    server.close();
  }
});

test('requestStepDown posts the handover TTL and reads 200 and 409 answers', async () => {
  const seen: string[] = [];
  let code = 200;
  const { server, url } = await serve((req, res) => {
    let data = '';
    req.on('data', (c: Buffer) => { data += c.toString(); });
    req.on('end', () => {
      seen.push(`${req.method} ${req.url} ${data}`);
      res.statusCode = code;
      res.end(JSON.stringify({ steppedDown: code === 200, reason: code === 200 ? 'handed over' : 'not leader' }));
    });
  });
  try {
    assert.deepEqual(await requestStepDown(url, 450), { steppedDown: true, reason: 'handed over' });
    assert.deepEqual(seen, ['POST /admin/step-down {"handoverTtlMs":450}']);
    code = 409;
    assert.deepEqual(await requestStepDown(url, 450), { steppedDown: false, reason: 'not leader' });
    code = 500;
    await assert.rejects(requestStepDown(url, 450), /answered 500/);
  } finally {
    server.close();
  }
});

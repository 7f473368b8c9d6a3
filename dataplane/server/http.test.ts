import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { Op } from '../../client/wire.ts';
import { startHttpServer, type HttpServerHandle } from './http.ts';
import { applyWorkerStats, observeRequest } from './metrics.ts';
import type { NodeStatus, StepDownResult } from './status.ts';

function standaloneStatus(): NodeStatus {
  return {
    nodeId: 'node-a',
    version: '0.1.0',
    role: 'standalone',
    epoch: 0,
    leaseExpiresAtMs: null,
    leaseRemainingMs: null,
    leader: null,
    listen: { client: '127.0.0.1:7000', grpc: '127.0.0.1:7001', http: '127.0.0.1:7002' },
    ready: true,
    numShards: 2,
    routing: 'id',
    shards: [
      { shard: 0, state: 'serving', writeSeq: '18446744073709551615', commitSeq: '41' },
      { shard: 1, state: 'serving', writeSeq: '7', commitSeq: '7' },
    ],
    peer: null,
  };
}

let status: NodeStatus | (() => never) = standaloneStatus();
let stepDown: (handoverTtlMs: number) => Promise<StepDownResult> = async () => ({ steppedDown: false, reason: 'standalone nodes have no leadership to hand over' });
let server: HttpServerHandle;
let base: string;

before(async () => {
  server = await startHttpServer({
    address: '127.0.0.1:0',
    status: () => (typeof status === 'function' ? status() : status),
    stepDown: (ttl) => stepDown(ttl),
  });
  base = `http://${server.address}`;
});

after(() => server.close());

beforeEach(() => {
  status = standaloneStatus();
});

describe('probes', () => {
  test('the server reports the port it bound when asked for port 0', () => {
    assert.match(server.address, /^127\.0\.0\.1:[1-9][0-9]*$/);
  });

  test('/livez answers 200 ok', async () => {
    const res = await fetch(`${base}/livez`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), 'ok\n');
  });

  test('HEAD /livez answers 200 without a body', async () => {
    const res = await fetch(`${base}/livez`, { method: 'HEAD' });
    assert.equal(res.status, 200);
    assert.equal(await res.text(), '');
  });

  test('/readyz answers 200 when the node is ready, whatever the query string', async () => {
    const res = await fetch(`${base}/readyz?verbose=1`);
    assert.equal(res.status, 200);
    assert.equal(await res.text(), 'ready\n');
  });

  test('/readyz answers 503 with the shards that are not serving', async () => {
    const s = standaloneStatus();
    s.ready = false;
    s.shards[1] = { shard: 1, state: 'corrupt', reason: 'bad checksum at segment 3 offset 4096', writeSeq: '7', commitSeq: '7' };
    status = s;
    const res = await fetch(`${base}/readyz`);
    assert.equal(res.status, 503);
    assert.equal(await res.text(), 'not ready: shard 1 is corrupt (bad checksum at segment 3 offset 4096)\n');
  });

  test('/readyz names the role when every shard serves but the node is not ready', async () => {
    const s = standaloneStatus();
    s.ready = false;
    s.role = 'fenced';
    status = s;
    const res = await fetch(`${base}/readyz`);
    assert.equal(res.status, 503);
    assert.equal(await res.text(), 'not ready: role is fenced\n');
  });
});

describe('/status', () => {
  test('returns the NodeStatus as JSON, 64-bit positions as strings', async () => {
    const res = await fetch(`${base}/status`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^application\/json/);
    const body = (await res.json()) as NodeStatus;
    assert.deepEqual(body, standaloneStatus());
    assert.equal(body.shards[0]!.writeSeq, '18446744073709551615');
  });

  test('is served while the node is not ready', async () => {
    const s = standaloneStatus();
    s.ready = false;
    s.shards[0]!.state = 'opening';
    status = s;
    const res = await fetch(`${base}/status`);
    assert.equal(res.status, 200);
    assert.equal(((await res.json()) as NodeStatus).ready, false);
  });

  test('answers 500 with the reason when the status snapshot fails', async () => {
    status = () => {
      throw new Error('status source is gone');
    };
    const res = await fetch(`${base}/status`);
    assert.equal(res.status, 500);
    assert.match(await res.text(), /status source is gone/);
  });
});

describe('/metrics', () => {
  test('serves the registry in Prometheus text format with the named metrics after recording', async () => {
    observeRequest(Op.Write, 'ok', 0.003);
    observeRequest(Op.Write, 2003, 0.001);
    observeRequest(Op.Read, 'ok', 0.0004);
    applyWorkerStats({
      fsyncSeconds: [0.0001, 0.0002],
      fsyncBatchSizes: [5, 9],
      fsyncDropped: 0,
      cache: { index: { hits: 3, misses: 1 } },
      shards: [{ shard: 0, writeSeq: '42', commitSeq: '41' }],
    });
    const res = await fetch(`${base}/metrics`);
    assert.equal(res.status, 200);
    assert.match(res.headers.get('content-type') ?? '', /^text\/plain; version=0\.0\.4/);
    const text = await res.text();
    for (const line of [
      'celer_writes_total{result="ok"} 1',
      'celer_writes_total{result="2003"} 1',
      'celer_reads_total{result="ok"} 1',
      'celer_write_latency_seconds_count 2',
      'celer_write_latency_seconds_bucket{le="0.0001"} 0',
      'celer_write_latency_seconds_bucket{le="10"} 2',
      'celer_read_latency_seconds_count 1',
      'celer_fsync_latency_seconds_count 2',
      'celer_fsync_batch_size_sum 14',
      'celer_cache_hits_total{cache="index"} 3',
      'celer_cache_misses_total{cache="index"} 1',
      // From the status snapshot taken at scrape time:
      'celer_node_role{role="standalone"} 1',
      'celer_node_role{role="leader"} 0',
      'celer_epoch 0',
      'celer_lease_ttl_remaining_seconds 0',
      'celer_replication_lag_records 0',
      'celer_shard_commit_seq{shard="0"} 41',
      'celer_shard_commit_seq{shard="1"} 7',
    ]) {
      assert.ok(text.split('\n').includes(line), `missing line: ${line}`);
    }
    assert.match(text, /^celer_process_cpu_user_seconds_total /m);
    assert.match(text, /^celer_nodejs_eventloop_lag_seconds /m);
    const names = text.split('\n').filter((l) => l !== '' && !l.startsWith('#')).map((l) => l.split(/[{ ]/)[0]!);
    assert.deepEqual(names.filter((n) => !n.startsWith('celer_')), [], 'every metric is prefixed celer_');
  });
});

describe('/admin/step-down', () => {
  test('answers 409 with the reason for a standalone node', async () => {
    const res = await fetch(`${base}/admin/step-down`, { method: 'POST' });
    assert.equal(res.status, 409);
    assert.deepEqual(await res.json(), { steppedDown: false, reason: 'standalone nodes have no leadership to hand over' });
  });

  test('answers 200 when the leader stepped down', async () => {
    const calls: number[] = [];
    stepDown = async (ttl: number) => {
      calls.push(ttl);
      return { steppedDown: true, reason: 'handed over to node-b at epoch 8' };
    };
    const res = await fetch(`${base}/admin/step-down`, { method: 'POST', body: '{"handoverTtlMs": 750}' });
    assert.equal(res.status, 200);
    assert.deepEqual(await res.json(), { steppedDown: true, reason: 'handed over to node-b at epoch 8' });
    const noBody = await fetch(`${base}/admin/step-down`, { method: 'POST' });
    assert.equal(noBody.status, 200);
    assert.deepEqual(calls, [750, 1000], 'the handover wait from the body, else the default');
  });

  test('a body that is not {"handoverTtlMs": N} is refused with 400 and does not step down', async () => {
    let calls = 0;
    stepDown = async () => {
      calls++;
      return { steppedDown: true, reason: 'x' };
    };
    for (const body of ['ignored', '{"handoverTtlMs": -1}', '{"handoverTtlMs": "1s"}', '{"handoverTtlMs": 1e9}']) {
      const res = await fetch(`${base}/admin/step-down`, { method: 'POST', body });
      assert.equal(res.status, 400, body);
      assert.equal(((await res.json()) as { steppedDown: boolean }).steppedDown, false);
    }
    assert.equal(calls, 0);
  });

  test('answers 500 with a StepDownResult when the step-down fails', async () => {
    stepDown = async () => {
      throw new Error('lease write refused');
    };
    const res = await fetch(`${base}/admin/step-down`, { method: 'POST' });
    assert.equal(res.status, 500);
    assert.deepEqual(await res.json(), { steppedDown: false, reason: 'step-down failed: lease write refused' });
  });

  test('GET is refused with 405 and an Allow header, and does not step down', async () => {
    let calls = 0;
    stepDown = async () => {
      calls++;
      return { steppedDown: true, reason: '' };
    };
    const res = await fetch(`${base}/admin/step-down`);
    assert.equal(res.status, 405);
    assert.equal(res.headers.get('allow'), 'POST');
    await res.text();
    assert.equal(calls, 0);
  });
});

describe('other requests', () => {
  test('a wrong method on a read-only endpoint is 405', async () => {
    for (const path of ['/livez', '/readyz', '/status', '/metrics']) {
      const res = await fetch(`${base}${path}`, { method: 'POST' });
      assert.equal(res.status, 405, path);
      assert.equal(res.headers.get('allow'), 'GET, HEAD', path);
      await res.text();
    }
  });

  test('an unknown path is 404', async () => {
    for (const path of ['/', '/admin', '/status/extra', '/metricsx']) {
      const res = await fetch(`${base}${path}`);
      assert.equal(res.status, 404, path);
      await res.text();
    }
  });
});

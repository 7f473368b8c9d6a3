import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AddressInfo } from 'node:net';
import { OperatorMetrics, serveMetrics } from './metrics.ts';

test('the metrics endpoint exposes reconcile, queue and per-gate deferral series, and /healthz reports health', async () => {
  const m = new OperatorMetrics(false);
  m.reconciles.labels('success').inc();
  m.gateDeferrals.labels('FollowerCaughtUp').inc(2);
  m.queueDepth.set(3);
  let reason: string | null = null;
  const server = await serveMetrics(m, '127.0.0.1:0', { unhealthyReason: () => reason });
  const base = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    const text = await (await fetch(`${base}/metrics`)).text();
    assert.match(text, /celer_operator_reconciles_total\{result="success"\} 1/);
    assert.match(text, /celer_operator_gate_deferrals_total\{gate="FollowerCaughtUp"\} 2/);
    assert.match(text, /celer_operator_gate_deferrals_total\{gate="UpgradeApproved"\} 0/);
    assert.match(text, /celer_operator_queue_depth 3/);
    assert.equal((await fetch(`${base}/healthz`)).status, 200);
    reason = 'watch of pods has not synced';
    const res = await fetch(`${base}/healthz`);
    assert.equal(res.status, 503);
    assert.equal(await res.text(), 'watch of pods has not synced');
    assert.equal((await fetch(`${base}/nope`)).status, 404);
  } finally {
    server.close();
  }
});

test('a metrics address that is not host:port is refused', async () => {
  await assert.rejects(serveMetrics(new OperatorMetrics(false), 'localhost', { unhealthyReason: () => null }), RangeError);
});

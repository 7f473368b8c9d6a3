// The operator's own metrics (prefix celer_operator_) and its HTTP endpoints: /metrics for
// Prometheus and /healthz for the liveness probe. Gate names label the deferral counter, so
// a stalled rollout shows which gate holds it (reconcile/gates.ts).

import { createServer, type Server } from 'node:http';
import { Counter, Gauge, Histogram, Registry, collectDefaultMetrics } from 'prom-client';
import { GATES } from './reconcile/gates.ts';

export class OperatorMetrics {
  readonly registry = new Registry();
  readonly reconciles = new Counter({
    name: 'celer_operator_reconciles_total', help: 'Reconcile passes by result (success, error).',
    labelNames: ['result'] as const, registers: [this.registry],
  });
  readonly errors = new Counter({
    name: 'celer_operator_errors_total', help: 'Errors by where they happened (reconcile, watch, apply, node_status, leader_election, s3).',
    labelNames: ['source'] as const, registers: [this.registry],
  });
  readonly queueDepth = new Gauge({ name: 'celer_operator_queue_depth', help: 'CelerCluster keys waiting in the work queue.', registers: [this.registry] });
  readonly gateDeferrals = new Counter({
    name: 'celer_operator_gate_deferrals_total', help: 'Reconcile passes in which a safety gate held a rollout back, by gate.',
    labelNames: ['gate'] as const, registers: [this.registry],
  });
  readonly actions = new Counter({
    name: 'celer_operator_actions_total', help: 'Disruptive or external actions taken, by kind.',
    labelNames: ['action'] as const, registers: [this.registry],
  });
  readonly isLeader = new Gauge({ name: 'celer_operator_is_leader', help: '1 while this operator replica holds the leader-election Lease.', registers: [this.registry] });
  readonly reconcileSeconds = new Histogram({
    name: 'celer_operator_reconcile_duration_seconds', help: 'Time of one reconcile pass, including node /status calls.',
    // From 5 ms (all cached) to 10 s (several node /status timeouts of 2 s each).
    buckets: [0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10], registers: [this.registry],
  });

  constructor(withProcessMetrics = true) {
    if (withProcessMetrics) collectDefaultMetrics({ register: this.registry, prefix: 'celer_operator_' });
    // Every gate starts at 0 so rate() and alerts see the series before its first deferral.
    for (const gate of GATES) this.gateDeferrals.labels(gate).inc(0);
    for (const result of ['success', 'error']) this.reconciles.labels(result).inc(0);
  }
}

export interface HealthSource {
  /** Null when healthy, else why not. */
  unhealthyReason(): string | null;
}

/** Serves /metrics and /healthz; `address` is host:port (":8080" means all interfaces). */
export async function serveMetrics(metrics: OperatorMetrics, address: string, health: HealthSource): Promise<Server> {
  const i = address.lastIndexOf(':');
  const host = i <= 0 ? '0.0.0.0' : address.slice(0, i);
  const port = Number(address.slice(i + 1));
  if (!Number.isInteger(port) || port < 0 || port > 65535) throw new RangeError(`bad metrics address "${address}"`);
  const server = createServer((req, res) => {
    if (req.url === '/metrics') {
      metrics.registry.metrics().then((text) => {
        res.setHeader('content-type', metrics.registry.contentType);
        res.end(text);
      }, (err: unknown) => {
        res.statusCode = 500;
        res.end(String(err));
      });
      return;
    }
    if (req.url === '/healthz') {
      const reason = health.unhealthyReason();
      res.statusCode = reason === null ? 200 : 503;
      res.end(reason ?? 'ok');
      return;
    }
    res.statusCode = 404;
    res.end('not found');
  });
  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => resolve());
  });
  return server;
}

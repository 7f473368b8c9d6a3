// HTTP calls from the operator to the Celer nodes: GET /status and POST /admin/step-down
// (shapes in dataplane/server/status.ts). A node that does not answer in time is "unknown";
// reconcile treats unknown as "not caught up" and "not leader", so it fails closed.

import type { NodeStatus, StepDownResult } from '../../dataplane/server/status.ts';
import { PORT_HTTP } from '../api/constants.ts';

/** 2 s, the readiness probe's period: a node slower than that to answer is not one to act on. */
export const NODE_HTTP_TIMEOUT_MS = 2_000;

/**
 * Where a pod's HTTP server is: placeholders {podIP}, {pod}, {namespace}, {cluster},
 * {ordinal}, {service} (the headless Service). The default reaches the pod IP from inside the
 * cluster; an operator run outside it (tests, a laptop) overrides the template.
 */
export const DEFAULT_NODE_URL_TEMPLATE = `http://{podIP}:${PORT_HTTP}`;

export interface PodAddress {
  pod: string;
  podIP: string | null;
  namespace: string;
  cluster: string;
  ordinal: number;
  service: string;
}

export function nodeBaseUrl(template: string, a: PodAddress): string | null {
  if (template.includes('{podIP}') && (a.podIP === null || a.podIP === '')) return null;
  return template
    .replaceAll('{podIP}', a.podIP ?? '')
    .replaceAll('{pod}', a.pod)
    .replaceAll('{namespace}', a.namespace)
    .replaceAll('{cluster}', a.cluster)
    .replaceAll('{ordinal}', String(a.ordinal))
    .replaceAll('{service}', a.service)
    .replace(/\/+$/, '');
}

function isNodeStatus(v: unknown): v is NodeStatus {
  if (v === null || typeof v !== 'object') return false;
  const s = v as Record<string, unknown>;
  return typeof s.nodeId === 'string' && typeof s.version === 'string' && typeof s.role === 'string'
    && typeof s.epoch === 'number' && Array.isArray(s.shards);
}

/** The timeout, and `stop` when given (the controller's stop()), as one signal. */
function callSignal(timeoutMs: number, stop: AbortSignal | undefined): AbortSignal {
  const timeout = AbortSignal.timeout(timeoutMs);
  return stop === undefined ? timeout : AbortSignal.any([timeout, stop]);
}

export async function fetchNodeStatus(baseUrl: string, timeoutMs: number = NODE_HTTP_TIMEOUT_MS, stop?: AbortSignal): Promise<NodeStatus> {
  const res = await fetch(`${baseUrl}/status`, { signal: callSignal(timeoutMs, stop) });
  if (res.status !== 200) throw new Error(`GET ${baseUrl}/status answered ${res.status}`);
  const body: unknown = await res.json();
  if (!isNodeStatus(body)) throw new Error(`GET ${baseUrl}/status returned an unexpected shape`);
  return body;
}

/** 200: stepped down. 409: cannot (not leader, standalone); the rollout re-plans from /status. */
export async function requestStepDown(baseUrl: string, handoverTtlMs: number, stop?: AbortSignal, timeoutMs: number = NODE_HTTP_TIMEOUT_MS): Promise<StepDownResult> {
  const res = await fetch(`${baseUrl}/admin/step-down`, {
    method: 'POST',
    headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ handoverTtlMs }),
    signal: callSignal(timeoutMs, stop),
  });
  const text = await res.text();
  let body: Partial<StepDownResult> = {};
  try {
    body = JSON.parse(text) as Partial<StepDownResult>;
  } catch {
    body = { reason: text.slice(0, 200) };
  }
  if (res.status === 200 || res.status === 409) {
    return { steppedDown: res.status === 200 && body.steppedDown !== false, reason: body.reason ?? '' };
  }
  throw new Error(`POST ${baseUrl}/admin/step-down answered ${res.status}: ${body.reason ?? ''}`);
}

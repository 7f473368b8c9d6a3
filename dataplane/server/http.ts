// The node's HTTP endpoints for operators and the Kubernetes operator (SPEC §8). The JSON shapes
// and status codes are documented in status.ts; this file implements exactly that table:
//
//   GET  /livez            200 "ok"
//   GET  /readyz           200 "ready" | 503 "not ready: <reason>" (one line)
//   GET  /status           200 NodeStatus as JSON (64-bit values are decimal strings)
//   GET  /metrics          Prometheus text (metrics.ts registry)
//   POST /admin/step-down  200 StepDownResult when stepped down, 409 StepDownResult when not
//
// GET routes also answer HEAD. A known path with another method gets 405 and an Allow header;
// any other path 404. Query strings are ignored. Nothing here blocks on the shard workers:
// status() is a synchronous snapshot the caller keeps current.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import { metricsRegistry, updateFromStatus } from './metrics.ts';
import type { NodeStatus, StepDownResult } from './status.ts';

/** Step-down: the largest body read, the default and largest handover wait. */
export const STEP_DOWN_BODY_MAX = 4096;
export const STEP_DOWN_HANDOVER_DEFAULT_MS = 1000;
export const STEP_DOWN_HANDOVER_MAX_MS = 60_000;

function readBody(req: http.IncomingMessage, max: number): Promise<string> {
  return new Promise((resolve, reject) => {
    const chunks: Buffer[] = [];
    let n = 0;
    req.on('data', (c: Buffer) => {
      n += c.length;
      if (n > max) {
        req.destroy();
        reject(new Error(`request body over ${max} bytes`));
        return;
      }
      chunks.push(c);
    });
    req.on('end', () => resolve(Buffer.concat(chunks).toString('utf8')));
    req.on('error', reject);
  });
}

export interface HttpServerOptions {
  /** "host:port"; port 0 picks a free port. */
  address: string;
  status: () => NodeStatus;
  /** Resolves steppedDown: true (200) or false (409, with the reason). */
  /** Hands leadership over; `handoverTtlMs` bounds the wait for the follower to catch up. */
  stepDown: (handoverTtlMs: number) => Promise<StepDownResult>;
}

export interface HttpServerHandle {
  /** "host:port" actually bound. */
  address: string;
  close(): Promise<void>;
}

/** JSON with bigints as decimal strings. */
function toJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v));
}

/** Why a node that says it is not ready is not: the first few shards that are not serving, or its role. */
export function notReadyReason(s: NodeStatus): string {
  const down = s.shards.filter((sh) => sh.state !== 'serving' || sh.writable === false);
  if (down.length > 0) {
    const listed = down.slice(0, 4).map((sh) => `shard ${sh.shard} is ${sh.state !== 'serving' ? sh.state : 'serving reads only'}${sh.reason ? ` (${sh.reason})` : ''}`);
    const more = down.length > 4 ? `; ${down.length - 4} more shards are not serving` : '';
    return `${listed.join('; ')}${more}`.replace(/[\r\n]+/g, ' ');
  }
  if (s.shards.length < s.numShards) return `${s.shards.length} of ${s.numShards} shards are open`;
  return `role is ${s.role}`;
}

function splitAddress(address: string): { host: string; port: number } {
  const m = /^(?:\[([^\]]+)\]|([^:]+)):(\d+)$/.exec(address);
  if (!m) throw new Error(`HTTP listen address must be host:port; got "${address}"`);
  return { host: (m[1] ?? m[2])!, port: Number(m[3]) };
}

type Route = { methods: readonly string[]; handle: (req: http.IncomingMessage, res: http.ServerResponse) => Promise<void> | void };

export async function startHttpServer(opts: HttpServerOptions): Promise<HttpServerHandle> {
  const { host, port } = splitAddress(opts.address);

  const send = (res: http.ServerResponse, code: number, type: string, body: string, headers: Record<string, string> = {}): void => {
    res.writeHead(code, { 'content-type': type, 'cache-control': 'no-store', 'content-length': Buffer.byteLength(body), ...headers });
    res.end(res.req.method === 'HEAD' ? undefined : body);
  };
  const text = (res: http.ServerResponse, code: number, body: string, headers?: Record<string, string>): void =>
    send(res, code, 'text/plain; charset=utf-8', body + '\n', headers);
  const json = (res: http.ServerResponse, code: number, value: unknown): void => send(res, code, 'application/json', toJson(value));

  const routes: Record<string, Route> = {
    '/livez': { methods: ['GET', 'HEAD'], handle: (_req, res) => text(res, 200, 'ok') },
    '/readyz': {
      methods: ['GET', 'HEAD'],
      handle: (_req, res) => {
        const s = opts.status();
        if (s.ready) text(res, 200, 'ready');
        else text(res, 503, `not ready: ${notReadyReason(s)}`);
      },
    },
    '/status': { methods: ['GET', 'HEAD'], handle: (_req, res) => json(res, 200, opts.status()) },
    '/metrics': {
      methods: ['GET', 'HEAD'],
      handle: async (_req, res) => {
        updateFromStatus(opts.status());
        const registry = metricsRegistry();
        send(res, 200, registry.contentType, await registry.metrics());
      },
    },
    '/admin/step-down': {
      methods: ['POST'],
      handle: async (req, res) => {
        const body = await readBody(req, STEP_DOWN_BODY_MAX);
        let ttl = STEP_DOWN_HANDOVER_DEFAULT_MS;
        if (body.trim() !== '') {
          let v: unknown;
          try {
            v = (JSON.parse(body) as { handoverTtlMs?: unknown }).handoverTtlMs;
          } catch {
            json(res, 400, { steppedDown: false, reason: 'the body must be JSON like {"handoverTtlMs": 1000}' } satisfies StepDownResult);
            return;
          }
          if (v !== undefined) {
            if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v > STEP_DOWN_HANDOVER_MAX_MS) {
              json(res, 400, { steppedDown: false, reason: `handoverTtlMs must be an integer from 0 to ${STEP_DOWN_HANDOVER_MAX_MS}` } satisfies StepDownResult);
              return;
            }
            ttl = v;
          }
        }
        const result = await opts.stepDown(ttl);
        json(res, result.steppedDown ? 200 : 409, result);
      },
    },
  };

  const server = http.createServer((req, res) => {
    const path = new URL(req.url ?? '/', 'http://x').pathname;
    // Bodies are used only by step-down; drain the others so keep-alive connections stay usable.
    if (path !== '/admin/step-down') req.resume();
    const route = routes[path];
    if (!route) {
      text(res, 404, `no such endpoint: ${path} (endpoints: ${Object.keys(routes).join(', ')})`);
      return;
    }
    if (!route.methods.includes(req.method ?? '')) {
      text(res, 405, `${req.method} is not allowed on ${path}; use ${route.methods.join(' or ')}`, { allow: route.methods.join(', ') });
      return;
    }
    Promise.resolve()
      .then(() => route.handle(req, res))
      .catch((err: unknown) => {
        const message = err instanceof Error ? err.message : String(err);
        if (res.headersSent) {
          res.destroy();
        } else if (path === '/admin/step-down') {
          json(res, 500, { steppedDown: false, reason: `step-down failed: ${message}` } satisfies StepDownResult);
        } else {
          text(res, 500, `internal error: ${message}`.replace(/[\r\n]+/g, ' '));
        }
      });
  });
  // Probes are short; do not let idle keep-alive sockets pile up.
  server.keepAliveTimeout = 5_000;
  server.headersTimeout = 10_000;
  server.requestTimeout = 30_000;

  await new Promise<void>((resolve, reject) => {
    server.once('error', reject);
    server.listen(port, host, () => {
      server.off('error', reject);
      resolve();
    });
  });
  const bound = server.address() as AddressInfo;
  const shownHost = host.includes(':') ? `[${host}]` : host;
  let closing: Promise<void> | undefined;
  return {
    address: `${shownHost}:${bound.port}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        server.close(() => resolve());
        server.closeIdleConnections();
      });
      return closing;
    },
  };
}

// A deliberately small Kubernetes REST client for the test agent: JSON over HTTPS with a bearer
// token, list/get/create/patch/delete and a watch stream. The agent uses its own client instead
// of @kubernetes/client-node so that the kubelet stand-in does not share code (or bugs) with the
// operator it tests.
import https from 'node:https';
import { readFileSync } from 'node:fs';

export interface KubeConnection {
  server: URL;
  token: string;
  /** PEM bundle to verify the apiserver; undefined means the system roots. */
  ca: string | undefined;
  namespace: string;
}

interface KubeconfigFile {
  clusters?: { name: string; cluster: { server: string; 'certificate-authority-data'?: string; 'certificate-authority'?: string } }[];
  users?: { name: string; user: { token?: string } }[];
  contexts?: { name: string; context: { cluster: string; user: string; namespace?: string } }[];
  'current-context'?: string;
}

/**
 * Reads a kubeconfig written as JSON (hack/kube-up.sh writes JSON; JSON is also valid YAML for
 * kubectl and helm). Only token users are supported.
 */
export function loadKubeconfig(path: string): KubeConnection {
  const kc = JSON.parse(readFileSync(path, 'utf8')) as KubeconfigFile;
  const ctxName = kc['current-context'];
  const ctx = kc.contexts?.find((c) => c.name === ctxName)?.context;
  if (ctx === undefined) throw new Error(`${path}: no current context`);
  const cluster = kc.clusters?.find((c) => c.name === ctx.cluster)?.cluster;
  const user = kc.users?.find((u) => u.name === ctx.user)?.user;
  if (cluster === undefined || user?.token === undefined) throw new Error(`${path}: context ${ctxName} needs a cluster and a token user`);
  let ca: string | undefined;
  if (cluster['certificate-authority-data'] !== undefined) ca = Buffer.from(cluster['certificate-authority-data'], 'base64').toString('utf8');
  else if (cluster['certificate-authority'] !== undefined) ca = readFileSync(cluster['certificate-authority'], 'utf8');
  return { server: new URL(cluster.server), token: user.token, ca, namespace: ctx.namespace ?? 'default' };
}

export class KubeError extends Error {
  readonly status: number;
  readonly reason: string;
  constructor(status: number, reason: string, message: string) {
    super(message);
    this.name = 'KubeError';
    this.status = status;
    this.reason = reason;
  }
}

export interface ObjectMeta {
  name: string;
  namespace?: string;
  uid?: string;
  resourceVersion?: string;
  generation?: number;
  labels?: Record<string, string>;
  annotations?: Record<string, string>;
  deletionTimestamp?: string;
  creationTimestamp?: string;
  ownerReferences?: { apiVersion: string; kind: string; name: string; uid: string; controller?: boolean; blockOwnerDeletion?: boolean }[];
  finalizers?: string[];
}

export interface KubeObject {
  apiVersion?: string;
  kind?: string;
  metadata: ObjectMeta;
  [key: string]: unknown;
}

export interface KubeList<T> {
  metadata: { resourceVersion: string };
  items: T[];
}

export interface WatchEvent<T> {
  type: 'ADDED' | 'MODIFIED' | 'DELETED' | 'BOOKMARK' | 'ERROR';
  object: T;
}

export type PatchType = 'merge' | 'strategic' | 'json' | 'apply';

const patchContentType: Record<PatchType, string> = {
  merge: 'application/merge-patch+json',
  strategic: 'application/strategic-merge-patch+json',
  json: 'application/json-patch+json',
  apply: 'application/apply-patch+yaml',
};

/** Path of a resource collection, e.g. resourcePath('v1', 'pods', 'ns') = /api/v1/namespaces/ns/pods. */
export function resourcePath(apiVersion: string, plural: string, namespace?: string, name?: string, sub?: string): string {
  const base = apiVersion.includes('/') ? `/apis/${apiVersion}` : `/api/${apiVersion}`;
  let p = namespace === undefined ? `${base}/${plural}` : `${base}/namespaces/${encodeURIComponent(namespace)}/${plural}`;
  if (name !== undefined) p += `/${encodeURIComponent(name)}`;
  if (sub !== undefined) p += `/${sub}`;
  return p;
}

export class KubeClient {
  readonly conn: KubeConnection;
  private readonly agent: https.Agent;

  constructor(conn: KubeConnection) {
    this.conn = conn;
    this.agent = new https.Agent({ keepAlive: true, ca: conn.ca, maxSockets: 16 });
  }

  close(): void {
    this.agent.destroy();
  }

  /** One request; resolves with the parsed JSON body, rejects with KubeError on status >= 300. */
  async request<T>(method: string, path: string, body?: unknown, contentType = 'application/json'): Promise<T> {
    const payload = body === undefined ? undefined : Buffer.from(JSON.stringify(body));
    return new Promise<T>((resolve, reject) => {
      const req = https.request(
        new URL(path, this.conn.server),
        {
          method,
          agent: this.agent,
          headers: {
            authorization: `Bearer ${this.conn.token}`,
            accept: 'application/json',
            ...(payload === undefined ? {} : { 'content-type': contentType, 'content-length': payload.length }),
          },
          timeout: 30_000,
        },
        (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('error', reject);
          res.on('end', () => {
            const text = Buffer.concat(chunks).toString('utf8');
            const status = res.statusCode ?? 0;
            if (status >= 300) {
              let reason = 'Unknown';
              let message = text;
              try {
                const s = JSON.parse(text) as { reason?: string; message?: string };
                reason = s.reason ?? reason;
                message = s.message ?? message;
              } catch {
                // not a Status object; keep the raw text
              }
              reject(new KubeError(status, reason, `${method} ${path}: ${status} ${reason}: ${message}`));
              return;
            }
            try {
              resolve((text === '' ? {} : JSON.parse(text)) as T);
            } catch (err) {
              reject(err as Error);
            }
          });
        },
      );
      req.on('timeout', () => req.destroy(new Error(`${method} ${path}: timed out`)));
      req.on('error', reject);
      req.end(payload);
    });
  }

  get<T = KubeObject>(path: string): Promise<T> {
    return this.request<T>('GET', path);
  }

  /** GET that resolves undefined on 404. */
  async getOrUndefined<T = KubeObject>(path: string): Promise<T | undefined> {
    try {
      return await this.get<T>(path);
    } catch (err) {
      if (err instanceof KubeError && err.status === 404) return undefined;
      throw err;
    }
  }

  list<T = KubeObject>(path: string, query: Record<string, string> = {}): Promise<KubeList<T>> {
    const qs = new URLSearchParams(query).toString();
    return this.request<KubeList<T>>('GET', qs === '' ? path : `${path}?${qs}`);
  }

  create<T = KubeObject>(path: string, obj: unknown): Promise<T> {
    return this.request<T>('POST', path, obj);
  }

  patch<T = KubeObject>(path: string, patch: unknown, type: PatchType = 'merge', fieldManager?: string): Promise<T> {
    const qs = fieldManager === undefined ? '' : `?fieldManager=${encodeURIComponent(fieldManager)}${type === 'apply' ? '&force=true' : ''}`;
    return this.request<T>('PATCH', path + qs, patch, patchContentType[type]);
  }

  delete<T = KubeObject>(path: string, options?: unknown): Promise<T> {
    return this.request<T>('DELETE', path, options);
  }

  /**
   * Watches a collection from resourceVersion. Calls onEvent for each event; resolves when the
   * server ends the stream (normal after its timeout) and rejects on transport errors. abort()
   * on the returned handle ends it early.
   */
  watch<T>(path: string, resourceVersion: string, onEvent: (ev: WatchEvent<T>) => void): { done: Promise<void>; abort: () => void } {
    let abort = (): void => {};
    const done = new Promise<void>((resolve, reject) => {
      const qs = new URLSearchParams({ watch: '1', resourceVersion, allowWatchBookmarks: 'true', timeoutSeconds: '240' });
      const req = https.request(
        new URL(`${path}?${qs.toString()}`, this.conn.server),
        { method: 'GET', agent: this.agent, headers: { authorization: `Bearer ${this.conn.token}`, accept: 'application/json' } },
        (res) => {
          if ((res.statusCode ?? 0) >= 300) {
            res.resume();
            reject(new KubeError(res.statusCode ?? 0, 'WatchFailed', `watch ${path}: HTTP ${res.statusCode}`));
            return;
          }
          let buf = '';
          res.setEncoding('utf8');
          res.on('data', (chunk: string) => {
            buf += chunk;
            let nl: number;
            while ((nl = buf.indexOf('\n')) >= 0) {
              const line = buf.slice(0, nl).trim();
              buf = buf.slice(nl + 1);
              if (line !== '') onEvent(JSON.parse(line) as WatchEvent<T>);
            }
          });
          res.on('end', () => resolve());
          res.on('error', (err) => (req.destroyed ? resolve() : reject(err)));
          res.on('close', () => resolve());
        },
      );
      req.on('error', (err) => (req.destroyed && aborted ? resolve() : reject(err)));
      let aborted = false;
      abort = () => {
        aborted = true;
        req.destroy();
        resolve();
      };
      req.end();
    });
    return { done, abort: () => abort() };
  }
}

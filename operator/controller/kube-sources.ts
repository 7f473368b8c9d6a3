// ListWatchSource on @kubernetes/client-node: list through the generic object API, watch
// through Watch with bookmarks and a server-side timeout, so streams end and resume regularly.

import { KubernetesObjectApi, Watch, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import type { ListResult, ListWatchSource, WatchHandle } from './reflector.ts';
import { KUBE_REQUEST_TIMEOUT_MS } from './api-deadline.ts';

/** The apiserver ends each watch after 5 minutes (it picks a random 5-10 min otherwise); we resume from the last resourceVersion. */
export const WATCH_TIMEOUT_SECONDS = 300;

/**
 * A watch must start answering (response headers) within the request deadline of every other
 * call; a setup that answers later is aborted and the reflector retries with backoff. (Lists go
 * through the KubeConfig's deadline, api-deadline.ts.)
 */
export const WATCH_SETUP_TIMEOUT_MS = KUBE_REQUEST_TIMEOUT_MS;

/** `setup` must resolve within `ms`; if it resolves later, `abandon` gets its value. */
export async function withSetupDeadline<T>(setup: Promise<T>, ms: number, what: string, abandon: (v: T) => void): Promise<T> {
  let timedOut = false;
  let timer: ReturnType<typeof setTimeout> | undefined;
  const deadline = new Promise<never>((_, reject) => {
    timer = setTimeout(() => {
      timedOut = true;
      reject(new Error(`${what} did not start within ${ms} ms (code KubeApiTimeout); retrying`));
    }, ms);
  });
  setup.then((v) => { if (timedOut) abandon(v); }, () => {});
  try {
    return await Promise.race([setup, deadline]);
  } finally {
    clearTimeout(timer);
  }
}

export interface ResourceRef {
  apiVersion: string;
  kind: string;
  plural: string;
  /** null: all namespaces. */
  namespace: string | null;
  labelSelector?: string;
}

export function resourcePath(r: ResourceRef): string {
  const base = r.apiVersion.includes('/') ? `/apis/${r.apiVersion}` : `/api/${r.apiVersion}`;
  return r.namespace === null ? `${base}/${r.plural}` : `${base}/namespaces/${encodeURIComponent(r.namespace)}/${r.plural}`;
}

export function clientNodeSource<T extends KubernetesObject>(kc: KubeConfig, r: ResourceRef): ListWatchSource<T> {
  const objects = KubernetesObjectApi.makeApiClient(kc);
  const watch = new Watch(kc);
  return {
    async list(): Promise<ListResult<T>> {
      const items: T[] = [];
      let continueToken: string | undefined;
      let resourceVersion = '';
      // Page through large lists: 500 per page, the kubectl default.
      do {
        const page = await objects.list<T>(
          r.apiVersion, r.kind, r.namespace ?? undefined, undefined, undefined, undefined, undefined, r.labelSelector, 500, continueToken,
        );
        for (const item of page.items) items.push({ ...item, apiVersion: r.apiVersion, kind: r.kind });
        resourceVersion = page.metadata?.resourceVersion ?? resourceVersion;
        continueToken = page.metadata?._continue;
      } while (continueToken !== undefined && continueToken !== '');
      return { items, resourceVersion };
    },
    async watch(resourceVersion, onEvent, onDone): Promise<WatchHandle> {
      let abandoned = false;
      const setup = watch.watch(
        resourcePath(r),
        { resourceVersion, allowWatchBookmarks: true, labelSelector: r.labelSelector, timeoutSeconds: WATCH_TIMEOUT_SECONDS },
        (type: string, obj: unknown) => { if (!abandoned) onEvent(type, obj); },
        (err: unknown) => { if (!abandoned) onDone(err); },
      );
      const controller = await withSetupDeadline(setup, WATCH_SETUP_TIMEOUT_MS, `watch of ${resourcePath(r)}`, (c) => {
        abandoned = true;
        c.abort();
      }).catch((err: unknown) => {
        abandoned = true;
        throw err;
      });
      return { stop: () => controller.abort() };
    },
  };
}

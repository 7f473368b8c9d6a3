// ListWatchSource on @kubernetes/client-node: list through the generic object API, watch
// through Watch with bookmarks and a server-side timeout, so streams end and resume regularly.

import { KubernetesObjectApi, Watch, type KubeConfig, type KubernetesObject } from '@kubernetes/client-node';
import type { ListResult, ListWatchSource, WatchHandle } from './reflector.ts';

/** The apiserver ends each watch after 5 minutes (it picks a random 5-10 min otherwise); we resume from the last resourceVersion. */
export const WATCH_TIMEOUT_SECONDS = 300;

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
      const controller = await watch.watch(
        resourcePath(r),
        { resourceVersion, allowWatchBookmarks: true, labelSelector: r.labelSelector, timeoutSeconds: WATCH_TIMEOUT_SECONDS },
        (type: string, obj: unknown) => onEvent(type, obj),
        (err: unknown) => onDone(err),
      );
      return { stop: () => controller.abort() };
    },
  };
}

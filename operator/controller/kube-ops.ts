// KubeOps on @kubernetes/client-node: server-side apply with field manager celer-operator,
// status through the /status subresource, finalizers by JSON patch with a test (never by
// replacing the array another controller may be editing), events as core/v1 Events.

import {
  CoreV1Api, CustomObjectsApi, KubernetesObjectApi, PatchStrategy, setHeaderOptions,
  type CoreV1Event, type KubeConfig, type KubernetesObject,
} from '@kubernetes/client-node';
import type { CelerCluster, CelerClusterStatus } from '../api/types.ts';
import type { OwnedRef } from '../reconcile/observed.ts';
import type { ClusterEvent } from '../reconcile/reconcile.ts';
import type { KubeOps } from './executor.ts';
import { API_VERSION, FIELD_MANAGER, FINALIZER, GROUP, KIND, PLURAL, VERSION } from '../api/constants.ts';

export function httpStatusOf(err: unknown): number | undefined {
  if (err === null || typeof err !== 'object') return undefined;
  const e = err as { code?: unknown; statusCode?: unknown };
  if (typeof e.code === 'number') return e.code;
  if (typeof e.statusCode === 'number') return e.statusCode;
  return undefined;
}

async function ignoreNotFound(p: Promise<unknown>): Promise<void> {
  try {
    await p;
  } catch (err) {
    if (httpStatusOf(err) !== 404) throw err;
  }
}

export class ClientNodeKubeOps implements KubeOps {
  readonly #objects: KubernetesObjectApi;
  readonly #core: CoreV1Api;
  readonly #custom: CustomObjectsApi;
  readonly #identity: string;
  readonly #now: () => number;

  constructor(kc: KubeConfig, identity: string, now: () => number = Date.now) {
    this.#objects = KubernetesObjectApi.makeApiClient(kc);
    this.#core = kc.makeApiClient(CoreV1Api);
    this.#custom = kc.makeApiClient(CustomObjectsApi);
    this.#identity = identity;
    this.#now = now;
  }

  async apply(obj: KubernetesObject): Promise<void> {
    await this.#objects.patch(obj, undefined, undefined, FIELD_MANAGER, true, PatchStrategy.ServerSideApply);
  }

  async deleteOwned(namespace: string, ref: OwnedRef): Promise<void> {
    await ignoreNotFound(this.#objects.delete({ apiVersion: ref.apiVersion, kind: ref.kind, metadata: { name: ref.name, namespace } }));
  }

  async deletePod(namespace: string, name: string): Promise<void> {
    await ignoreNotFound(this.#core.deleteNamespacedPod({ name, namespace }));
  }

  async labelPod(namespace: string, name: string, labels: Record<string, string>): Promise<void> {
    await ignoreNotFound(this.#core.patchNamespacedPod(
      { name, namespace, body: { metadata: { labels } } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    ));
  }

  async addFinalizer(cluster: CelerCluster): Promise<void> {
    const finalizers = cluster.metadata.finalizers;
    const body = finalizers === undefined || finalizers.length === 0
      ? [
        { op: 'test', path: '/metadata/resourceVersion', value: cluster.metadata.resourceVersion },
        { op: 'add', path: '/metadata/finalizers', value: [FINALIZER] },
      ]
      : [{ op: 'add', path: '/metadata/finalizers/-', value: FINALIZER }];
    await this.#patchCluster(cluster, body);
  }

  async removeFinalizer(cluster: CelerCluster): Promise<void> {
    const i = (cluster.metadata.finalizers ?? []).indexOf(FINALIZER);
    if (i < 0) return;
    await ignoreNotFound(this.#patchCluster(cluster, [
      { op: 'test', path: `/metadata/finalizers/${i}`, value: FINALIZER },
      { op: 'remove', path: `/metadata/finalizers/${i}` },
    ]));
  }

  async patchStatus(cluster: CelerCluster, status: CelerClusterStatus): Promise<void> {
    await ignoreNotFound(this.#custom.patchNamespacedCustomObjectStatus(
      { group: GROUP, version: VERSION, namespace: cluster.metadata.namespace, plural: PLURAL, name: cluster.metadata.name, body: { status } },
      setHeaderOptions('Content-Type', PatchStrategy.MergePatch),
    ));
  }

  async recordEvent(cluster: CelerCluster, event: ClusterEvent): Promise<void> {
    // Deduplication is the controller's (event-dedup.ts), before the executor sees the events.
    const now = this.#now();
    const time = new Date(now);
    const body: CoreV1Event = {
      metadata: { name: `${cluster.metadata.name}.${now.toString(16)}${Math.floor(Math.random() * 0xffff).toString(16)}`, namespace: cluster.metadata.namespace },
      involvedObject: {
        apiVersion: API_VERSION, kind: KIND, name: cluster.metadata.name, namespace: cluster.metadata.namespace,
        uid: cluster.metadata.uid, resourceVersion: cluster.metadata.resourceVersion,
      },
      type: event.type,
      reason: event.reason,
      message: event.message,
      source: { component: FIELD_MANAGER, host: this.#identity },
      firstTimestamp: time,
      lastTimestamp: time,
      count: 1,
      reportingComponent: FIELD_MANAGER,
      reportingInstance: this.#identity,
    };
    await this.#core.createNamespacedEvent({ namespace: cluster.metadata.namespace, body });
  }

  async #patchCluster(cluster: CelerCluster, body: object[]): Promise<void> {
    await this.#custom.patchNamespacedCustomObject(
      { group: GROUP, version: VERSION, namespace: cluster.metadata.namespace, plural: PLURAL, name: cluster.metadata.name, body },
      setHeaderOptions('Content-Type', PatchStrategy.JsonPatch),
    );
  }

  /** Reads a Secret's data, decoded; null when it does not exist. */
  async readSecret(namespace: string, name: string): Promise<Record<string, string> | null> {
    try {
      const secret = await this.#core.readNamespacedSecret({ name, namespace });
      return Object.fromEntries(Object.entries(secret.data ?? {}).map(([k, v]) => [k, Buffer.from(v, 'base64').toString('utf8')]));
    } catch (err) {
      if (httpStatusOf(err) === 404) return null;
      throw err;
    }
  }

  /** The controller owner's uid of an object (uncached GET); null when it does not exist. */
  async controllerUid(namespace: string, ref: OwnedRef): Promise<string | null> {
    try {
      const obj = await this.#objects.read({ apiVersion: ref.apiVersion, kind: ref.kind, metadata: { name: ref.name, namespace } });
      return obj.metadata?.ownerReferences?.find((o) => o.controller === true)?.uid ?? '';
    } catch (err) {
      if (httpStatusOf(err) === 404) return null;
      throw err;
    }
  }
}

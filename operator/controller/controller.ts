// The CelerCluster controller: informers (reflectors) feed a work queue with cluster keys;
// workers build an ObservedState from the caches plus each node's /status, call reconcile(),
// execute the result and requeue. Level-triggered: the event type never matters, only what
// the caches hold when the key is processed.

import { ApisApi, type KubeConfig, type KubernetesObject, type V1Pod, type V1StatefulSet } from '@kubernetes/client-node';
import type { CelerCluster, S3Spec } from '../api/types.ts';
import type { Capabilities, ObservedNode, OwnedRef } from '../reconcile/observed.ts';
import type { Logger } from '../log.ts';
import type { OperatorMetrics } from '../metrics.ts';
import type { Clock, Timer } from './clock.ts';
import type { NodeOps } from './executor.ts';
import { API_VERSION, KIND, LABEL_CLUSTER, LABEL_NAME, PLURAL } from '../api/constants.ts';
import { withDefaults } from '../api/defaults.ts';
import { headlessServiceName, pdbName, serviceMonitorName } from '../reconcile/names.ts';
import { reconcile } from '../reconcile/reconcile.ts';
import { capabilitiesFrom, DISCOVERY_INTERVAL_MS } from './discovery.ts';
import { describe, execute } from './executor.ts';
import { ClientNodeKubeOps } from './kube-ops.ts';
import { clientNodeSource, type ResourceRef } from './kube-sources.ts';
import { fetchNodeStatus, nodeBaseUrl, requestStepDown } from './node-client.ts';
import { observedPod, ownerKey, splitKey } from './observe.ts';
import { Reflector } from './reflector.ts';
import { deleteS3Objects, type S3Credentials } from './s3-cleanup.ts';
import { WorkQueue } from './workqueue.ts';

/** Two workers: one cluster's slow /status calls do not hold up another's reconcile. */
export const WORKERS = 2;
/** Until every cache has listed once, look again after 1 s rather than act on a partial view. */
export const UNSYNCED_RETRY_MS = 1_000;
/** Liveness fails if a watch has not synced a minute after start (the apiserver answers lists in well under that). */
export const SYNC_GRACE_MS = 60_000;

export interface ControllerOptions {
  kc: KubeConfig;
  /** null: every namespace. */
  namespace: string | null;
  clock: Clock;
  metrics: OperatorMetrics;
  log: Logger;
  identity: string;
  defaultImage: string;
  nodeUrlTemplate: string;
}

const OWNED_SELECTOR = `${LABEL_NAME}=celer,${LABEL_CLUSTER}`;

export class Controller {
  readonly #o: ControllerOptions;
  readonly #queue: WorkQueue;
  readonly #kube: ClientNodeKubeOps;
  readonly #clusters: Reflector<CelerCluster & KubernetesObject>;
  readonly #statefulSets: Reflector<V1StatefulSet & KubernetesObject>;
  readonly #pods: Reflector<V1Pod & KubernetesObject>;
  readonly #others: Reflector<KubernetesObject>[];
  #capabilities: Capabilities = { pdbApiVersion: null, serviceMonitor: false };
  #discoveryTimer: Timer | null = null;
  #running = false;
  #startedAtMs = 0;

  constructor(options: ControllerOptions) {
    this.#o = options;
    this.#queue = new WorkQueue(options.clock);
    this.#kube = new ClientNodeKubeOps(options.kc, options.identity, () => options.clock.nowMs());
    const reflector = <T extends KubernetesObject>(name: string, ref: ResourceRef): Reflector<T> => new Reflector<T>({
      name, clock: options.clock, source: clientNodeSource<T>(options.kc, ref),
      onChange: (obj) => this.#enqueue(obj),
      onError: (err) => {
        options.metrics.errors.labels('watch').inc();
        options.log.warn('watch error', { resource: name, error: describe(err) });
      },
    });
    const ns = options.namespace;
    this.#clusters = reflector('celerclusters', { apiVersion: API_VERSION, kind: KIND, plural: PLURAL, namespace: ns });
    this.#statefulSets = reflector('statefulsets', { apiVersion: 'apps/v1', kind: 'StatefulSet', plural: 'statefulsets', namespace: ns, labelSelector: OWNED_SELECTOR });
    this.#pods = reflector('pods', { apiVersion: 'v1', kind: 'Pod', plural: 'pods', namespace: ns, labelSelector: OWNED_SELECTOR });
    this.#others = [
      reflector('services', { apiVersion: 'v1', kind: 'Service', plural: 'services', namespace: ns, labelSelector: OWNED_SELECTOR }),
      reflector('persistentvolumeclaims', { apiVersion: 'v1', kind: 'PersistentVolumeClaim', plural: 'persistentvolumeclaims', namespace: ns, labelSelector: OWNED_SELECTOR }),
    ];
  }

  get queueDepth(): number {
    return this.#queue.length;
  }

  /** Null when healthy; else why not (for /healthz). */
  unhealthyReason(): string | null {
    if (!this.#running) return null;
    if (this.#o.clock.nowMs() - this.#startedAtMs < SYNC_GRACE_MS) return null;
    const stale = this.#reflectors().find((r) => !r.synced);
    return stale === undefined ? null : `watch of ${stale.name} has not synced`;
  }

  async start(): Promise<void> {
    if (this.#running) return;
    this.#running = true;
    this.#startedAtMs = this.#o.clock.nowMs();
    await this.#discover();
    for (const r of this.#reflectors()) r.start();
    for (let i = 0; i < WORKERS; i++) void this.#work();
    this.#o.log.info('controller started', { namespace: this.#o.namespace ?? '(all)', capabilities: this.#capabilities });
  }

  stop(): void {
    this.#running = false;
    this.#discoveryTimer?.cancel();
    for (const r of this.#reflectors()) r.stop();
    this.#queue.shutDown();
  }

  #reflectors(): Reflector<KubernetesObject>[] {
    return [this.#clusters, this.#statefulSets, this.#pods, ...this.#others] as Reflector<KubernetesObject>[];
  }

  #enqueue(obj: KubernetesObject): void {
    const key = ownerKey(obj);
    if (key !== null) this.#queue.add(key);
    this.#o.metrics.queueDepth.set(this.#queue.length);
  }

  async #discover(): Promise<void> {
    try {
      const groups = await this.#o.kc.makeApiClient(ApisApi).getAPIVersions();
      const versions = groups.groups.flatMap((g) => g.versions.map((v) => v.groupVersion));
      this.#capabilities = capabilitiesFrom(versions);
    } catch (err) {
      this.#o.metrics.errors.labels('discovery').inc();
      this.#o.log.warn('API discovery failed; keeping the previous answer', { error: describe(err) });
    }
    if (this.#running) this.#discoveryTimer = this.#o.clock.after(DISCOVERY_INTERVAL_MS, () => void this.#discover());
  }

  async #work(): Promise<void> {
    for (;;) {
      const key = await this.#queue.get();
      if (key === null) return;
      this.#o.metrics.queueDepth.set(this.#queue.length);
      const end = this.#o.metrics.reconcileSeconds.startTimer();
      try {
        const requeueAfterMs = await this.#process(key);
        this.#o.metrics.reconciles.labels('success').inc();
        this.#queue.forget(key);
        if (requeueAfterMs !== null) this.#queue.addAfter(key, requeueAfterMs);
      } catch (err) {
        this.#o.metrics.reconciles.labels('error').inc();
        this.#o.metrics.errors.labels('reconcile').inc();
        this.#o.log.warn('reconcile failed; retrying with backoff', { cluster: key, error: describe(err), retries: this.#queue.failures(key) });
        this.#queue.addRateLimited(key);
      } finally {
        end();
        this.#queue.done(key);
      }
    }
  }

  /** One reconcile pass; returns when to look again, or null when the cluster is gone. */
  async #process(key: string): Promise<number | null> {
    // A pass over half-filled caches would see a running cluster without pods.
    if (this.#reflectors().some((r) => !r.synced)) return UNSYNCED_RETRY_MS;
    const { namespace, name } = splitKey(key);
    const cluster = this.#clusters.get(namespace, name);
    if (cluster === undefined) return null;
    const statefulSet = this.#statefulSets.get(namespace, name) ?? null;
    const pods = this.#pods.list().filter((p) => p.metadata?.namespace === namespace && p.metadata?.labels?.[LABEL_CLUSTER] === name);
    const observedPods = pods.map((p) => observedPod(name, p)).filter((p) => p !== null);
    const nodes = await this.#nodeStatuses(cluster, pods);
    const owned = await this.#ownedPrunable(cluster);
    const result = reconcile({
      cluster, statefulSet, pods: observedPods, nodes, owned,
      capabilities: this.#capabilities, nowMs: this.#o.clock.nowMs(), defaultImage: this.#o.defaultImage,
    });
    if (result.deferredGate !== null) this.#o.metrics.gateDeferrals.labels(result.deferredGate).inc();
    const report = await execute(cluster, result, this.#kube, this.#nodeOps());
    for (const kind of report.done) this.#o.metrics.actions.labels(kind).inc();
    this.#o.log.debug('reconciled', { cluster: key, phase: result.status.phase, gate: result.deferredGate, actions: report.done });
    if (report.error !== null) throw new Error(`${report.error.stage}: ${describe(report.error.err)}`);
    return result.requeueAfterMs;
  }

  async #nodeStatuses(cluster: CelerCluster, pods: V1Pod[]): Promise<Record<string, ObservedNode>> {
    const out: Record<string, ObservedNode> = {};
    await Promise.all(pods.map(async (pod) => {
      const podName = pod.metadata?.name ?? '';
      const url = this.#podUrl(cluster, podName, pod.status?.podIP ?? null);
      if (url === null) {
        out[podName] = { status: null, error: 'pod has no IP yet' };
        return;
      }
      try {
        out[podName] = { status: await fetchNodeStatus(url) };
      } catch (err) {
        this.#o.metrics.errors.labels('node_status').inc();
        out[podName] = { status: null, error: describe(err) };
      }
    }));
    return out;
  }

  #podUrl(cluster: CelerCluster, pod: string, podIP: string | null): string | null {
    const name = cluster.metadata.name;
    const ordinal = Number(pod.slice(name.length + 1));
    return nodeBaseUrl(this.#o.nodeUrlTemplate, {
      pod, podIP, namespace: cluster.metadata.namespace, cluster: name, ordinal, service: headlessServiceName(name),
    });
  }

  /** PDB and ServiceMonitor are the kinds that can stop being desired; look them up uncached. */
  async #ownedPrunable(cluster: CelerCluster): Promise<OwnedRef[]> {
    const candidates: OwnedRef[] = [];
    if (this.#capabilities.pdbApiVersion !== null) candidates.push({ apiVersion: this.#capabilities.pdbApiVersion, kind: 'PodDisruptionBudget', name: pdbName(cluster.metadata.name) });
    if (this.#capabilities.serviceMonitor) candidates.push({ apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor', name: serviceMonitorName(cluster.metadata.name) });
    const owned: OwnedRef[] = [];
    for (const ref of candidates) {
      const uid = await this.#kube.controllerUid(cluster.metadata.namespace, ref);
      if (uid !== null && uid === cluster.metadata.uid) owned.push(ref);
    }
    return owned;
  }

  #nodeOps(): NodeOps {
    return {
      stepDown: async (cluster, pod, handoverTtlMs) => {
        const podObj = this.#pods.get(cluster.metadata.namespace, pod);
        const url = this.#podUrl(cluster, pod, podObj?.status?.podIP ?? null);
        if (url === null) throw new Error(`${pod} has no address to step down`);
        const answer = await requestStepDown(url, handoverTtlMs);
        this.#o.log.info('step-down requested', { pod, steppedDown: answer.steppedDown, reason: answer.reason });
      },
      deleteS3LeaseObjects: async (cluster, s3, keys) => {
        const credentials = await this.#s3Credentials(cluster, s3);
        await deleteS3Objects(s3, keys, credentials, () => this.#o.clock.nowMs());
      },
    };
  }

  async #s3Credentials(cluster: CelerCluster, s3: S3Spec): Promise<S3Credentials> {
    const spec = withDefaults(cluster.spec);
    const secretName = spec.s3?.credentialsSecret ?? s3.credentialsSecret;
    if (secretName !== undefined && secretName !== '') {
      const data = await this.#kube.readSecret(cluster.metadata.namespace, secretName);
      const accessKeyId = data?.AWS_ACCESS_KEY_ID;
      const secretAccessKey = data?.AWS_SECRET_ACCESS_KEY;
      if (accessKeyId === undefined || secretAccessKey === undefined) {
        throw new Error(`Secret ${secretName} lacks AWS_ACCESS_KEY_ID or AWS_SECRET_ACCESS_KEY; set deletionPolicy: Retain to delete without cleanup`);
      }
      return { accessKeyId, secretAccessKey, ...(data?.AWS_SESSION_TOKEN !== undefined ? { sessionToken: data.AWS_SESSION_TOKEN } : {}) };
    }
    const accessKeyId = process.env.AWS_ACCESS_KEY_ID;
    const secretAccessKey = process.env.AWS_SECRET_ACCESS_KEY;
    if (accessKeyId === undefined || secretAccessKey === undefined) {
      throw new Error('no S3 credentials: set spec.s3.credentialsSecret, give the operator AWS_ACCESS_KEY_ID/AWS_SECRET_ACCESS_KEY, or set deletionPolicy: Retain');
    }
    return { accessKeyId, secretAccessKey, ...(process.env.AWS_SESSION_TOKEN !== undefined ? { sessionToken: process.env.AWS_SESSION_TOKEN } : {}) };
  }
}

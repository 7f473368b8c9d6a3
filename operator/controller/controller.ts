// The CelerCluster controller: informers (reflectors) feed a work queue with cluster keys;
// workers build an ObservedState from the caches plus each node's /status, call reconcile(),
// execute the result and requeue. Level-triggered: the event type never matters, only what
// the caches hold when the key is processed.

import { ApisApi, type KubeConfig, type KubernetesObject, type V1Node, type V1Pod, type V1StatefulSet } from '@kubernetes/client-node';
import type { CelerCluster, S3Spec } from '../api/types.ts';
import type { NodeStatus, StepDownResult } from '../../dataplane/server/status.ts';
import type { Capabilities, ObservedNode, OwnedRef } from '../reconcile/observed.ts';
import type { Logger } from '../log.ts';
import type { OperatorMetrics } from '../metrics.ts';
import type { Clock, Timer } from './clock.ts';
import type { KubeOps, NodeOps } from './executor.ts';
import type { ListWatchSource } from './reflector.ts';
import { ANNOTATION_PAUSED, API_VERSION, KIND, LABEL_CLUSTER, LABEL_NAME, PLURAL } from '../api/constants.ts';
import { withDefaults } from '../api/defaults.ts';
import { headlessServiceName, pdbName, serviceMonitorName } from '../reconcile/names.ts';
import { reconcile, RESYNC_MS } from '../reconcile/reconcile.ts';
import { KUBE_REQUEST_TIMEOUT_MS, withRequestDeadline } from './api-deadline.ts';
import { capabilitiesFrom, DISCOVERY_INTERVAL_MS } from './discovery.ts';
import { EventDedup, eventKey } from './event-dedup.ts';
import { describe, execute } from './executor.ts';
import { ClientNodeKubeOps } from './kube-ops.ts';
import { clientNodeSource, type ResourceRef } from './kube-sources.ts';
import { fetchNodeStatus, NODE_HTTP_TIMEOUT_MS, nodeBaseUrl, requestStepDown } from './node-client.ts';
import { RoleWatcher, ROLE_POLL_INTERVAL_MS, type RoleTarget } from './role-watcher.ts';
import { clusterChangeMatters, ownedChangeMatters, podChangeMatters, stableStatus } from './triggers.ts';
import { observedPod, ownerKey, splitKey } from './observe.ts';
import { clustersOnNode, NODES_REF, nodeChangeMatters, unschedulableNodeNames } from './kube-nodes.ts';
import { Reflector } from './reflector.ts';
import { deleteS3Objects, type S3Credentials } from './s3-cleanup.ts';
import { WorkQueue } from './workqueue.ts';

/** Two workers: one cluster's slow /status calls do not hold up another's reconcile. */
export const WORKERS = 2;
/** Until every cache has listed once, look again after 1 s rather than act on a partial view. */
export const UNSYNCED_RETRY_MS = 1_000;
/** Liveness fails if a watch has not synced a minute after start (the apiserver answers lists in well under that). */
export const SYNC_GRACE_MS = 60_000;

/** What the controller needs of the Kubernetes API beyond the executor's KubeOps. */
export interface ControllerKube extends KubeOps {
  readSecret(namespace: string, name: string): Promise<Record<string, string> | null>;
  controllerUid(namespace: string, ref: OwnedRef): Promise<string | null>;
}

/** The controller's HTTP calls to the nodes (node-client.ts in production). */
export interface NodeClient {
  fetchStatus(url: string, timeoutMs: number, signal?: AbortSignal): Promise<NodeStatus>;
  stepDown(url: string, handoverTtlMs: number, signal?: AbortSignal): Promise<StepDownResult>;
}

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
  /** How often the role watcher polls two-node clusters' /status (role-watcher.ts); default ROLE_POLL_INTERVAL_MS. */
  rolePollIntervalMs?: number;
  /** Seams for tests; production builds each from kc. */
  source?: <T extends KubernetesObject>(name: string, ref: ResourceRef) => ListWatchSource<T>;
  kube?: ControllerKube;
  discover?: () => Promise<string[]>;
  nodeClient?: NodeClient;
}

const OWNED_SELECTOR = `${LABEL_NAME}=celer,${LABEL_CLUSTER}`;

export class Controller {
  readonly #o: ControllerOptions;
  readonly #queue: WorkQueue;
  readonly #kube: ControllerKube;
  /** Aborted by stop(): every Kubernetes request and node call in flight ends at once. */
  readonly #stop = new AbortController();
  readonly #kc: KubeConfig;
  readonly #nodeClient: NodeClient;
  readonly #roleWatcher: RoleWatcher;
  /** When each cluster's status was last written, to bound how long a volatile-only change waits. */
  readonly #statusWrittenAtMs = new Map<string, number>();
  readonly #events = new EventDedup();
  readonly #clusters: Reflector<CelerCluster & KubernetesObject>;
  readonly #statefulSets: Reflector<V1StatefulSet & KubernetesObject>;
  readonly #pods: Reflector<V1Pod & KubernetesObject>;
  readonly #others: Reflector<KubernetesObject>[];
  /** All Kubernetes Nodes: a cordon of the leader's node starts a switchover (reconcile/drain.ts). */
  readonly #kubeNodes: Reflector<V1Node & KubernetesObject>;
  #capabilities: Capabilities = { pdbApiVersion: null, serviceMonitor: false };
  #discoveryTimer: Timer | null = null;
  #running = false;
  #startedAtMs = 0;

  constructor(options: ControllerOptions) {
    this.#o = options;
    this.#queue = new WorkQueue(options.clock);
    // Every request of this controller has a deadline and ends when stop() is called (api-deadline.ts).
    this.#kc = withRequestDeadline(options.kc, KUBE_REQUEST_TIMEOUT_MS, this.#stop.signal);
    this.#kube = options.kube ?? new ClientNodeKubeOps(this.#kc, options.identity, () => options.clock.nowMs());
    this.#nodeClient = options.nodeClient ?? { fetchStatus: fetchNodeStatus, stepDown: requestStepDown };
    const source = options.source ?? (<T extends KubernetesObject>(_name: string, ref: ResourceRef) => clientNodeSource<T>(this.#kc, ref));
    const reflector = <T extends KubernetesObject>(name: string, ref: ResourceRef, matters: (before: T, after: T) => boolean): Reflector<T> => new Reflector<T>({
      name, clock: options.clock, source: source<T>(name, ref),
      // Level-triggered, but not on every write: a status patch must not enqueue the next pass (triggers.ts).
      onChange: (obj, kind, before) => {
        if (kind !== 'update' || before === undefined || matters(before, obj)) this.#enqueue(obj);
      },
      onError: (err) => {
        options.metrics.errors.labels('watch').inc();
        options.log.warn('watch error', { resource: name, error: describe(err) });
      },
    });
    const ns = options.namespace;
    this.#clusters = reflector<CelerCluster & KubernetesObject>('celerclusters', { apiVersion: API_VERSION, kind: KIND, plural: PLURAL, namespace: ns }, clusterChangeMatters);
    this.#statefulSets = reflector<V1StatefulSet & KubernetesObject>('statefulsets', { apiVersion: 'apps/v1', kind: 'StatefulSet', plural: 'statefulsets', namespace: ns, labelSelector: OWNED_SELECTOR }, ownedChangeMatters);
    this.#pods = reflector<V1Pod & KubernetesObject>('pods', { apiVersion: 'v1', kind: 'Pod', plural: 'pods', namespace: ns, labelSelector: OWNED_SELECTOR }, podChangeMatters);
    this.#others = [
      reflector('services', { apiVersion: 'v1', kind: 'Service', plural: 'services', namespace: ns, labelSelector: OWNED_SELECTOR }, ownedChangeMatters),
      reflector('persistentvolumeclaims', { apiVersion: 'v1', kind: 'PersistentVolumeClaim', plural: 'persistentvolumeclaims', namespace: ns, labelSelector: OWNED_SELECTOR }, ownedChangeMatters),
    ];
    this.#kubeNodes = new Reflector<V1Node & KubernetesObject>({
      name: 'nodes', clock: options.clock, source: source<V1Node & KubernetesObject>('nodes', NODES_REF),
      onChange: (node, kind, before) => {
        if (kind === 'update' && before !== undefined && !nodeChangeMatters(before, node)) return;
        for (const key of clustersOnNode(node.metadata?.name ?? '', this.#pods.list())) this.#queue.add(key);
        this.#o.metrics.queueDepth.set(this.#queue.length);
      },
      onError: (err) => {
        options.metrics.errors.labels('watch').inc();
        options.log.warn('watch error', { resource: 'nodes', error: describe(err) });
      },
    });
    this.#roleWatcher = new RoleWatcher({
      clock: options.clock,
      intervalMs: options.rolePollIntervalMs ?? ROLE_POLL_INTERVAL_MS,
      targets: () => this.#roleTargets(),
      fetchRole: (url, timeoutMs) => this.#nodeClient.fetchStatus(url, timeoutMs, this.#stop.signal),
      onChange: (key) => {
        this.#o.log.info('node role changed; reconciling now', { cluster: key });
        this.#queue.add(key);
        this.#o.metrics.queueDepth.set(this.#queue.length);
      },
    });
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
    this.#roleWatcher.start();
    for (let i = 0; i < WORKERS; i++) void this.#work();
    this.#o.log.info('controller started', { namespace: this.#o.namespace ?? '(all)', capabilities: this.#capabilities });
  }

  /**
   * Stops for good (main.ts exits after it): workers take no new key, and every Kubernetes
   * request and node call in flight is aborted, so a replica that lost its Lease stops acting now
   * rather than when its calls happen to return.
   */
  stop(): void {
    this.#running = false;
    this.#stop.abort(new Error('the operator controller stopped (shutdown, or the leader-election Lease was lost)'));
    this.#roleWatcher.stop();
    this.#discoveryTimer?.cancel();
    for (const r of this.#reflectors()) r.stop();
    this.#queue.shutDown();
  }

  #reflectors(): Reflector<KubernetesObject>[] {
    return [this.#clusters, this.#statefulSets, this.#pods, ...this.#others, this.#kubeNodes] as Reflector<KubernetesObject>[];
  }

  #enqueue(obj: KubernetesObject): void {
    const key = ownerKey(obj);
    if (key !== null) this.#queue.add(key);
    this.#o.metrics.queueDepth.set(this.#queue.length);
  }

  async #discover(): Promise<void> {
    try {
      const versions = this.#o.discover !== undefined ? await this.#o.discover()
        : (await this.#kc.makeApiClient(ApisApi).getAPIVersions()).groups.flatMap((g) => g.versions.map((v) => v.groupVersion));
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
    if (cluster === undefined) {
      this.#statusWrittenAtMs.delete(key);
      return null;
    }
    const statefulSet = this.#statefulSets.get(namespace, name) ?? null;
    const pods = this.#pods.list().filter((p) => p.metadata?.namespace === namespace && p.metadata?.labels?.[LABEL_CLUSTER] === name);
    const observedPods = pods.map((p) => observedPod(name, p)).filter((p) => p !== null);
    const nodes = await this.#nodeStatuses(cluster, pods);
    const owned = await this.#ownedPrunable(cluster);
    const result = reconcile({
      cluster, statefulSet, pods: observedPods, nodes, owned,
      capabilities: this.#capabilities, nowMs: this.#o.clock.nowMs(), defaultImage: this.#o.defaultImage,
      unschedulableNodes: unschedulableNodeNames(this.#kubeNodes.list()),
    });
    if (result.deferredGate !== null) this.#o.metrics.gateDeferrals.labels(result.deferredGate).inc();
    // Skip a status write that changes only volatile figures (lag, condition messages) while the
    // last write is younger than the resync period: each write is a watch event and a request.
    const nowMs = this.#o.clock.nowMs();
    const uid = cluster.metadata.uid ?? key;
    result.events = result.events.filter((e) => this.#events.admit(eventKey(uid, e), nowMs));
    const lastWrite = this.#statusWrittenAtMs.get(key);
    const unchanged = (status: typeof result.status): boolean => lastWrite !== undefined && nowMs - lastWrite < RESYNC_MS
      && stableStatus(status) === stableStatus(cluster.status);
    const report = await execute(cluster, result, this.#kube, this.#nodeOps(), { statusUnchanged: unchanged });
    if (report.statusWritten) this.#statusWrittenAtMs.set(key, nowMs);
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
      // A terminating pod's node is going away: asking it would only add its timeout to this pass
      // (an unreachable pod IP answers nothing), and nothing reconcile decides reads its role.
      if (pod.metadata?.deletionTimestamp !== undefined && pod.metadata.deletionTimestamp !== null) {
        out[podName] = { status: null, error: 'pod is terminating' };
        return;
      }
      try {
        out[podName] = { status: await this.#nodeClient.fetchStatus(url, NODE_HTTP_TIMEOUT_MS, this.#stop.signal) };
      } catch (err) {
        this.#o.metrics.errors.labels('node_status').inc();
        out[podName] = { status: null, error: describe(err) };
      }
    }));
    return out;
  }

  /** Every pod of every two-node cluster the operator acts on, for the role watcher. */
  #roleTargets(): RoleTarget[] {
    const out: RoleTarget[] = [];
    for (const cluster of this.#clusters.list()) {
      const { namespace, name } = cluster.metadata;
      if (cluster.metadata.annotations?.[ANNOTATION_PAUSED] === 'true' || cluster.metadata.deletionTimestamp != null) continue;
      let standalone: boolean;
      try {
        standalone = withDefaults(cluster.spec).standalone;
      } catch {
        continue; // an invalid spec: reconcile reports it; nothing to watch
      }
      if (standalone) continue;
      for (const pod of this.#pods.list()) {
        if (pod.metadata?.namespace !== namespace || pod.metadata?.labels?.[LABEL_CLUSTER] !== name) continue;
        const podName = pod.metadata?.name ?? '';
        const url = this.#podUrl(cluster, podName, pod.status?.podIP ?? null);
        if (url !== null) out.push({ cluster: `${namespace}/${name}`, pod: podName, url });
      }
    }
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
        // A stopped controller (a deposed leader) must not switch a cluster over.
        if (this.#stop.signal.aborted) throw new Error('the controller stopped; not stepping down');
        const answer = await this.#nodeClient.stepDown(url, handoverTtlMs, this.#stop.signal);
        this.#o.log.info('step-down requested', { pod, steppedDown: answer.steppedDown, reason: answer.reason });
      },
      deleteS3LeaseObjects: async (cluster, s3, keys) => {
        if (this.#stop.signal.aborted) throw new Error('the controller stopped; not deleting S3 lease objects');
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

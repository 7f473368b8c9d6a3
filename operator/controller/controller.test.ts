// The controller against fake list/watch sources, a fake Kubernetes API and fake nodes, on a
// manual clock: what triggers a reconcile pass, what each pass writes, and how fast a role
// change reaches the pod labels.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { KubernetesObject, V1Pod, V1StatefulSet } from '@kubernetes/client-node';
import type { NodeStatus } from '../../dataplane/server/status.ts';
import type { CelerCluster, CelerClusterStatus } from '../api/types.ts';
import type { ClusterEvent } from '../reconcile/reconcile.ts';
import type { ListResult, ListWatchSource, WatchHandle } from './reflector.ts';
import { KubeConfig } from '@kubernetes/client-node';
import { ANNOTATION_TEMPLATE_HASH, LABEL_CLUSTER, LABEL_NAME, LABEL_ROLE } from '../api/constants.ts';
import { jsonLogger } from '../log.ts';
import { OperatorMetrics } from '../metrics.ts';
import { RESYNC_MS } from '../reconcile/reconcile.ts';
import { cluster as clusterFixture, desiredHash, nodeStatus, twoNodeSpec, type PodSketch } from '../reconcile/test-fixtures.ts';
import { ManualClock } from './clock.ts';
import { Controller, type ControllerKube, type NodeClient } from './controller.ts';
import { ROLE_POLL_INTERVAL_MS } from './role-watcher.ts';

/** One resource kind of a fake apiserver: list returns the items, watchers get every change. */
class FakeSource<T extends KubernetesObject> implements ListWatchSource<T> {
  items = new Map<string, T>();
  rv = 1;
  #watchers: ((type: string, obj: unknown) => void)[] = [];
  async list(): Promise<ListResult<T>> {
    return { items: [...this.items.values()], resourceVersion: String(this.rv) };
  }
  async watch(_rv: string, onEvent: (t: string, o: unknown) => void): Promise<WatchHandle> {
    this.#watchers.push(onEvent);
    return { stop: () => { this.#watchers = this.#watchers.filter((w) => w !== onEvent); } };
  }
  put(obj: T): void {
    const name = obj.metadata?.name ?? '';
    const existed = this.items.has(name);
    const next = { ...obj, metadata: { ...obj.metadata, resourceVersion: String(++this.rv) } } as T;
    this.items.set(name, next);
    for (const w of this.#watchers) w(existed ? 'MODIFIED' : 'ADDED', next);
  }
}

interface World {
  clock: ManualClock;
  clusters: FakeSource<CelerCluster & KubernetesObject>;
  pods: FakeSource<V1Pod & KubernetesObject>;
  statefulSets: FakeSource<V1StatefulSet & KubernetesObject>;
  applies: string[];
  statusWrites: CelerClusterStatus[];
  events: ClusterEvent[];
  labels: string[];
  /** Keyed by node URL; an Error makes the node unreachable. */
  node: Map<string, NodeStatus | Error>;
  controller: Controller;
}

function world(): World {
  const clock = new ManualClock(Date.parse('2026-09-01T12:00:00Z'));
  const clusters = new FakeSource<CelerCluster & KubernetesObject>();
  const pods = new FakeSource<V1Pod & KubernetesObject>();
  const statefulSets = new FakeSource<V1StatefulSet & KubernetesObject>();
  const empty = new FakeSource<KubernetesObject>();
  const w = { clock, clusters, pods, statefulSets, applies: [] as string[], statusWrites: [] as CelerClusterStatus[], events: [] as ClusterEvent[], labels: [] as string[], node: new Map<string, NodeStatus | Error>() };
  const kube: ControllerKube = {
    apply: async (o) => { w.applies.push(`${o.kind}/${o.metadata?.name}`); },
    deleteOwned: async () => {},
    deletePod: async () => {},
    labelPod: async (_ns, name, labels) => {
      w.labels.push(`${name}=${labels[LABEL_ROLE]}`);
      const pod = pods.items.get(name)!;
      pods.put({ ...pod, metadata: { ...pod.metadata, labels: { ...pod.metadata?.labels, ...labels } } });
    },
    addFinalizer: async () => {},
    removeFinalizer: async () => {},
    // A status write is a MODIFIED event of the CelerCluster, as on a real apiserver.
    patchStatus: async (c, status) => {
      w.statusWrites.push(status);
      const cur = clusters.items.get(c.metadata.name)!;
      clusters.put({ ...cur, status });
    },
    recordEvent: async (_c, e) => { w.events.push(e); },
    readSecret: async () => null,
    controllerUid: async () => null,
  };
  const nodeClient: NodeClient = {
    fetchStatus: async (url) => {
      const s = w.node.get(url);
      if (s === undefined || s instanceof Error) throw s ?? new Error(`no node at ${url}`);
      return structuredClone(s);
    },
    stepDown: async () => ({ steppedDown: false, reason: 'not in this test' }),
  };
  const controller = new Controller({
    kc: new KubeConfig(), namespace: 'ns', clock, metrics: new OperatorMetrics(false), log: jsonLogger(() => {}),
    identity: 'test', defaultImage: 'celer', nodeUrlTemplate: 'http://{pod}',
    source: <T extends KubernetesObject>(name: string) => (
      name === 'celerclusters' ? clusters : name === 'pods' ? pods : name === 'statefulsets' ? statefulSets : empty
    ) as unknown as ListWatchSource<T>,
    kube, nodeClient, discover: async () => ['policy/v1'],
  });
  return { ...w, controller };
}

const settle = async (): Promise<void> => { for (let i = 0; i < 30; i++) await new Promise((r) => setImmediate(r)); };

async function advance(w: World, ms: number, step = 100): Promise<void> {
  for (let t = 0; t < ms; t += step) {
    w.clock.advance(Math.min(step, ms - t));
    await settle();
  }
}

function pod(ordinal: number, hash: string, role: string): V1Pod & KubernetesObject {
  return {
    apiVersion: 'v1', kind: 'Pod',
    metadata: {
      name: `c1-${ordinal}`, namespace: 'ns', labels: { [LABEL_NAME]: 'celer', [LABEL_CLUSTER]: 'c1', [LABEL_ROLE]: role },
      annotations: { [ANNOTATION_TEMPLATE_HASH]: hash },
    },
    spec: { containers: [] },
    status: { phase: 'Running', podIP: `10.0.0.${ordinal}`, conditions: [{ type: 'Ready', status: 'True' }] },
  };
}

function statefulSet(hash: string): V1StatefulSet & KubernetesObject {
  return {
    apiVersion: 'apps/v1', kind: 'StatefulSet',
    metadata: { name: 'c1', namespace: 'ns', generation: 1, labels: { [LABEL_NAME]: 'celer', [LABEL_CLUSTER]: 'c1' } },
    spec: {
      selector: {}, serviceName: 'c1-nodes',
      template: { metadata: { annotations: { [ANNOTATION_TEMPLATE_HASH]: hash } } },
      volumeClaimTemplates: [{ metadata: { name: 'data' }, spec: { resources: { requests: { storage: '10Gi' } } } }],
    },
  };
}

function setNode(w: World, p: PodSketch): void {
  w.node.set(`http://c1-${p.ordinal}`, nodeStatus(p));
}

test('a status write neither triggers another pass nor re-applies, and a long gate wait writes one Event and one status', async () => {
  const w = world();
  const spec = { ...twoNodeSpec, version: '1.1.0' };
  const c = clusterFixture(spec, { status: { phase: 'Running' } });
  const oldHash = desiredHash(clusterFixture(twoNodeSpec));
  const newHash = desiredHash(c);
  w.clusters.put({ ...c, metadata: { ...c.metadata } } as CelerCluster & KubernetesObject);
  w.statefulSets.put(statefulSet(newHash));
  w.pods.put(pod(0, oldHash, 'leader'));
  w.pods.put(pod(1, newHash, 'follower'));
  // Writes flow: the follower is always tens of thousands of records behind, a different figure each pass.
  setNode(w, { ordinal: 0, hash: oldHash, role: 'leader', epoch: 3, peerLag: 50_000 });
  setNode(w, { ordinal: 1, hash: newHash, role: 'follower', epoch: 3, version: '1.1.0' });
  await w.controller.start();
  await settle();
  const stsApplies = (): number => w.applies.filter((a) => a === 'StatefulSet/c1').length;
  // Start-up: each cache's first list enqueues the cluster; at most a second pass follows the first.
  const startPasses = stsApplies();
  assert.ok(startPasses >= 1 && startPasses <= 2, `start-up passes: ${startPasses}`);
  assert.equal(w.statusWrites.length, 1, 'the second start-up pass found the status written');
  // That status write came back as a MODIFIED event of the CelerCluster; it must not cause a pass.
  await settle();
  assert.equal(stsApplies(), startPasses, 'the status write did not trigger another pass');

  // Ten more passes at the progress poll while the gate holds with a moving lag.
  for (let i = 1; i <= 10; i++) {
    setNode(w, { ordinal: 0, hash: oldHash, role: 'leader', epoch: 3, peerLag: 50_000 - i * 1_000 });
    await advance(w, 2_000, 500);
  }
  const passes = stsApplies() - startPasses;
  assert.ok(passes >= 9 && passes <= 11, `one pass per progress poll, none per status write (${passes} passes in 20 s)`);
  assert.equal(w.events.filter((e) => e.reason === 'FollowerCaughtUp').length, 1, 'one Event for the whole wait');
  assert.equal(w.statusWrites.length, 1, 'only the lag moved: no status rewrite within the resync period');
  assert.equal(w.statusWrites[0]?.reason, 'FollowerCaughtUp');

  // Past the resync period the status is written again, with the current lag.
  await advance(w, RESYNC_MS, 2_000);
  assert.ok(w.statusWrites.length >= 2);
  assert.notDeepEqual(w.statusWrites.at(-1)?.nodes, w.statusWrites[0]?.nodes);
  w.controller.stop();
});

test('a failover reaches the role labels within a role poll, not at the next resync', async () => {
  const w = world();
  const c = clusterFixture(twoNodeSpec, { status: { phase: 'Running', leader: 'c1-0', epoch: 3 } });
  const h = desiredHash(c);
  w.clusters.put(c as CelerCluster & KubernetesObject);
  w.statefulSets.put(statefulSet(h));
  w.pods.put(pod(0, h, 'leader'));
  w.pods.put(pod(1, h, 'follower'));
  setNode(w, { ordinal: 0, hash: h, role: 'leader', epoch: 3, peerLag: 0 });
  setNode(w, { ordinal: 1, hash: h, role: 'follower', epoch: 3 });
  await w.controller.start();
  await settle();
  assert.deepEqual(w.labels, [], 'steady: nothing to relabel');
  await advance(w, ROLE_POLL_INTERVAL_MS);
  const passes = w.applies.length;

  // The leader crashes; the follower takes the lease at epoch 4.
  w.node.set('http://c1-0', new Error('connect ECONNREFUSED'));
  setNode(w, { ordinal: 1, hash: h, role: 'leader', epoch: 4, peerLag: null });
  await advance(w, 2 * ROLE_POLL_INTERVAL_MS);
  assert.deepEqual(w.labels.sort(), ['c1-0=unreachable', 'c1-1=leader']);
  assert.ok(w.applies.length > passes, 'a pass ran');

  // Polls that see no change cause no pass.
  const after = w.applies.length;
  await advance(w, 10 * ROLE_POLL_INTERVAL_MS);
  const sts = w.applies.slice(after).filter((a) => a === 'StatefulSet/c1').length;
  assert.ok(sts <= 3, `unchanged roles trigger no passes beyond the progress polls (${sts})`);
  assert.ok(RESYNC_MS > 10 * ROLE_POLL_INTERVAL_MS);
  w.controller.stop();
});

test('only changes reconcile reads enqueue a pass: not a status write, not a pod status detail', async () => {
  const w = world();
  const c = clusterFixture(twoNodeSpec, { status: { phase: 'Running', leader: 'c1-0', epoch: 3 } });
  const h = desiredHash(c);
  w.clusters.put(c as CelerCluster & KubernetesObject);
  w.statefulSets.put(statefulSet(h));
  w.pods.put(pod(0, h, 'leader'));
  w.pods.put(pod(1, h, 'follower'));
  setNode(w, { ordinal: 0, hash: h, role: 'leader', epoch: 3, peerLag: 0 });
  setNode(w, { ordinal: 1, hash: h, role: 'follower', epoch: 3 });
  await w.controller.start();
  await settle();
  const passes = (): number => w.applies.filter((a) => a === 'StatefulSet/c1').length;
  const start = passes();

  // A status write (ours or anyone's): same generation, new resourceVersion.
  const cur = w.clusters.items.get('c1')!;
  w.clusters.put({ ...cur, status: { ...cur.status, nodes: [{ name: 'c1-1', role: 'follower', version: '1.0.0', lagRecords: 17, ready: true }] } });
  // A pod status detail reconcile does not read.
  const p1 = w.pods.items.get('c1-1')!;
  w.pods.put({ ...p1, status: { ...p1.status, containerStatuses: [{ name: 'celer', image: 'x', imageID: 'y', ready: true, restartCount: 1 }] } });
  await settle();
  assert.equal(passes(), start, 'no pass for a status-only update');

  // A spec change (generation) and a readiness flip each do enqueue.
  w.clusters.put({ ...cur, metadata: { ...cur.metadata, generation: 2 } });
  await settle();
  assert.equal(passes(), start + 1, 'a new generation is reconciled');
  w.pods.put({ ...p1, status: { ...p1.status, conditions: [{ type: 'Ready', status: 'False' }] } });
  await settle();
  assert.equal(passes(), start + 2, 'a readiness change is reconciled');
  w.controller.stop();
});

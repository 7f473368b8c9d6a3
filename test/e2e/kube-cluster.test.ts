// Two-node CelerClusters on a real Kubernetes 1.20 control plane: the chart's CRD and RBAC, the
// operator as a local process with the chart's ServiceAccount, the test agent running each pod as
// a real `celer serve` cluster member in its own network namespace (non-loopback pod IPs, so the
// real endpoints controller fills the client Service's Endpoints; /etc/hosts stands in for the
// headless Service's DNS names), and a real Ceph RGW holding the lease.
//
// Under a running writer (exactly-once and exact-version writers through connect([pod IPs])):
// failover by deleting the leader pod, a supervised rolling upgrade, lease retuning through the
// safe intermediate step, and deletion with the S3 finalizer. Timings are printed; bounds are loose.
import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import path from 'node:path';
import { S3Client, PutObjectCommand, ListObjectsV2Command } from '@aws-sdk/client-s3';
import { connect, type AggregateKey, type Batch } from '@celer/client';
import { TestAgent } from '../agent/agent.ts';
import { celerEntrypoint, defaultExecutables } from '../agent/celer.ts';
import type { KubeObject } from '../agent/kube.ts';
import type { Pod } from '../agent/types.ts';
import type { NodeStatus } from '../../dataplane/server/status.ts';
import { clusterPath, condition, getCluster, helmInstall, serviceAccountKubeconfig, startLocalOperator, type CelerClusterObject, type LocalOperator } from './kube-celer.ts';
import { createNamespace, helmPath, startKube, waitFor, type KubeEnv } from './kube-env.ts';
import { startS3, type S3Server } from './lib/cluster.ts';
import { Load, batchesText, keyText, readBatches } from './lib/cluster-load.ts';
import { now } from './lib/wait.ts';

const RELEASE = 'celer-operator';
const CLUSTER = 'orders';
const PREFIX = 'kube-e2e/orders/';
const PORT_CLIENT = 7400;
const PORT_HTTP = 7401;

let env: KubeEnv;
let agent: TestAgent;
let operator: LocalOperator;
let s3: S3Server;
let ns: string;

interface ClusterStatusNode { name: string; role: string; version: string; lagRecords: number | null; leaseRemainingMs?: number | null; ready: boolean }
type Cluster2 = CelerClusterObject & { status?: CelerClusterObject['status'] & { leader?: string | null; epoch?: number; nodes?: ClusterStatusNode[]; upgrade?: { targetRevision: string } | null } };

function diagnostics(): string {
  return [
    '--- operator', operator?.process.output(40) ?? '',
    '--- agent', ...(agent?.events.slice(-30) ?? []),
    agent?.podLogs(ns, `${CLUSTER}-0`, 2500) ?? '', agent?.podLogs(ns, `${CLUSTER}-1`, 2500) ?? '',
  ].join('\n');
}

const withDiagnostics = <T>(p: Promise<T>): Promise<T> => p.catch((err: Error) => {
  throw new Error(`${err.message}\n${diagnostics()}`);
});

async function pods(): Promise<Pod[]> {
  const l = await env.client.list<Pod>(`/api/v1/namespaces/${ns}/pods`, { labelSelector: `celer.io/cluster=${CLUSTER}` });
  return l.items.sort((a, b) => a.metadata.name.localeCompare(b.metadata.name));
}

const isReady = (p: Pod): boolean => p.status?.conditions?.some((c) => c.type === 'Ready' && c.status === 'True') === true;

async function nodeStatus(ip: string): Promise<NodeStatus | null> {
  try {
    const r = await fetch(`http://${ip}:${PORT_HTTP}/status`, { signal: AbortSignal.timeout(1000) });
    return r.ok ? ((await r.json()) as NodeStatus) : null;
  } catch {
    return null;
  }
}

/** The pod IPs (stable per pod name in the agent's netns network). */
async function podIPs(): Promise<Map<string, string>> {
  const ps = await waitFor('both pods with an IP', async () => {
    const l = await pods();
    return l.length === 2 && l.every((p) => (p.status?.podIP ?? '') !== '') ? l : undefined;
  }, 120_000);
  return new Map(ps.map((p) => [p.metadata.name, p.status!.podIP!]));
}

/** One ready leader and one follower at its epoch, as the nodes themselves report. */
async function waitForRoles(ips: Map<string, string>, timeoutMs = 120_000, epochAbove = 0): Promise<{ leader: string; follower: string; epoch: number }> {
  return withDiagnostics(waitFor('one leader and one follower at its epoch', async () => {
    const st = await Promise.all([...ips].map(async ([pod, ip]) => [pod, await nodeStatus(ip)] as const));
    const leader = st.find(([, s]) => s?.role === 'leader' && s.ready);
    const follower = st.find(([, s]) => s?.role === 'follower' && s.ready);
    if (leader === undefined || follower === undefined || leader[1]!.epoch <= epochAbove || follower[1]!.epoch !== leader[1]!.epoch) return undefined;
    return { leader: leader[0], follower: follower[0], epoch: leader[1]!.epoch };
  }, timeoutMs, 100));
}

async function clientEndpoints(): Promise<string[]> {
  const ep = await env.client.getOrUndefined<KubeObject & { subsets?: { addresses?: { ip: string }[] }[] }>(`/api/v1/namespaces/${ns}/endpoints/${CLUSTER}`);
  return (ep?.subsets ?? []).flatMap((s) => (s.addresses ?? []).map((a) => a.ip)).sort();
}

async function waitForClusterReady(generation: number, timeoutMs = 240_000): Promise<Cluster2> {
  return withDiagnostics(waitFor(`CelerCluster ${CLUSTER} Running and Ready at generation ${generation}`, async () => {
    const c = (await getCluster(env, ns, CLUSTER)) as Cluster2;
    const ready = condition(c, 'Ready');
    const progressing = condition(c, 'Progressing');
    return c.metadata.generation === generation && c.status?.phase === 'Running' && ready?.status === 'True' && ready.observedGeneration === generation
      && progressing?.status === 'False' ? c : undefined;
  }, timeoutMs, 250));
}

/** A writer through both pods' client addresses, as a client outside the cluster would use. */
async function startLoad(org: number, ips: Map<string, string>): Promise<Load> {
  const load = new Load({ writers: 8, exactlyOnce: 4, org, addresses: [...ips.values()].map((ip) => `${ip}:${PORT_CLIENT}`), thinkMs: 5 });
  await load.start({
    addresses: load.options.addresses!,
    waitFor: <T>(what: string, fn: () => T | Promise<T>, timeoutMs?: number) => withDiagnostics(waitFor(what, async () => (await fn()) || undefined, timeoutMs, 20)) as Promise<NonNullable<T>>,
  });
  return load;
}

/** Stops the load, reads every aggregate from each node, requires them equal and the load's check clean. */
async function stopAndCheck(load: Load, ips: Map<string, string>): Promise<void> {
  await load.stop();
  const per: Map<string, Batch[]>[] = [];
  for (const ip of ips.values()) {
    const client = await connect([`${ip}:${PORT_CLIENT}`]);
    try {
      const m = new Map<string, Batch[]>();
      for (const key of load.keys()) m.set(keyText(key), await readBatches(client, key));
      per.push(m);
    } finally {
      await client.close();
    }
  }
  for (const key of load.keys() as AggregateKey[]) {
    assert.equal(batchesText(per[0]!.get(keyText(key))!), batchesText(per[1]!.get(keyText(key))!), `both nodes hold the same batches of ${keyText(key)}`);
  }
  assert.deepEqual(load.check(per[0]!), [], 'every acknowledged write is there once, at its version');
  assert.ok(load.acks > 0);
}

/**
 * Samples both nodes' /status every 100 ms. A violation is the same epoch led twice, or a node
 * claiming leadership (with lease time left) after the other was already seen leading at a
 * higher epoch — both able to accept writes.
 */
function leaderSampler(ips: Map<string, string>): { stop(): Promise<string[]>; timings: Map<string, Set<string>> } {
  const problems: string[] = [];
  const timings = new Map<string, Set<string>>();
  let running = true;
  const loop = (async () => {
    while (running) {
      const sample = await Promise.all([...ips].map(async ([pod, ip]) => {
        const start = now();
        const s = await nodeStatus(ip);
        return { pod, s, start, end: now() };
      }));
      for (const x of sample) {
        if (x.s?.leaseTiming) {
          const t = x.s.leaseTiming;
          const set = timings.get(x.pod) ?? new Set<string>();
          set.add(`${t.leaseTtlMs}/${t.renewDeadlineMs}/${t.renewIntervalMs}/${t.maxClockDriftMs}`);
          timings.set(x.pod, set);
        }
      }
      const leaders = sample.filter((x) => x.s?.role === 'leader' && (x.s.leaseRemainingMs ?? 0) > 0);
      if (leaders.length === 2) {
        const [a, b] = leaders.sort((p, q) => p.s!.epoch - q.s!.epoch) as [typeof leaders[0], typeof leaders[0]];
        if (a.s!.epoch === b.s!.epoch) problems.push(`both nodes lead epoch ${a.s!.epoch}`);
        else if (a.start > b.end) problems.push(`${a.pod} claimed epoch ${a.s!.epoch} after ${b.pod} was seen leading epoch ${b.s!.epoch}`);
      }
      await new Promise((r) => setTimeout(r, 100));
    }
  })();
  return { timings, async stop() { running = false; await loop; return problems; } };
}

function events0(l: { items: (KubeObject & { reason?: string; message?: string; involvedObject?: { name?: string } })[] }): string {
  return l.items.filter((e) => e.involvedObject?.name === CLUSTER).map((e) => `${e.reason ?? ''}: ${e.message ?? ''}`).join('\n');
}

describe('two-node CelerClusters on a real 1.20 control plane', () => {
  let ips: Map<string, string>;

  before(async () => {
    env = await startKube('cluster');
    const helm = await helmPath();
    const opNs = await createNamespace(env, 'celer-system');
    ns = await createNamespace(env, 'apps');
    await helmInstall(env, helm, RELEASE, opNs, ['--set', 'replicaCount=0']);
    await env.kubectlOk(['wait', '--for=condition=Established', '--timeout=60s', 'crd/celerclusters.celer.io']);
    const kubeconfig = await serviceAccountKubeconfig(env, opNs, RELEASE, path.join(env.runDir, `operator-${opNs}.kubeconfig`));
    operator = await startLocalOperator(kubeconfig, path.join(env.runDir, 'operator.log'), ['--leader-elect', '--lease-namespace', opNs, '--identity', 'e2e-operator']);
    agent = await TestAgent.start({
      kubeconfig: env.kubeconfig,
      workDir: path.join(env.runDir, 'agent'),
      namespaces: [ns],
      executables: defaultExecutables(),
      entrypoint: celerEntrypoint,
      podNetwork: 'netns',
    });
    s3 = await startS3({ extraBind: agent.network!.hostAddress });
    const port = new URL(s3.env.AWS_ENDPOINT_URL!).port;
    await env.client.create(`/api/v1/namespaces/${ns}/secrets`, {
      apiVersion: 'v1', kind: 'Secret', metadata: { name: 's3-credentials', namespace: ns }, type: 'Opaque',
      stringData: { AWS_ACCESS_KEY_ID: s3.env.AWS_ACCESS_KEY_ID!, AWS_SECRET_ACCESS_KEY: s3.env.AWS_SECRET_ACCESS_KEY! },
    });
    await env.client.create(clusterPath(ns), {
      apiVersion: 'celer.io/v1alpha1', kind: 'CelerCluster', metadata: { name: CLUSTER, namespace: ns },
      spec: {
        version: '0.1.0', standalone: false, replicas: 2, shards: 2, storage: { size: '1Gi' }, deletionPolicy: 'Delete',
        s3: { bucket: s3.env.CELER_S3_BUCKET, prefix: PREFIX, endpoint: `http://${agent.network!.hostAddress}:${port}`, region: s3.env.AWS_REGION, credentialsSecret: 's3-credentials' },
      },
    });
  });

  after(async () => {
    await operator?.process.stop();
    await agent?.stop();
    await s3?.stop();
    await env?.stop();
  });

  test('a two-node CelerCluster becomes Running with one leader and one follower, in kubectl and in status', async () => {
    ips = await withDiagnostics(podIPs());
    for (const ip of ips.values()) assert.doesNotMatch(ip, /^127\./, 'pod IPs are not loopback');
    const roles = await waitForRoles(ips);
    const c = await waitForClusterReady(1);
    assert.equal(c.status?.leader, roles.leader);
    assert.equal(c.status?.epoch, roles.epoch);
    assert.deepEqual((c.status?.nodes ?? []).map((n) => [n.name, n.role, n.ready]).sort(), [[roles.leader, 'leader', true], [roles.follower, 'follower', true]].sort());
    for (const cond of c.status?.conditions ?? []) assert.equal(cond.observedGeneration, 1, `condition ${cond.type}`);
    assert.equal(condition(c, 'LeaseHealthy')?.status, 'True');
    const ps = await pods();
    assert.notEqual(ps[0]?.spec.nodeName, ps[1]?.spec.nodeName, 'required anti-affinity on kubernetes.io/hostname');
    const inStatus = (c.status?.nodes as ClusterStatusNode[] | undefined)?.find((n) => n.name === roles.leader);
    assert.equal(inStatus?.lagRecords, 0, 'status carries the lag');
    assert.ok(typeof inStatus?.leaseRemainingMs === 'number', `status carries the leader's lease remaining (${JSON.stringify(inStatus)})`);
    assert.ok(c.status?.nodes?.every((n) => n.version !== '' && n.version !== 'unknown'), 'status carries each node version');
    const leaderStatus = await nodeStatus(ips.get(roles.leader)!);
    assert.ok((leaderStatus?.leaseRemainingMs ?? 0) > 0, 'the leader reports lease time left');
    await withDiagnostics(waitFor('the client Service selecting the leader only', async () => {
      const ep = await clientEndpoints();
      return ep.length === 1 && ep[0] === ips.get(roles.leader) ? ep : undefined;
    }, 30_000, 100));
    console.log(`# kubectl get celerclusters\n${await env.kubectlOk(['get', 'celerclusters', '-n', ns])}`);
    console.log(`# kubectl get pods -L celer.io/role\n${await env.kubectlOk(['get', 'pods', '-n', ns, '-L', 'celer.io/role', '-o', 'wide'])}`);
  });

  test('failover: deleting the leader pod under a writer; a node leads at a higher epoch, the client Service follows it; nothing lost or doubled', async () => {
    const before = await waitForRoles(ips);
    const load = await startLoad(11, ips);
    try {
      await load.waitAcks(200);
      const t0 = now();
      await env.client.delete(`/api/v1/namespaces/${ns}/pods/${before.leader}`);
      // Usually the follower takes over once the lease TTL has passed; the StatefulSet recreates the
      // deleted pod at once, and when that node is back first it may win the election itself (it
      // holds every acknowledged write: it was the leader). Either way: a higher epoch, one leader.
      const newLeader = await withDiagnostics(waitFor('a node to lead at a higher epoch', async () => {
        for (const [pod, ip] of ips) {
          const st = await nodeStatus(ip);
          if (st?.role === 'leader' && st.epoch > before.epoch) return pod;
        }
        return undefined;
      }, 30_000, 20));
      const newLeaderIP = ips.get(newLeader)!;
      const tLeader = now();
      await withDiagnostics(waitFor('the client Service to point at the new leader', async () => {
        const ep = await clientEndpoints();
        return ep.length === 1 && ep[0] === newLeaderIP;
      }, 30_000, 20));
      const tService = now();
      await load.waitAcks(200);
      const window = load.longestGap(t0, now());
      console.log(`# failover: ${newLeader === before.follower ? 'the follower' : 'the recreated pod'} (${newLeader}) leads after ${(tLeader - t0).toFixed(0)} ms; client Service followed ${(tService - tLeader).toFixed(0)} ms later; write-unavailability window ${window.toFixed(0)} ms`);
      assert.ok(tService - tLeader < 5_000, `the client Service followed within 5 s of the new leader (took ${(tService - tLeader).toFixed(0)} ms)`);
      assert.ok(window < 10_000, `writes resumed within 10 s (${window.toFixed(0)} ms)`);
      await waitForRoles(ips, 120_000, before.epoch);
      await waitForClusterReady(1);
      console.log(`# after the failover: kubectl get celerclusters; kubectl get pods -L celer.io/role\n${await env.kubectlOk(['get', 'celerclusters', '-n', ns])}\n${await env.kubectlOk(['get', 'pods', '-n', ns, '-L', 'celer.io/role'])}`);
    } finally {
      await stopAndCheck(load, ips);
    }
  });

  test('rolling upgrade, supervised: follower first, the approval gate, a switchover, the former leader last; the writer loses nothing', async () => {
    const start = await waitForRoles(ips);
    const uids = new Map((await pods()).map((p) => [p.metadata.name, p.metadata.uid]));
    const load = await startLoad(12, ips);
    try {
      await load.waitAcks(100);
      const t0 = now();
      const patched = await env.client.patch<Cluster2>(clusterPath(ns, CLUSTER), { spec: { version: '0.1.1', upgradePolicy: 'supervised' } });
      const generation = patched.metadata.generation ?? 0;
      // The follower is restarted first, then the switchover waits for approval.
      const waiting = await withDiagnostics(waitFor('the UpgradeApproved gate, with the follower already restarted', async () => {
        const c = (await getCluster(env, ns, CLUSTER)) as Cluster2;
        if (condition(c, 'Progressing')?.reason !== 'UpgradeApproved') return undefined;
        const ps = await pods();
        const f = ps.find((p) => p.metadata.name === start.follower);
        return f !== undefined && f.metadata.uid !== uids.get(start.follower) && isReady(f) ? c : undefined;
      }, 180_000, 250));
      console.log(`# waiting for approval: kubectl get celerclusters; conditions\n${await env.kubectlOk(['get', 'celerclusters', '-n', ns])}\n${(waiting.status?.conditions ?? []).map((x) => `${x.type}=${x.status} ${x.reason}: ${x.message}`).join('\n')}`);
      const leaderPod = (await pods()).find((p) => p.metadata.name === start.leader);
      assert.equal(leaderPod?.metadata.uid, uids.get(start.leader), 'the leader is not restarted before approval');
      assert.equal((await nodeStatus(ips.get(start.leader)!))?.role, 'leader', 'and still leads');
      const revision = waiting.status?.upgrade?.targetRevision;
      assert.ok(revision !== undefined && revision.startsWith('0.1.1-'), `status.upgrade.targetRevision ${revision}`);
      await env.client.patch(clusterPath(ns, CLUSTER), { metadata: { annotations: { 'celer.io/approve-upgrade': revision } } });
      await withDiagnostics(waitFor('both pods replaced and Ready on 0.1.1', async () => {
        const ps = await pods();
        return ps.length === 2 && ps.every((p) => isReady(p) && p.metadata.uid !== uids.get(p.metadata.name) && p.spec.containers[0]?.image === 'celer:0.1.1');
      }, 240_000, 250));
      const c = await waitForClusterReady(generation);
      const roles = await waitForRoles(ips);
      assert.equal(roles.leader, start.follower, 'the former follower leads after the switchover');
      assert.ok(roles.epoch > start.epoch);
      await load.waitAcks(100);
      const stall = load.longestGap(t0, now());
      const evs = events0(await env.client.list<KubeObject & { reason?: string; message?: string; involvedObject?: { name?: string } }>(`/api/v1/namespaces/${ns}/events`));
      console.log(`# upgrade events (reason: message)\n${evs}`);
      console.log(`# upgrade: longest write stall ${stall.toFixed(0)} ms (epoch ${start.epoch} → ${roles.epoch})`);
      assert.ok(stall < 10_000, `no write stall of 10 s or more (${stall.toFixed(0)} ms)`);
      // Every gate is visible: as an Event reason and as a gate label of the deferral metric.
      const events = await env.client.list<KubeObject & { reason?: string; involvedObject?: { name?: string } }>(`/api/v1/namespaces/${ns}/events`);
      const reasons = new Set(events.items.filter((e) => e.involvedObject?.name === CLUSTER).map((e) => e.reason));
      for (const r of ['UpgradeApproved', 'SteppingDownLeader']) assert.ok(reasons.has(r), `an Event with reason ${r} (saw ${[...reasons].join(', ')})`);
      const metrics = await (await fetch(`${operator.metricsUrl}/metrics`)).text();
      assert.match(metrics, /celer_operator_gate_deferrals_total\{[^}]*gate="UpgradeApproved"[^}]*\} [1-9]/);
      // (Every image tag runs the same bin/celer here, so the nodes' reported version does not change.)
      assert.equal(c.status?.nodes?.length, 2);
    } finally {
      await stopAndCheck(load, ips);
    }
  });

  test('lease retuning goes through the safe intermediate step, seen on the nodes, never with two writers', async () => {
    await waitForRoles(ips);
    const sampler = leaderSampler(ips);
    const load = await startLoad(13, ips);
    try {
      await load.waitAcks(100);
      // From 1500/1000/250/200 to 1200/800/200/200: not safe together (1000 + 200 ≥ 1200), so the
      // operator rolls 1500/800/200/200 first (lease-timing.ts intermediateLease).
      const target = { leaseTtlMs: 1200, renewDeadlineMs: 800, renewIntervalMs: 200, maxClockDriftMs: 200 };
      const patched = await env.client.patch<Cluster2>(clusterPath(ns, CLUSTER), { spec: { lease: target, upgradePolicy: 'automatic' } });
      await withDiagnostics(waitFor('both nodes on the target timings', async () => {
        const st = await Promise.all([...ips.values()].map(nodeStatus));
        return st.every((s) => s?.leaseTiming?.leaseTtlMs === 1200 && s.leaseTiming.renewDeadlineMs === 800);
      }, 300_000, 250));
      await waitForClusterReady(patched.metadata.generation ?? 0);
      await waitForRoles(ips);
      await load.waitAcks(100);
    } finally {
      const problems = await sampler.stop();
      await stopAndCheck(load, ips);
      assert.deepEqual(problems, [], 'never two nodes able to write');
    }
    const seen = [...sampler.timings].map(([pod, set]) => `${pod}: ${[...set].join(' → ')}`).join('; ');
    console.log(`# lease retuning, timings each node ran (ttl/deadline/interval/drift): ${seen}`);
    for (const [pod, set] of sampler.timings) assert.ok(set.has('1500/800/200/200'), `${pod} ran the intermediate step (${[...set].join(', ')})`);
  });

  test('drain: kubectl drain of the leader\'s node switches over before the leader is evicted; the writer loses nothing', async () => {
    const start = await waitForRoles(ips);
    const node = (await pods()).find((p) => p.metadata.name === start.leader)?.spec.nodeName;
    assert.ok(node !== undefined);
    const load = await startLoad(14, ips);
    try {
      await load.waitAcks(100);
      const t0 = now();
      // drain cordons, then evicts: the leader PDB refuses the leader while it leads.
      const first = await env.kubectl(['drain', node, '--ignore-daemonsets', '--timeout=20s']);
      assert.notEqual(first.code, 0, 'the first drain stops at the leader');
      assert.match(first.stderr, /PodDisruptionBudget/);
      const leaderUid = (await pods()).find((p) => p.metadata.name === start.leader)?.metadata.uid;
      await withDiagnostics(waitFor('the operator to switch over after the cordon', async () => (await nodeStatus(ips.get(start.follower)!))?.role === 'leader', 30_000, 50));
      const tSwitch = now();
      assert.equal((await pods()).find((p) => p.metadata.name === start.leader)?.metadata.uid, leaderUid, 'the leader pod was not evicted while it led');
      // What the README tells a user: once `kubectl get celercluster` shows the new leader (the
      // operator relabels both pods in the same pass), run the drain again.
      await withDiagnostics(waitFor('the CelerCluster to show the new leader', async () => ((await getCluster(env, ns, CLUSTER)) as Cluster2).status?.leader === start.follower, 30_000, 50));
      const tRelabel = now();
      const second = await env.kubectl(['drain', node, '--ignore-daemonsets', '--timeout=60s']);
      assert.equal(second.code, 0, `the second drain evicts the former leader: ${second.stderr}`);
      const tEvicted = now();
      await env.kubectlOk(['uncordon', node]);
      await load.waitAcks(100);
      const stall = load.longestGap(t0, now());
      console.log(`# drain: switchover ${(tSwitch - t0).toFixed(0)} ms after the first drain began, status.leader moved ${(tRelabel - tSwitch).toFixed(0)} ms later, former leader evicted at ${(tEvicted - t0).toFixed(0)} ms; longest write stall ${stall.toFixed(0)} ms`);
      assert.ok(stall < 10_000, `no write stall of 10 s or more (${stall.toFixed(0)} ms)`);
      await waitForRoles(ips, 120_000, start.epoch);
      await waitForClusterReady((await getCluster(env, ns, CLUSTER)).metadata.generation ?? 0);
    } finally {
      await env.kubectl(['uncordon', node]);
      await stopAndCheck(load, ips);
    }
  });

  test('deleting the CelerCluster removes its lease and fallback objects from S3, and nothing else', async () => {
    const client = new S3Client({
      endpoint: s3.env.AWS_ENDPOINT_URL, region: s3.env.AWS_REGION, forcePathStyle: true,
      credentials: { accessKeyId: s3.env.AWS_ACCESS_KEY_ID!, secretAccessKey: s3.env.AWS_SECRET_ACCESS_KEY! },
    });
    const bucket = s3.env.CELER_S3_BUCKET!;
    const keep = [`${PREFIX}user/keep.txt`, `${PREFIX}clusterX/lease.json`, `${PREFIX.slice(0, -1)}x/cluster/lease.json`, 'other/cluster/fallback/a.bin'];
    // A fallback object the way the leader writes one while the follower is away (fallback.ts key form).
    const fallback = `${PREFIX}cluster/fallback/shard-000/${'1'.padStart(20, '0')}-${'2'.padStart(20, '0')}-e${'1'.padStart(12, '0')}-${CLUSTER}-0.bin`;
    for (const key of [...keep, fallback]) await client.send(new PutObjectCommand({ Bucket: bucket, Key: key, Body: 'x' }));
    const list = async (): Promise<string[]> => ((await client.send(new ListObjectsV2Command({ Bucket: bucket }))).Contents ?? []).map((o) => o.Key!).sort();
    assert.ok((await list()).includes(`${PREFIX}cluster/lease.json`), 'the lease exists before the deletion');
    await env.client.delete(clusterPath(ns, CLUSTER));
    await withDiagnostics(waitFor('the CelerCluster gone (finalizer done)', async () => (await env.client.getOrUndefined(clusterPath(ns, CLUSTER))) === undefined, 120_000, 250));
    assert.deepEqual(await list(), [...keep].sort(), 'only objects the cluster does not own remain');
    client.destroy();
  });

  test('a CelerCluster recreated on the old volumes is refused as ClusterIdentityMismatch, not joined to the old data', async () => {
    await withDiagnostics(waitFor('the old pods gone', async () => (await pods()).length === 0, 120_000, 250));
    const port = new URL(s3.env.AWS_ENDPOINT_URL!).port;
    await env.client.create(clusterPath(ns), {
      apiVersion: 'celer.io/v1alpha1', kind: 'CelerCluster', metadata: { name: CLUSTER, namespace: ns },
      spec: {
        version: '0.1.0', standalone: false, replicas: 2, shards: 2, storage: { size: '1Gi' },
        s3: { bucket: s3.env.CELER_S3_BUCKET, prefix: 'kube-e2e/orders-recreated/', endpoint: `http://${agent.network!.hostAddress}:${port}`, region: s3.env.AWS_REGION, credentialsSecret: 's3-credentials' },
      },
    });
    const c = await withDiagnostics(waitFor('Degraded ClusterIdentityMismatch', async () => {
      const x = await getCluster(env, ns, CLUSTER);
      return condition(x, 'Degraded')?.reason === 'ClusterIdentityMismatch' ? x : undefined;
    }, 120_000, 250));
    const message = condition(c, 'Degraded')?.message ?? '';
    console.log(`# recreated on old volumes: Degraded ClusterIdentityMismatch: ${message}`);
    assert.match(message, /error 9300: refusing to start: the data directory \S+ belongs to cluster [0-9a-f-]{36}, but this node was started with --cluster-id [0-9a-f-]{36}/);
    assert.match(message, /delete the old PVC/);
    assert.equal(condition(c, 'Ready')?.status, 'False');
    await env.client.delete(clusterPath(ns, CLUSTER));
  });
});

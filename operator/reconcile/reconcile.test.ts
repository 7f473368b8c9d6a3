import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { V1ConfigMap, V1Service, V1StatefulSet } from '@kubernetes/client-node';
import type { CelerClusterStatus } from '../api/types.ts';
import { DEFAULT_LEASE } from '../api/defaults.ts';
import { ANNOTATION_APPROVE_UPGRADE, ANNOTATION_PAUSED, FINALIZER } from '../api/constants.ts';
import { PROGRESS_POLL_MS, reconcile, RESYNC_MS, type ReconcileResult } from './reconcile.ts';
import { FOLLOWER_LAG_BOUND_RECORDS } from './rollout.ts';
import { cluster, desiredHash, NOW_MS, observe, standaloneSpec, twoNodeSpec, type PodSketch } from './test-fixtures.ts';

const kinds = (r: ReconcileResult): string[] => r.apply.map((o) => `${o.apiVersion}/${o.kind}`);
const condition = (r: ReconcileResult, type: string) => r.status.conditions?.find((c) => c.type === type);
const sts = (r: ReconcileResult): V1StatefulSet => r.apply.find((o) => o.kind === 'StatefulSet') as V1StatefulSet;

test('a fresh standalone cluster gets every owned object and no actions', () => {
  const r = reconcile(observe(cluster(standaloneSpec), [], null));
  assert.deepEqual(kinds(r), [
    'v1/ServiceAccount', 'rbac.authorization.k8s.io/v1/Role', 'rbac.authorization.k8s.io/v1/RoleBinding', 'v1/ConfigMap',
    'v1/Service', 'v1/Service', 'apps/v1/StatefulSet', 'policy/v1beta1/PodDisruptionBudget',
  ]);
  assert.deepEqual(r.actions, []);
  assert.equal(r.status.phase, 'Creating');
  assert.equal(condition(r, 'Ready')?.status, 'False');
  assert.equal(condition(r, 'Degraded')?.status, 'False');
  assert.equal(condition(r, 'LeaseHealthy')?.reason, 'Standalone');
  assert.equal(r.requeueAfterMs, PROGRESS_POLL_MS);
  for (const c of r.status.conditions ?? []) assert.equal(c.observedGeneration, 1);
  for (const o of r.apply) {
    assert.equal(o.metadata?.ownerReferences?.[0]?.uid, 'uid-1', `${o.kind} has an owner reference`);
    assert.equal(o.metadata?.ownerReferences?.[0]?.controller, true);
  }
});

test('the StatefulSet leaves restarts to the operator, keeps pods on separate hosts and serves the agreed command', () => {
  const s = sts(reconcile(observe(cluster(standaloneSpec), [], null)));
  assert.equal(s.spec?.updateStrategy?.type, 'OnDelete');
  assert.equal(s.spec?.volumeClaimTemplates?.[0]?.spec?.resources?.requests?.storage, '10Gi');
  const pod = s.spec?.template.spec;
  const anti = pod?.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? [];
  assert.ok(anti.some((t) => t.topologyKey === 'kubernetes.io/hostname'));
  const c = pod?.containers[0];
  assert.equal(c?.image, 'celer:1.0.0');
  assert.deepEqual(c?.command, ['celer']);
  assert.deepEqual(c?.args, ['serve', '--standalone', '--data-dir', '/var/lib/celer', '--listen', '0.0.0.0:7400', '--http', '0.0.0.0:7401', '--shards', '4', '--routing', 'id']);
  assert.equal(c?.readinessProbe?.httpGet?.path, '/readyz');
  assert.equal(c?.livenessProbe?.httpGet?.path, '/livez');
  for (const p of c?.ports ?? []) assert.equal(p.protocol, 'TCP');
  assert.equal(pod?.securityContext?.fsGroup, 65532, 'the non-root image can write its data volume');
});

test('the user affinity is kept next to the required host anti-affinity', () => {
  const spec = { ...standaloneSpec, placement: { affinity: { nodeAffinity: { requiredDuringSchedulingIgnoredDuringExecution: { nodeSelectorTerms: [] } } } } };
  const pod = sts(reconcile(observe(cluster(spec), [], null))).spec?.template.spec;
  assert.ok(pod?.affinity?.nodeAffinity !== undefined);
  assert.equal(pod?.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.length, 1);
});

test('services declare TCP on every port and the client Service selects the leader label', () => {
  const r = reconcile(observe(cluster(standaloneSpec), [], null));
  const services = r.apply.filter((o) => o.kind === 'Service') as V1Service[];
  for (const s of services) for (const p of s.spec?.ports ?? []) assert.equal(p.protocol, 'TCP');
  const client = services.find((s) => s.metadata?.name === 'c1');
  assert.equal(client?.spec?.selector?.['celer.io/role'], 'leader');
  assert.equal(services.find((s) => s.metadata?.name === 'c1-nodes')?.spec?.clusterIP, 'None');
});

test('without a PodDisruptionBudget API no PDB is applied; with policy/v1 that version is used', () => {
  const none = reconcile(observe(cluster(standaloneSpec), [], null, { capabilities: { pdbApiVersion: null, serviceMonitor: false } }));
  assert.ok(!kinds(none).some((k) => k.endsWith('PodDisruptionBudget')));
  const v1 = reconcile(observe(cluster(standaloneSpec), [], null, { capabilities: { pdbApiVersion: 'policy/v1', serviceMonitor: false } }));
  assert.ok(kinds(v1).includes('policy/v1/PodDisruptionBudget'));
});

test('a steady standalone cluster reports Running and labels its pod leader once', () => {
  const c = cluster(standaloneSpec);
  const h = desiredHash(c);
  const unlabelled = reconcile(observe(c, [{ ordinal: 0, hash: h }], h));
  assert.deepEqual(unlabelled.actions, [{ kind: 'labelPod', pod: 'c1-0', role: 'leader' }]);
  const r = reconcile(observe(c, [{ ordinal: 0, hash: h, roleLabel: 'leader' }], h));
  assert.deepEqual(r.actions, []);
  assert.equal(r.status.phase, 'Running');
  assert.equal(r.status.leader, 'c1-0');
  assert.equal(r.status.readyReplicas, '1/1');
  assert.equal(condition(r, 'Ready')?.status, 'True');
  assert.equal(condition(r, 'Progressing')?.status, 'False');
  assert.equal(r.status.upgrade, null);
  assert.equal(r.requeueAfterMs, RESYNC_MS);
});

function steadyTwoNode(): { c: ReturnType<typeof cluster>; h: string; pods: PodSketch[] } {
  const c = cluster(twoNodeSpec, { status: { phase: 'Running' } });
  const h = desiredHash(c);
  return {
    c, h,
    pods: [
      { ordinal: 0, hash: h, role: 'leader', roleLabel: 'leader', epoch: 3, peerLag: 0 },
      { ordinal: 1, hash: h, role: 'follower', roleLabel: 'follower', epoch: 3 },
    ],
  };
}

test('a steady two-node cluster reports leader, epoch, lag and a held lease', () => {
  const { c, h, pods } = steadyTwoNode();
  const r = reconcile(observe(c, pods, h));
  assert.deepEqual(r.actions, []);
  assert.equal(r.status.phase, 'Running');
  assert.equal(r.status.leader, 'c1-0');
  assert.equal(r.status.epoch, 3);
  assert.deepEqual(r.status.nodes?.map((n) => [n.name, n.role, n.lagRecords]), [['c1-0', 'leader', 0], ['c1-1', 'follower', 0]]);
  assert.equal(condition(r, 'LeaseHealthy')?.status, 'True');
  assert.equal(r.finalizer, null);
});

test('two-node args carry the lease timings and S3 settings', () => {
  const { c } = steadyTwoNode();
  const args = sts(reconcile(observe(c, [], null))).spec?.template.spec?.containers[0]?.args ?? [];
  assert.ok(!args.includes('--standalone'));
  assert.deepEqual(args.slice(args.indexOf('--lease-ttl-ms'), args.indexOf('--lease-ttl-ms') + 2), ['--lease-ttl-ms', '1500']);
  assert.ok(args.includes('--s3-bucket'));
});

test('a lost follower pod is reported as degraded and nothing is restarted', () => {
  const { c, h, pods } = steadyTwoNode();
  const r = reconcile(observe(c, [pods[0]!], h));
  assert.deepEqual(r.actions, []);
  assert.equal(r.status.phase, 'Recovering');
  assert.equal(condition(r, 'Ready')?.status, 'False');
  assert.equal(condition(r, 'Degraded')?.reason, 'PodNotReady');
  assert.equal(r.requeueAfterMs, PROGRESS_POLL_MS);
});

test('when no node leads, Ready and LeaseHealthy say so', () => {
  const { c, h } = steadyTwoNode();
  const r = reconcile(observe(c, [{ ordinal: 0, hash: h, role: 'follower' }, { ordinal: 1, hash: h, role: 'boot' }], h));
  assert.equal(condition(r, 'Ready')?.reason, 'NoLeader');
  assert.equal(condition(r, 'LeaseHealthy')?.reason, 'NoLeader');
});

test('of two nodes claiming leadership the higher epoch wins the leader label', () => {
  const { c, h } = steadyTwoNode();
  const r = reconcile(observe(c, [
    { ordinal: 0, hash: h, role: 'leader', roleLabel: 'leader', epoch: 3 },
    { ordinal: 1, hash: h, role: 'leader', roleLabel: 'follower', epoch: 4 },
  ], h));
  assert.equal(r.status.leader, 'c1-1');
  assert.deepEqual(r.actions, [
    { kind: 'labelPod', pod: 'c1-0', role: 'stale-leader' },
    { kind: 'labelPod', pod: 'c1-1', role: 'leader' },
  ]);
});

test('a version upgrade restarts the follower, waits for catch-up, switches over, then restarts the former leader', () => {
  const old = steadyTwoNode();
  const c = cluster({ ...twoNodeSpec, version: '1.1.0' }, { status: { phase: 'Running' }, generation: 2 });
  const h = desiredHash(c);
  assert.notEqual(h, old.h);

  // 1. The StatefulSet in the cache still has the old template: restarting now would bring back 1.0.0.
  let r = reconcile(observe(c, old.pods, old.h));
  assert.equal(r.deferredGate, 'StatefulSetUpdated');
  assert.deepEqual(r.actions, []);

  // 2. Template visible: the follower goes first.
  r = reconcile(observe(c, old.pods, h));
  assert.deepEqual(r.actions, [{ kind: 'deletePod', pod: 'c1-1' }]);
  assert.equal(r.status.phase, 'Upgrading follower');
  assert.equal(condition(r, 'Progressing')?.reason, 'RestartingFollower');
  assert.equal(r.status.upgrade?.targetRevision, `1.1.0-${h}`);
  assert.deepEqual(r.status.upgrade?.pendingPods, ['c1-0', 'c1-1']);

  // 3. The new follower is not Ready yet.
  const leaderOld = { ...old.pods[0]!, peerLag: 50_000 };
  r = reconcile(observe(c, [leaderOld, { ordinal: 1, hash: h, ready: false, role: 'boot', version: '1.1.0' }], h));
  assert.equal(r.deferredGate, 'PodReady');
  assert.ok(r.events.some((e) => e.reason === 'PodReady'));

  // 4. Ready but behind: FollowerCaughtUp holds, and says so in the condition, an event and the gate.
  const follower: PodSketch = { ordinal: 1, hash: h, role: 'follower', roleLabel: 'follower', version: '1.1.0' };
  r = reconcile(observe(c, [leaderOld, follower], h));
  assert.equal(r.deferredGate, 'FollowerCaughtUp');
  assert.equal(condition(r, 'Progressing')?.reason, 'FollowerCaughtUp');
  assert.ok(r.events.some((e) => e.reason === 'FollowerCaughtUp' && e.message.includes('50000 records')));
  assert.deepEqual(r.actions, []);

  // 5. Caught up: ask the leader to step down, with a short handover TTL.
  r = reconcile(observe(c, [{ ...leaderOld, peerLag: 0 }, follower], h));
  assert.deepEqual(r.actions, [{ kind: 'stepDown', pod: 'c1-0', handoverTtlMs: 450 }]);
  assert.equal(r.status.phase, 'Switching over');
  assert.equal(r.status.upgrade?.stepDown?.pod, 'c1-0');

  // 6. Next pass, the leader has not handed over yet: wait rather than ask again.
  const afterAsk = cluster(c.spec, { status: r.status, generation: 2 });
  r = reconcile(observe(afterAsk, [{ ...leaderOld, peerLag: 0 }, follower], h));
  assert.equal(r.deferredGate, 'LeaderSteppedDown');
  assert.deepEqual(r.actions, []);

  // 7. The follower leads now; the former leader is an outdated follower and restarts last.
  const swapped: PodSketch[] = [
    { ordinal: 0, hash: old.h, role: 'follower', roleLabel: 'leader', epoch: 4 },
    { ordinal: 1, hash: h, role: 'leader', roleLabel: 'follower', epoch: 4, peerLag: 0, version: '1.1.0' },
  ];
  r = reconcile(observe(afterAsk, swapped, h));
  assert.deepEqual(r.actions, [
    { kind: 'labelPod', pod: 'c1-0', role: 'follower' },
    { kind: 'labelPod', pod: 'c1-1', role: 'leader' },
    { kind: 'deletePod', pod: 'c1-0' },
  ]);
  assert.equal(r.status.phase, 'Upgrading former leader');

  // 8. Both run 1.1.0: done.
  const done = cluster(c.spec, { status: r.status, generation: 2 });
  r = reconcile(observe(done, [{ ...swapped[0]!, hash: h, roleLabel: 'follower', version: '1.1.0' }, { ...swapped[1]!, roleLabel: 'leader' }], h));
  assert.deepEqual(r.actions, []);
  assert.equal(r.status.phase, 'Running');
  assert.equal(r.status.upgrade, null);
  assert.equal(condition(r, 'Progressing')?.status, 'False');
});

test('an operator restarted mid-upgrade, with its status lost, resumes at the same step', () => {
  const old = steadyTwoNode();
  const c = cluster({ ...twoNodeSpec, version: '1.1.0' }, { status: {} });
  const h = desiredHash(c);
  // Follower already upgraded and caught up: the next step is the switchover.
  let r = reconcile(observe(c, [{ ...old.pods[0]!, peerLag: 0 }, { ordinal: 1, hash: h, role: 'follower', roleLabel: 'follower' }], h));
  assert.deepEqual(r.actions, [{ kind: 'stepDown', pod: 'c1-0', handoverTtlMs: 450 }]);
  // Switchover already happened: the old leader, now follower, is restarted, never the new leader.
  r = reconcile(observe(c, [
    { ordinal: 0, hash: old.h, role: 'follower', roleLabel: 'follower' },
    { ordinal: 1, hash: h, role: 'leader', roleLabel: 'leader', peerLag: 3 },
  ], h));
  assert.deepEqual(r.actions, [{ kind: 'deletePod', pod: 'c1-0' }]);
});

test('a rollout never deletes a pod or switches over unless another ready node holds all the data', () => {
  // Exhaustive over small observed states: pod hashes, readiness, roles, lag and leader lag.
  const c = cluster({ ...twoNodeSpec, version: '1.1.0' });
  const target = desiredHash(c);
  const roles = ['leader', 'follower', 'boot', null] as const;
  let checked = 0;
  for (const hash0 of [target, 'old']) for (const hash1 of [target, 'old'])
    for (const ready0 of [true, false]) for (const ready1 of [true, false])
      for (const role0 of roles) for (const role1 of roles)
        for (const lag of [0, 7, 50_000, null]) {
          const pods: PodSketch[] = [
            { ordinal: 0, hash: hash0, ready: ready0, role: role0, peerLag: role0 === 'leader' ? lag : null },
            { ordinal: 1, hash: hash1, ready: ready1, role: role1, peerLag: role1 === 'leader' ? lag : null },
          ];
          const r = reconcile(observe(c, pods, target));
          checked += 1;
          for (const a of r.actions) {
            if (a.kind === 'deletePod') {
              const other = pods.find((p) => `c1-${p.ordinal}` !== a.pod)!;
              assert.ok(other.ready && other.role === 'leader', `deleted ${a.pod} without a ready leader: ${JSON.stringify(pods)}`);
            }
            if (a.kind === 'stepDown') {
              const other = pods.find((p) => `c1-${p.ordinal}` !== a.pod)!;
              const self = pods.find((p) => `c1-${p.ordinal}` === a.pod)!;
              assert.ok(other.ready && other.hash === target && self.peerLag !== null && self.peerLag !== undefined && self.peerLag <= FOLLOWER_LAG_BOUND_RECORDS,
                `unsafe switchover: ${JSON.stringify(pods)}`);
            }
          }
        }
  assert.equal(checked, 2 * 2 * 2 * 2 * 4 * 4 * 4);
});

test('a supervised upgrade waits for approval of the exact target revision before switching over', () => {
  const old = steadyTwoNode();
  const spec = { ...twoNodeSpec, version: '1.1.0', upgradePolicy: 'supervised' as const };
  const h = desiredHash(cluster(spec));
  const pods: PodSketch[] = [{ ...old.pods[0]!, peerLag: 0 }, { ordinal: 1, hash: h, role: 'follower', roleLabel: 'follower' }];

  let r = reconcile(observe(cluster(spec), pods, h));
  assert.equal(r.deferredGate, 'UpgradeApproved');
  assert.equal(r.status.phase, 'Waiting for approval');
  assert.deepEqual(r.actions, []);

  r = reconcile(observe(cluster(spec, { annotations: { [ANNOTATION_APPROVE_UPGRADE]: '1.0.0-stale' } }), pods, h));
  assert.equal(r.deferredGate, 'UpgradeApproved');

  r = reconcile(observe(cluster(spec, { annotations: { [ANNOTATION_APPROVE_UPGRADE]: `1.1.0-${h}` } }), pods, h));
  assert.equal(r.actions[0]?.kind, 'stepDown');
});

test('a supervised upgrade still restarts the follower without approval', () => {
  const old = steadyTwoNode();
  const spec = { ...twoNodeSpec, version: '1.1.0', upgradePolicy: 'supervised' as const };
  const h = desiredHash(cluster(spec));
  const r = reconcile(observe(cluster(spec), old.pods, h));
  assert.deepEqual(r.actions, [{ kind: 'deletePod', pod: 'c1-1' }]);
});

test('a pod of a bad version that never gets Ready is restarted once the version is set back', () => {
  const { c, h, pods } = steadyTwoNode();
  const r = reconcile(observe(c, [pods[0]!, { ordinal: 1, hash: 'bad-version', ready: false, role: null }], h));
  assert.deepEqual(r.actions, [{ kind: 'deletePod', pod: 'c1-1' }]);
  assert.equal(condition(r, 'Progressing')?.reason, 'RestartingUnreadyPod');
});

test('two standalone replicas, or spec.tls, create no pods: refused as InvalidSpec', () => {
  for (const spec of [{ ...standaloneSpec, replicas: 2 }, { ...twoNodeSpec, tls: { secretName: 'celer-tls' } }]) {
    const r = reconcile(observe(cluster(spec), [], 'none'));
    assert.equal(r.apply.find((o) => o.kind === 'StatefulSet'), undefined);
    assert.deepEqual(r.actions, []);
    assert.equal(condition(r, 'Ready')?.reason, 'InvalidSpec');
    assert.equal(condition(r, 'Degraded')?.status, 'True');
  }
});

test('a paused cluster gets status only, even with an upgrade pending', () => {
  const old = steadyTwoNode();
  const c = cluster({ ...twoNodeSpec, version: '1.1.0' }, { annotations: { [ANNOTATION_PAUSED]: 'true' } });
  const r = reconcile(observe(c, old.pods, old.h));
  assert.deepEqual(r.apply, []);
  assert.deepEqual(r.actions, []);
  assert.equal(r.finalizer, null);
  assert.equal(r.status.phase, 'Paused');
  assert.equal(condition(r, 'Progressing')?.reason, 'Paused');
  assert.equal(condition(r, 'Ready')?.status, 'True');
});

test('an invalid spec changes nothing and is reported on Ready and Degraded with the field at fault', () => {
  const { h, pods } = steadyTwoNode();
  const c = cluster({ ...twoNodeSpec, lease: { leaseTtlMs: 1000 } });
  const r = reconcile(observe(c, pods, h));
  assert.deepEqual(r.apply, []);
  assert.deepEqual(r.actions, []);
  assert.equal(r.status.phase, 'Invalid spec');
  assert.equal(condition(r, 'Ready')?.status, 'False');
  assert.equal(condition(r, 'Ready')?.reason, 'InvalidSpec');
  assert.equal(condition(r, 'Degraded')?.status, 'True');
  assert.match(condition(r, 'Degraded')?.message ?? '', /spec\.lease: renewDeadlineMs \+ maxClockDriftMs must be less than leaseTtlMs/);
  assert.ok(r.events.some((e) => e.type === 'Warning' && e.reason === 'InvalidSpec'));
});

test('changing shards after the data was created is refused from the recorded layout', () => {
  const { h, pods } = steadyTwoNode();
  const status: CelerClusterStatus = { dataLayout: { shards: 4, routing: 'id', s3Bucket: 'celer-test', s3Prefix: 'c1/' } };
  const r = reconcile(observe(cluster({ ...twoNodeSpec, shards: 8 }, { status }), pods, h));
  assert.equal(condition(r, 'Degraded')?.reason, 'InvalidSpec');
  assert.match(condition(r, 'Degraded')?.message ?? '', /shards cannot change/);
});

test('a growing volume is refused, because the StatefulSet claim template cannot change', () => {
  const { h, pods } = steadyTwoNode();
  const r = reconcile(observe(cluster({ ...twoNodeSpec, storage: { size: '20Gi' } }), pods, h));
  assert.match(condition(r, 'Degraded')?.message ?? '', /storage cannot change/);
});

test('deletionPolicy Delete with S3 adds the finalizer; Retain removes it', () => {
  const del = reconcile(observe(cluster({ ...twoNodeSpec, deletionPolicy: 'Delete' }), [], null));
  assert.equal(del.finalizer, 'add');
  const retain = reconcile(observe(cluster(twoNodeSpec, { finalizers: [FINALIZER] }), [], null));
  assert.equal(retain.finalizer, 'remove');
  const standalone = reconcile(observe(cluster({ ...standaloneSpec, deletionPolicy: 'Delete' }), [], null));
  assert.equal(standalone.finalizer, null);
});

test('deleting a cluster with deletionPolicy Delete removes its S3 lease objects before the finalizer', () => {
  const c = cluster({ ...twoNodeSpec, deletionPolicy: 'Delete' }, { finalizers: [FINALIZER], deleting: true });
  const r = reconcile(observe(c, [], null));
  assert.deepEqual(r.apply, []);
  assert.deepEqual(r.actions, [{ kind: 'deleteS3LeaseObjects', s3: twoNodeSpec.s3, keys: ['cluster/lease.json', 'cluster/identity.json', 'cluster/fallback/'] }]);
  assert.equal(r.finalizer, 'remove');
  assert.equal(r.status.phase, 'Deleting');
});

test('deleting a cluster with deletionPolicy Retain only drops the finalizer, and one without it does nothing', () => {
  const retain = reconcile(observe(cluster(twoNodeSpec, { finalizers: [FINALIZER], deleting: true }), [], null));
  assert.deepEqual(retain.actions, []);
  assert.equal(retain.finalizer, 'remove');
  const bare = reconcile(observe(cluster(twoNodeSpec, { deleting: true }), [], null));
  assert.deepEqual(bare.actions, []);
  assert.equal(bare.finalizer, null);
});

test('a shorter lease TTL is rolled out through the intermediate step first', () => {
  const slow = { leaseTtlMs: 3000, renewDeadlineMs: 2000, renewIntervalMs: 500, maxClockDriftMs: 200 };
  const before = cluster({ ...twoNodeSpec, lease: slow });
  const h = desiredHash(before);
  const pods: PodSketch[] = [
    { ordinal: 0, hash: h, role: 'leader', roleLabel: 'leader', peerLag: 0 },
    { ordinal: 1, hash: h, role: 'follower', roleLabel: 'follower' },
  ];
  const status: CelerClusterStatus = { phase: 'Running', lease: { effective: slow, target: slow } };
  const c = cluster({ ...twoNodeSpec }, { status });
  const r = reconcile(observe(c, pods, h, { statefulSet: sts(reconcile(observe(before, [], null))) }));
  assert.deepEqual(r.status.lease?.effective, { leaseTtlMs: 3000, renewDeadlineMs: 1000, renewIntervalMs: 250, maxClockDriftMs: 200 });
  const cm = r.apply.find((o) => o.kind === 'ConfigMap') as V1ConfigMap;
  assert.match(cm.data?.['celer.json'] ?? '', /"renewDeadlineMs": 1000/);
  assert.match(cm.data?.['celer.json'] ?? '', /"leaseTtlMs": 3000/);
  const args = sts(r).spec?.template.spec?.containers[0]?.args ?? [];
  assert.equal(args[args.indexOf('--lease-ttl-ms') + 1], '3000');
  assert.equal(args[args.indexOf('--renew-deadline-ms') + 1], '1000');
});

test('a ServiceMonitor is applied only when asked for and installed, and pruned when no longer asked for', () => {
  const spec = { ...standaloneSpec, monitoring: { serviceMonitor: true } };
  const yes = reconcile(observe(cluster(spec), [], null, { capabilities: { pdbApiVersion: 'policy/v1', serviceMonitor: true } }));
  assert.ok(kinds(yes).includes('monitoring.coreos.com/v1/ServiceMonitor'));
  const missing = reconcile(observe(cluster(spec), [], null));
  assert.ok(!kinds(missing).includes('monitoring.coreos.com/v1/ServiceMonitor'));
  assert.ok(missing.events.some((e) => e.reason === 'ServiceMonitorUnavailable'));
  const off = reconcile(observe(cluster(standaloneSpec), [], null, {
    owned: [{ apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor', name: 'c1' }],
    capabilities: { pdbApiVersion: 'policy/v1', serviceMonitor: true },
  }));
  assert.deepEqual(off.prune, [{ apiVersion: 'monitoring.coreos.com/v1', kind: 'ServiceMonitor', name: 'c1' }]);
});

test('a condition keeps its transition time while its status holds and moves it when it flips', () => {
  const c = cluster(standaloneSpec);
  const h = desiredHash(c);
  const first = reconcile(observe(c, [{ ordinal: 0, hash: h, roleLabel: 'leader' }], h));
  const earlier = '2026-01-01T00:00:00.000Z';
  const prev = (first.status.conditions ?? []).map((x) => ({ ...x, lastTransitionTime: earlier }));
  const again = reconcile(observe(cluster(standaloneSpec, { status: { ...first.status, conditions: prev } }), [{ ordinal: 0, hash: h, roleLabel: 'leader' }], h));
  assert.equal(condition(again, 'Ready')?.lastTransitionTime, earlier);
  const lost = reconcile(observe(cluster(standaloneSpec, { status: { ...first.status, conditions: prev } }), [{ ordinal: 0, hash: h, ready: false, roleLabel: 'leader' }], h));
  assert.equal(condition(lost, 'Ready')?.lastTransitionTime, new Date(NOW_MS).toISOString());
});

test('a shard reported corrupt marks the cluster degraded with the node and the reason', () => {
  const { c, h, pods } = steadyTwoNode();
  const obs = observe(c, pods, h);
  obs.nodes['c1-1']!.status!.shards = [{ shard: 2, state: 'corrupt', reason: 'bad checksum at 0x40', writeSeq: '1', commitSeq: '1' }];
  const r = reconcile(obs);
  assert.equal(condition(r, 'Degraded')?.reason, 'ShardFailed');
  assert.match(condition(r, 'Degraded')?.message ?? '', /c1-1: shard 2 corrupt: bad checksum/);
});

test('the last pod of an upgrade coming back is reported as finishing the upgrade, not as a fault', () => {
  const c = cluster({ ...standaloneSpec, version: '2.0.0' }, { status: { phase: 'Upgrading', upgrade: { targetRevision: 'x', pendingPods: ['c1-0'] } } });
  const h = desiredHash(c);
  const r = reconcile(observe(c, [{ ordinal: 0, hash: h, ready: false, roleLabel: 'leader' }], h));
  assert.equal(r.status.phase, 'Finishing upgrade');
  assert.equal(condition(r, 'Progressing')?.reason, 'PodReady');
  assert.equal(condition(r, 'Degraded')?.status, 'False');
  assert.notEqual(r.status.upgrade, null);
  const done = reconcile(observe(cluster(c.spec, { status: r.status }), [{ ordinal: 0, hash: h, roleLabel: 'leader' }], h));
  assert.equal(done.status.phase, 'Running');
  assert.equal(done.status.upgrade, null);
});

test('LeaseHealthy reads the remaining time the leader measures, not its wall-clock expiry against the operator clock', () => {
  const { c, h, pods } = steadyTwoNode();
  // The operator's clock runs 5 s ahead of the leader's: the expiry looks past, the lease is held.
  const ahead = observe(c, pods, h, { nowMs: NOW_MS + 5_000 });
  ahead.nodes['c1-0']!.status!.leaseRemainingMs = 900;
  assert.equal(condition(reconcile(ahead), 'LeaseHealthy')?.reason, 'LeaseHeld');
  // The operator's clock runs 5 s behind: the expiry looks ahead, but the leader has no authority left.
  const behind = observe(c, pods, h, { nowMs: NOW_MS - 5_000 });
  behind.nodes['c1-0']!.status!.leaseRemainingMs = 0;
  assert.equal(condition(reconcile(behind), 'LeaseHealthy')?.reason, 'LeaseExpired');
  // A leader that reports no remaining time is not known to hold the lease.
  const unknown = observe(c, pods, h);
  unknown.nodes['c1-0']!.status!.leaseRemainingMs = null;
  assert.equal(condition(reconcile(unknown), 'LeaseHealthy')?.status, 'Unknown');
});

test('under sustained writes a follower a few hundred records behind is caught up enough: the step-down drains the tail', () => {
  const old = steadyTwoNode();
  const c = cluster({ ...twoNodeSpec, version: '1.1.0' }, { status: { phase: 'Running' }, generation: 2 });
  const h = desiredHash(c);
  const follower: PodSketch = { ordinal: 1, hash: h, role: 'follower', roleLabel: 'follower', version: '1.1.0' };
  // The leader never reports 0 while writes flow; every pass sees a small, changing lag.
  for (const lag of [180, 64, 1, FOLLOWER_LAG_BOUND_RECORDS]) {
    const r = reconcile(observe(c, [{ ...old.pods[0]!, peerLag: lag }, follower], h));
    assert.deepEqual(r.actions, [{ kind: 'stepDown', pod: 'c1-0', handoverTtlMs: 450 }], `lag ${lag}`);
  }
  const behind = reconcile(observe(c, [{ ...old.pods[0]!, peerLag: FOLLOWER_LAG_BOUND_RECORDS + 1 }, follower], h));
  assert.equal(behind.deferredGate, 'FollowerCaughtUp');
  assert.deepEqual(behind.actions, []);
});

test('lease timings are observed on the StatefulSet: with status lost mid-retune the next step is still the safe intermediate one', () => {
  const slow = { leaseTtlMs: 3000, renewDeadlineMs: 2000, renewIntervalMs: 500, maxClockDriftMs: 200 };
  const mid = { leaseTtlMs: 3000, renewDeadlineMs: 1000, renewIntervalMs: 250, maxClockDriftMs: 200 };
  const target = cluster({ ...twoNodeSpec }, { status: {} });
  const stsRunning = (lease: typeof slow): { s: V1StatefulSet; h: string } => {
    const c = cluster({ ...twoNodeSpec, lease });
    return { s: sts(reconcile(observe(c, [], null))), h: desiredHash(c) };
  };
  const podsOn = (h0: string, h1: string): PodSketch[] => [
    { ordinal: 0, hash: h0, role: 'leader', roleLabel: 'leader', peerLag: 0 },
    { ordinal: 1, hash: h1, role: 'follower', roleLabel: 'follower' },
  ];
  // Every pod runs the old timings and nothing remembers them: the first step is the intermediate.
  const old = stsRunning(slow);
  let r = reconcile(observe(target, podsOn(old.h, old.h), old.h, { statefulSet: old.s }));
  assert.deepEqual(r.status.lease?.effective, mid);
  // The intermediate is rolling (one pod on it, one on the old timings): stay on it.
  const step = stsRunning(mid);
  r = reconcile(observe(target, podsOn(old.h, step.h), step.h, { statefulSet: step.s }));
  assert.deepEqual(r.status.lease?.effective, mid);
  const args = sts(r).spec?.template.spec?.containers[0]?.args ?? [];
  assert.equal(args[args.indexOf('--lease-ttl-ms') + 1], '3000');
  // Status claims the target was reached, but the pods run the old timings: the StatefulSet wins.
  const lying = cluster({ ...twoNodeSpec }, { status: { lease: { effective: DEFAULT_LEASE, target: DEFAULT_LEASE } } });
  r = reconcile(observe(lying, podsOn(old.h, old.h), old.h, { statefulSet: old.s }));
  assert.deepEqual(r.status.lease?.effective, mid);
  // Everything on the intermediate: now the target.
  r = reconcile(observe(target, podsOn(step.h, step.h), step.h, { statefulSet: step.s }));
  assert.deepEqual(r.status.lease?.effective, DEFAULT_LEASE);
});

test('a pod labelled leader that does not answer loses the label when the other node answers as leader at a higher epoch', () => {
  const { h } = steadyTwoNode();
  const pods: PodSketch[] = [
    { ordinal: 0, hash: h, ready: false, role: null, roleLabel: 'leader' },
    { ordinal: 1, hash: h, role: 'leader', roleLabel: 'follower', epoch: 4, peerLag: null },
  ];
  const failedOver = cluster(twoNodeSpec, { status: { phase: 'Running', leader: 'c1-0', epoch: 3 } });
  let r = reconcile(observe(failedOver, pods, h));
  assert.deepEqual(r.actions.filter((a) => a.kind === 'labelPod'), [
    { kind: 'labelPod', pod: 'c1-0', role: 'unreachable' },
    { kind: 'labelPod', pod: 'c1-1', role: 'leader' },
  ]);
  // The status lost: no recorded leader, the live claim still wins.
  r = reconcile(observe(cluster(twoNodeSpec, { status: {} }), pods, h));
  assert.ok(r.actions.some((a) => a.kind === 'labelPod' && a.pod === 'c1-0' && a.role === 'unreachable'));
  // The unanswered pod was recorded leading at a higher epoch than the claim: that claim is stale; keep the label.
  r = reconcile(observe(cluster(twoNodeSpec, { status: { phase: 'Running', leader: 'c1-0', epoch: 5 } }), pods, h));
  assert.ok(!r.actions.some((a) => a.kind === 'labelPod' && a.pod === 'c1-0'));
  // One failed poll of the leader with no other claimant keeps its label.
  r = reconcile(observe(failedOver, [pods[0]!, { ordinal: 1, hash: h, role: 'follower', roleLabel: 'follower', epoch: 3 }], h));
  assert.ok(!r.actions.some((a) => a.kind === 'labelPod' && a.pod === 'c1-0'));
});

test('a gate holding for many passes gives one Event identity, however its lag moves', () => {
  const old = steadyTwoNode();
  const c = cluster({ ...twoNodeSpec, version: '1.1.0' }, { status: { phase: 'Running' }, generation: 2 });
  const h = desiredHash(c);
  const follower: PodSketch = { ordinal: 1, hash: h, role: 'follower', roleLabel: 'follower', version: '1.1.0' };
  const keys = new Set<string>();
  for (const lag of [90_000, 70_000, 40_000]) {
    const r = reconcile(observe(c, [{ ...old.pods[0]!, peerLag: lag }, follower], h));
    const e = r.events.find((x) => x.reason === 'FollowerCaughtUp');
    assert.ok(e !== undefined);
    keys.add(e.key ?? `${e.reason}/${e.message}`);
  }
  assert.equal(keys.size, 1);
});

test('a node refusing another cluster\'s volume or prefix (9300) is reported as Degraded ClusterIdentityMismatch with the way out', () => {
  const { c, h, pods } = steadyTwoNode();
  const obs = observe(c, pods, h);
  const refused = 'celer serve: error 9300: refusing to start: the data directory /var/lib/celer belongs to cluster uid-old, but this node was started with --cluster-id uid-1.';
  obs.pods[1] = { ...obs.pods[1]!, ready: false, terminationMessages: [`celer: opening\n${refused}`] };
  const r = reconcile(obs);
  const degraded = condition(r, 'Degraded');
  assert.equal(degraded?.status, 'True');
  assert.equal(degraded?.reason, 'ClusterIdentityMismatch');
  assert.match(degraded?.message ?? '', /c1-1: error 9300: refusing to start: the data directory \/var\/lib\/celer belongs to cluster uid-old/);
  assert.match(degraded?.message ?? '', /delete the old PVC/);
  const healthy = reconcile(observe(c, pods, h));
  assert.notEqual(condition(healthy, 'Degraded')?.reason, 'ClusterIdentityMismatch');
});

test('status.nodes carries each node\'s role, version, lag and the lease remaining it reports', () => {
  const { c, h, pods } = steadyTwoNode();
  const r = reconcile(observe(c, pods, h));
  const leader = r.status.nodes?.find((n) => n.role === 'leader');
  assert.equal(leader?.lagRecords, 0);
  assert.equal(leader?.leaseRemainingMs, 1000);
  assert.ok(r.status.nodes?.every((n) => n.version !== 'unknown'));
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { planDrain, type DrainInput, type DrainPod } from './drain.ts';
import type { KubernetesObject } from '@kubernetes/client-node';
import type { CelerClusterStatus } from '../api/types.ts';
import { FOLLOWER_LAG_BOUND_RECORDS } from './rollout.ts';
import { PROGRESS_POLL_MS, reconcile } from './reconcile.ts';
import { cluster, desiredHash, observe, standaloneSpec, twoNodeSpec } from './test-fixtures.ts';

const WAIT_MS = 10_000;
const NOW = 1_000_000;

/** Every small state of one pod. */
function podStates(name: string): DrainPod[] {
  const out: DrainPod[] = [];
  for (const ready of [true, false]) {
    for (const terminating of [false, true]) {
      for (const role of ['leader', 'follower', null]) {
        for (const lagRecords of [null, 0, FOLLOWER_LAG_BOUND_RECORDS, FOLLOWER_LAG_BOUND_RECORDS + 1]) {
          for (const nodeUnschedulable of [false, true]) out.push({ name, ready, terminating, role, lagRecords, nodeUnschedulable });
        }
      }
    }
  }
  return out;
}

const STEP_DOWNS: DrainInput['stepDown'][] = [null, { pod: 'c-0', atMs: NOW - 1 }, { pod: 'c-0', atMs: NOW - WAIT_MS }, { pod: 'c-1', atMs: NOW - 1 }];

function* twoPodInputs(): Generator<DrainInput> {
  for (const a of podStates('c-0')) {
    for (const b of podStates('c-1')) {
      for (const stepDown of STEP_DOWNS) yield { standalone: false, pods: [a, b], stepDown, nowMs: NOW, stepDownWaitMs: WAIT_MS };
    }
  }
}

const good = (p: DrainPod): boolean => p.ready && !p.terminating && p.role === 'follower' && !p.nodeUnschedulable
  && p.lagRecords !== null && p.lagRecords <= FOLLOWER_LAG_BOUND_RECORDS;

test('safety, over every two-pod state: a step-down only of the sole leader on a cordoned node, with a ready caught-up follower on a schedulable node', () => {
  let stepDowns = 0;
  let states = 0;
  for (const input of twoPodInputs()) {
    states++;
    const step = planDrain(input);
    if (step.kind !== 'stepDown') continue;
    stepDowns++;
    const leader = input.pods.find((p) => p.name === step.pod)!;
    const other = input.pods.find((p) => p.name !== step.pod)!;
    assert.equal(leader.role, 'leader');
    assert.ok(leader.nodeUnschedulable && !leader.terminating, JSON.stringify(input));
    // Never both pods unavailable: the pod left serving is Ready, caught up and not being drained.
    assert.ok(good(other), `step-down without a ready caught-up follower: ${JSON.stringify(input)}`);
    assert.ok(!(input.stepDown?.pod === leader.name && NOW - input.stepDown.atMs < WAIT_MS), 'repeated while handing over');
  }
  assert.equal(states, 96 * 96 * STEP_DOWNS.length);
  assert.ok(stepDowns > 0);
});

test('liveness, over every two-pod state: the cordoned leader with a good follower is stepped down (or is handing over)', () => {
  for (const input of twoPodInputs()) {
    const [a, b] = input.pods as [DrainPod, DrainPod];
    for (const [leader, other] of [[a, b], [b, a]] as const) {
      if (leader.role !== 'leader' || !leader.nodeUnschedulable || leader.terminating || !good(other)) continue;
      const step = planDrain(input);
      const handingOver = input.stepDown?.pod === leader.name && NOW - input.stepDown.atMs < WAIT_MS;
      if (handingOver) assert.deepEqual([step.kind, step.kind === 'wait' && step.reason], ['wait', 'DrainSteppingDown']);
      else assert.deepEqual([step.kind, step.kind === 'stepDown' && step.pod], ['stepDown', leader.name]);
    }
  }
});

test('every two-pod state: idle unless exactly one leader sits on a cordoned node; the drain waits with DrainWaitingForFollower otherwise', () => {
  for (const input of twoPodInputs()) {
    const leaders = input.pods.filter((p) => p.role === 'leader');
    const step = planDrain(input);
    const relevant = leaders.length === 1 && leaders[0]!.nodeUnschedulable && !leaders[0]!.terminating;
    if (!relevant) assert.equal(step.kind, 'idle', JSON.stringify(input));
    else if (!good(input.pods.find((p) => p !== leaders[0])!)) {
      assert.equal(step.kind, 'wait');
      assert.equal(step.kind === 'wait' && step.reason, 'DrainWaitingForFollower');
    }
  }
});

test('a cordoned follower needs nothing; standalone clusters and a lone pod never step down', () => {
  const leader: DrainPod = { name: 'c-0', ready: true, terminating: false, role: 'leader', lagRecords: 0, nodeUnschedulable: false };
  const follower: DrainPod = { name: 'c-1', ready: true, terminating: false, role: 'follower', lagRecords: 0, nodeUnschedulable: true };
  const base = { stepDown: null, nowMs: NOW, stepDownWaitMs: WAIT_MS };
  assert.equal(planDrain({ ...base, standalone: false, pods: [leader, follower] }).kind, 'idle');
  const cordonedLeader = { ...leader, nodeUnschedulable: true };
  assert.equal(planDrain({ ...base, standalone: true, pods: [cordonedLeader, { ...follower, nodeUnschedulable: false }] }).kind, 'idle');
  const lone = planDrain({ ...base, standalone: false, pods: [cordonedLeader] });
  assert.equal(lone.kind === 'wait' && lone.reason, 'DrainWaitingForFollower');
});

test('reconcile: a two-node cluster gets the leader PDB (maxUnavailable 0 over role=leader) beside the all-pods one; a standalone one does not', () => {
  const two = reconcile(observe(cluster(twoNodeSpec), [], null));
  type Pdb = KubernetesObject & { spec: { maxUnavailable: number; selector: { matchLabels: Record<string, string>; matchExpressions?: unknown[] } } };
  const pdbs = two.apply.filter((o) => o.kind === 'PodDisruptionBudget') as Pdb[];
  assert.deepEqual(pdbs.map((p) => [p.metadata?.name, p.spec.maxUnavailable, p.spec.selector.matchLabels['celer.io/role'] ?? null, p.spec.selector.matchExpressions ?? null]), [
    ['c1', 1, null, null],
    ['c1-leader', 0, 'leader', null],
  ]);
  const one = reconcile(observe(cluster(standaloneSpec), [], null));
  assert.deepEqual(one.apply.filter((o) => o.kind === 'PodDisruptionBudget').map((o) => o.metadata?.name), ['c1']);
});

function drainState(leaderCordoned: boolean, followerCordoned: boolean, followerReady = true, status?: CelerClusterStatus) {
  const c = cluster(twoNodeSpec, status === undefined ? {} : { status });
  const hash = desiredHash(c);
  return observe(c, [
    { ordinal: 0, hash, role: 'leader', roleLabel: 'leader', epoch: 3, peerLag: 0, kubeNode: 'k0' },
    { ordinal: 1, hash, role: 'follower', roleLabel: 'follower', epoch: 3, ready: followerReady, kubeNode: 'k1' },
  ], hash, { unschedulableNodes: [...(leaderCordoned ? ['k0'] : []), ...(followerCordoned ? ['k1'] : [])] });
}

test('reconcile: the leader on a cordoned node is stepped down with the handover TTL; its follower cordoned needs nothing', () => {
  const r = reconcile(drainState(true, false));
  assert.deepEqual(r.actions.map((a) => [a.kind, 'pod' in a ? a.pod : null]), [['stepDown', 'c1-0']]);
  assert.equal(r.status.upgrade?.stepDown?.pod, 'c1-0');
  assert.equal(r.requeueAfterMs, PROGRESS_POLL_MS);
  // The next pass, the leader still handing over: no second step-down.
  const again = reconcile(drainState(true, false, true, r.status));
  assert.deepEqual(again.actions, []);
  assert.equal(again.status.conditions?.find((c) => c.type === 'Progressing')?.reason, 'DrainSteppingDown');
  assert.deepEqual(reconcile(drainState(false, true)).actions, []);
  assert.deepEqual(reconcile(drainState(false, false)).actions, []);
});

test('reconcile: both nodes cordoned, or the follower not ready: no step-down, Progressing DrainWaitingForFollower and an Event', () => {
  for (const obs of [drainState(true, true), drainState(true, false, false)]) {
    const r = reconcile(obs);
    assert.ok(!r.actions.some((a) => a.kind === 'stepDown'), JSON.stringify(r.actions));
    assert.equal(r.status.conditions?.find((c) => c.type === 'Progressing')?.reason, 'DrainWaitingForFollower');
    assert.ok(r.events.some((e) => e.reason === 'DrainWaitingForFollower'));
  }
});

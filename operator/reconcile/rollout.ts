// Restarting pods onto a new pod template (a version change, or any other template change)
// one at a time, in an order that always keeps a caught-up node serving.
//
// Two-node mode:   outdated follower first → wait until it is Ready and its lag is 0
//                  (lag ≤ FOLLOWER_LAG_BOUND_RECORDS; the step-down drains the rest)
//                  → (supervised: wait for approval) → POST /admin/step-down to the leader
//                  → the old leader is now an outdated follower → restart it.
// Standalone mode: highest ordinal first; pod 0 (the one the client Service selects) last.
//
// The plan is computed from what is observed now, never from remembered progress: an
// operator restarted mid-upgrade finds the same next step. The only remembered fact is when a
// step-down was last asked for, so it is not repeated while the leader is handing over.

import type { Gate } from './gates.ts';

/**
 * The follower counts as caught up for a switchover when the leader reports it at most this many
 * records behind. Lag 0 may never be seen under sustained writes (each group commit in flight is
 * lag), and it need not be: POST /admin/step-down refuses new writes, waits until the follower
 * holds everything durable (replicator.caughtUp()) and only then writes the lease over, giving up
 * (steppedDown false, nothing lost) if that takes longer than the handover TTL. 2 000 records is
 * what a follower replicating at the two-node figures of the README (≥ 9 000 writes/s with 64
 * writers) drains in about 0.2 s, inside the default handover TTL of 450 ms.
 */
export const FOLLOWER_LAG_BOUND_RECORDS = 2_000;

export interface RolloutPod {
  name: string;
  ordinal: number;
  /** Runs the desired pod template. */
  upToDate: boolean;
  ready: boolean;
  terminating: boolean;
  /** Role from the node's /status; null when unknown. */
  role: string | null;
  /** Records behind the leader (from the leader's /status); null when unknown. */
  lagRecords: number | null;
}

export interface RolloutInput {
  standalone: boolean;
  replicas: number;
  pods: RolloutPod[];
  /** The observed StatefulSet already carries the desired template. */
  statefulSetUpToDate: boolean;
  supervised: boolean;
  /** The approve annotation names the target revision. */
  approved: boolean;
  /** When a step-down was last requested, and from which pod; null if never. */
  stepDown: { pod: string; atMs: number } | null;
  nowMs: number;
  /** How long to wait for a requested step-down before asking again. */
  stepDownWaitMs: number;
}

export type RolloutStep =
  | { kind: 'idle' }
  /** reason: the Progressing reason and Event reason when not the gate's name (a drain's wait). */
  | { kind: 'wait'; gate: Gate; phase: string; message: string; reason?: string }
  | { kind: 'deletePod'; pod: string; phase: string; message: string; reason: string }
  | { kind: 'stepDown'; pod: string; phase: string; message: string };

function wait(gate: Gate, phase: string, message: string): RolloutStep {
  return { kind: 'wait', gate, phase, message };
}

/** The next step of a rollout, or idle when every pod runs the desired template. */
export function planRollout(input: RolloutInput): RolloutStep {
  const pods = [...input.pods].sort((a, b) => a.ordinal - b.ordinal);
  const outdated = pods.filter((p) => !p.upToDate);
  if (outdated.length === 0) return { kind: 'idle' };
  const phase = input.standalone ? 'Upgrading' : 'Upgrading follower';

  if (!input.statefulSetUpToDate) {
    return wait('StatefulSetUpdated', phase, 'waiting for the StatefulSet to carry the new pod template');
  }
  const terminating = pods.find((p) => p.terminating);
  if (terminating !== undefined) return wait('PodReady', phase, `waiting for ${terminating.name} to terminate and come back`);
  if (pods.length < input.replicas) return wait('PodReady', phase, `waiting for ${input.replicas - pods.length} missing pod(s) to be created`);

  const notReady = pods.filter((p) => !p.ready);
  if (notReady.length > 0) return unblockNotReady(input, pods, notReady, phase);

  return input.standalone ? planStandalone(input, pods, outdated) : planTwoNode(input, pods, outdated);
}

/**
 * A pod that is not Ready holds the rollout, with one exception: an outdated pod that is not
 * Ready while every other pod is Ready (and, with two nodes, the leader is among them) may be
 * restarted, since it serves nothing. This is how a rollout recovers from a bad version when
 * the user sets the version back.
 */
function unblockNotReady(input: RolloutInput, pods: RolloutPod[], notReady: RolloutPod[], phase: string): RolloutStep {
  const first = notReady[0]!;
  const candidate = notReady.length === 1 && !first.upToDate ? first : undefined;
  const others = pods.filter((p) => p !== candidate);
  const leaderAmongOthers = input.standalone || others.some((p) => p.role === 'leader');
  if (candidate !== undefined && others.length > 0 && leaderAmongOthers) {
    return {
      kind: 'deletePod', pod: candidate.name, phase, reason: 'RestartingUnreadyPod',
      message: `restarting ${candidate.name}: it is not Ready and runs an outdated template`,
    };
  }
  return wait('PodReady', phase, `waiting for ${notReady.map((p) => p.name).join(', ')} to be Ready`);
}

function planStandalone(input: RolloutInput, pods: RolloutPod[], outdated: RolloutPod[]): RolloutStep {
  const next = outdated[outdated.length - 1]!;
  const last = next.ordinal === pods[0]!.ordinal;
  if (last && input.supervised && !input.approved) {
    return wait('UpgradeApproved', 'Waiting for approval', `restarting ${next.name} interrupts clients; waiting for approval`);
  }
  return {
    kind: 'deletePod', pod: next.name, phase: 'Upgrading', reason: 'RestartingPod',
    message: `restarting ${next.name} onto the new pod template`,
  };
}

function planTwoNode(input: RolloutInput, pods: RolloutPod[], outdated: RolloutPod[]): RolloutStep {
  const leader = pods.find((p) => p.role === 'leader');
  if (leader === undefined) {
    if (input.stepDown !== null && input.nowMs - input.stepDown.atMs < input.stepDownWaitMs) {
      return wait('LeaderSteppedDown', 'Switching over', 'waiting for the follower to take the lease');
    }
    return wait('LeaderElected', 'Upgrading follower', 'no node reports itself leader; waiting for the election');
  }
  const outdatedFollower = [...outdated].reverse().find((p) => p !== leader);
  if (outdatedFollower !== undefined) {
    const formerLeader = input.stepDown?.pod === outdatedFollower.name;
    return {
      kind: 'deletePod', pod: outdatedFollower.name,
      phase: formerLeader ? 'Upgrading former leader' : 'Upgrading follower',
      reason: formerLeader ? 'RestartingFormerLeader' : 'RestartingFollower',
      message: `restarting ${formerLeader ? 'former leader' : 'follower'} ${outdatedFollower.name} while ${leader.name} leads`,
    };
  }
  // Only the leader is outdated: hand over to an up-to-date follower that has caught up.
  const follower = pods.find((p) => p !== leader && p.role === 'follower');
  if (follower === undefined || !follower.upToDate) {
    return wait('FollowerCaughtUp', 'Upgrading follower', 'no up-to-date follower to hand over to');
  }
  if (follower.lagRecords === null || follower.lagRecords > FOLLOWER_LAG_BOUND_RECORDS) {
    const lag = follower.lagRecords === null ? 'unknown' : `${follower.lagRecords} records`;
    return wait('FollowerCaughtUp', 'Waiting for follower', `${follower.name} lags the leader by ${lag} (switchover at ≤ ${FOLLOWER_LAG_BOUND_RECORDS})`);
  }
  if (input.supervised && !input.approved) {
    return wait('UpgradeApproved', 'Waiting for approval', `the switchover from ${leader.name} to ${follower.name} waits for approval`);
  }
  if (input.stepDown !== null && input.stepDown.pod === leader.name && input.nowMs - input.stepDown.atMs < input.stepDownWaitMs) {
    return wait('LeaderSteppedDown', 'Switching over', `${leader.name} was asked to step down; waiting for ${follower.name} to take over`);
  }
  return { kind: 'stepDown', pod: leader.name, phase: 'Switching over', message: `asking ${leader.name} to hand leadership to ${follower.name}` };
}

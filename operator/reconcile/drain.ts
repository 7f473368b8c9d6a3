// Draining a Kubernetes node that runs the leader without a TTL of write outage.
//
// Two PDBs guard a two-node cluster (objects/pdb.ts): `<name>` over both pods (maxUnavailable
// 1: never both down) and `<name>-leader` over the pod labelled celer.io/role=leader
// (maxUnavailable 0: the Eviction API answers 429 for the leader). `kubectl drain` cordons the
// node first and retries refused evictions, so the operator sees the leader's node turn
// unschedulable and, when the other pod is a Ready, caught-up follower on a schedulable node,
// asks the leader to step down (the same POST /admin/step-down an upgrade uses). The role
// label moves with the lease (role watcher), the leader PDB stops selecting the old leader and
// the drain's next retry evicts it: a follower now, whose loss costs no write.
//
// Pure: the controller observes Node.spec.unschedulable into ObservedState; tests enumerate
// every small state.

import type { Gate } from './gates.ts';
import { FOLLOWER_LAG_BOUND_RECORDS } from './rollout.ts';

export interface DrainPod {
  name: string;
  ready: boolean;
  terminating: boolean;
  /** Role from the node's /status; null when unknown. */
  role: string | null;
  /** Records behind the leader (from the leader's /status); null when unknown. */
  lagRecords: number | null;
  /** The Kubernetes node the pod is bound to is cordoned (spec.unschedulable); false when unbound or unknown. */
  nodeUnschedulable: boolean;
}

export interface DrainInput {
  standalone: boolean;
  pods: DrainPod[];
  /** When a step-down was last requested, and from which pod; null if never. */
  stepDown: { pod: string; atMs: number } | null;
  nowMs: number;
  stepDownWaitMs: number;
}

export type DrainStep =
  | { kind: 'idle' }
  | { kind: 'wait'; gate: Gate; reason: 'DrainWaitingForFollower' | 'DrainSteppingDown'; phase: string; message: string }
  | { kind: 'stepDown'; pod: string; phase: string; message: string };

const PHASE = 'Draining leader';

/**
 * The next step for a drain of the leader's node, or idle when no leader sits on a cordoned
 * node. A step-down is returned only with exactly one other pod that is Ready, not terminating,
 * a follower by its own /status, at most FOLLOWER_LAG_BOUND_RECORDS behind, and on a
 * schedulable node: otherwise evicting the leader would leave no node serving, and the leader
 * PDB keeps refusing it (the drain waits).
 */
export function planDrain(input: DrainInput): DrainStep {
  if (input.standalone) return { kind: 'idle' };
  const leaders = input.pods.filter((p) => p.role === 'leader');
  if (leaders.length !== 1) return { kind: 'idle' };
  const leader = leaders[0]!;
  if (!leader.nodeUnschedulable || leader.terminating) return { kind: 'idle' };

  const others = input.pods.filter((p) => p !== leader);
  const follower = others.length === 1 ? others[0]! : undefined;
  const blocker = follower === undefined ? `${others.length} other pods (want exactly 1)`
    : follower.terminating ? `${follower.name} is terminating`
      : !follower.ready ? `${follower.name} is not Ready`
        : follower.role !== 'follower' ? `${follower.name} reports role ${follower.role ?? 'unknown'}`
          : follower.nodeUnschedulable ? `${follower.name} is on a cordoned node too`
            : follower.lagRecords === null ? `${follower.name}'s lag is unknown`
              : follower.lagRecords > FOLLOWER_LAG_BOUND_RECORDS ? `${follower.name} lags by ${follower.lagRecords} records (switchover at ≤ ${FOLLOWER_LAG_BOUND_RECORDS})`
                : null;
  if (blocker !== null || follower === undefined) {
    return {
      kind: 'wait', gate: 'FollowerCaughtUp', reason: 'DrainWaitingForFollower', phase: PHASE,
      message: `${leader.name}'s node is cordoned; the leader PDB holds its eviction until a follower can take over: ${blocker ?? ''}`,
    };
  }
  if (input.stepDown !== null && input.stepDown.pod === leader.name && input.nowMs - input.stepDown.atMs < input.stepDownWaitMs) {
    return {
      kind: 'wait', gate: 'LeaderSteppedDown', reason: 'DrainSteppingDown', phase: PHASE,
      message: `${leader.name} was asked to step down for the drain; waiting for ${follower.name} to take over`,
    };
  }
  return {
    kind: 'stepDown', pod: leader.name, phase: PHASE,
    message: `${leader.name}'s node is cordoned: handing leadership to ${follower.name} so the drain can evict it`,
  };
}

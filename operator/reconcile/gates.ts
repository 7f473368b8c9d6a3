// Safety gates of a rollout. Each name appears verbatim as the Progressing condition's reason,
// as the reason of the Event emitted when the gate holds the rollout back, and as the `gate`
// label of celer_operator_gate_deferrals_total, so one grep finds a stall everywhere.

export type Gate =
  /** The new pod template is not yet visible on the StatefulSet; a pod deleted now would come back old. */
  | 'StatefulSetUpdated'
  /** A pod is missing, terminating or not Ready; restart nothing else until it is back. */
  | 'PodReady'
  /** No node reports itself leader; wait for the election before touching anything. */
  | 'LeaderElected'
  /** The follower's lag is above FOLLOWER_LAG_BOUND_RECORDS (or unknown): more than a step-down drains in its handover TTL. */
  | 'FollowerCaughtUp'
  /** upgradePolicy supervised: the switchover waits for the celer.io/approve-upgrade annotation. */
  | 'UpgradeApproved'
  /** Step-down was asked for; the old leader has not handed over yet. */
  | 'LeaderSteppedDown';

export const GATES: readonly Gate[] = [
  'StatefulSetUpdated', 'PodReady', 'LeaderElected', 'FollowerCaughtUp', 'UpgradeApproved', 'LeaderSteppedDown',
];

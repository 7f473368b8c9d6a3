// Conditions in the metav1.Condition shape. lastTransitionTime moves only when the status
// flips, so `kubectl wait` and alerting see real transitions rather than every reconcile.

import type { Condition, ConditionStatus, ConditionType } from '../api/types.ts';

export interface ConditionInput {
  type: ConditionType;
  status: ConditionStatus;
  reason: string;
  message: string;
}

export const CONDITION_TYPES: readonly ConditionType[] = ['Ready', 'Progressing', 'Degraded', 'LeaseHealthy'];

export function mergeConditions(
  previous: readonly Condition[] | undefined, next: readonly ConditionInput[], generation: number, nowIso: string,
): Condition[] {
  return next.map((n) => {
    const before = previous?.find((p) => p.type === n.type);
    const lastTransitionTime = before !== undefined && before.status === n.status ? before.lastTransitionTime : nowIso;
    return { ...n, observedGeneration: generation, lastTransitionTime };
  });
}

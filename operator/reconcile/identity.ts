// A node refuses to start on another cluster's data (celer serve --cluster-id, error 9300: the
// data directory or the S3 prefix belongs to another cluster). It prints why as its last line;
// with terminationMessagePolicy FallbackToLogsOnError the pod's lastState.terminated.message
// carries it, and this turns it into the Degraded condition a user sees, with the way out.

import type { ConditionInput } from './conditions.ts';
import type { ObservedPod } from './observed.ts';

/** The node's startup refusal code for a cluster identity mismatch (dataplane/cluster/identity.ts). */
export const IDENTITY_MISMATCH_MARK = 'error 9300:';

/** Degraded=True ClusterIdentityMismatch naming the pods and the node's own message; null when none refused. */
export function identityMismatch(pods: readonly ObservedPod[]): ConditionInput | null {
  const hits = pods.flatMap((p) => {
    const m = (p.terminationMessages ?? []).map((t) => t.split('\n').find((l) => l.includes(IDENTITY_MISMATCH_MARK))).find((l) => l !== undefined);
    return m === undefined ? [] : [`${p.name}: ${m.slice(m.indexOf(IDENTITY_MISMATCH_MARK))}`];
  });
  if (hits.length === 0) return null;
  return {
    type: 'Degraded',
    status: 'True',
    reason: 'ClusterIdentityMismatch',
    message: `${hits.join('; ')} — this CelerCluster (uid = --cluster-id) found a volume or an S3 prefix of another cluster: delete the old PVC (data-<pod>), or recreate this CelerCluster with a new spec.s3.prefix, or delete the old cluster's objects under the prefix if that cluster is gone for good`,
  };
}

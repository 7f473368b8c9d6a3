// Voluntary disruption (drains, the Eviction API). `<name>`: at most one pod down, so with two
// nodes one keeps serving. `<name>-leader` (two-node mode only): maxUnavailable 0 over the pod
// labelled celer.io/role=leader, so evicting the leader is refused until the operator has
// stepped it down (drain.ts) and the role label moved. The leader then matches two PDBs, which
// the Eviction API refuses with a 500 ("more than one PodDisruptionBudget"), not a 429, so
// `kubectl drain` stops there instead of retrying: run it again after the switchover (README).
// Disjoint selectors (leader / role NotIn [leader]) would give a retryable 429 but do not work:
// with maxUnavailable the disruption controller counts expected pods from the StatefulSet's
// scale (2), so the follower-only PDB would never allow its one pod to go (measured on 1.20,
// test/e2e/kube-drain-pdb.test.ts). The operator itself deletes pods directly during upgrades,
// which a PDB does not govern, and orders those restarts itself. policy/v1 when served, else
// policy/v1beta1 (1.20).

import type { KubernetesObject } from '@kubernetes/client-node';
import type { CelerCluster } from '../../api/types.ts';
import type { PdbApiVersion } from '../observed.ts';
import { LABEL_ROLE, ROLE_LEADER } from '../../api/constants.ts';
import { leaderPdbName, pdbName, selectorLabels } from '../names.ts';
import { ownedMeta } from './owner.ts';

export function podDisruptionBudget(cluster: CelerCluster, apiVersion: PdbApiVersion): KubernetesObject & { spec: unknown } {
  return {
    apiVersion,
    kind: 'PodDisruptionBudget',
    metadata: ownedMeta(cluster, pdbName(cluster.metadata.name), 'node'),
    spec: {
      maxUnavailable: 1,
      selector: { matchLabels: selectorLabels(cluster.metadata.name) },
    },
  };
}

/** Refuses every eviction of the pod labelled leader; not for standalone clusters (no leader). */
export function leaderDisruptionBudget(cluster: CelerCluster, apiVersion: PdbApiVersion): KubernetesObject & { spec: unknown } {
  return {
    apiVersion,
    kind: 'PodDisruptionBudget',
    metadata: ownedMeta(cluster, leaderPdbName(cluster.metadata.name), 'node'),
    spec: {
      maxUnavailable: 0,
      selector: { matchLabels: { ...selectorLabels(cluster.metadata.name), [LABEL_ROLE]: ROLE_LEADER } },
    },
  };
}

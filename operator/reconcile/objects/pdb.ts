// At most one node down by voluntary disruption (drains). With two nodes that keeps one
// serving; the operator itself deletes pods directly during upgrades, which a PDB does not
// govern, and orders those restarts itself. policy/v1 when served, else policy/v1beta1 (1.20).

import type { KubernetesObject } from '@kubernetes/client-node';
import type { CelerCluster } from '../../api/types.ts';
import type { PdbApiVersion } from '../observed.ts';
import { pdbName, selectorLabels } from '../names.ts';
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

// Metadata every owned object carries: namespace, labels and a controller owner reference,
// so that deleting the CelerCluster garbage-collects everything the operator created.

import type { V1ObjectMeta, V1OwnerReference } from '@kubernetes/client-node';
import type { CelerCluster } from '../../api/types.ts';
import { API_VERSION, KIND } from '../../api/constants.ts';
import { commonLabels } from '../names.ts';

export function ownerReference(cluster: CelerCluster): V1OwnerReference {
  return {
    apiVersion: API_VERSION,
    kind: KIND,
    name: cluster.metadata.name,
    uid: cluster.metadata.uid ?? '',
    controller: true,
    blockOwnerDeletion: true,
  };
}

export function ownedMeta(cluster: CelerCluster, name: string, component: string, extraLabels: Record<string, string> = {}): V1ObjectMeta {
  return {
    name,
    namespace: cluster.metadata.namespace,
    labels: { ...commonLabels(cluster.metadata.name, component), ...extraLabels },
    ownerReferences: [ownerReference(cluster)],
  };
}

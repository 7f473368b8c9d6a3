// The nodes' identity: a ServiceAccount and a namespaced Role. A node needs the API only to
// find its peer's address (endpoints of the headless Service); it gets nothing else.

import type { V1Role, V1RoleBinding, V1ServiceAccount } from '@kubernetes/client-node';
import type { CelerCluster } from '../../api/types.ts';
import { roleName, serviceAccountName } from '../names.ts';
import { ownedMeta } from './owner.ts';

export function nodeServiceAccount(cluster: CelerCluster): V1ServiceAccount {
  return {
    apiVersion: 'v1',
    kind: 'ServiceAccount',
    metadata: ownedMeta(cluster, serviceAccountName(cluster.metadata.name), 'node'),
    automountServiceAccountToken: true,
  };
}

export function nodeRole(cluster: CelerCluster): V1Role {
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'Role',
    metadata: ownedMeta(cluster, roleName(cluster.metadata.name), 'node'),
    rules: [{ apiGroups: [''], resources: ['endpoints'], verbs: ['get', 'list', 'watch'] }],
  };
}

export function nodeRoleBinding(cluster: CelerCluster): V1RoleBinding {
  const name = roleName(cluster.metadata.name);
  return {
    apiVersion: 'rbac.authorization.k8s.io/v1',
    kind: 'RoleBinding',
    metadata: ownedMeta(cluster, name, 'node'),
    roleRef: { apiGroup: 'rbac.authorization.k8s.io', kind: 'Role', name },
    subjects: [{ kind: 'ServiceAccount', name: serviceAccountName(cluster.metadata.name), namespace: cluster.metadata.namespace }],
  };
}

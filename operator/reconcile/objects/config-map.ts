// The cluster's configuration as the nodes see it, mounted at /etc/celer/celer.json. It states
// the effective lease timings (which may trail the spec while a change is rolled out safely).

import type { V1ConfigMap } from '@kubernetes/client-node';
import type { CelerCluster, LeaseSpec } from '../../api/types.ts';
import type { DefaultedSpec } from '../../api/defaults.ts';
import { configMapName } from '../names.ts';
import { ownedMeta } from './owner.ts';

export function clusterConfig(spec: DefaultedSpec, lease: LeaseSpec): Record<string, unknown> {
  return {
    standalone: spec.standalone,
    replicas: spec.replicas,
    shards: spec.shards ?? null,
    routing: spec.routing,
    lease,
    s3: spec.s3 === undefined ? null : {
      endpoint: spec.s3.endpoint ?? null,
      region: spec.s3.region ?? null,
      bucket: spec.s3.bucket,
      prefix: spec.s3.prefix ?? '',
    },
    tls: spec.tls !== undefined,
  };
}

export function configMap(cluster: CelerCluster, spec: DefaultedSpec, lease: LeaseSpec): V1ConfigMap {
  return {
    apiVersion: 'v1',
    kind: 'ConfigMap',
    metadata: ownedMeta(cluster, configMapName(cluster.metadata.name), 'config'),
    data: { 'celer.json': `${JSON.stringify(clusterConfig(spec, lease), null, 2)}\n` },
  };
}

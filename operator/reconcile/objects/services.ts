// Two Services. The headless one gives each pod a stable DNS name (peers and Prometheus use
// it) and lists pods before they are ready, so the nodes can find each other while booting.
// The client one selects only the pod labelled celer.io/role=leader, a label the operator
// keeps in step with each node's /status, so clients land on the node that accepts writes.
// Ports name protocol TCP explicitly: server-side apply on 1.20 refuses a port without it.

import type { V1Service } from '@kubernetes/client-node';
import type { CelerCluster } from '../../api/types.ts';
import { LABEL_ROLE, PORT_CLIENT, PORT_GRPC, PORT_HTTP, PORT_REPLICATION, ROLE_LEADER } from '../../api/constants.ts';
import { clientServiceName, headlessServiceName, selectorLabels } from '../names.ts';
import { ownedMeta } from './owner.ts';

/** What clients dial: the native protocol, gRPC, and HTTP (status, metrics). */
const clientPorts = [
  { name: 'client', port: PORT_CLIENT, targetPort: 'client', protocol: 'TCP' },
  { name: 'grpc', port: PORT_GRPC, targetPort: 'grpc', protocol: 'TCP' },
  { name: 'http', port: PORT_HTTP, targetPort: 'http', protocol: 'TCP' },
];
/** The nodes also reach each other's replication port through the headless names. */
const nodePorts = [...clientPorts, { name: 'replication', port: PORT_REPLICATION, targetPort: 'replication', protocol: 'TCP' }];

export function headlessService(cluster: CelerCluster): V1Service {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: ownedMeta(cluster, headlessServiceName(cluster.metadata.name), 'nodes'),
    spec: {
      clusterIP: 'None',
      publishNotReadyAddresses: true,
      selector: selectorLabels(cluster.metadata.name),
      ports: nodePorts,
    },
  };
}

export function clientService(cluster: CelerCluster): V1Service {
  return {
    apiVersion: 'v1',
    kind: 'Service',
    metadata: ownedMeta(cluster, clientServiceName(cluster.metadata.name), 'client'),
    spec: {
      type: 'ClusterIP',
      selector: { ...selectorLabels(cluster.metadata.name), [LABEL_ROLE]: ROLE_LEADER },
      ports: clientPorts,
    },
  };
}

// A Prometheus Operator ServiceMonitor for the nodes' /metrics, through the headless Service
// (which lists every pod). Created only when the monitoring.coreos.com CRDs are installed.

import type { KubernetesObject } from '@kubernetes/client-node';
import type { CelerCluster } from '../../api/types.ts';
import type { DefaultedSpec } from '../../api/defaults.ts';
import { LABEL_COMPONENT } from '../../api/constants.ts';
import { selectorLabels, serviceMonitorName } from '../names.ts';
import { ownedMeta } from './owner.ts';

/** Scrape every 15 s: the dashboard's rate() windows are 1 m, four samples each. */
export const SCRAPE_INTERVAL = '15s';

export function serviceMonitor(cluster: CelerCluster, spec: DefaultedSpec): KubernetesObject & { spec: unknown } {
  return {
    apiVersion: 'monitoring.coreos.com/v1',
    kind: 'ServiceMonitor',
    metadata: ownedMeta(cluster, serviceMonitorName(cluster.metadata.name), 'monitoring', spec.monitoring.serviceMonitorLabels ?? {}),
    spec: {
      selector: { matchLabels: { ...selectorLabels(cluster.metadata.name), [LABEL_COMPONENT]: 'nodes' } },
      endpoints: [{
        port: 'http', path: '/metrics', interval: SCRAPE_INTERVAL,
        // The same labels as the chart's plain scrape config, so one dashboard and one rule file fit both.
        relabelings: [
          { sourceLabels: ['__meta_kubernetes_pod_label_celer_io_cluster'], targetLabel: 'celer_cluster' },
          { sourceLabels: ['__meta_kubernetes_pod_label_celer_io_role'], targetLabel: 'celer_role' },
        ],
      }],
    },
  };
}

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { podTargetGroups, sanitizeLabelName } from './pod-sd.ts';
import type { Pod } from './types.ts';

const pod: Pod = {
  metadata: {
    name: 'demo-0',
    namespace: 'apps',
    uid: 'u1',
    labels: { 'app.kubernetes.io/name': 'celer', 'celer.io/cluster': 'demo' },
    annotations: { 'prometheus.io/scrape': 'true', 'prometheus.io/port': '7401' },
    ownerReferences: [{ apiVersion: 'apps/v1', kind: 'StatefulSet', name: 'demo', uid: 's1', controller: true }],
  },
  spec: {
    nodeName: 'node-a',
    containers: [
      {
        name: 'celer',
        image: 'celer:0.1.0',
        ports: [
          { name: 'client', containerPort: 7400, protocol: 'TCP' },
          { name: 'http', containerPort: 7401 },
        ],
      },
      { name: 'sidecar', image: 'busybox' },
    ],
  },
  status: { podIP: '127.9.1.2', hostIP: '127.9.0.1', phase: 'Running', conditions: [{ type: 'Ready', status: 'True' }] },
};

test('label names are sanitised the way Prometheus does it', () => {
  assert.equal(sanitizeLabelName('app.kubernetes.io/name'), 'app_kubernetes_io_name');
  assert.equal(sanitizeLabelName('prometheus.io/scrape'), 'prometheus_io_scrape');
});

test('a pod becomes one target per container port plus one per port-less container, with kubernetes_sd meta labels', () => {
  const groups = podTargetGroups([pod]);
  assert.deepEqual(groups.map((g) => g.targets[0]), ['127.9.1.2:7400', '127.9.1.2:7401', '127.9.1.2']);
  const http = groups[1]?.labels ?? {};
  assert.equal(http.__meta_kubernetes_namespace, 'apps');
  assert.equal(http.__meta_kubernetes_pod_name, 'demo-0');
  assert.equal(http.__meta_kubernetes_pod_label_app_kubernetes_io_name, 'celer');
  assert.equal(http.__meta_kubernetes_pod_labelpresent_celer_io_cluster, 'true');
  assert.equal(http.__meta_kubernetes_pod_annotation_prometheus_io_port, '7401');
  assert.equal(http.__meta_kubernetes_pod_container_port_name, 'http');
  assert.equal(http.__meta_kubernetes_pod_container_port_number, '7401');
  assert.equal(http.__meta_kubernetes_pod_container_port_protocol, 'TCP');
  assert.equal(http.__meta_kubernetes_pod_ready, 'true');
  assert.equal(http.__meta_kubernetes_pod_controller_kind, 'StatefulSet');
  assert.equal(groups[2]?.labels.__meta_kubernetes_pod_container_name, 'sidecar');
  assert.equal(groups[2]?.labels.__meta_kubernetes_pod_container_port_number, undefined);
});

test('a pod without an IP yields no target', () => {
  assert.deepEqual(podTargetGroups([{ ...pod, status: { phase: 'Pending' } }]), []);
});

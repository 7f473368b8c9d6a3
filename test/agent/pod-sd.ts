// A stand-in for Prometheus' Kubernetes service discovery (kubernetes_sd_configs, role: pod),
// which Debian's Prometheus build leaves out (it has file and HTTP discovery only). It turns pods
// into HTTP-SD target groups with the same __meta_kubernetes_pod_* labels the real discovery
// attaches, so a scrape job's relabel_configs run unchanged. Follows Prometheus 2.42's
// discovery/kubernetes/pod.go: one target per declared container port (podIP:port), one
// port-less target (podIP) per container without ports, nothing for a pod without an IP.
import http from 'node:http';
import type { AddressInfo } from 'node:net';
import type { Pod } from './types.ts';

export interface TargetGroup {
  targets: string[];
  labels: Record<string, string>;
}

/** Prometheus' label-name sanitising: every character outside [a-zA-Z0-9_] becomes '_'. */
export function sanitizeLabelName(name: string): string {
  return name.replace(/[^a-zA-Z0-9_]/g, '_');
}

function podReady(p: Pod): string {
  const c = p.status?.conditions?.find((x) => x.type === 'Ready');
  return c === undefined ? 'unknown' : c.status.toLowerCase();
}

export function podTargetGroups(pods: Pod[]): TargetGroup[] {
  const groups: TargetGroup[] = [];
  for (const p of pods) {
    const ip = p.status?.podIP;
    if (ip === undefined || ip === '') continue;
    const base: Record<string, string> = {
      __meta_kubernetes_namespace: p.metadata.namespace ?? 'default',
      __meta_kubernetes_pod_name: p.metadata.name,
      __meta_kubernetes_pod_ip: ip,
      __meta_kubernetes_pod_ready: podReady(p),
      __meta_kubernetes_pod_phase: p.status?.phase ?? '',
      __meta_kubernetes_pod_node_name: p.spec.nodeName ?? '',
      __meta_kubernetes_pod_host_ip: p.status?.hostIP ?? '',
      __meta_kubernetes_pod_uid: p.metadata.uid ?? '',
    };
    for (const [k, v] of Object.entries(p.metadata.labels ?? {})) {
      base[`__meta_kubernetes_pod_label_${sanitizeLabelName(k)}`] = v;
      base[`__meta_kubernetes_pod_labelpresent_${sanitizeLabelName(k)}`] = 'true';
    }
    for (const [k, v] of Object.entries(p.metadata.annotations ?? {})) {
      base[`__meta_kubernetes_pod_annotation_${sanitizeLabelName(k)}`] = v;
      base[`__meta_kubernetes_pod_annotationpresent_${sanitizeLabelName(k)}`] = 'true';
    }
    const owner = p.metadata.ownerReferences?.find((o) => o.controller === true);
    if (owner !== undefined) {
      base.__meta_kubernetes_pod_controller_kind = owner.kind;
      base.__meta_kubernetes_pod_controller_name = owner.name;
    }
    for (const c of p.spec.containers) {
      const container = { ...base, __meta_kubernetes_pod_container_name: c.name, __meta_kubernetes_pod_container_image: c.image, __meta_kubernetes_pod_container_init: 'false' };
      const ports = c.ports ?? [];
      if (ports.length === 0) {
        groups.push({ targets: [ip], labels: container });
        continue;
      }
      for (const port of ports) {
        groups.push({
          targets: [`${ip}:${port.containerPort}`],
          labels: {
            ...container,
            __meta_kubernetes_pod_container_port_name: port.name ?? '',
            __meta_kubernetes_pod_container_port_number: String(port.containerPort),
            __meta_kubernetes_pod_container_port_protocol: port.protocol ?? 'TCP',
          },
        });
      }
    }
  }
  return groups;
}

/** Serves podTargetGroups(listPods()) as an HTTP-SD endpoint on 127.0.0.1 (a free port). */
export async function servePodDiscovery(listPods: () => Promise<Pod[]>): Promise<{ url: string; close: () => Promise<void> }> {
  const server = http.createServer((req, res) => {
    listPods().then(
      (pods) => {
        res.setHeader('content-type', 'application/json');
        res.end(JSON.stringify(podTargetGroups(pods)));
      },
      (err: Error) => {
        res.statusCode = 500;
        res.end(err.message);
      },
    );
  });
  await new Promise<void>((resolve) => server.listen(0, '127.0.0.1', resolve));
  const { port } = server.address() as AddressInfo;
  return {
    url: `http://127.0.0.1:${port}/`,
    close: () => new Promise<void>((resolve) => {
      server.closeAllConnections();
      server.close(() => resolve());
    }),
  };
}

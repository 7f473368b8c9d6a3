// The nodes: a StatefulSet with updateStrategy OnDelete, so Kubernetes never restarts a pod on
// its own; the operator decides the order (follower first, leader last) and deletes pods one
// at a time. Each pod gets its own PersistentVolumeClaim from the claim template.

import type { V1Affinity, V1Container, V1EnvVar, V1PodTemplateSpec, V1StatefulSet, V1Volume, V1VolumeMount } from '@kubernetes/client-node';
import type { CelerCluster, LeaseSpec } from '../../api/types.ts';
import type { DefaultedSpec } from '../../api/defaults.ts';
import * as c from '../../api/constants.ts';
import { commonLabels, configMapName, headlessServiceName, podName, selectorLabels, serviceAccountName, statefulSetName } from '../names.ts';
import { leaseFlags } from '../lease-timing.ts';
import { stableHash } from '../stable-hash.ts';
import { ownedMeta } from './owner.ts';

/**
 * A clean shutdown lets the leader finish in-flight fsyncs and hand the lease over (SPEC §7);
 * 60 s is twice Kubernetes' default grace so a slow final fsync is not cut off by SIGKILL.
 */
export const TERMINATION_GRACE_SECONDS = 60;
/** The image's non-root user (Dockerfile); fsGroup makes the data volume writable for it. */
export const NODE_UID = 65532;
/** Readiness is polled every 2 s: within one TTL-scale window of a role change. */
export const READINESS_PERIOD_SECONDS = 2;
/** Liveness tolerates 6 × 5 s = 30 s of a stuck event loop before a restart (long fsync stalls). */
export const LIVENESS_PERIOD_SECONDS = 5;
export const LIVENESS_FAILURE_THRESHOLD = 6;

/**
 * The node command line: SPEC §8's `celer serve` plus the cluster flags from the spec. Every
 * shape the operator generates goes through the node's own parser in node-args.contract.test.ts.
 * Two-node pods share one template, so `--peers` lists both pods' stable DNS names and each
 * node skips the entry that begins with its own node id (the pod name); `--advertise` is the
 * pod IP, which the peer and clients dial.
 */
export function nodeArgs(cluster: CelerCluster, spec: DefaultedSpec, lease: LeaseSpec): string[] {
  const args = ['serve'];
  if (spec.standalone) args.push('--standalone');
  args.push('--data-dir', c.DATA_DIR, '--listen', `0.0.0.0:${c.PORT_CLIENT}`, '--http', `0.0.0.0:${c.PORT_HTTP}`);
  if (spec.shards !== undefined) args.push('--shards', String(spec.shards));
  args.push('--routing', spec.routing);
  if (!spec.standalone) {
    args.push('--node-id', '$(POD_NAME)', '--advertise', '$(POD_IP)', '--peers', peerList(cluster, spec.replicas), ...leaseFlags(lease));
    // The CelerCluster's uid: a recreated cluster (new uid) refuses an old volume or S3 prefix.
    if (cluster.metadata.uid !== undefined && cluster.metadata.uid !== '') args.push('--cluster-id', cluster.metadata.uid);
    if (spec.s3 !== undefined) {
      args.push('--s3-bucket', spec.s3.bucket, '--s3-prefix', spec.s3.prefix ?? '');
      if (spec.s3.endpoint !== undefined) args.push('--s3-endpoint', spec.s3.endpoint);
      if (spec.s3.region !== undefined) args.push('--s3-region', spec.s3.region);
    }
  }
  return args;
}

/** `<pod>.<headless>.<namespace>.svc:<replication port>` for every pod of the cluster. */
export function peerList(cluster: CelerCluster, replicas: number): string {
  const { name, namespace } = cluster.metadata;
  return Array.from({ length: replicas }, (_, i) => `${podName(name, i)}.${headlessServiceName(name)}.${namespace}.svc:${c.PORT_REPLICATION}`).join(',');
}

/** The user's affinity plus required anti-affinity on the host: the two nodes never share one. */
export function nodeAffinity(cluster: string, user: V1Affinity | undefined): V1Affinity {
  const required = user?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? [];
  return {
    ...user,
    podAntiAffinity: {
      ...user?.podAntiAffinity,
      requiredDuringSchedulingIgnoredDuringExecution: [
        ...required,
        { topologyKey: 'kubernetes.io/hostname', labelSelector: { matchLabels: selectorLabels(cluster) } },
      ],
    },
  };
}

function env(spec: DefaultedSpec): V1EnvVar[] {
  const vars: V1EnvVar[] = [
    { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
    { name: 'POD_NAMESPACE', valueFrom: { fieldRef: { fieldPath: 'metadata.namespace' } } },
    { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
    { name: 'CELER_CONFIG', value: `${c.CONFIG_DIR}/celer.json` },
  ];
  const secret = spec.s3?.credentialsSecret;
  if (secret !== undefined && secret !== '') {
    for (const key of ['AWS_ACCESS_KEY_ID', 'AWS_SECRET_ACCESS_KEY']) {
      vars.push({ name: key, valueFrom: { secretKeyRef: { name: secret, key } } });
    }
  }
  return vars;
}

function container(cluster: CelerCluster, spec: DefaultedSpec, lease: LeaseSpec): V1Container {
  const mounts: V1VolumeMount[] = [
    { name: c.VOLUME_DATA, mountPath: c.DATA_DIR },
    { name: 'config', mountPath: c.CONFIG_DIR, readOnly: true },
  ];
  return {
    name: 'celer',
    image: `${spec.image}:${spec.version}`,
    imagePullPolicy: spec.imagePullPolicy,
    command: ['celer'],
    args: nodeArgs(cluster, spec, lease),
    ports: [
      { name: 'client', containerPort: c.PORT_CLIENT, protocol: 'TCP' },
      { name: 'http', containerPort: c.PORT_HTTP, protocol: 'TCP' },
      { name: 'grpc', containerPort: c.PORT_GRPC, protocol: 'TCP' },
      ...(spec.standalone ? [] : [{ name: 'replication', containerPort: c.PORT_REPLICATION, protocol: 'TCP' }]),
    ],
    env: env(spec),
    readinessProbe: {
      httpGet: { path: '/readyz', port: 'http', scheme: 'HTTP' },
      periodSeconds: READINESS_PERIOD_SECONDS,
      failureThreshold: 2,
    },
    livenessProbe: {
      httpGet: { path: '/livez', port: 'http', scheme: 'HTTP' },
      periodSeconds: LIVENESS_PERIOD_SECONDS,
      failureThreshold: LIVENESS_FAILURE_THRESHOLD,
    },
    resources: spec.resources ?? {},
    // A node that refuses to start prints why as its last line: the operator reads it from
    // lastState.terminated.message (a cluster identity mismatch becomes a condition).
    terminationMessagePolicy: 'FallbackToLogsOnError',
    volumeMounts: mounts,
  };
}

function podTemplate(cluster: CelerCluster, spec: DefaultedSpec, lease: LeaseSpec): V1PodTemplateSpec {
  const name = cluster.metadata.name;
  const volumes: V1Volume[] = [{ name: 'config', configMap: { name: configMapName(name) } }];
  const annotations: Record<string, string> = {};
  if (spec.monitoring.scrapeAnnotations) {
    annotations['prometheus.io/scrape'] = 'true';
    annotations['prometheus.io/port'] = String(c.PORT_HTTP);
    annotations['prometheus.io/path'] = '/metrics';
  }
  return {
    metadata: { labels: commonLabels(name, 'node'), annotations },
    spec: {
      serviceAccountName: serviceAccountName(name),
      securityContext: { runAsNonRoot: true, runAsUser: NODE_UID, runAsGroup: NODE_UID, fsGroup: NODE_UID },
      terminationGracePeriodSeconds: TERMINATION_GRACE_SECONDS,
      affinity: nodeAffinity(name, spec.placement?.affinity),
      nodeSelector: spec.placement?.nodeSelector,
      tolerations: spec.placement?.tolerations,
      containers: [container(cluster, spec, lease)],
      volumes,
    },
  };
}

export interface StatefulSetPlan {
  statefulSet: V1StatefulSet;
  /** Hash of the pod template; pods whose annotation differs are outdated. */
  templateHash: string;
}

export function statefulSet(cluster: CelerCluster, spec: DefaultedSpec, lease: LeaseSpec): StatefulSetPlan {
  const name = cluster.metadata.name;
  const template = podTemplate(cluster, spec, lease);
  const templateHash = stableHash(template);
  template.metadata = { ...template.metadata, annotations: { ...template.metadata?.annotations, [c.ANNOTATION_TEMPLATE_HASH]: templateHash } };
  const claim = {
    metadata: { name: c.VOLUME_DATA, labels: selectorLabels(name) },
    spec: {
      accessModes: ['ReadWriteOnce'],
      storageClassName: spec.storage.storageClassName,
      resources: { requests: { storage: spec.storage.size } },
    },
  };
  return {
    templateHash,
    statefulSet: {
      apiVersion: 'apps/v1',
      kind: 'StatefulSet',
      metadata: ownedMeta(cluster, statefulSetName(name), 'node'),
      spec: {
        replicas: spec.replicas,
        serviceName: headlessServiceName(name),
        // Both pods start at once: a two-node cluster elects over S3, not by pod order.
        podManagementPolicy: 'Parallel',
        updateStrategy: { type: 'OnDelete' },
        selector: { matchLabels: selectorLabels(name) },
        template,
        volumeClaimTemplates: [claim],
      },
    },
  };
}

/** The storage a StatefulSet's data claim template asks for, to refuse changes to it. */
export function observedStorage(sts: V1StatefulSet | null): { size: string; storageClassName?: string } | null {
  const claim = sts?.spec?.volumeClaimTemplates?.find((t) => t.metadata?.name === c.VOLUME_DATA);
  const size = claim?.spec?.resources?.requests?.storage;
  if (claim === undefined || size === undefined) return null;
  const storageClassName = claim.spec?.storageClassName;
  return storageClassName === undefined ? { size: String(size) } : { size: String(size), storageClassName };
}

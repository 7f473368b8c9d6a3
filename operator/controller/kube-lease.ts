// LeaseApi on a coordination.k8s.io/v1 Lease, for the operator's own leader election.

import { CoordinationV1Api, V1MicroTime, type KubeConfig, type V1Lease } from '@kubernetes/client-node';
import type { LeaseApi, LeaseRecord } from './leader-election.ts';
import { httpStatusOf } from './kube-ops.ts';

function toRecord(l: V1Lease): LeaseRecord {
  const iso = (d: unknown): string => (d instanceof Date ? d.toISOString() : typeof d === 'string' ? d : '');
  return {
    holder: l.spec?.holderIdentity ?? '',
    leaseDurationSeconds: l.spec?.leaseDurationSeconds ?? 0,
    acquireTime: iso(l.spec?.acquireTime),
    renewTime: iso(l.spec?.renewTime),
    transitions: l.spec?.leaseTransitions ?? 0,
    ...(l.metadata?.resourceVersion !== undefined ? { resourceVersion: l.metadata.resourceVersion } : {}),
  };
}

/** Lease times are MicroTime: the apiserver wants exactly six fractional digits. */
function micro(iso: string): V1MicroTime | undefined {
  const ms = Date.parse(iso);
  return Number.isNaN(ms) ? undefined : new V1MicroTime(ms);
}

function toLease(namespace: string, name: string, r: LeaseRecord): V1Lease {
  return {
    apiVersion: 'coordination.k8s.io/v1',
    kind: 'Lease',
    metadata: { name, namespace, ...(r.resourceVersion !== undefined ? { resourceVersion: r.resourceVersion } : {}) },
    spec: {
      holderIdentity: r.holder,
      leaseDurationSeconds: r.leaseDurationSeconds,
      acquireTime: micro(r.acquireTime),
      renewTime: micro(r.renewTime),
      leaseTransitions: r.transitions,
    },
  };
}

export function kubeLeaseApi(kc: KubeConfig, namespace: string, name: string): LeaseApi {
  const api = kc.makeApiClient(CoordinationV1Api);
  return {
    async get() {
      try {
        return toRecord(await api.readNamespacedLease({ name, namespace }));
      } catch (err) {
        if (httpStatusOf(err) === 404) return null;
        throw err;
      }
    },
    async create(r) {
      try {
        await api.createNamespacedLease({ namespace, body: toLease(namespace, name, r) });
        return true;
      } catch (err) {
        if (httpStatusOf(err) === 409) return false;
        throw err;
      }
    },
    async update(r) {
      try {
        await api.replaceNamespacedLease({ name, namespace, body: toLease(namespace, name, r) });
        return true;
      } catch (err) {
        if (httpStatusOf(err) === 409) return false;
        throw err;
      }
    },
  };
}

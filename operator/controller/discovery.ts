// API discovery: which PodDisruptionBudget version the apiserver serves (policy/v1 from 1.21,
// only policy/v1beta1 on 1.20) and whether the Prometheus Operator's ServiceMonitor CRD exists.

import type { Capabilities, PdbApiVersion } from '../reconcile/observed.ts';

/** Re-discover every 5 minutes: a Prometheus Operator installed later is picked up without a restart. */
export const DISCOVERY_INTERVAL_MS = 300_000;

/** `groupVersions` as listed by GET /apis, e.g. ["policy/v1beta1", "apps/v1"]. */
export function capabilitiesFrom(groupVersions: readonly string[]): Capabilities {
  const served = new Set(groupVersions);
  let pdbApiVersion: PdbApiVersion | null = null;
  if (served.has('policy/v1')) pdbApiVersion = 'policy/v1';
  else if (served.has('policy/v1beta1')) pdbApiVersion = 'policy/v1beta1';
  return { pdbApiVersion, serviceMonitor: served.has('monitoring.coreos.com/v1') };
}

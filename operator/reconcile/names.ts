// Names and labels of the objects the operator owns for one CelerCluster. Renaming any of
// these orphans the objects of existing clusters, so they are fixed.

import * as c from '../api/constants.ts';

export const statefulSetName = (cluster: string): string => cluster;
export const headlessServiceName = (cluster: string): string => `${cluster}-nodes`;
export const clientServiceName = (cluster: string): string => cluster;
export const configMapName = (cluster: string): string => `${cluster}-config`;
export const serviceAccountName = (cluster: string): string => `${cluster}-node`;
export const roleName = (cluster: string): string => `${cluster}-node`;
export const pdbName = (cluster: string): string => cluster;
/** The PDB that refuses evicting the leader pod (drain.ts). */
export const leaderPdbName = (cluster: string): string => `${cluster}-leader`;
export const serviceMonitorName = (cluster: string): string => cluster;
export const podName = (cluster: string, ordinal: number): string => `${cluster}-${ordinal}`;

/** The pod's ordinal from its StatefulSet name, or null if the name is not ours. */
export function podOrdinal(cluster: string, pod: string): number | null {
  const prefix = `${cluster}-`;
  if (!pod.startsWith(prefix)) return null;
  const rest = pod.slice(prefix.length);
  return /^(0|[1-9][0-9]*)$/.test(rest) ? Number(rest) : null;
}

/** The immutable StatefulSet selector; also what informers and the PDB select on. */
export function selectorLabels(cluster: string): Record<string, string> {
  return { [c.LABEL_NAME]: 'celer', [c.LABEL_CLUSTER]: cluster };
}

/** Labels on every owned object. */
export function commonLabels(cluster: string, component: string): Record<string, string> {
  return {
    ...selectorLabels(cluster),
    [c.LABEL_INSTANCE]: cluster,
    [c.LABEL_MANAGED_BY]: 'celer-operator',
    [c.LABEL_COMPONENT]: component,
  };
}

// One view of the nodes built from pods and their /status: who leads, each node's lag, and
// the role label each pod should carry. Lag comes from the leader's /status (peer.lagRecords),
// the only place it is measured.

import type { NodeStatusSummary } from '../api/types.ts';
import type { ObservedState } from './observed.ts';
import { ROLE_LEADER } from '../api/constants.ts';

export interface NodeView {
  pod: string;
  ordinal: number;
  ready: boolean;
  terminating: boolean;
  templateHash: string | null;
  roleLabel: string | null;
  /** Role from /status; null when /status is unavailable. */
  role: string | null;
  version: string | null;
  lagRecords: number | null;
  epoch: number | null;
  /** The node's own measure of its remaining lease authority (leader) or wait to challenge (follower). */
  leaseRemainingMs: number | null;
  statusError: string | null;
  failedShards: string[];
}

export interface ClusterView {
  nodes: NodeView[];
  /** The pod clients should reach: the /status leader, or pod 0 when standalone. */
  leader: NodeView | null;
  readyCount: number;
}

export function viewNodes(obs: ObservedState, standalone: boolean): ClusterView {
  const pods = [...obs.pods].sort((a, b) => a.ordinal - b.ordinal);
  const nodes: NodeView[] = pods.map((p) => {
    const observed = obs.nodes[p.name];
    const s = observed?.status ?? null;
    return {
      pod: p.name,
      ordinal: p.ordinal,
      ready: p.ready,
      terminating: p.terminating,
      templateHash: p.templateHash,
      roleLabel: p.roleLabel,
      role: s?.role ?? null,
      version: s?.version ?? null,
      lagRecords: null,
      epoch: s?.epoch ?? null,
      leaseRemainingMs: s?.leaseRemainingMs ?? null,
      statusError: s === null ? (observed?.error ?? 'no /status yet') : null,
      failedShards: (s?.shards ?? []).filter((sh) => sh.state === 'corrupt' || sh.state === 'failed')
        .map((sh) => `shard ${sh.shard} ${sh.state}${sh.reason !== undefined ? `: ${sh.reason}` : ''}`),
    };
  });
  let leader: NodeView | null;
  if (standalone) {
    leader = nodes.find((n) => n.ordinal === 0) ?? null;
  } else {
    // Two nodes both claiming leadership (a stale view during failover): trust the higher epoch.
    const claims = nodes.filter((n) => n.role === 'leader').sort((a, b) => (b.epoch ?? 0) - (a.epoch ?? 0));
    leader = claims[0] ?? null;
    const leaderStatus = leader === null ? null : obs.nodes[leader.pod]?.status ?? null;
    for (const n of nodes) {
      if (n === leader) n.lagRecords = 0;
      else if (leaderStatus?.peer !== null && leaderStatus?.peer !== undefined) n.lagRecords = leaderStatus.peer.lagRecords;
    }
  }
  return { nodes, leader, readyCount: nodes.filter((n) => n.ready && !n.terminating).length };
}

/** Label of a pod labelled leader whose /status does not answer while another node's claim does. */
export const ROLE_LABEL_UNREACHABLE = 'unreachable';

/** The leader the last status recorded (status.leader, status.epoch); what an unanswered pod last claimed. */
export interface RecordedLeader {
  pod: string | null;
  epoch: number;
}

/** The value of celer.io/role a pod should carry; null leaves the label as it is. */
export function desiredRoleLabel(node: NodeView, leader: NodeView | null, standalone: boolean, recorded: RecordedLeader = { pod: null, epoch: 0 }): string | null {
  if (standalone) return node === leader ? ROLE_LEADER : 'standalone';
  if (node === leader) return ROLE_LEADER;
  // A lower-epoch claim is stale; never let the client Service select it.
  if (node.role === ROLE_LEADER) return 'stale-leader';
  if (node.role === null) {
    // Unanswered and labelled leader while another node answers as leader at a higher epoch than
    // this one was recorded leading at: that claim is the live one, so the client Service must
    // stop selecting this pod (it would send clients to a crashed or fenced node).
    const recordedNewer = recorded.pod === node.pod && leader !== null && recorded.epoch > (leader.epoch ?? 0);
    if (node.roleLabel === ROLE_LEADER && leader !== null && !recordedNewer) return ROLE_LABEL_UNREACHABLE;
    // Otherwise an unanswered node keeps its label: one failed poll should not cut clients off.
    return null;
  }
  return node.role;
}

export function summarize(view: ClusterView): NodeStatusSummary[] {
  return view.nodes.map((n) => ({
    name: n.pod,
    role: n.role ?? 'unknown',
    version: n.version ?? 'unknown',
    lagRecords: n.lagRecords,
    leaseRemainingMs: n.leaseRemainingMs,
    ready: n.ready,
  }));
}

// The scheduler half of the test agent: picks one of the agent's virtual nodes for a pod. It
// honours what the Celer operator relies on (nodeSelector, required node affinity, required pod
// anti-affinity on kubernetes.io/hostname) and spreads pods with preferred anti-affinity. Taints,
// resources and inter-pod affinity are out of scope: every virtual node is equally empty.
import type { LabelSelector, NodeSelectorRequirement, Pod, PodAffinityTerm } from './types.ts';

export interface VirtualNode {
  name: string;
  labels: Record<string, string>;
}

export function matchesLabelSelector(selector: LabelSelector | undefined, labels: Record<string, string> | undefined): boolean {
  // A nil selector in an affinity term matches nothing; an empty one matches everything.
  if (selector === undefined) return false;
  const l = labels ?? {};
  for (const [k, v] of Object.entries(selector.matchLabels ?? {})) if (l[k] !== v) return false;
  for (const req of selector.matchExpressions ?? []) {
    const has = Object.hasOwn(l, req.key);
    const value = l[req.key];
    switch (req.operator) {
      case 'In':
        if (!has || !(req.values ?? []).includes(value ?? '')) return false;
        break;
      case 'NotIn':
        if (has && (req.values ?? []).includes(value ?? '')) return false;
        break;
      case 'Exists':
        if (!has) return false;
        break;
      case 'DoesNotExist':
        if (has) return false;
        break;
    }
  }
  return true;
}

function matchesNodeRequirement(req: NodeSelectorRequirement, labels: Record<string, string>): boolean {
  const has = Object.hasOwn(labels, req.key);
  const value = labels[req.key] ?? '';
  switch (req.operator) {
    case 'In':
      return has && (req.values ?? []).includes(value);
    case 'NotIn':
      return !has || !(req.values ?? []).includes(value);
    case 'Exists':
      return has;
    case 'DoesNotExist':
      return !has;
    case 'Gt':
      return has && Number(value) > Number(req.values?.[0]);
    case 'Lt':
      return has && Number(value) < Number(req.values?.[0]);
  }
}

/** Pods (other than `pod`) on `node` that `term` selects, in the term's namespaces. */
function podsMatchingTerm(pod: Pod, term: PodAffinityTerm, node: VirtualNode, nodes: VirtualNode[], others: Pod[]): number {
  const namespaces = term.namespaces !== undefined && term.namespaces.length > 0 ? term.namespaces : [pod.metadata.namespace ?? 'default'];
  const topologyValue = node.labels[term.topologyKey];
  if (topologyValue === undefined) return 0;
  let n = 0;
  for (const other of others) {
    if (other.metadata.uid === pod.metadata.uid || other.spec.nodeName === undefined) continue;
    if (!namespaces.includes(other.metadata.namespace ?? 'default')) continue;
    if (other.status?.phase === 'Succeeded' || other.status?.phase === 'Failed') continue;
    const otherNode = nodes.find((x) => x.name === other.spec.nodeName);
    if (otherNode === undefined || otherNode.labels[term.topologyKey] !== topologyValue) continue;
    if (matchesLabelSelector(term.labelSelector, other.metadata.labels)) n++;
  }
  return n;
}

export type ScheduleResult = { node: string } | { unschedulable: string };

/**
 * Chooses a node for `pod` among `nodes`, given every pod already bound (`others`, any node).
 * Filters by hard constraints, then prefers the node with the fewest pods matching preferred
 * anti-affinity terms, then the fewest pods overall, then the node order.
 */
export function schedule(pod: Pod, nodes: VirtualNode[], others: Pod[]): ScheduleResult {
  const reasons: string[] = [];
  const feasible = nodes.filter((node) => {
    for (const [k, v] of Object.entries(pod.spec.nodeSelector ?? {})) {
      if (node.labels[k] !== v) {
        reasons.push(`${node.name}: nodeSelector ${k}=${v} does not match`);
        return false;
      }
    }
    const terms = pod.spec.affinity?.nodeAffinity?.requiredDuringSchedulingIgnoredDuringExecution?.nodeSelectorTerms;
    if (terms !== undefined && terms.length > 0) {
      const ok = terms.some((t) => (t.matchExpressions ?? []).every((r) => matchesNodeRequirement(r, node.labels)));
      if (!ok) {
        reasons.push(`${node.name}: required node affinity does not match`);
        return false;
      }
    }
    for (const term of pod.spec.affinity?.podAntiAffinity?.requiredDuringSchedulingIgnoredDuringExecution ?? []) {
      if (podsMatchingTerm(pod, term, node, nodes, others) > 0) {
        reasons.push(`${node.name}: required pod anti-affinity (${term.topologyKey})`);
        return false;
      }
    }
    return true;
  });
  if (feasible.length === 0) return { unschedulable: `0/${nodes.length} nodes are available: ${reasons.join('; ')}` };
  const score = (node: VirtualNode): [number, number] => {
    let preferred = 0;
    for (const w of pod.spec.affinity?.podAntiAffinity?.preferredDuringSchedulingIgnoredDuringExecution ?? []) {
      preferred += w.weight * podsMatchingTerm(pod, w.podAffinityTerm, node, nodes, others);
    }
    const load = others.filter((o) => o.spec.nodeName === node.name && o.metadata.uid !== pod.metadata.uid).length;
    return [preferred, load];
  };
  let best = feasible[0] as VirtualNode;
  let bestScore = score(best);
  for (const node of feasible.slice(1)) {
    const s = score(node);
    if (s[0] < bestScore[0] || (s[0] === bestScore[0] && s[1] < bestScore[1])) {
      best = node;
      bestScore = s;
    }
  }
  return { node: best.name };
}

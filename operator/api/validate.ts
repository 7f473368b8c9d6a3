// The operator's own check of a CelerCluster spec. The CRD states the same rules as schema
// bounds and CEL (x-kubernetes-validations), but the 1.20 apiserver we support does not run
// CEL, and older objects may predate a rule; so reconcile validates every spec first and
// reports an invalid one on the Degraded and Ready conditions instead of acting on it.
//
// Every rule that the CRD states in CEL produces the CRD rule's exact message here, which
// api/cel.test.ts uses to prove that the two agree on the same inputs.

import type { CelerClusterSpec, Routing } from './types.ts';
import { LIMITS, SIZE_PATTERN, VERSION_PATTERN } from './limits.ts';
import { DEFAULT_LEASE, DEFAULT_ROUTING, DEFAULT_STANDALONE } from './defaults.ts';

export interface ValidationIssue {
  /** JSON path of the offending field, e.g. "spec.lease.renewDeadlineMs". */
  field: string;
  message: string;
  /** True when the CRD states this rule in CEL (the message is the CRD rule's message). */
  cel: boolean;
}

/** What was true before this spec: the stored data layout and the storage in use. */
export interface PreviousState {
  shards?: number | null;
  routing?: Routing;
  s3Bucket?: string | null;
  s3Prefix?: string | null;
  storage?: { size: string; storageClassName?: string } | null;
}

export const MESSAGES = {
  standaloneReplicas: 'a standalone cluster runs one node (a second standalone pod would be an orphan store); set replicas: 1, or standalone: false with an s3 section for a two-node cluster',
  s3Required: 'a two-node cluster (standalone: false) needs spec.s3 for its lease and catch-up',
  replicasTwo: 'a two-node cluster (standalone: false) needs replicas: 2',
  shardsRequired: 'a two-node cluster (standalone: false) needs spec.shards so that both nodes agree',
  shardsImmutable: 'shards cannot change once set: the data was created with it',
  routingImmutable: 'routing cannot change: the data was created with it',
  renewInterval: 'renewIntervalMs must be at most half of renewDeadlineMs, so the leader gets two renew attempts before it fences itself',
  renewDeadline: 'renewDeadlineMs + maxClockDriftMs must be less than leaseTtlMs, so the leader stops writing before the follower may take over',
  prefixSlash: 's3.prefix must be empty or end with "/"',
  s3Immutable: 's3.bucket and s3.prefix cannot change: the lease and catch-up objects live there',
  storageImmutable: 'storage cannot change: StatefulSet volume claim templates are immutable',
} as const;

type Check = (issues: ValidationIssue[]) => void;

function bounded(field: string, value: number | undefined, min: number, max: number): Check {
  return (issues) => {
    if (value === undefined) return;
    if (!Number.isInteger(value)) issues.push({ field, message: `${field} must be an integer, got ${JSON.stringify(value)}`, cel: false });
    else if (value < min || value > max) issues.push({ field, message: `${field} must be between ${min} and ${max}, got ${value}`, cel: false });
  };
}

function matches(field: string, value: string | undefined, pattern: string, required: boolean): Check {
  return (issues) => {
    if (value === undefined) {
      if (required) issues.push({ field, message: `${field} is required`, cel: false });
      return;
    }
    if (!new RegExp(pattern).test(value)) issues.push({ field, message: `${field} ${JSON.stringify(value)} must match ${pattern}`, cel: false });
  };
}

/**
 * Validates a spec as the CRD schema and its CEL rules would, with defaults applied as the
 * apiserver applies them (standalone true, routing id, lease timings). `previous` stands in
 * for CEL's oldSelf: the operator keeps the data layout in status and reads the storage from
 * the StatefulSet it owns.
 */
export function validateSpec(raw: CelerClusterSpec, previous: PreviousState = {}): ValidationIssue[] {
  const issues: ValidationIssue[] = [];
  const standalone = raw.standalone ?? DEFAULT_STANDALONE;
  const lease = raw.lease ?? {};
  const routing = raw.routing ?? DEFAULT_ROUTING;
  const push = (field: string, message: string): void => { issues.push({ field, message, cel: true }); };

  const checks: Check[] = [
    matches('spec.version', raw.version, VERSION_PATTERN, true),
    matches('spec.storage.size', raw.storage?.size, SIZE_PATTERN, true),
    bounded('spec.replicas', raw.replicas, LIMITS.replicasMin, LIMITS.replicasMax),
    bounded('spec.shards', raw.shards, LIMITS.shardsMin, LIMITS.shardsMax),
    bounded('spec.lease.leaseTtlMs', lease.leaseTtlMs, LIMITS.leaseTtlMsMin, LIMITS.leaseTtlMsMax),
    bounded('spec.lease.renewDeadlineMs', lease.renewDeadlineMs, LIMITS.renewDeadlineMsMin, LIMITS.renewDeadlineMsMax),
    bounded('spec.lease.renewIntervalMs', lease.renewIntervalMs, LIMITS.renewIntervalMsMin, LIMITS.renewIntervalMsMax),
    bounded('spec.lease.maxClockDriftMs', lease.maxClockDriftMs, LIMITS.maxClockDriftMsMin, LIMITS.maxClockDriftMsMax),
  ];
  for (const check of checks) check(issues);

  if (!['org', 'type', 'id'].includes(routing)) {
    issues.push({ field: 'spec.routing', message: `spec.routing must be one of org, type, id, got ${JSON.stringify(routing)}`, cel: false });
  }
  if (raw.upgradePolicy !== undefined && !['automatic', 'supervised'].includes(raw.upgradePolicy)) {
    issues.push({ field: 'spec.upgradePolicy', message: `spec.upgradePolicy must be automatic or supervised, got ${JSON.stringify(raw.upgradePolicy)}`, cel: false });
  }
  if (raw.deletionPolicy !== undefined && !['Retain', 'Delete'].includes(raw.deletionPolicy)) {
    issues.push({ field: 'spec.deletionPolicy', message: `spec.deletionPolicy must be Retain or Delete, got ${JSON.stringify(raw.deletionPolicy)}`, cel: false });
  }
  if (raw.s3 !== undefined && (typeof raw.s3.bucket !== 'string' || raw.s3.bucket.length < 3)) {
    issues.push({ field: 'spec.s3.bucket', message: 'spec.s3.bucket is required (at least 3 characters)', cel: false });
  }
  if (raw.tls !== undefined) {
    // The node has no TLS listener yet: pods given --tls-* flags would crash-loop on an unknown option.
    issues.push({ field: 'spec.tls', message: 'spec.tls is not supported yet: celer serve has no TLS listener, so the operator creates no pods for this cluster; remove spec.tls (terminate TLS in front of the client Service meanwhile)', cel: false });
  }

  // Rules the CRD states in CEL, with the CRD's messages.
  // Standalone nodes do not replicate: a second pod would be an orphan store. (Past the schema's
  // maximum only the bound is reported, as the apiserver's schema check runs before CEL.)
  if (standalone && raw.replicas !== undefined && raw.replicas !== 1 && !issues.some((i) => i.field === 'spec.replicas')) issues.push({ field: 'spec.replicas', message: MESSAGES.standaloneReplicas, cel: true });
  if (!standalone && raw.s3 === undefined) push('spec', MESSAGES.s3Required);
  if (!standalone && raw.replicas !== undefined && raw.replicas !== 2) push('spec', MESSAGES.replicasTwo);
  if (!standalone && raw.shards === undefined) push('spec', MESSAGES.shardsRequired);
  if (raw.s3?.prefix !== undefined && raw.s3.prefix !== '' && !raw.s3.prefix.endsWith('/')) push('spec.s3', MESSAGES.prefixSlash);

  // The lease rules run on the defaulted lease object, as the apiserver defaults before it validates.
  const ttl = lease.leaseTtlMs ?? DEFAULT_LEASE.leaseTtlMs;
  const deadline = lease.renewDeadlineMs ?? DEFAULT_LEASE.renewDeadlineMs;
  const interval = lease.renewIntervalMs ?? DEFAULT_LEASE.renewIntervalMs;
  const drift = lease.maxClockDriftMs ?? DEFAULT_LEASE.maxClockDriftMs;
  if (!(interval * 2 <= deadline)) push('spec.lease', MESSAGES.renewInterval);
  if (!(deadline + drift < ttl)) push('spec.lease', MESSAGES.renewDeadline);

  // Transition rules (CEL oldSelf): only when there is an old value to compare with.
  if (previous.shards !== undefined && previous.shards !== null && raw.shards !== previous.shards) push('spec', MESSAGES.shardsImmutable);
  if (previous.routing !== undefined && routing !== previous.routing) push('spec', MESSAGES.routingImmutable);
  if (previous.s3Bucket !== undefined && previous.s3Bucket !== null && raw.s3 !== undefined) {
    if (raw.s3.bucket !== previous.s3Bucket || (raw.s3.prefix ?? '') !== (previous.s3Prefix ?? '')) push('spec.s3', MESSAGES.s3Immutable);
  }
  if (previous.storage !== undefined && previous.storage !== null && raw.storage !== undefined) {
    const before = previous.storage;
    if (raw.storage.size !== before.size || (raw.storage.storageClassName ?? '') !== (before.storageClassName ?? '')) {
      push('spec.storage', MESSAGES.storageImmutable);
    }
  }
  return issues;
}

/** One line for a condition message: the first few issues, field first. */
export function describeIssues(issues: readonly ValidationIssue[]): string {
  const shown = issues.slice(0, 3).map((i) => `${i.field}: ${i.message}`);
  const more = issues.length > 3 ? `; and ${issues.length - 3} more` : '';
  return shown.join('; ') + more;
}

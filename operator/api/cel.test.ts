// The CRD's CEL rules and the operator's validator must accept and refuse the same specs,
// because the 1.20 apiserver does not run CEL and the operator enforces the rules itself.
// Each case is evaluated twice: every x-kubernetes-validations rule of the CRD, run by a CEL
// evaluator on the spec after the schema's defaults (as the apiserver would), and
// validateSpec() on the raw spec. Both must name exactly the expected rule messages.

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { evaluate } from '@marcbachmann/cel-js';
import { applySchemaDefaults, collectRules, loadCrdSchema, schemaAt } from './crd-schema.ts';
import { MESSAGES, validateSpec, type PreviousState } from './validate.ts';
import type { CelerClusterSpec } from './types.ts';

const schema = loadCrdSchema();
const rules = collectRules(schema);
const specSchema = schemaAt(schema, ['spec']);
if (specSchema === undefined) throw new Error('CRD has no spec schema');

/** CEL sees integer fields as int: the evaluator wants bigint for those. */
function toCel(value: unknown): unknown {
  if (typeof value === 'number' && Number.isInteger(value)) return BigInt(value);
  if (Array.isArray(value)) return value.map(toCel);
  if (value !== null && typeof value === 'object') {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, toCel(v)]));
  }
  return value;
}

function at(root: unknown, path: readonly string[]): unknown {
  let node = root;
  for (const name of path) {
    if (node === null || typeof node !== 'object') return undefined;
    node = (node as Record<string, unknown>)[name];
  }
  return node;
}

/** Messages of the CRD rules that refuse `spec` (an update from `oldSpec` when given). */
function celMessages(spec: CelerClusterSpec, oldSpec?: CelerClusterSpec): string[] {
  const root = { spec: applySchemaDefaults(spec, specSchema!) };
  const oldRoot = oldSpec === undefined ? undefined : { spec: applySchemaDefaults(oldSpec, specSchema!) };
  const failed: string[] = [];
  for (const r of rules) {
    const self = at(root, r.path);
    if (self === undefined) continue;
    const ctx: Record<string, unknown> = { self: toCel(self) };
    if (r.transition) {
      const oldSelf = oldRoot === undefined ? undefined : at(oldRoot, r.path);
      if (oldSelf === undefined) continue;
      ctx.oldSelf = toCel(oldSelf);
    }
    if (evaluate(r.rule, ctx) !== true) failed.push(r.message);
  }
  return failed.sort();
}

function previousFrom(oldSpec: CelerClusterSpec | undefined): PreviousState {
  if (oldSpec === undefined) return {};
  return {
    shards: oldSpec.shards ?? null,
    routing: oldSpec.routing ?? 'id',
    s3Bucket: oldSpec.s3?.bucket ?? null,
    s3Prefix: oldSpec.s3?.prefix ?? null,
    storage: oldSpec.storage,
  };
}

function validatorMessages(spec: CelerClusterSpec, oldSpec?: CelerClusterSpec): string[] {
  return validateSpec(spec, previousFrom(oldSpec)).filter((i) => i.cel).map((i) => i.message).sort();
}

const base: CelerClusterSpec = { version: '0.1.0', storage: { size: '10Gi' } };
const twoNode: CelerClusterSpec = {
  ...base, standalone: false, replicas: 2, shards: 4, s3: { bucket: 'celer-test', prefix: 'a/' },
};

interface Case { name: string; spec: CelerClusterSpec; old?: CelerClusterSpec; expect: string[] }

const cases: Case[] = [
  { name: 'a minimal standalone spec', spec: base, expect: [] },
  { name: 'a complete two-node spec', spec: twoNode, expect: [] },
  { name: 'a two-node spec without s3', spec: { ...twoNode, s3: undefined }, expect: [MESSAGES.s3Required] },
  { name: 'a two-node spec with one replica', spec: { ...twoNode, replicas: 1 }, expect: [MESSAGES.replicasTwo] },
  { name: 'a two-node spec without shards', spec: { ...twoNode, shards: undefined }, expect: [MESSAGES.shardsRequired] },
  { name: 'a standalone spec with two replicas', spec: { ...base, replicas: 2 }, expect: [MESSAGES.standaloneReplicas] },
  { name: 'an explicitly standalone spec with one replica', spec: { ...base, standalone: true, replicas: 1 }, expect: [] },
  { name: 'a renew interval over half the deadline', spec: { ...base, lease: { renewIntervalMs: 600 } }, expect: [MESSAGES.renewInterval] },
  { name: 'a renew interval of exactly half the deadline', spec: { ...base, lease: { renewIntervalMs: 500 } }, expect: [] },
  { name: 'a deadline plus drift equal to the TTL', spec: { ...base, lease: { leaseTtlMs: 1200 } }, expect: [MESSAGES.renewDeadline] },
  {
    name: 'a shorter consistent lease',
    spec: { ...base, lease: { leaseTtlMs: 800, renewDeadlineMs: 500, renewIntervalMs: 100, maxClockDriftMs: 100 } },
    expect: [],
  },
  {
    name: 'a lease breaking both timing rules',
    spec: { ...base, lease: { leaseTtlMs: 900, renewDeadlineMs: 800, renewIntervalMs: 500, maxClockDriftMs: 200 } },
    expect: [MESSAGES.renewInterval, MESSAGES.renewDeadline],
  },
  { name: 'an s3 prefix without a trailing slash', spec: { ...twoNode, s3: { bucket: 'celer-test', prefix: 'a' } }, expect: [MESSAGES.prefixSlash] },
  { name: 'an empty s3 prefix', spec: { ...twoNode, s3: { bucket: 'celer-test', prefix: '' } }, expect: [] },
  { name: 'an update that keeps everything', spec: twoNode, old: twoNode, expect: [] },
  { name: 'an update that changes shards', spec: { ...twoNode, shards: 8 }, old: twoNode, expect: [MESSAGES.shardsImmutable] },
  { name: 'an update that sets shards for the first time', spec: { ...base, shards: 8 }, old: base, expect: [] },
  { name: 'an update that removes shards', spec: { ...base }, old: { ...base, shards: 2 }, expect: [MESSAGES.shardsImmutable] },
  { name: 'an update that changes routing', spec: { ...base, routing: 'org' }, old: base, expect: [MESSAGES.routingImmutable] },
  { name: 'an update that changes the version', spec: { ...twoNode, version: '0.2.0' }, old: twoNode, expect: [] },
  {
    name: 'an update that moves the bucket',
    spec: { ...twoNode, s3: { bucket: 'other-bucket', prefix: 'a/' } }, old: twoNode, expect: [MESSAGES.s3Immutable],
  },
  {
    name: 'an update that changes the prefix',
    spec: { ...twoNode, s3: { bucket: 'celer-test', prefix: 'b/' } }, old: twoNode, expect: [MESSAGES.s3Immutable],
  },
  { name: 'an update that grows the volume', spec: { ...base, storage: { size: '20Gi' } }, old: base, expect: [MESSAGES.storageImmutable] },
];

for (const c of cases) {
  test(`the CRD rules and the validator agree on ${c.name}`, () => {
    const expected = [...c.expect].sort();
    assert.deepEqual(celMessages(c.spec, c.old), expected, 'CEL rules of the CRD');
    assert.deepEqual(validatorMessages(c.spec, c.old), expected, 'validateSpec()');
  });
}

test('every CEL rule of the CRD is exercised by a case that it refuses', () => {
  const refused = new Set(cases.flatMap((c) => c.expect));
  for (const r of rules) assert.ok(refused.has(r.message), `no case refused by: ${r.rule}`);
});

test('every CEL rule of the CRD has a message the validator can produce', () => {
  const known = new Set<string>(Object.values(MESSAGES));
  for (const r of rules) assert.ok(known.has(r.message), `validator lacks message: ${r.message}`);
});

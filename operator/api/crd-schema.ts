// Reads crds/celer.io_celerclusters.yaml: the OpenAPI schema, its defaults and its CEL rules.
// Used by the tests that keep the CRD and the operator's own validator and defaults in step.

import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';

export const CRD_PATH = fileURLToPath(new URL('../../crds/celer.io_celerclusters.yaml', import.meta.url));

export interface Schema {
  type?: string;
  properties?: Record<string, Schema>;
  items?: Schema;
  required?: string[];
  default?: unknown;
  minimum?: number;
  maximum?: number;
  enum?: unknown[];
  pattern?: string;
  'x-kubernetes-validations'?: { rule: string; message: string }[];
}

export interface CelRule {
  /** Property path from the root of the object, e.g. ["spec", "lease"]. */
  path: string[];
  rule: string;
  message: string;
  /** A transition rule: it reads oldSelf, so it runs only on updates. */
  transition: boolean;
}

export function loadCrdSchema(path: string = CRD_PATH): Schema {
  const crd = parse(readFileSync(path, 'utf8')) as {
    spec: { versions: { name: string; schema: { openAPIV3Schema: Schema } }[] };
  };
  const version = crd.spec.versions.find((v) => v.name === 'v1alpha1');
  if (version === undefined) throw new Error(`${path} has no v1alpha1 version`);
  return version.schema.openAPIV3Schema;
}

/** Every x-kubernetes-validations rule in the schema, with where it sits. */
export function collectRules(schema: Schema, path: string[] = []): CelRule[] {
  const rules: CelRule[] = (schema['x-kubernetes-validations'] ?? []).map((r) => ({
    path,
    rule: r.rule,
    message: r.message,
    transition: r.rule.includes('oldSelf'),
  }));
  for (const [name, child] of Object.entries(schema.properties ?? {})) rules.push(...collectRules(child, [...path, name]));
  return rules;
}

/** The schema node at a property path, or undefined. */
export function schemaAt(schema: Schema, path: readonly string[]): Schema | undefined {
  let node: Schema | undefined = schema;
  for (const name of path) node = node?.properties?.[name];
  return node;
}

/**
 * Structural-schema defaulting as the apiserver does it: a missing property with a default
 * gets the default (deep-copied), then defaulting recurses into objects that are present.
 */
export function applySchemaDefaults(value: unknown, schema: Schema): unknown {
  if (value === null || typeof value !== 'object' || Array.isArray(value) || schema.properties === undefined) return value;
  const out: Record<string, unknown> = { ...(value as Record<string, unknown>) };
  for (const [name, child] of Object.entries(schema.properties)) {
    if (out[name] === undefined && child.default !== undefined) out[name] = structuredClone(child.default);
    if (out[name] !== undefined) out[name] = applySchemaDefaults(out[name], child);
  }
  return out;
}

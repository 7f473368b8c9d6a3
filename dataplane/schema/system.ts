// The reserved key space: org 2^128-1 (the "max UUID" ffffffff-ffff-ffff-ffff-ffffffffffff, which
// RFC 9562 sets apart as a sentinel) holds Celer's own aggregates. Today one: the schema registry,
// whose events are the registrations of every org. They are ordinary events of an ordinary
// aggregate, written through the shard's write path, so they are fsync'd, replicated, hash-chained
// and recovered like any write. Users can neither write nor read there (9100 at the router), and the
// shard feed leaves these batches out of unfiltered reads (shard/feed.ts), so a projection reading a
// whole shard never meets them.
import { U128_MAX, type NormalizedKey } from '../../client/key.ts';

export const SYSTEM_ORG = U128_MAX;

/** The schema registry's aggregate. */
export const SCHEMA_REGISTRY_KEY: NormalizedKey = { org: SYSTEM_ORG, type: U128_MAX, id: 1n };

/** Event type of one registration in the registry aggregate (data: JSON, see registry.ts). */
export const SCHEMA_REGISTERED_EVENT = 'SchemaRegistered';

export function isSystemOrg(org: bigint): boolean {
  return org === SYSTEM_ORG;
}

/** The key's 48 raw bytes (org | type | id, big-endian) lie in the reserved org. */
export function isSystemKeyBytes(key: Uint8Array): boolean {
  for (let i = 0; i < 16; i++) if (key[i] !== 0xff) return false;
  return true;
}

/** The 9100 message for a user request that names the reserved org; `where` names the field. */
export function reservedOrgMessage(where: string): string {
  return `${where} is 340282366920938463463374607431768211455 (ffffffff-ffff-ffff-ffff-ffffffffffff), the org Celer reserves for its own aggregates (the schema registry); use another org. Schemas are read with listSchemas / celer schema list`;
}

// Aggregate keys: three unsigned 128-bit parts { org, type, id } (SPEC §1).
// The client accepts bigint, a non-negative safe-integer number, or a UUID string per part;
// the text form (CLI, HTTP) is "org/type/id" with each part decimal or UUID.

export type KeyPart = bigint | number | string;

export interface AggregateKey {
  org: KeyPart;
  type: KeyPart;
  id: KeyPart;
}

/** A key with every part normalised to a bigint in [0, 2^128). */
export interface NormalizedKey {
  org: bigint;
  type: bigint;
  id: bigint;
}

export const U128_MAX = (1n << 128n) - 1n;
export const U64_MAX = (1n << 64n) - 1n;

const UUID_RE = /^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$/;
const DECIMAL_RE = /^[0-9]{1,39}$/;

export class KeyError extends Error {
  override name = 'KeyError';
}

/** Parses one part; `what` names it in error messages ("org", "clientId"). */
export function toU128(part: KeyPart, what: string): bigint {
  let v: bigint;
  if (typeof part === 'bigint') {
    v = part;
  } else if (typeof part === 'number') {
    if (!Number.isSafeInteger(part) || part < 0) {
      throw new KeyError(`${what} must be a non-negative safe integer, a bigint or a UUID string; got ${part}`);
    }
    v = BigInt(part);
  } else if (typeof part === 'string') {
    if (UUID_RE.test(part)) v = BigInt('0x' + part.replaceAll('-', ''));
    else if (DECIMAL_RE.test(part)) v = BigInt(part);
    else throw new KeyError(`${what} must be a decimal number or a UUID (8-4-4-4-12 hex); got "${part}"`);
  } else {
    throw new KeyError(`${what} must be a bigint, number or UUID string; got ${typeof part}`);
  }
  if (v < 0n || v > U128_MAX) throw new KeyError(`${what} must fit in an unsigned 128-bit integer; got ${v}`);
  return v;
}

export function normalizeKey(key: AggregateKey): NormalizedKey {
  if (key === null || typeof key !== 'object') throw new KeyError('key must be an object { org, type, id }');
  return { org: toU128(key.org, 'key.org'), type: toU128(key.type, 'key.type'), id: toU128(key.id, 'key.id') };
}

/** Parses the text form "org/type/id". */
export function parseKey(text: string): NormalizedKey {
  const parts = text.split('/');
  if (parts.length !== 3) throw new KeyError(`a key is "org/type/id" (three parts, decimal or UUID); got "${text}"`);
  return { org: toU128(parts[0]!, 'org'), type: toU128(parts[1]!, 'type'), id: toU128(parts[2]!, 'id') };
}

export function formatKey(k: NormalizedKey): string {
  return `${k.org}/${k.type}/${k.id}`;
}

/** Formats a 128-bit value as a UUID string. */
export function toUuid(v: bigint): string {
  const h = v.toString(16).padStart(32, '0');
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
}

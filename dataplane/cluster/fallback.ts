// S3 fallback batches: while the follower cannot be reached, each group commit of a shard goes
// to S3 as exactly one object before it is acknowledged; the follower (on its way back) and a
// node about to lead read them to catch up.
//
// Key: cluster/fallback/shard-NNN/<from:20>-<to:20>-e<epoch:12>-<node id>.bin — zero-padded so
// key order is seq order; the epoch and the uploader are in the key, and objects are created
// with If-None-Match: *, so a deposed leader can never overwrite what a newer one wrote.
// Body: "CLFB" | u32 format (1) | u32 CRC32C of what follows | u32 shard | u64 from | u64 to |
// u64 epoch | u32 record count | records (exact bytes, self-delimiting).
import { crc32c } from '../storage/checksum.ts';
import { checkRecord } from '../storage/record.ts';

export const FALLBACK_FORMAT = 1;
const MAGIC = 0x434c4642; // "CLFB"
const HEADER_BYTES = 44;

export interface FallbackKey {
  key: string;
  shard: number;
  from: number;
  to: number;
  epoch: number;
  node: string;
}

/** Where every shard's fallback objects live. */
export const FALLBACK_PREFIX = 'cluster/fallback/';

export function shardPrefix(shard: number): string {
  return `${FALLBACK_PREFIX}shard-${String(shard).padStart(3, '0')}/`;
}

export function fallbackKey(shard: number, from: number, to: number, epoch: number, node: string): string {
  return `${shardPrefix(shard)}${String(from).padStart(20, '0')}-${String(to).padStart(20, '0')}-e${String(epoch).padStart(12, '0')}-${node}.bin`;
}

const KEY_RE = /^cluster\/fallback\/shard-(\d{3,})\/(\d{20})-(\d{20})-e(\d{12})-([A-Za-z0-9-]{1,64})\.bin$/;

/** Parses a fallback key; null for anything else (such keys are ignored, never deleted). */
export function parseFallbackKey(key: string): FallbackKey | null {
  const m = KEY_RE.exec(key);
  if (m === null) return null;
  const from = Number(m[2]);
  const to = Number(m[3]);
  if (!Number.isSafeInteger(from) || !Number.isSafeInteger(to) || from < 1 || to < from) return null;
  return { key, shard: Number(m[1]), from, to, epoch: Number(m[4]), node: m[5]! };
}

export function encodeFallback(shard: number, from: number, to: number, epoch: number, records: readonly Uint8Array[]): Uint8Array {
  let n = HEADER_BYTES;
  for (const r of records) n += r.length;
  const out = new Uint8Array(n);
  const v = new DataView(out.buffer);
  v.setUint32(0, MAGIC);
  v.setUint32(4, FALLBACK_FORMAT);
  v.setUint32(12, shard);
  v.setBigUint64(16, BigInt(from));
  v.setBigUint64(24, BigInt(to));
  v.setBigUint64(32, BigInt(epoch));
  v.setUint32(40, records.length);
  let at = HEADER_BYTES;
  for (const r of records) {
    out.set(r, at);
    at += r.length;
  }
  v.setUint32(8, crc32c(out.subarray(12)));
  return out;
}

export class FallbackFormatError extends Error {
  override name = 'FallbackFormatError';
}

/** Checks and splits a fallback object; throws FallbackFormatError when it fails a check. */
export function decodeFallback(body: Uint8Array, expect: FallbackKey): Uint8Array[] {
  if (body.length < HEADER_BYTES) throw new FallbackFormatError(`${expect.key}: ${body.length} bytes is shorter than a fallback header`);
  const v = new DataView(body.buffer, body.byteOffset, body.length);
  if (v.getUint32(0) !== MAGIC || v.getUint32(4) !== FALLBACK_FORMAT) throw new FallbackFormatError(`${expect.key}: not a format-${FALLBACK_FORMAT} fallback object`);
  if (v.getUint32(8) !== crc32c(body.subarray(12))) throw new FallbackFormatError(`${expect.key}: checksum mismatch`);
  if (v.getUint32(12) !== expect.shard || Number(v.getBigUint64(16)) !== expect.from || Number(v.getBigUint64(24)) !== expect.to || Number(v.getBigUint64(32)) !== expect.epoch) {
    throw new FallbackFormatError(`${expect.key}: its header does not match its key`);
  }
  const count = v.getUint32(40);
  const out: Uint8Array[] = [];
  let at = HEADER_BYTES;
  let next = expect.from;
  for (let i = 0; i < count; i++) {
    const c = checkRecord(body, at, body.length - at);
    if (!c.ok) throw new FallbackFormatError(`${expect.key}: record ${i} fails its checks`);
    if (c.header.firstSeq !== next) throw new FallbackFormatError(`${expect.key}: record ${i} starts at seq ${c.header.firstSeq}, expected ${next}`);
    next = c.header.firstSeq + c.header.batchCount;
    out.push(body.subarray(at, at + c.header.length));
    at += c.header.length;
  }
  if (at !== body.length || next !== expect.to + 1) throw new FallbackFormatError(`${expect.key}: records do not cover seqs ${expect.from}..${expect.to} exactly`);
  return out;
}

// The shard feed's messages (Op.ReadShard / ReadShardOk): a shard's committed batches in position
// order, for projections and subscriptions. Re-exported from wire.ts.
import type { NormalizedKey } from './key.ts';
import { Reader, WireError, Writer } from './codec.ts';
import { Limits } from './limits.ts';
import { readEvent, type WireBatchHeader, type WireEvent } from './wire.ts';

/** What a shard-feed batch does to its aggregate (the log's batch op). */
export const BatchOpWire = { Write: 0, Delete: 1, Trim: 2 } as const;
export type BatchOpWireCode = (typeof BatchOpWire)[keyof typeof BatchOpWire];

/** Which batches of a shard a feed read returns. */
export const FeedFilter = { None: 0, Org: 1, OrgType: 2, Key: 3 } as const;
export type FeedFilterMode = (typeof FeedFilter)[keyof typeof FeedFilter];
/** `shard` value asking for the shard the filter's key routes to (needs FeedFilter.Key). */
export const SHARD_OF_KEY = 0xffff_ffff;
const FEED_HEADERS_ONLY = 1;

export interface WireReadShardRequest {
  /** The shard, or SHARD_OF_KEY. */
  shard: number;
  /** First seq wanted (inclusive; 0 = 1). */
  from: bigint;
  maxBytes: number;
  /** When nothing at or after `from` is committed yet, wait up to this long for it (0 = answer now). */
  waitMs: number;
  filter: FeedFilterMode;
  /** org | type | id; only the parts the filter names are looked at (zeros elsewhere). */
  key: NormalizedKey;
  /** Batch headers without their events (watch). */
  headersOnly: boolean;
}

export function encodeReadShardRequest(req: WireReadShardRequest): Uint8Array {
  const w = new Writer(80);
  w.u32(req.shard);
  w.u64(req.from);
  w.u32(req.maxBytes);
  w.u32(req.waitMs);
  w.u8(req.filter);
  w.u8(req.headersOnly ? FEED_HEADERS_ONLY : 0);
  w.key(req.key);
  return w.finish();
}

export function decodeReadShardRequest(body: Uint8Array): WireReadShardRequest {
  const r = new Reader(body);
  const shard = r.u32('shard');
  let from = r.u64('from');
  if (from === 0n) from = 1n;
  let maxBytes = r.u32('maxBytes');
  if (maxBytes === 0) maxBytes = Limits.readPageBytesDefault;
  maxBytes = Math.min(maxBytes, Limits.readPageBytesMax);
  const waitMs = r.u32('waitMs');
  if (waitMs > Limits.feedWaitMsMax) throw new WireError(`waitMs ${waitMs} is above the longest feed wait, ${Limits.feedWaitMsMax} ms; poll again instead`);
  const filter = r.u8('filter');
  if (filter > FeedFilter.Key) throw new WireError(`unknown feed filter ${filter}; known: 0 none, 1 org, 2 org+type, 3 key`);
  const flags = r.u8('flags');
  if ((flags & ~FEED_HEADERS_ONLY) !== 0) throw new WireError(`unknown feed flags 0x${flags.toString(16)}`);
  const key = r.key('key');
  r.done('the shard feed request');
  if (shard === SHARD_OF_KEY && filter !== FeedFilter.Key) throw new WireError('a feed read of "the shard of the key" needs a key filter');
  return { shard, from, maxBytes, waitMs, filter: filter as FeedFilterMode, key, headersOnly: (flags & FEED_HEADERS_ONLY) !== 0 };
}

export interface WireShardBatch extends WireBatchHeader {
  key: NormalizedKey;
  /** What the batch does: a write (events), a delete (tombstone) or a trim; no events for the last two. */
  op: BatchOpWireCode;
  /** The aggregate's first readable version after this batch. */
  minVersion: bigint;
  events: (WireEvent & { version: bigint })[];
}

export interface WireReadShardOk {
  shard: number;
  /** How many shards the node has (a subscription to an org covers all of them). */
  numShards: number;
  /** The seq to ask for next: one past the last batch this page looked at (filtered out or not). */
  next: bigint;
  /** The shard's committed seq when the page was read. */
  committedSeq: bigint;
  headersOnly: boolean;
  batches: WireShardBatch[];
}

/** u32 shard | u32 numShards | u64 next | u64 committedSeq | u8 flags | u32 count | batches (key, u8 op, u64 minVersion, header, events). */
export function decodeReadShardOk(body: Uint8Array): WireReadShardOk {
  const r = new Reader(body);
  const shard = r.u32('shard');
  const numShards = r.u32('numShards');
  const next = r.u64('next');
  const committedSeq = r.u64('committedSeq');
  const flags = r.u8('flags');
  const n = r.u32('batch count');
  const batches: WireShardBatch[] = [];
  for (let i = 0; i < n; i++) {
    const key = r.key(`batches[${i}].key`);
    const op = r.u8(`batches[${i}].op`);
    if (op > BatchOpWire.Trim) throw new WireError(`batches[${i}] has unknown op ${op}`);
    const minVersion = r.u64(`batches[${i}].minVersion`);
    const h: WireBatchHeader = {
      fromVersion: r.u64('fromVersion'),
      toVersion: r.u64('toVersion'),
      shard: r.u32('shard'),
      seq: r.u64('seq'),
      clientId: r.u128('clientId'),
      serverTimestampMs: r.u64n('serverTimestampMs'),
      eventCount: r.u32('eventCount'),
    };
    const events: (WireEvent & { version: bigint })[] = [];
    for (let j = 0; j < h.eventCount; j++) {
      const version = r.u64('version');
      events.push({ ...readEvent(r, `batches[${i}].events[${j}]`), version });
    }
    batches.push({ ...h, key, op: op as BatchOpWireCode, minVersion, events });
  }
  r.done('the shard feed response');
  return { shard, numShards, next, committedSeq, headersOnly: (flags & FEED_HEADERS_ONLY) !== 0, batches };
}

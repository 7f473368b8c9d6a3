// The shard feed on the client: one page of a shard's committed batches (Op.ReadShard), decoded;
// the reads that the subscriptions of one client share; and the checks of feed options. Used by
// feed.ts (the public calls) and follower.ts (the subscription iterator), on the caller's event
// loop. Nothing here holds state but the reads in flight.
import { toRecordedEvent } from './decode.ts';
import { badRequest } from './encode.ts';
import { toU128, type KeyPart, type NormalizedKey } from './key.ts';
import type { Batch } from './types.ts';
import {
  decodeReadShardOk,
  encodeFrame,
  encodeReadShardRequest,
  FeedFilter,
  Limits,
  Op,
  SHARD_OF_KEY,
  WireError,
  type Frame,
  type FeedFilterMode,
  type WireReadShardRequest,
} from './wire.ts';

/** Largest seq a position can have (2^53 - 1): asking from it returns the shard's tip without data. */
export const TIP_PROBE = BigInt(Number.MAX_SAFE_INTEGER);

/** What a feed batch does: a write carries events; a delete (tombstone) or a trim carries none. */
export type BatchOpName = 'write' | 'delete' | 'trim';

/** A committed batch from a shard's feed, with its aggregate. */
export interface ShardBatch extends Batch {
  key: NormalizedKey;
  /** `delete` and `trim` batches have no events; their fromVersion is the aggregate's version + 1. */
  op: BatchOpName;
  /** The aggregate's first readable version after this batch (raised by trims and deletes). */
  minVersion: bigint;
}

const OP_NAMES: readonly BatchOpName[] = ['write', 'delete', 'trim'];

export interface ShardPage {
  shard: number;
  /** Shards of the node. */
  numShards: number;
  batches: ShardBatch[];
  /** The seq to pass as `from` for the next page (one past the last batch looked at). */
  next: bigint;
  /** The shard's committed seq when this page was read. */
  committedSeq: bigint;
}

/** Sends one request frame (following the leader) and resolves with its answer. */
export type FeedSend = (frame: Uint8Array) => Promise<Frame>;

/** A feed read as the wire carries it (the subscription moves `from` along). */
export type FeedQuery = WireReadShardRequest;

export const NO_KEY: NormalizedKey = { org: 0n, type: 0n, id: 0n };

export async function feedPage(send: FeedSend, q: FeedQuery): Promise<ShardPage> {
  return (await fetchPage(send, q)).page;
}

/** A decoded feed page and the size of its body on the wire. */
export interface Fetched {
  page: ShardPage;
  bytes: number;
}

async function fetchPage(send: FeedSend, q: FeedQuery): Promise<Fetched> {
  const frame = encodeFrame(0, Op.ReadShard, encodeReadShardRequest(q));
  const answer = await send(frame);
  if (answer.op !== Op.ReadShardOk) throw new WireError(`readShard: the server answered op ${answer.op}`);
  return { page: decodePage(answer.body, q), bytes: answer.body.length };
}

function decodePage(body: Uint8Array, q: FeedQuery): ShardPage {
  const ok = decodeReadShardOk(body);
  if (ok.next < q.from && ok.batches.length > 0) throw new WireError(`readShard: the server returned next ${ok.next} for a page from ${q.from}`);
  return {
    shard: ok.shard,
    numShards: ok.numShards,
    next: ok.next,
    committedSeq: ok.committedSeq,
    batches: ok.batches.map((b) => ({
      key: b.key,
      op: OP_NAMES[b.op]!,
      minVersion: b.minVersion,
      fromVersion: b.fromVersion,
      toVersion: b.toVersion,
      position: { shard: b.shard, seq: b.seq },
      clientId: b.clientId,
      serverTimestampMs: b.serverTimestampMs,
      events: b.events.map(toRecordedEvent),
    })),
  };
}

/** The feed reads in flight of the subscriptions that share one `send` (one client), by query. */
const sharedReads = new WeakMap<FeedSend, Map<string, Promise<Fetched>>>();

const queryKey = (q: FeedQuery): string =>
  `${q.shard}|${q.from}|${q.maxBytes}|${q.waitMs}|${q.filter}|${q.key.org}|${q.key.type}|${q.key.id}|${q.headersOnly ? 1 : 0}`;

/**
 * A subscription's feed read: joins an identical read in flight on the same client, so N
 * subscriptions at one position cost one request and one decode. Only subscriptions share: each
 * asks from where it has got to, so a page built a moment before it asked is as good as its own
 * (it asks again from `next`). The page is frozen, as others hold it too (event data stays a
 * plain Uint8Array: treat it as read-only).
 */
export function sharedFetch(send: FeedSend, q: FeedQuery): Promise<Fetched> {
  let reads = sharedReads.get(send);
  if (reads === undefined) {
    reads = new Map();
    sharedReads.set(send, reads);
  }
  const k = queryKey(q);
  const inFlight = reads.get(k);
  if (inFlight !== undefined) return inFlight;
  const p = fetchPage(send, { ...q }).then((f) => {
    freezePage(f.page);
    return f;
  });
  reads.set(k, p);
  const settled = (): void => {
    if (reads.get(k) === p) reads.delete(k);
  };
  p.then(settled, settled);
  return p;
}

function freezePage(page: ShardPage): void {
  for (const b of page.batches) {
    for (const e of b.events) {
      if (e.schemaVersion !== undefined) Object.freeze(e.schemaVersion);
      Object.freeze(e);
    }
    Object.freeze(b.events);
    Object.freeze(b.position);
    Object.freeze(b.key);
    Object.freeze(b);
  }
  Object.freeze(page.batches);
  Object.freeze(page);
}

export function maxBytesOf(v: number | undefined): number {
  if (v === undefined) return 0;
  if (!Number.isSafeInteger(v) || v < 1) throw badRequest(`maxBytes must be a positive integer; got ${String(v)}`);
  return Math.min(v, Limits.readPageBytesMax);
}

export function waitOf(v: number | undefined, fallback: number, what: string): number {
  if (v === undefined) return fallback;
  if (!Number.isSafeInteger(v) || v < 0 || v > Limits.feedWaitMsMax) throw badRequest(`${what} must be an integer 0..${Limits.feedWaitMsMax}; got ${String(v)}`);
  return v;
}

export function shardOf(v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= SHARD_OF_KEY) throw badRequest(`shard must be a non-negative integer; got ${String(v)}`);
  return v;
}

export function orgFilter(f: { org?: KeyPart; type?: KeyPart }): { filter: FeedFilterMode; key: NormalizedKey } {
  if (f.org === undefined) {
    if (f.type !== undefined) throw badRequest('a type filter needs its org');
    return { filter: FeedFilter.None, key: NO_KEY };
  }
  const org = toU128(f.org, 'org');
  if (f.type === undefined) return { filter: FeedFilter.Org, key: { org, type: 0n, id: 0n } };
  return { filter: FeedFilter.OrgType, key: { org, type: toU128(f.type, 'type'), id: 0n } };
}

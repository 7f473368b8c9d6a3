// Live data on the client (SPEC §4): readShard, subscribeShard, subscribe (one aggregate, or an
// org / org+type with a resumable checkpoint) and watch, all built on one server operation, the
// shard feed (Op.ReadShard): a page of a shard's committed batches in position order, filtered on
// the server, with a long poll at the tail. Every batch a feed returns is committed, so positions
// and checkpoints hold on either node of a cluster, and the pool follows the leader across a
// failover (a feed read is idempotent).
//
// Memory: each iterator holds at most one page per shard (FeedOptions.maxBytes); a consumer that
// stops reading stops the polling, so a slow reader never holds anything on the server and never
// slows a writer.
import { badRequest, toU64 } from './encode.ts';
import { BadRequestError, ErrorCode, ReadBelowTrimmedError } from './errors.ts';
import { formatKey, normalizeKey, toU128, type AggregateKey, type KeyPart, type NormalizedKey } from './key.ts';
import type { Batch, RecordedEvent } from './types.ts';
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
  type WireEvent,
} from './wire.ts';

/** How long a feed read waits at the tail before the client asks again (a heartbeat interval). */
export const FEED_POLL_WAIT_MS_DEFAULT = 5_000;
/** Largest seq a position can have (2^53 - 1): asking from it returns the shard's tip without data. */
const TIP_PROBE = BigInt(Number.MAX_SAFE_INTEGER);
/** Shards one checkpoint can name. */
const CHECKPOINT_SHARDS_MAX = 4096;
const CHECKPOINT_PREFIX = 'c1:';

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

export interface ReadShardOptions {
  /** First seq (inclusive); default 1. */
  from?: bigint | number;
  /** About how many bytes of batches per page (at least one batch); default 1 MiB, at most 8 MiB. */
  maxBytes?: number;
  /** At the tail, wait up to this long for the next commit (long poll); default 0: answer now. */
  waitMs?: number;
  /** Only the batches of this org (and type). */
  org?: KeyPart;
  type?: KeyPart;
}

export interface SubscribeShardOptions {
  from?: bigint | number;
  maxBytes?: number;
  /** Long-poll wait per request at the tail; default FEED_POLL_WAIT_MS_DEFAULT. */
  pollWaitMs?: number;
}

export interface SubscribeKeyOptions {
  /** First version; default 1. */
  from?: bigint | number;
  maxBytes?: number;
  pollWaitMs?: number;
}

export interface SubscribeOrgFilter {
  org: KeyPart;
  type?: KeyPart;
}

export interface SubscribeOrgOptions {
  /** A checkpoint from a delivered batch: resume right after it. Absent: from the beginning. */
  from?: string;
  maxBytes?: number;
  pollWaitMs?: number;
}

/** A batch of an org subscription: `checkpoint`, passed back as `from`, resumes right after it. */
export interface SubscribedBatch extends ShardBatch {
  checkpoint: string;
}

export type WatchFilter = { key: AggregateKey } | { org: KeyPart; type?: KeyPart };

export interface WatchOptions {
  /** How long a change may wait to be coalesced with the next ones of the same aggregate; default 0. */
  maxLatencyMs?: number;
  /** Also yield `{ op: 'heartbeat' }` when nothing changed for a poll interval. */
  heartbeats?: boolean;
  pollWaitMs?: number;
}

/**
 * `write`: versions fromVersion..toVersion were written. `delete` and `trim`: versions
 * fromVersion..toVersion (from 1) are no longer readable — up to the aggregate's version for a
 * delete, below the new first readable version for a trim.
 */
export interface WatchNotification {
  key: NormalizedKey;
  op: BatchOpName;
  fromVersion: bigint;
  toVersion: bigint;
  /** Position of the newest batch this notification covers. */
  position: { shard: number; seq: bigint };
}

export interface WatchHeartbeat {
  op: 'heartbeat';
  /** The committed seq of each shard watched, as of this heartbeat. */
  committed: { shard: number; seq: bigint }[];
}

/** Sends one request frame (following the leader) and resolves with its answer. */
export type FeedSend = (frame: Uint8Array) => Promise<Frame>;

interface FeedQuery {
  shard: number;
  from: bigint;
  maxBytes: number;
  waitMs: number;
  filter: FeedFilterMode;
  key: NormalizedKey;
  headersOnly: boolean;
}

const NO_KEY: NormalizedKey = { org: 0n, type: 0n, id: 0n };

function toRecordedEvent(e: WireEvent & { version: bigint }): RecordedEvent {
  const out: RecordedEvent = { version: e.version, type: e.type, data: e.data };
  if (e.metadata !== undefined) out.metadata = e.metadata;
  if (e.schemaMajor !== undefined) out.schemaVersion = { major: e.schemaMajor, minor: e.schemaMinor ?? 0 };
  if (e.iv !== undefined) out.iv = e.iv;
  return out;
}

async function feedPage(send: FeedSend, q: FeedQuery): Promise<ShardPage> {
  const frame = encodeFrame(0, Op.ReadShard, encodeReadShardRequest(q));
  const answer = await send(frame);
  if (answer.op !== Op.ReadShardOk) throw new WireError(`readShard: the server answered op ${answer.op}`);
  const ok = decodeReadShardOk(answer.body);
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

function maxBytesOf(v: number | undefined): number {
  if (v === undefined) return 0;
  if (!Number.isSafeInteger(v) || v < 1) throw badRequest(`maxBytes must be a positive integer; got ${String(v)}`);
  return Math.min(v, Limits.readPageBytesMax);
}

function waitOf(v: number | undefined, fallback: number, what: string): number {
  if (v === undefined) return fallback;
  if (!Number.isSafeInteger(v) || v < 0 || v > Limits.feedWaitMsMax) throw badRequest(`${what} must be an integer 0..${Limits.feedWaitMsMax}; got ${String(v)}`);
  return v;
}

function shardOf(v: unknown): number {
  if (typeof v !== 'number' || !Number.isSafeInteger(v) || v < 0 || v >= SHARD_OF_KEY) throw badRequest(`shard must be a non-negative integer; got ${String(v)}`);
  return v;
}

function orgFilter(f: { org?: KeyPart; type?: KeyPart }): { filter: FeedFilterMode; key: NormalizedKey } {
  if (f.org === undefined) {
    if (f.type !== undefined) throw badRequest('a type filter needs its org');
    return { filter: FeedFilter.None, key: NO_KEY };
  }
  const org = toU128(f.org, 'org');
  if (f.type === undefined) return { filter: FeedFilter.Org, key: { org, type: 0n, id: 0n } };
  return { filter: FeedFilter.OrgType, key: { org, type: toU128(f.type, 'type'), id: 0n } };
}

/** One page of a shard's committed batches (SPEC §4 readShard). */
export async function readShard(send: FeedSend, shard: number, opts: ReadShardOptions = {}): Promise<ShardPage> {
  const f = orgFilter(opts);
  return feedPage(send, {
    shard: shardOf(shard),
    from: opts.from === undefined ? 1n : toU64(opts.from, 'from'),
    maxBytes: maxBytesOf(opts.maxBytes),
    waitMs: waitOf(opts.waitMs, 0, 'waitMs'),
    ...f,
    headersOnly: false,
  });
}

/** A shard's committed batches from `from`, then the live tail, until the caller stops. */
export async function* subscribeShard(send: FeedSend, shard: number, opts: SubscribeShardOptions = {}): AsyncGenerator<ShardBatch, void, undefined> {
  const q: FeedQuery = {
    shard: shardOf(shard),
    from: opts.from === undefined ? 1n : toU64(opts.from, 'from'),
    maxBytes: maxBytesOf(opts.maxBytes),
    waitMs: waitOf(opts.pollWaitMs, FEED_POLL_WAIT_MS_DEFAULT, 'pollWaitMs'),
    filter: FeedFilter.None,
    key: NO_KEY,
    headersOnly: false,
  };
  for (;;) {
    const page = await feedPage(send, q);
    yield* page.batches;
    q.from = page.next > q.from ? page.next : q.from;
  }
}

/** The events of `b` from version `from` on (a batch that straddles where a subscriber starts). */
function fromVersion<B extends Batch>(b: B, from: bigint): B {
  if (b.fromVersion >= from) return b;
  return { ...b, fromVersion: from, events: b.events.filter((e) => e.version >= from) };
}

/**
 * One aggregate from version `from`: its history, then its live tail, with no gap and no duplicate
 * across the switch. The shard's tip is taken first; the history read after it covers at least
 * that far; the tail starts right after the tip and skips what the history already gave, by
 * version (versions are gapless, so the version is an exact cursor).
 */
export async function* subscribeKey(
  send: FeedSend,
  readAll: (key: AggregateKey, from: bigint) => AsyncIterable<Batch>,
  key: AggregateKey,
  opts: SubscribeKeyOptions = {},
): AsyncGenerator<Batch, void, undefined> {
  const k = normalizeKey(key);
  // 0: from the first readable version (after trims), whatever it is.
  let next = opts.from === undefined ? 0n : toU64(opts.from, 'from');
  const waitMs = waitOf(opts.pollWaitMs, FEED_POLL_WAIT_MS_DEFAULT, 'pollWaitMs');
  const maxBytes = maxBytesOf(opts.maxBytes);
  const tip = await feedPage(send, { shard: SHARD_OF_KEY, from: TIP_PROBE, maxBytes, waitMs: 0, filter: FeedFilter.Key, key: k, headersOnly: true });
  try {
    for await (const b of readAll(key, next)) {
      if (b.toVersion < next) continue;
      yield fromVersion(b, next);
      next = b.toVersion + 1n;
    }
  } catch (e) {
    // 1001: nothing written yet; the tail brings its first batch.
    if (!(e instanceof Error && (e as { code?: number }).code === 1001)) throw e;
  }
  const q: FeedQuery = { shard: tip.shard, from: tip.committedSeq + 1n, maxBytes, waitMs, filter: FeedFilter.Key, key: k, headersOnly: false };
  for (;;) {
    const page = await feedPage(send, q);
    for (const b of page.batches) {
      // Deletes and trims take no version: an aggregate subscription passes over them (watch shows them).
      if (b.op !== 'write') continue;
      // Nothing readable came from the history: the first batch after the tip is where the tail starts.
      if (next === 0n) next = b.fromVersion;
      if (b.toVersion < next) continue;
      if (b.fromVersion > next) {
        // `next` was deleted (allowRecreate) or trimmed before the history read could say so (it
        // answered 1001 for the deleted aggregate): what a read from `next` answers now.
        if (b.minVersion > next) {
          throw new ReadBelowTrimmedError(ErrorCode.ReadBelowTrimmed, `subscribe ${formatKey(k)}: version ${next} was deleted or trimmed; the first readable version is ${b.minVersion}`, { minVersion: String(b.minVersion) });
        }
        throw new WireError(`subscribe ${formatKey(k)}: the feed skipped from version ${next} to ${b.fromVersion} (position ${b.position.shard}:${b.position.seq})`);
      }
      const { key: _k, ...batch } = fromVersion(b, next);
      yield batch;
      next = b.toVersion + 1n;
    }
    if (page.next > q.from) q.from = page.next;
  }
}

/** "c1:" + the last delivered seq of each shard, dot-separated. Opaque to users. */
export function encodeCheckpoint(seqs: readonly bigint[]): string {
  return CHECKPOINT_PREFIX + seqs.join('.');
}

export function decodeCheckpoint(cp: string, numShards: number): bigint[] {
  const bad = (why: string): BadRequestError => badRequest(`checkpoint "${String(cp).slice(0, 80)}" is not valid: ${why}; pass a checkpoint string from a delivered batch, unchanged`);
  if (typeof cp !== 'string' || !cp.startsWith(CHECKPOINT_PREFIX)) throw bad(`it does not start with ${CHECKPOINT_PREFIX}`);
  const parts = cp.slice(CHECKPOINT_PREFIX.length).split('.');
  if (parts.length > CHECKPOINT_SHARDS_MAX) throw bad(`it names ${parts.length} shards`);
  if (parts.length !== numShards) throw bad(`it names ${parts.length} shards and this cluster has ${numShards}`);
  return parts.map((p) => {
    if (!/^[0-9]{1,16}$/.test(p)) throw bad(`"${p}" is not a position`);
    return BigInt(p);
  });
}

/**
 * Every batch of an org (or of one type in it) in commit order per shard, from a checkpoint (or
 * the beginning), then the live tail. Each shard has at most one request in flight; pages are
 * delivered in the order they arrive, and each batch's checkpoint names, per shard, the last batch
 * delivered, so a resume skips nothing and repeats nothing.
 */
export async function* subscribeOrg(send: FeedSend, filter: SubscribeOrgFilter, opts: SubscribeOrgOptions = {}): AsyncGenerator<SubscribedBatch, void, undefined> {
  if (filter === null || typeof filter !== 'object' || filter.org === undefined) throw badRequest('subscribe needs { org, type? } or an aggregate key');
  const f = orgFilter(filter);
  const waitMs = waitOf(opts.pollWaitMs, FEED_POLL_WAIT_MS_DEFAULT, 'pollWaitMs');
  const maxBytes = maxBytesOf(opts.maxBytes);
  const probe = await feedPage(send, { shard: 0, from: TIP_PROBE, maxBytes, waitMs: 0, ...f, headersOnly: true });
  const n = probe.numShards;
  const seqs = opts.from === undefined ? new Array<bigint>(n).fill(0n) : decodeCheckpoint(opts.from, n);
  yield* mergeShards(send, n, (shard) => ({ shard, from: seqs[shard]! + 1n, maxBytes, waitMs, ...f, headersOnly: false }), (page) =>
    page.batches.map((b) => {
      seqs[page.shard] = b.position.seq;
      return { ...b, checkpoint: encodeCheckpoint(seqs) };
    }),
  );
}

/** Polls every shard (one request in flight each) and yields what `take` makes of each page, as pages arrive. */
async function* mergeShards<T>(
  send: FeedSend,
  n: number,
  query: (shard: number) => FeedQuery,
  take: (page: ShardPage) => T[],
  pauseMs: (page: ShardPage) => number = () => 0,
): AsyncGenerator<T, void, undefined> {
  const queries = Array.from({ length: n }, (_, s) => query(s));
  const inFlight = new Map<number, Promise<{ shard: number; page: ShardPage }>>();
  const ask = (s: number, after = 0): void => {
    const q = queries[s]!;
    const wait = after > 0 ? new Promise<void>((r) => setTimeout(r, after)) : Promise.resolve();
    inFlight.set(
      s,
      wait.then(() => feedPage(send, q)).then((page) => ({ shard: s, page })),
    );
  };
  for (let s = 0; s < n; s++) ask(s);
  try {
    for (;;) {
      const { shard, page } = await Promise.race(inFlight.values());
      const q = queries[shard]!;
      if (page.next > q.from) q.from = page.next;
      yield* take(page);
      ask(shard, pauseMs(page));
    }
  } finally {
    // Requests still out resolve (or fail) on their own within their wait; nobody reads them.
    for (const p of inFlight.values()) p.catch(() => undefined);
  }
}

/**
 * Change notifications after commit, for one aggregate, an org+type or an org: per watcher no
 * duplicates and no reordering per aggregate (each shard is read in position order). Changes of
 * one aggregate within a page, or within `maxLatencyMs`, are coalesced into one notification.
 */
export async function* watch(send: FeedSend, filter: WatchFilter, opts: WatchOptions = {}): AsyncGenerator<WatchNotification | WatchHeartbeat, void, undefined> {
  if (filter === null || typeof filter !== 'object') throw badRequest('watch needs { key } or { org, type? }');
  const waitMs = waitOf(opts.pollWaitMs, FEED_POLL_WAIT_MS_DEFAULT, 'pollWaitMs');
  const maxLatencyMs = waitOf(opts.maxLatencyMs, 0, 'maxLatencyMs');
  let f: { filter: FeedFilterMode; key: NormalizedKey };
  let shards: { shard: number; from: bigint }[];
  if ('key' in filter) {
    f = { filter: FeedFilter.Key, key: normalizeKey(filter.key) };
    const tip = await feedPage(send, { shard: SHARD_OF_KEY, from: TIP_PROBE, maxBytes: 0, waitMs: 0, ...f, headersOnly: true });
    shards = [{ shard: tip.shard, from: tip.committedSeq + 1n }];
  } else {
    f = orgFilter(filter);
    const probe = await feedPage(send, { shard: 0, from: TIP_PROBE, maxBytes: 0, waitMs: 0, ...f, headersOnly: true });
    shards = [];
    for (let s = 0; s < probe.numShards; s++) {
      const t = s === 0 ? probe : await feedPage(send, { shard: s, from: TIP_PROBE, maxBytes: 0, waitMs: 0, ...f, headersOnly: true });
      shards.push({ shard: s, from: t.committedSeq + 1n });
    }
  }
  const committed = new Map<number, bigint>(shards.map((s) => [s.shard, s.from - 1n]));
  const byIndex = shards.map((s) => s.shard);
  // After a page with changes, that shard is asked again only after maxLatencyMs: what commits
  // meanwhile arrives in one page and is coalesced, so no change waits longer than that.
  const pages = mergeShards(
    send,
    shards.length,
    (i) => ({ shard: byIndex[i]!, from: shards[i]!.from, maxBytes: 0, waitMs, ...f, headersOnly: true }),
    (page) => [page],
    (page) => (page.batches.length > 0 ? maxLatencyMs : 0),
  );
  for await (const page of pages) {
    committed.set(page.shard, page.committedSeq);
    const out: WatchNotification[] = [];
    for (const b of page.batches) {
      if (b.op !== 'write') {
        out.push({ key: b.key, op: b.op, fromVersion: 1n, toVersion: b.op === 'delete' ? b.toVersion : b.minVersion - 1n, position: b.position });
        continue;
      }
      const last = out.length > 0 ? out[out.length - 1]! : undefined;
      if (last !== undefined && last.op === 'write' && sameKey(last.key, b.key) && last.toVersion + 1n === b.fromVersion) {
        last.toVersion = b.toVersion;
        last.position = b.position;
        continue;
      }
      out.push({ key: b.key, op: 'write', fromVersion: b.fromVersion, toVersion: b.toVersion, position: b.position });
    }
    if (out.length > 0) yield* out;
    else if (opts.heartbeats === true) yield { op: 'heartbeat', committed: [...committed].map(([shard, seq]) => ({ shard, seq })) };
  }
}

function sameKey(a: NormalizedKey, b: NormalizedKey): boolean {
  return a.org === b.org && a.type === b.type && a.id === b.id;
}

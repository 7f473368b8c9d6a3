// Live data on the client (SPEC §4): readShard, subscribeShard, subscribe (one aggregate, or an
// org / org+type with a resumable checkpoint) and watch, all built on one server operation, the
// shard feed (Op.ReadShard): a page of a shard's committed batches in position order, filtered on
// the server, with a long poll at the tail. Every batch a feed returns is committed, so positions
// and checkpoints hold on either node of a cluster, and the pool follows the leader across a
// failover (a feed read is idempotent).
//
// Pace and memory: catching up, a subscription asks for a shard's next page when its consumer
// takes the one before (at most two pages per shard held). At the live tail it asks again as soon
// as a page arrives, so it follows the tail from the server's memory whatever its consumer does,
// and what the consumer has not taken queues, up to `queueBatches` batches (default
// SUBSCRIPTION_QUEUE_BATCHES_DEFAULT) and SUBSCRIPTION_QUEUE_BYTES_MAX bytes. Past that the
// subscription is dropped with SubscriberTooSlowError (2012), which says where to resume; the
// server holds nothing per subscriber between requests, so a slow reader never slows a writer.
//
// Subscriptions of one client share their reads: a feed read identical to one in flight (same
// shard, position, filter and page size) joins it, and the decoded page is shared, frozen.
//
// Files: this one has the public calls and the checkpoints; feed-page.ts fetches, decodes and
// shares pages; follower.ts is the iterator (pace, queue, drop, parking) they all run on.
import { badRequest, toU64 } from './encode.ts';
import { BadRequestError, ErrorCode, ReadBelowTrimmedError } from './errors.ts';
import { formatKey, normalizeKey, type AggregateKey, type KeyPart, type NormalizedKey } from './key.ts';
import type { Batch } from './types.ts';
import { FeedFilter, SHARD_OF_KEY, WireError, type FeedFilterMode } from './wire.ts';
import { feedPage, maxBytesOf, NO_KEY, orgFilter, shardOf, TIP_PROBE, waitOf, type BatchOpName, type FeedQuery, type FeedSend, type ShardBatch, type ShardPage } from './feed-page.ts';
import { endable, Follower, queueBatchesOf, type Ending, type FollowSpec } from './follower.ts';

export type { BatchOpName, FeedSend, ShardBatch, ShardPage } from './feed-page.ts';
export { SUBSCRIPTION_IDLE_MS_MIN, SUBSCRIPTION_IDLE_POLLS, SUBSCRIPTION_QUEUE_BATCHES_DEFAULT, SUBSCRIPTION_QUEUE_BATCHES_MAX, SUBSCRIPTION_QUEUE_BYTES_MAX } from './follower.ts';

/** How long a feed read waits at the tail before the client asks again (a heartbeat interval). */
export const FEED_POLL_WAIT_MS_DEFAULT = 5_000;
/** Shards one checkpoint can name. */
const CHECKPOINT_SHARDS_MAX = 4096;
const CHECKPOINT_PREFIX = 'c1:';

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

/** What every subscription takes besides its start. */
export interface FollowOptions {
  maxBytes?: number;
  /** Long-poll wait per request at the tail; default FEED_POLL_WAIT_MS_DEFAULT. */
  pollWaitMs?: number;
  /**
   * At the live tail, the batches received and not yet taken by the consumer that the subscription
   * keeps (1..SUBSCRIPTION_QUEUE_BATCHES_MAX, default SUBSCRIPTION_QUEUE_BATCHES_DEFAULT); past
   * it, or past SUBSCRIPTION_QUEUE_BYTES_MAX, the subscription is dropped: SubscriberTooSlowError.
   */
  queueBatches?: number;
}

export interface SubscribeShardOptions extends FollowOptions {
  from?: bigint | number;
}

export interface SubscribeKeyOptions extends FollowOptions {
  /** First version; default 1. */
  from?: bigint | number;
}

export interface SubscribeOrgFilter {
  org: KeyPart;
  type?: KeyPart;
}

export interface SubscribeOrgOptions extends FollowOptions {
  /** A checkpoint from a delivered batch: resume right after it. Absent: from the beginning. */
  from?: string;
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
  /** Batches (changes before coalescing) a watcher keeps for its consumer, as FollowOptions.queueBatches. */
  queueBatches?: number;
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
export function subscribeShard(send: FeedSend, shard: number, opts: SubscribeShardOptions = {}): AsyncGenerator<ShardBatch, void, undefined> {
  return new Follower(send, async () => {
    const q: FeedQuery = {
      shard: shardOf(shard),
      from: opts.from === undefined ? 1n : toU64(opts.from, 'from'),
      maxBytes: maxBytesOf(opts.maxBytes),
      waitMs: waitOf(opts.pollWaitMs, FEED_POLL_WAIT_MS_DEFAULT, 'pollWaitMs'),
      filter: FeedFilter.None,
      key: NO_KEY,
      headersOnly: false,
    };
    let next = q.from;
    const spec: FollowSpec<ShardBatch> = {
      take: (page) => {
        if (page.next > next) next = page.next;
        return page.batches;
      },
      queueBatches: queueBatchesOf(opts.queueBatches),
      what: `subscribeShard(${q.shard})`,
      resumeFrom: () => next,
    };
    return { queries: [q], spec };
  });
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
export function subscribeKey(
  send: FeedSend,
  readAll: (key: AggregateKey, from: bigint) => AsyncIterable<Batch>,
  key: AggregateKey,
  opts: SubscribeKeyOptions = {},
): AsyncGenerator<Batch, void, undefined> {
  return endable((ending) => followKey(ending, send, readAll, key, opts));
}

async function* followKey(
  ending: Ending,
  send: FeedSend,
  readAll: (key: AggregateKey, from: bigint) => AsyncIterable<Batch>,
  key: AggregateKey,
  opts: SubscribeKeyOptions,
): AsyncGenerator<Batch, void, undefined> {
  const k = normalizeKey(key);
  // 0: from the first readable version (after trims), whatever it is.
  let next = opts.from === undefined ? 0n : toU64(opts.from, 'from');
  const waitMs = waitOf(opts.pollWaitMs, FEED_POLL_WAIT_MS_DEFAULT, 'pollWaitMs');
  const maxBytes = maxBytesOf(opts.maxBytes);
  const queueBatches = queueBatchesOf(opts.queueBatches);
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
  const take = (page: ShardPage): Batch[] => {
    const out: Batch[] = [];
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
      out.push(batch);
      next = b.toVersion + 1n;
    }
    return out;
  };
  yield* ending.follow(new Follower(send, async () => ({ queries: [q], spec: { take, queueBatches, what: `subscribe ${formatKey(k)}`, resumeFrom: () => (next === 0n ? undefined : next) } })));
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
export function subscribeOrg(send: FeedSend, filter: SubscribeOrgFilter, opts: SubscribeOrgOptions = {}): AsyncGenerator<SubscribedBatch, void, undefined> {
  return new Follower(send, async () => {
    if (filter === null || typeof filter !== 'object' || filter.org === undefined) throw badRequest('subscribe needs { org, type? } or an aggregate key');
    const f = orgFilter(filter);
    const waitMs = waitOf(opts.pollWaitMs, FEED_POLL_WAIT_MS_DEFAULT, 'pollWaitMs');
    const maxBytes = maxBytesOf(opts.maxBytes);
    const queueBatches = queueBatchesOf(opts.queueBatches);
    const probe = await feedPage(send, { shard: 0, from: TIP_PROBE, maxBytes, waitMs: 0, ...f, headersOnly: true });
    const n = probe.numShards;
    const seqs = opts.from === undefined ? new Array<bigint>(n).fill(0n) : decodeCheckpoint(opts.from, n);
    // The checkpoint text of every shard but the page's own is the same for the whole page.
    const texts = seqs.map(String);
    const queries = Array.from({ length: n }, (_, shard): FeedQuery => ({ shard, from: seqs[shard]! + 1n, maxBytes, waitMs, ...f, headersOnly: false }));
    const take = (page: ShardPage): SubscribedBatch[] => {
      const s = page.shard;
      const before = CHECKPOINT_PREFIX + texts.slice(0, s).map((t) => t + '.').join('');
      const after = texts.slice(s + 1).map((t) => '.' + t).join('');
      const { seqTexts, out } = subscribedOf(page, before, after);
      if (page.batches.length > 0) {
        seqs[s] = page.batches[page.batches.length - 1]!.position.seq;
        texts[s] = seqTexts[seqTexts.length - 1]!;
      }
      return out;
    };
    return { queries, spec: { take, queueBatches, what: `subscribe to org ${String(filter.org)}`, resumeFrom: () => encodeCheckpoint(seqs) } };
  });
}

/** Per shared page: the decimal seq of each batch, and its batches with checkpoints by the checkpoint's other shards. */
const subscribedCache = new WeakMap<ShardPage, { seqTexts: string[]; byRest: Map<string, SubscribedBatch[]> }>();

/**
 * The page's batches with their checkpoints, `before` + seq + `after`. Subscriptions sharing the
 * page that stand at the same seqs on the other shards (they started together and took the same
 * pages: the common case) get the same frozen objects, so a fan-out makes them once per page.
 */
function subscribedOf(page: ShardPage, before: string, after: string): { seqTexts: string[]; out: SubscribedBatch[] } {
  let c = subscribedCache.get(page);
  if (c === undefined) {
    c = { seqTexts: page.batches.map((b) => String(b.position.seq)), byRest: new Map() };
    subscribedCache.set(page, c);
  }
  const rest = before + '|' + after;
  let out = c.byRest.get(rest);
  if (out === undefined) {
    const texts = c.seqTexts;
    out = page.batches.map((b, i) => Object.freeze({ ...b, checkpoint: before + texts[i]! + after }));
    c.byRest.set(rest, out);
  }
  return { seqTexts: c.seqTexts, out };
}

/**
 * Change notifications after commit, for one aggregate, an org+type or an org: per watcher no
 * duplicates and no reordering per aggregate (each shard is read in position order). Changes of
 * one aggregate within a page, or within `maxLatencyMs`, are coalesced into one notification.
 */
export function watch(send: FeedSend, filter: WatchFilter, opts: WatchOptions = {}): AsyncGenerator<WatchNotification | WatchHeartbeat, void, undefined> {
  return endable((ending) => watchPages(ending, send, filter, opts));
}

async function* watchPages(ending: Ending, send: FeedSend, filter: WatchFilter, opts: WatchOptions): AsyncGenerator<WatchNotification | WatchHeartbeat, void, undefined> {
  if (filter === null || typeof filter !== 'object') throw badRequest('watch needs { key } or { org, type? }');
  const waitMs = waitOf(opts.pollWaitMs, FEED_POLL_WAIT_MS_DEFAULT, 'pollWaitMs');
  const maxLatencyMs = waitOf(opts.maxLatencyMs, 0, 'maxLatencyMs');
  const queueBatches = queueBatchesOf(opts.queueBatches);
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
  const pages = ending.follow(new Follower(send, async () => ({
    queries: shards.map((s, i): FeedQuery => ({ shard: byIndex[i]!, from: s.from, maxBytes: 0, waitMs, ...f, headersOnly: true })),
    spec: {
      take: (page: ShardPage) => [page],
      pauseMs: (page: ShardPage) => (page.batches.length > 0 ? maxLatencyMs : 0),
      queueBatches,
      what: 'watch',
      resumeFrom: () => undefined,
      again: 'watch again: a new watch starts at the tail, so changes committed meanwhile are not notified (subscribe resumes from a checkpoint instead)',
    },
  })));
  for await (const first of pages) {
    // What the tail brought while the consumer was busy is coalesced with this page: as many
    // notifications as one page read when the consumer came back (not one per page read ahead).
    const group = [first, ...pages.takeQueued()];
    for (const page of group) committed.set(page.shard, page.committedSeq);
    const out: WatchNotification[] = [];
    for (const b of group.flatMap((page) => page.batches)) {
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

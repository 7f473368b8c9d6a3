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
import { badRequest, toU64 } from './encode.ts';
import { BadRequestError, ErrorCode, ReadBelowTrimmedError, SubscriberTooSlowError } from './errors.ts';
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
  type WireReadShardRequest,
} from './wire.ts';

/** How long a feed read waits at the tail before the client asks again (a heartbeat interval). */
export const FEED_POLL_WAIT_MS_DEFAULT = 5_000;
/** Batches a subscription at the live tail keeps for its consumer; one page more and it is dropped (SubscriberTooSlowError). */
export const SUBSCRIPTION_QUEUE_BATCHES_DEFAULT = 10_000;
/** The largest `queueBatches` a subscription may ask for. */
export const SUBSCRIPTION_QUEUE_BATCHES_MAX = 1_000_000;
/** Bytes of received pages a subscription at the live tail keeps for its consumer (the same drop). */
export const SUBSCRIPTION_QUEUE_BYTES_MAX = 64 * 1024 * 1024;
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

/** Sends one request frame (following the leader) and resolves with its answer. */
export type FeedSend = (frame: Uint8Array) => Promise<Frame>;

/** A feed read as the wire carries it (the subscription moves `from` along). */
type FeedQuery = WireReadShardRequest;

const NO_KEY: NormalizedKey = { org: 0n, type: 0n, id: 0n };

function toRecordedEvent(e: WireEvent & { version: bigint }): RecordedEvent {
  const out: RecordedEvent = { version: e.version, type: e.type, data: e.data };
  if (e.metadata !== undefined) out.metadata = e.metadata;
  if (e.schemaMajor !== undefined) out.schemaVersion = { major: e.schemaMajor, minor: e.schemaMinor ?? 0 };
  if (e.iv !== undefined) out.iv = e.iv;
  return out;
}

async function feedPage(send: FeedSend, q: FeedQuery): Promise<ShardPage> {
  return (await fetchPage(send, q)).page;
}

/** A decoded feed page and the size of its body on the wire. */
interface Fetched {
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
function sharedFetch(send: FeedSend, q: FeedQuery): Promise<Fetched> {
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
    for (const e of b.events) Object.freeze(e);
    Object.freeze(b.events);
    Object.freeze(b.position);
    Object.freeze(b.key);
    Object.freeze(b);
  }
  Object.freeze(page.batches);
  Object.freeze(page);
}

function queueBatchesOf(v: number | undefined): number {
  if (v === undefined) return SUBSCRIPTION_QUEUE_BATCHES_DEFAULT;
  if (!Number.isSafeInteger(v) || v < 1 || v > SUBSCRIPTION_QUEUE_BATCHES_MAX) throw badRequest(`queueBatches must be an integer 1..${SUBSCRIPTION_QUEUE_BATCHES_MAX}; got ${String(v)}`);
  return v;
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
  yield* new Follower(send, async () => ({ queries: [q], spec: { take, queueBatches, what: `subscribe ${formatKey(k)}`, resumeFrom: () => (next === 0n ? undefined : next) } }));
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

interface FollowSpec<T> {
  /** What the consumer gets of a page (called as the consumer reaches the page). */
  take: (page: ShardPage) => T[];
  /** How long to wait before asking a shard again after this page (watch coalescing); default 0. */
  pauseMs?: (page: ShardPage) => number;
  queueBatches: number;
  /** Names the subscription in the drop message. */
  what: string;
  /** Where the consumer resumes after what it has taken (the drop error carries it). */
  resumeFrom: () => string | bigint | undefined;
}

/** A page received and not yet taken by the consumer. */
interface Queued extends Fetched {
  index: number;
  /** Received while its shard was live: asked ahead of the consumer, so it counts against the bound. */
  ahead: boolean;
}

const DONE: IteratorResult<never, void> = Object.freeze({ value: undefined, done: true });

/**
 * Reads every query's shard (one request in flight each) and yields what `take` makes of each
 * page, in the order pages arrive. Until a shard's page first reaches its committed tip (catching
 * up), the shard's next page is asked when the consumer takes the one before. From then on the
 * shard is live: its next page is asked as soon as one arrives (after `pauseMs`), whatever the
 * consumer does, and what the consumer has not taken queues. Once that holds more than
 * `queueBatches` batches or SUBSCRIPTION_QUEUE_BYTES_MAX bytes the subscription is dropped: the
 * queue is let go, nothing more is asked, and the consumer gets SubscriberTooSlowError once it has
 * taken the page it is in.
 *
 * A hand-written iterator rather than an async generator: a batch already received is handed
 * over with one resolved promise, where a generator (and each yield* level) costs several
 * microtask turns per batch, which is most of a fan-out's CPU.
 */
class Follower<T> implements AsyncGenerator<T, void, undefined> {
  private readonly send: FeedSend;
  private readonly setup: () => Promise<{ queries: FeedQuery[]; spec: FollowSpec<T> }>;
  private queries: FeedQuery[] = [];
  private spec: FollowSpec<T> | undefined;
  private started: Promise<void> | undefined;
  private items: readonly T[] = [];
  private at = 0;
  private readonly queue: Queued[] = [];
  private live: boolean[] = [];
  private aheadBatches = 0;
  private aheadBytes = 0;
  /** Pages counted in aheadBatches (queued, not taken). */
  private aheadPages = 0;
  /** Per query, its newest page still queued (an empty page after it is merged into it). */
  private newest: (Queued | undefined)[] = [];
  private failure: { error: unknown } | undefined;
  private dropped: { batches: number; bytes: number } | undefined;
  private closed = false;
  private wake: (() => void) | undefined;
  /** next() calls not answered yet: while any is, later calls wait their turn. */
  private calls = 0;
  private turn: Promise<unknown> = Promise.resolve();

  constructor(send: FeedSend, setup: () => Promise<{ queries: FeedQuery[]; spec: FollowSpec<T> }>) {
    this.send = send;
    this.setup = setup;
  }

  [Symbol.asyncIterator](): this {
    return this;
  }

  async [Symbol.asyncDispose](): Promise<void> {
    await this.return();
  }

  next(): Promise<IteratorResult<T, void>> {
    if (this.calls === 0 && this.at < this.items.length) return Promise.resolve({ value: this.items[this.at++]!, done: false });
    this.calls++;
    const p = this.turn.then(() => this.take());
    this.turn = p.then(
      () => (this.calls--, undefined),
      () => (this.calls--, undefined),
    );
    return p;
  }

  return(): Promise<IteratorResult<T, void>> {
    this.close();
    return Promise.resolve(DONE);
  }

  throw(e: unknown): Promise<IteratorResult<T, void>> {
    this.close();
    return Promise.reject(e);
  }

  private close(): void {
    // Reads still out resolve (or fail) on their own within their wait; nobody takes them.
    this.closed = true;
    this.items = [];
    this.queue.length = 0;
    this.newest = [];
    this.notify();
  }

  private notify(): void {
    const w = this.wake;
    this.wake = undefined;
    w?.();
  }

  private stopped(): boolean {
    return this.closed || this.failure !== undefined || this.dropped !== undefined;
  }

  private async take(): Promise<IteratorResult<T, void>> {
    try {
      // Returned (or ended by an error) before the setup ran: nothing to set up.
      if (this.closed) return DONE;
      this.started ??= this.start();
      await this.started;
      for (;;) {
        if (this.closed) return DONE;
        if (this.at < this.items.length) return { value: this.items[this.at++]!, done: false };
        const f = this.queue.shift();
        if (f === undefined) {
          if (this.dropped !== undefined) throw this.dropError(this.dropped);
          if (this.failure !== undefined) throw this.failure.error;
          await new Promise<void>((resolve) => (this.wake = resolve));
          continue;
        }
        this.items = this.taken(f);
        this.at = 0;
      }
    } catch (e) {
      this.close();
      throw e;
    }
  }

  /** The consumer reaches a queued page: what it gets of it. */
  private taken(f: Queued): T[] {
    if (this.newest[f.index] === f) this.newest[f.index] = undefined;
    if (f.ahead) {
      this.aheadBatches -= f.page.batches.length;
      this.aheadBytes -= f.bytes;
      this.aheadPages--;
    } else if (!this.live[f.index]) {
      this.ask(f.index, this.spec!.pauseMs?.(f.page) ?? 0);
    }
    return this.spec!.take(f.page);
  }

  /**
   * Everything already received and queued, taken now without waiting, once the consumer has
   * taken all it was given (watch coalesces it with the page in hand); [] otherwise.
   */
  takeQueued(): T[] {
    if (this.closed || this.calls > 0 || this.at < this.items.length || this.spec === undefined) return [];
    const out: T[] = [];
    try {
      for (let f = this.queue.shift(); f !== undefined; f = this.queue.shift()) out.push(...this.taken(f));
    } catch (e) {
      this.close();
      throw e;
    }
    return out;
  }

  private async start(): Promise<void> {
    const { queries, spec } = await this.setup();
    this.queries = queries;
    this.spec = spec;
    this.live = queries.map(() => false);
    for (let i = 0; i < queries.length; i++) this.ask(i, 0);
  }

  private ask(index: number, afterMs: number): void {
    if (afterMs > 0) setTimeout(() => this.fetch(index), afterMs);
    else this.fetch(index);
  }

  private fetch(index: number): void {
    if (this.stopped()) return;
    sharedFetch(this.send, this.queries[index]!).then(
      (f) => this.arrived(index, f),
      (e: unknown) => {
        this.failure ??= { error: e };
        this.notify();
      },
    );
  }

  private arrived(index: number, f: Fetched): void {
    if (this.stopped()) return;
    const q = this.queries[index]!;
    if (f.page.next > q.from) q.from = f.page.next;
    const ahead = this.live[index]!;
    if (!ahead && f.page.next > f.page.committedSeq) this.live[index] = true;
    const last = this.newest[index];
    if (ahead && f.page.batches.length === 0 && last !== undefined && last.ahead && last.page.batches.length === 0) {
      // An empty page read ahead says only where the shard has got to: it replaces the shard's
      // empty page still queued, so pages that bring nothing (a quiet filter on a busy shard, or
      // polls timing out) do not pile up for a busy consumer.
      this.aheadBytes += f.bytes - last.bytes;
      last.page = f.page;
      last.bytes = f.bytes;
      this.ask(index, this.spec!.pauseMs?.(f.page) ?? 0);
      return;
    }
    const queued: Queued = { ...f, index, ahead };
    this.queue.push(queued);
    this.newest[index] = queued;
    if (ahead) {
      this.aheadBatches += f.page.batches.length;
      this.aheadBytes += f.bytes;
      this.aheadPages++;
      // A page reaching a consumer that has taken everything before it is never a drop, however
      // many batches it has: the consumer fell behind only once pages wait behind it.
      if (this.aheadPages > 1 && (this.aheadBatches > this.spec!.queueBatches || this.aheadBytes > SUBSCRIPTION_QUEUE_BYTES_MAX)) {
        this.dropped = { batches: this.aheadBatches, bytes: this.aheadBytes };
        this.queue.length = 0;
        this.newest = [];
        this.notify();
        return;
      }
    }
    if (this.live[index]) this.ask(index, this.spec!.pauseMs?.(f.page) ?? 0);
    this.notify();
  }

  private dropError(d: { batches: number; bytes: number }): SubscriberTooSlowError {
    const spec = this.spec!;
    const resumeFrom = spec.resumeFrom();
    const where = resumeFrom === undefined ? '' : ` with from: ${typeof resumeFrom === 'string' ? `'${resumeFrom}'` : `${resumeFrom}n`}`;
    return new SubscriberTooSlowError(
      `${spec.what} was dropped: its consumer fell ${d.batches} batches (${d.bytes} bytes) behind the live tail, past the limit of ${spec.queueBatches} batches or ` +
        `${SUBSCRIPTION_QUEUE_BYTES_MAX} bytes queued for it; nothing was skipped: subscribe again${where} (a larger queueBatches lets a consumer fall further behind)`,
      resumeFrom,
      { queuedBatches: d.batches, queuedBytes: d.bytes, queueLimit: `${spec.queueBatches} batches, ${SUBSCRIPTION_QUEUE_BYTES_MAX} bytes` },
    );
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
  const pages = new Follower(send, async () => ({
    queries: shards.map((s, i): FeedQuery => ({ shard: byIndex[i]!, from: s.from, maxBytes: 0, waitMs, ...f, headersOnly: true })),
    spec: {
      take: (page: ShardPage) => [page],
      pauseMs: (page: ShardPage) => (page.batches.length > 0 ? maxLatencyMs : 0),
      queueBatches,
      what: 'watch',
      resumeFrom: () => undefined,
    },
  }));
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

// The subscription iterator: Follower reads a set of shard feed queries and hands their pages to
// one consumer, paced by the consumer while catching up and reading ahead into a bounded queue
// at the live tail (feed.ts has the whole picture). `endable` gives an async generator built on
// Followers a return() that ends a next() waiting in them. Runs on the caller's event loop.
import { badRequest } from './encode.ts';
import { SubscriberTooSlowError } from './errors.ts';
import { sharedFetch, type FeedQuery, type FeedSend, type Fetched, type ShardPage } from './feed-page.ts';

/** Batches a subscription at the live tail keeps for its consumer; one page more and it is dropped (SubscriberTooSlowError). */
export const SUBSCRIPTION_QUEUE_BATCHES_DEFAULT = 10_000;
/** The largest `queueBatches` a subscription may ask for. */
export const SUBSCRIPTION_QUEUE_BATCHES_MAX = 1_000_000;
/** Bytes of received pages a subscription at the live tail keeps for its consumer (the same drop). */
export const SUBSCRIPTION_QUEUE_BYTES_MAX = 64 * 1024 * 1024;
/**
 * A live subscription whose consumer has not pulled (and is not waiting) for this many of its
 * long polls, and at least SUBSCRIPTION_IDLE_MS_MIN, stops reading ahead until it pulls again:
 * an iterator dropped without return() does not poll the server for ever.
 */
export const SUBSCRIPTION_IDLE_POLLS = 3;
export const SUBSCRIPTION_IDLE_MS_MIN = 1_000;

export function queueBatchesOf(v: number | undefined): number {
  if (v === undefined) return SUBSCRIPTION_QUEUE_BATCHES_DEFAULT;
  if (!Number.isSafeInteger(v) || v < 1 || v > SUBSCRIPTION_QUEUE_BATCHES_MAX) throw badRequest(`queueBatches must be an integer 1..${SUBSCRIPTION_QUEUE_BATCHES_MAX}; got ${String(v)}`);
  return v;
}

export interface FollowSpec<T> {
  /** What the consumer gets of a page (called as the consumer reaches the page). */
  take: (page: ShardPage) => T[];
  /** How long to wait before asking a shard again after this page (watch coalescing); default 0. */
  pauseMs?: (page: ShardPage) => number;
  queueBatches: number;
  /** Names the subscription in the drop message. */
  what: string;
  /** Where the consumer resumes after what it has taken (the drop error carries it). */
  resumeFrom: () => string | bigint | undefined;
  /** What the drop message tells a consumer with no position to resume from; default: subscribe again. */
  again?: string;
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
 * A live shard whose consumer has been away (no pull, no next() waiting) for SUBSCRIPTION_IDLE_POLLS
 * polls and at least SUBSCRIPTION_IDLE_MS_MIN is parked: it is asked again at the consumer's next
 * pull, so an iterator abandoned without return() stops polling.
 *
 * A hand-written iterator rather than an async generator: a batch already received is handed
 * over with one resolved promise, where a generator (and each yield* level) costs several
 * microtask turns per batch, which is most of a fan-out's CPU.
 */
export class Follower<T> implements AsyncGenerator<T, void, undefined> {
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
  /** next() calls ever; `pullsSeen` is the count a page arrival last saw change, at `pulledAt` (Date.now). */
  private pulls = 0;
  private pullsSeen = 0;
  private pulledAt = 0;
  /** How long the consumer may be away before live shards park. */
  private idleMs = SUBSCRIPTION_IDLE_MS_MIN;
  /** Live shards not asked again until the consumer pulls. */
  private parked: number[] = [];
  /** Per query, the timer of a pause before asking again (pauseMs). */
  private pauses: (ReturnType<typeof setTimeout> | undefined)[] = [];
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
    this.pulls++;
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
    this.parked = [];
    for (const t of this.pauses) clearTimeout(t);
    this.pauses = [];
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
          this.unpark();
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
    this.idleMs = Math.max(SUBSCRIPTION_IDLE_MS_MIN, SUBSCRIPTION_IDLE_POLLS * Math.max(0, ...queries.map((q) => q.waitMs)));
    this.pulledAt = Date.now();
    this.pullsSeen = this.pulls;
    for (let i = 0; i < queries.length; i++) this.ask(i, 0);
  }

  private ask(index: number, afterMs: number): void {
    if (afterMs <= 0) return this.fetch(index);
    this.pauses[index] = setTimeout(() => {
      this.pauses[index] = undefined;
      this.fetch(index);
    }, afterMs);
  }

  /** A live shard's next page, read ahead of the consumer: unless the consumer is away, then parked. */
  private askAhead(index: number, afterMs: number): void {
    const now = Date.now();
    if (this.pulls !== this.pullsSeen) {
      this.pullsSeen = this.pulls;
      this.pulledAt = now;
    } else if (this.calls === 0 && now - this.pulledAt >= this.idleMs) {
      this.parked.push(index);
      return;
    }
    this.ask(index, afterMs);
  }

  /** The consumer pulls again: its parked shards are asked again. */
  private unpark(): void {
    if (this.parked.length === 0) return;
    const parked = this.parked;
    this.parked = [];
    this.pulledAt = Date.now();
    this.pullsSeen = this.pulls;
    for (const i of parked) this.ask(i, 0);
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
      this.askAhead(index, this.spec!.pauseMs?.(f.page) ?? 0);
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
    if (this.live[index]) this.askAhead(index, this.spec!.pauseMs?.(f.page) ?? 0);
    this.notify();
  }

  private dropError(d: { batches: number; bytes: number }): SubscriberTooSlowError {
    const spec = this.spec!;
    const resumeFrom = spec.resumeFrom();
    const again =
      resumeFrom === undefined
        ? (spec.again ?? 'nothing was skipped: subscribe again')
        : `nothing was skipped: subscribe again with from: ${typeof resumeFrom === 'string' ? `'${resumeFrom}'` : `${resumeFrom}n`}`;
    return new SubscriberTooSlowError(
      `${spec.what} was dropped: its consumer fell ${d.batches} batches (${d.bytes} bytes) behind the live tail, past the limit of ${spec.queueBatches} batches or ` +
        `${SUBSCRIPTION_QUEUE_BYTES_MAX} bytes queued for it; ${again} (a larger queueBatches lets a consumer fall further behind)`,
      resumeFrom,
      { queuedBatches: d.batches, queuedBytes: d.bytes, queueLimit: `${spec.queueBatches} batches, ${SUBSCRIPTION_QUEUE_BYTES_MAX} bytes` },
    );
  }
}

/** The iterators (Followers, or endable ones) an `endable` generator reads from; end() returns them, ending a next() waiting in one. */
export class Ending {
  private readonly followers = new Set<AsyncIterator<unknown>>();
  private done = false;

  get ended(): boolean {
    return this.done;
  }

  /** Registers `f` (returned at once if this already ended). */
  follow<F extends AsyncIterator<unknown>>(f: F): F {
    if (this.done) void f.return?.();
    else this.followers.add(f);
    return f;
  }

  end(): void {
    this.done = true;
    for (const f of this.followers) void f.return?.();
    this.followers.clear();
  }
}

/**
 * An async generator whose return() (and throw()) first ends the Followers it reads from. A
 * generator's own return() waits for a next() in progress, and that next() can wait at a quiet
 * tail for ever (watch without heartbeats yields nothing there): ending the Followers makes it
 * answer done, and the return() settles with it.
 */
export function endable<T>(body: (ending: Ending) => AsyncGenerator<T, void, undefined>): AsyncGenerator<T, void, undefined> {
  const ending = new Ending();
  const gen = body(ending);
  const it: AsyncGenerator<T, void, undefined> = {
    next: (...args) => gen.next(...args),
    return: (value) => {
      ending.end();
      return gen.return(value);
    },
    throw: (e) => {
      ending.end();
      return gen.throw(e);
    },
    [Symbol.asyncIterator]: () => it,
    [Symbol.asyncDispose]: async () => {
      await it.return(undefined);
    },
  };
  return it;
}

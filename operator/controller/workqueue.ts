// A rate-limited work queue with client-go's semantics, keyed by "namespace/name":
//  - a key queued twice before a worker takes it is processed once (dirty set);
//  - a key is never processed by two workers at once: re-added while processing, it is
//    queued again when done() is called (processing set);
//  - failures retry with per-key exponential backoff (addRateLimited), and forget() resets it;
//  - addAfter() schedules a time-based recheck (requeueAfter).
// Bounds are client-go's DefaultControllerRateLimiter: per key 5 ms doubling to 1000 s,
// overall a token bucket of 10 per second with a burst of 100.

import type { Clock, Timer } from './clock.ts';

export const ITEM_BACKOFF_BASE_MS = 5;
export const ITEM_BACKOFF_MAX_MS = 1_000_000;
export const BUCKET_QPS = 10;
export const BUCKET_BURST = 100;

export class WorkQueue {
  readonly #clock: Clock;
  #queue: string[] = [];
  #dirty = new Set<string>();
  #processing = new Set<string>();
  #failures = new Map<string, number>();
  #delayed = new Map<string, { at: number; timer: Timer }>();
  #waiters: ((key: string | null) => void)[] = [];
  #tokens = BUCKET_BURST;
  #tokensAtMs: number;
  #shutDown = false;

  constructor(clock: Clock) {
    this.#clock = clock;
    this.#tokensAtMs = clock.nowMs();
  }

  /** Keys waiting to be processed (for the queue depth metric). */
  get length(): number {
    return this.#queue.length;
  }

  add(key: string): void {
    if (this.#shutDown || this.#dirty.has(key)) return;
    this.#dirty.add(key);
    if (this.#processing.has(key)) return;
    const waiter = this.#waiters.shift();
    if (waiter !== undefined) {
      this.#dirty.delete(key);
      this.#processing.add(key);
      waiter(key);
      return;
    }
    this.#queue.push(key);
  }

  /** Adds `key` after `delayMs`; an earlier pending schedule for the key wins. */
  addAfter(key: string, delayMs: number): void {
    if (this.#shutDown) return;
    if (delayMs <= 0) {
      this.add(key);
      return;
    }
    const at = this.#clock.nowMs() + delayMs;
    const existing = this.#delayed.get(key);
    if (existing !== undefined && existing.at <= at) return;
    existing?.timer.cancel();
    const timer = this.#clock.after(delayMs, () => {
      this.#delayed.delete(key);
      this.add(key);
    });
    this.#delayed.set(key, { at, timer });
  }

  /** The delay the rate limiter gives `key` now: max of its own backoff and the shared bucket. */
  nextRetryDelayMs(key: string): number {
    const failures = this.#failures.get(key) ?? 0;
    const itemMs = Math.min(ITEM_BACKOFF_MAX_MS, ITEM_BACKOFF_BASE_MS * 2 ** Math.min(failures, 40));
    return Math.max(itemMs, this.#bucketDelayMs());
  }

  /** Re-adds `key` after its backoff and counts the failure. */
  addRateLimited(key: string): void {
    const delay = this.nextRetryDelayMs(key);
    this.#failures.set(key, (this.#failures.get(key) ?? 0) + 1);
    this.addAfter(key, delay);
  }

  /** Clears the failure count of `key` after a success. */
  forget(key: string): void {
    this.#failures.delete(key);
  }

  failures(key: string): number {
    return this.#failures.get(key) ?? 0;
  }

  /** The next key to process, or null once the queue is shut down. */
  get(): Promise<string | null> {
    if (this.#shutDown) return Promise.resolve(null);
    const key = this.#queue.shift();
    if (key !== undefined) {
      this.#dirty.delete(key);
      this.#processing.add(key);
      return Promise.resolve(key);
    }
    return new Promise((resolve) => this.#waiters.push(resolve));
  }

  /** Marks `key` processed; queues it again if it was added meanwhile. */
  done(key: string): void {
    this.#processing.delete(key);
    if (this.#dirty.has(key)) {
      this.#dirty.delete(key);
      this.add(key);
    }
  }

  shutDown(): void {
    this.#shutDown = true;
    for (const d of this.#delayed.values()) d.timer.cancel();
    this.#delayed.clear();
    for (const w of this.#waiters.splice(0)) w(null);
  }

  #bucketDelayMs(): number {
    const now = this.#clock.nowMs();
    this.#tokens = Math.min(BUCKET_BURST, this.#tokens + ((now - this.#tokensAtMs) / 1000) * BUCKET_QPS);
    this.#tokensAtMs = now;
    this.#tokens -= 1;
    return this.#tokens >= 0 ? 0 : Math.ceil((-this.#tokens / BUCKET_QPS) * 1000);
  }
}

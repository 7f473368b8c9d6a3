// A list-then-watch cache of one kind of object, that survives what the apiserver does to
// long-lived watches:
//  - 410 Gone (resourceVersion too old, as an HTTP status or an ERROR event): list again;
//  - the server closing the stream (normal every few minutes): watch again from the last
//    resourceVersion seen;
//  - a dropped connection or a failed list: retry with jittered exponential backoff;
//  - a watch that hangs without closing: a periodic full relist catches whatever it missed.
// Every change calls onChange, which the controller maps to the owning CelerCluster's key.

import type { KubernetesObject } from '@kubernetes/client-node';
import type { Clock, Timer } from './clock.ts';
import { backoffDelayMs, WATCH_BACKOFF, type BackoffPolicy } from './backoff.ts';

/**
 * Full relist every 10 minutes, kubernetes-fluent-client's interval: a safety net for a watch
 * that silently stops delivering events (client-node issues #364 and #958).
 */
export const RELIST_INTERVAL_MS = 600_000;

export interface ListResult<T> {
  items: T[];
  resourceVersion: string;
}

export interface WatchHandle {
  stop(): void;
}

/** Where a reflector gets its data; the controller backs this with client-node, tests with a fake. */
export interface ListWatchSource<T> {
  list(): Promise<ListResult<T>>;
  watch(
    resourceVersion: string,
    onEvent: (type: string, obj: unknown) => void,
    onDone: (err: unknown) => void,
  ): Promise<WatchHandle>;
}

export type ChangeKind = 'add' | 'update' | 'delete';

export interface ReflectorOptions<T> {
  name: string;
  source: ListWatchSource<T>;
  clock: Clock;
  /** `before` is the cached object an update replaces, so the caller can ignore changes that do not matter. */
  onChange: (obj: T, kind: ChangeKind, before?: T) => void;
  onError?: (err: unknown) => void;
  backoff?: BackoffPolicy;
  random?: () => number;
}

function keyOf(obj: KubernetesObject): string {
  return `${obj.metadata?.namespace ?? ''}/${obj.metadata?.name ?? ''}`;
}

function isGone(err: unknown): boolean {
  if (err === null || typeof err !== 'object') return false;
  const e = err as { statusCode?: number; code?: number };
  return e.statusCode === 410 || e.code === 410;
}

export class Reflector<T extends KubernetesObject> {
  readonly #o: ReflectorOptions<T>;
  readonly #cache = new Map<string, T>();
  #resourceVersion = '';
  #attempt = 0;
  #generation = 0;
  /** Identifies the live watch; callbacks of any earlier watch are ignored. */
  #watchToken = 0;
  #watch: WatchHandle | null = null;
  #retry: Timer | null = null;
  #relistTimer: Timer | null = null;
  #running = false;
  #synced = false;
  /** How often each recovery path ran; the tests and the debug log read these. */
  readonly stats = { lists: 0, watches: 0, gone: 0, errors: 0 };

  constructor(options: ReflectorOptions<T>) {
    this.#o = options;
  }

  get name(): string {
    return this.#o.name;
  }

  /** True once the first list has filled the cache. */
  get synced(): boolean {
    return this.#synced;
  }

  list(): T[] {
    return [...this.#cache.values()];
  }

  get(namespace: string, name: string): T | undefined {
    return this.#cache.get(`${namespace}/${name}`);
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    void this.#relist();
  }

  stop(): void {
    this.#running = false;
    this.#generation += 1;
    this.#watch?.stop();
    this.#watch = null;
    this.#retry?.cancel();
    this.#relistTimer?.cancel();
  }

  async #relist(): Promise<void> {
    const generation = ++this.#generation;
    this.#watch?.stop();
    this.#watch = null;
    this.#relistTimer?.cancel();
    this.stats.lists += 1;
    let result: ListResult<T>;
    try {
      result = await this.#o.source.list();
    } catch (err) {
      if (generation === this.#generation) this.#fail(err, () => void this.#relist());
      return;
    }
    if (!this.#running || generation !== this.#generation) return;
    const seen = new Set<string>();
    for (const item of result.items) {
      const key = keyOf(item);
      seen.add(key);
      const before = this.#cache.get(key);
      this.#cache.set(key, item);
      if (before === undefined) this.#o.onChange(item, 'add');
      else if (before.metadata?.resourceVersion !== item.metadata?.resourceVersion) this.#o.onChange(item, 'update', before);
    }
    for (const [key, item] of [...this.#cache]) {
      if (!seen.has(key)) {
        this.#cache.delete(key);
        this.#o.onChange(item, 'delete');
      }
    }
    this.#resourceVersion = result.resourceVersion;
    this.#synced = true;
    this.#attempt = 0;
    this.#relistTimer = this.#o.clock.after(RELIST_INTERVAL_MS, () => void this.#relist());
    await this.#startWatch(generation);
  }

  async #startWatch(generation: number): Promise<void> {
    if (!this.#running || generation !== this.#generation) return;
    this.stats.watches += 1;
    const token = ++this.#watchToken;
    const live = (): boolean => this.#running && generation === this.#generation && token === this.#watchToken;
    const onEvent = (type: string, obj: unknown): void => {
      if (live()) this.#event(type, obj, generation);
    };
    const onDone = (err: unknown): void => {
      if (!live()) return;
      this.#watchToken += 1;
      this.#watch = null;
      if (isGone(err)) {
        this.stats.gone += 1;
        void this.#relist();
      } else if (err === null || err === undefined) {
        void this.#startWatch(generation);
      } else {
        this.#fail(err, () => void this.#startWatch(generation));
      }
    };
    try {
      const handle = await this.#o.source.watch(this.#resourceVersion, onEvent, onDone);
      if (!live()) handle.stop();
      else this.#watch = handle;
    } catch (err) {
      onDone(err);
    }
  }

  #event(type: string, obj: unknown, generation: number): void {
    if (type === 'ERROR') {
      // The apiserver reports an expired resourceVersion as an ERROR event carrying a Status.
      this.#watchToken += 1;
      this.#watch?.stop();
      this.#watch = null;
      if (isGone(obj)) {
        this.stats.gone += 1;
        void this.#relist();
      } else {
        this.#fail(obj, () => void this.#startWatch(generation));
      }
      return;
    }
    const item = obj as T;
    const rv = item.metadata?.resourceVersion;
    if (rv !== undefined) this.#resourceVersion = rv;
    this.#attempt = 0;
    if (type === 'BOOKMARK') return;
    const key = keyOf(item);
    if (type === 'DELETED') {
      this.#cache.delete(key);
      this.#o.onChange(item, 'delete');
    } else if (type === 'ADDED' || type === 'MODIFIED') {
      const before = this.#cache.get(key);
      this.#cache.set(key, item);
      if (before === undefined) this.#o.onChange(item, 'add');
      else this.#o.onChange(item, 'update', before);
    }
  }

  #fail(err: unknown, retry: () => void): void {
    this.stats.errors += 1;
    this.#o.onError?.(err);
    if (!this.#running) return;
    const delay = backoffDelayMs(this.#o.backoff ?? WATCH_BACKOFF, this.#attempt++, this.#o.random);
    this.#retry?.cancel();
    this.#retry = this.#o.clock.after(delay, retry);
  }
}

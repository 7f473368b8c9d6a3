// A size-bounded LRU map. Map iteration order is insertion order, so "touch" = delete + set and
// the oldest entry is the first key. Entries for which `pinned` returns true are skipped by
// eviction (aggregates with writes in flight must stay resident).

export class Lru<K, V> {
  private readonly map = new Map<K, { v: V; size: number }>();
  private used = 0;
  readonly capacity: number;
  private readonly pinned: (v: V) => boolean;
  hits = 0;
  misses = 0;

  constructor(capacity: number, pinned: (v: V) => boolean = () => false) {
    this.capacity = capacity;
    this.pinned = pinned;
  }

  get(k: K): V | undefined {
    const e = this.map.get(k);
    if (e === undefined) {
      this.misses++;
      return undefined;
    }
    this.hits++;
    this.map.delete(k);
    this.map.set(k, e);
    return e.v;
  }

  /** Looks up without counting or reordering. */
  peek(k: K): V | undefined {
    return this.map.get(k)?.v;
  }

  set(k: K, v: V, size = 1): void {
    const old = this.map.get(k);
    if (old !== undefined) {
      this.used -= old.size;
      this.map.delete(k);
    }
    this.map.set(k, { v, size });
    this.used += size;
    this.evict();
  }

  delete(k: K): void {
    const e = this.map.get(k);
    if (e === undefined) return;
    this.used -= e.size;
    this.map.delete(k);
  }

  /** Drops every entry, pinned ones included. */
  clear(): void {
    this.map.clear();
    this.used = 0;
  }

  get size(): number {
    return this.map.size;
  }

  get usedSize(): number {
    return this.used;
  }

  private evict(): void {
    // Pinned entries met at the old end are moved to the new end (they are in use), so the next
    // eviction does not walk over them again. Each entry is visited at most once per call.
    let budget = this.map.size;
    while (this.used > this.capacity && budget-- > 0) {
      const first = this.map.entries().next();
      if (first.done) break;
      const [k, e] = first.value;
      this.map.delete(k);
      if (this.pinned(e.v)) this.map.set(k, e);
      else this.used -= e.size;
    }
  }
}

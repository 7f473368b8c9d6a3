// A Clock (dataplane/storage/disk.ts) that moves only when the test moves it, so header refresh
// intervals, idle catch-ups and retry timers happen at the same point of a run for the same seed.
import type { Clock } from '../../dataplane/storage/disk.ts';

/** Wall-clock origin of simulated time (2026-01-01T00:00:00Z), so timestamps look like dates. */
const EPOCH_MS = 1_767_225_600_000;

interface Timer {
  atMs: number;
  order: number;
  fn: () => void;
}

export class SimClock implements Clock {
  private now = 0;
  private order = 0;
  private timers: Timer[] = [];

  nowMs(): number {
    return EPOCH_MS + Math.floor(this.now);
  }

  monoMs(): number {
    return this.now;
  }

  after(ms: number, fn: () => void): () => void {
    const t: Timer = { atMs: this.now + Math.max(0, ms), order: this.order++, fn };
    this.timers.push(t);
    return () => {
      this.timers = this.timers.filter((x) => x !== t);
    };
  }

  /** Timers not yet fired. */
  get pendingTimers(): number {
    return this.timers.length;
  }

  /**
   * Moves time forward by `ms` and runs every timer that came due, earliest first. A timer set by
   * one of them waits for the next advance, as a real timer set in a callback waits for a later
   * turn of the event loop (and a callback that re-arms itself with 0 ms cannot spin forever).
   */
  advance(ms: number): void {
    const target = this.now + ms;
    const setBefore = this.order;
    for (;;) {
      let next: Timer | null = null;
      for (const t of this.timers) if (t.order < setBefore && t.atMs <= target && (next === null || t.atMs < next.atMs || (t.atMs === next.atMs && t.order < next.order))) next = t;
      if (next === null) break;
      this.timers = this.timers.filter((x) => x !== next);
      this.now = Math.max(this.now, next.atMs);
      next.fn();
    }
    this.now = target;
  }
}

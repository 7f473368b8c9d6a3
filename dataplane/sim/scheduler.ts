// The simulator's one source of time: a global virtual clock with a timer queue, and per node a
// Clock (dataplane/storage/disk.ts) derived from it with drift (an offset on wall time, a small
// rate error on monotonic time) and the two ways a node stops: a long pause (SIGSTOP: its timers,
// messages, S3 answers and disk completions wait until it resumes) and death (power loss:
// nothing of that incarnation runs again).
//
// Driving: the simulated disk (test/sim/sim-disk.ts) completes its steps after event-loop turns
// (setImmediate), everything else after virtual time. `run` alternates one turn with one
// scheduling decision: while some live node has a disk operation in flight, time moves by
// `msPerTurn` per turn (so an fdatasync takes a few virtual milliseconds); when none has, time
// jumps to the next timer. One timer fires per turn, so the microtasks of one callback run
// before the next callback, as in a real event loop. No real time, no Math.random: a run is a
// pure function of its seed.
import type { Clock } from '../storage/disk.ts';

/** Wall-clock origin of simulated time (2026-01-01T00:00:00Z). */
export const SIM_EPOCH_MS = 1_767_225_600_000;

interface Timer {
  at: number;
  order: number;
  fn: () => void;
  cancelled: boolean;
}

export function turn(): Promise<void> {
  return new Promise<void>((r) => setImmediate(r));
}

export class Scheduler {
  now = 0;
  turns = 0;
  private order = 0;
  /** A binary heap on (at, order). */
  private heap: Timer[] = [];
  /** Nodes whose disk activity keeps time moving in small steps. */
  readonly busy: (() => boolean)[] = [];
  /** Called after every turn (cheap invariant checks). */
  onTurn: (() => void) | null = null;
  readonly msPerTurn: number;

  constructor(msPerTurn: number) {
    this.msPerTurn = msPerTurn;
  }

  after(ms: number, fn: () => void): () => void {
    return this.at(this.now + Math.max(0, ms), fn);
  }

  at(at: number, fn: () => void): () => void {
    const t: Timer = { at: Math.max(at, this.now), order: this.order++, fn, cancelled: false };
    this.push(t);
    return () => {
      t.cancelled = true;
    };
  }

  sleep(ms: number): Promise<void> {
    return new Promise((r) => this.after(ms, r));
  }

  private less(a: Timer, b: Timer): boolean {
    return a.at < b.at || (a.at === b.at && a.order < b.order);
  }

  private push(t: Timer): void {
    const h = this.heap;
    h.push(t);
    let i = h.length - 1;
    while (i > 0) {
      const p = (i - 1) >> 1;
      if (!this.less(h[i]!, h[p]!)) break;
      [h[i], h[p]] = [h[p]!, h[i]!];
      i = p;
    }
  }

  private pop(): Timer | undefined {
    const h = this.heap;
    const top = h[0];
    const last = h.pop();
    if (h.length > 0 && last !== undefined) {
      h[0] = last;
      let i = 0;
      for (;;) {
        const l = 2 * i + 1;
        const r = l + 1;
        let m = i;
        if (l < h.length && this.less(h[l]!, h[m]!)) m = l;
        if (r < h.length && this.less(h[r]!, h[m]!)) m = r;
        if (m === i) break;
        [h[i], h[m]] = [h[m]!, h[i]!];
        i = m;
      }
    }
    return top;
  }

  private peek(): Timer | undefined {
    while (this.heap.length > 0 && this.heap[0]!.cancelled) this.pop();
    return this.heap[0];
  }

  /** Runs until `done()` holds or virtual time passes `untilMs`; false on the time bound. */
  async run(done: () => boolean, untilMs: number): Promise<boolean> {
    for (;;) {
      await turn();
      this.turns++;
      this.onTurn?.();
      if (done()) return true;
      if (this.now >= untilMs) return false;
      const next = this.peek();
      const diskBusy = this.busy.some((b) => b());
      if (diskBusy) {
        if (next !== undefined && next.at <= this.now + this.msPerTurn) {
          this.pop();
          this.now = Math.max(this.now, next.at);
          next.fn();
        } else this.now += this.msPerTurn;
      } else if (next !== undefined) {
        this.pop();
        this.now = Math.max(this.now, Math.min(next.at, untilMs));
        if (next.at > untilMs) {
          this.push(next);
          continue;
        }
        next.fn();
      } else {
        this.now = untilMs;
      }
    }
  }
}

/** How a node's clock departs from true (global) time. */
export interface Drift {
  /** Added to the node's wall clock (ms). */
  offsetMs: number;
  /** Monotonic rate error: the node's mono clock runs at (1 + rate) × true time. */
  rate: number;
}

/**
 * The life of one node across incarnations: alive or dead, paused or running. Everything that
 * would run inside the node's process goes through `run`, which drops it when the incarnation
 * is gone and holds it while the node is paused.
 */
export class NodeLife {
  incarnation = 0;
  alive = false;
  paused = false;
  private held: (() => void)[] = [];

  /** A callback of incarnation `inc`: runs now, later (paused), or never (dead). */
  run(inc: number, fn: () => void): void {
    if (!this.alive || inc !== this.incarnation) return;
    if (this.paused) this.held.push(() => this.run(inc, fn));
    else fn();
  }

  /** Resolves when the incarnation may go on (at once when running); never when it died. */
  gate(inc: number): Promise<void> {
    if (this.alive && inc === this.incarnation && !this.paused) return Promise.resolve();
    return new Promise((r) => this.run(inc, r));
  }

  pause(): void {
    this.paused = true;
  }

  resume(): void {
    this.paused = false;
    const held = this.held;
    this.held = [];
    for (const f of held) f();
  }

  kill(): void {
    this.alive = false;
    this.paused = false;
    this.held = [];
  }

  start(): number {
    this.alive = true;
    this.paused = false;
    this.held = [];
    return ++this.incarnation;
  }
}

/** A node's Clock for one incarnation: drifted views of the global clock; timers gated by its life. */
export class NodeClock implements Clock {
  private readonly sched: Scheduler;
  private readonly life: NodeLife;
  private readonly inc: number;
  readonly drift: Drift;
  private readonly monoBase: number;
  private readonly t0: number;

  constructor(sched: Scheduler, life: NodeLife, inc: number, drift: Drift, monoBase: number) {
    this.sched = sched;
    this.life = life;
    this.inc = inc;
    this.drift = drift;
    this.monoBase = monoBase;
    this.t0 = sched.now;
  }

  nowMs(): number {
    return SIM_EPOCH_MS + Math.floor(this.sched.now + this.drift.offsetMs);
  }

  monoMs(): number {
    return this.monoBase + (this.sched.now - this.t0) * (1 + this.drift.rate);
  }

  after(ms: number, fn: () => void): () => void {
    let cancelled = false;
    const cancel = this.sched.after(Math.max(0, ms) / (1 + this.drift.rate), () => {
      this.life.run(this.inc, () => {
        if (!cancelled) fn();
      });
    });
    return () => {
      cancelled = true;
      cancel();
    };
  }
}

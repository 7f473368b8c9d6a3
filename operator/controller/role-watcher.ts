// Polls each two-node cluster's pods for their role and epoch every ROLE_POLL_INTERVAL_MS, and
// enqueues the cluster when one of them changed. The client Service selects the pod labelled
// celer.io/role=leader, and that label moves only in a reconcile pass; without this watcher a
// pass came only on the 30 s resync, so after a leader crash the Service could select no node
// (or the dead one) for up to 30 s, far longer than the failover itself (SPEC §7: under 2 s).
//
// The poll is cheap: one GET /status per pod, ROLE_POLL_CONCURRENCY at a time, each abandoned
// after ROLE_POLL_TIMEOUT_MS, and a new round starts only when the last one ended. It writes
// nothing; only a change of a reachable node's role or epoch enqueues a (full) reconcile, which
// relabels the pods before anything else it does (executor.ts).

import type { Clock, Timer } from './clock.ts';

/** Two polls per second: a role change reaches the label within about a second (SPEC §7 failover < 2 s). */
export const ROLE_POLL_INTERVAL_MS = 500;
/** A node slower than this to answer counts as unchanged this round; below the interval so rounds never overlap by design. */
export const ROLE_POLL_TIMEOUT_MS = 400;
/** At most this many /status calls in flight at once, over all clusters. */
export const ROLE_POLL_CONCURRENCY = 8;

export interface RoleTarget {
  /** Work-queue key of the cluster. */
  cluster: string;
  pod: string;
  url: string;
}

export interface RoleWatcherOptions {
  clock: Clock;
  intervalMs?: number;
  timeoutMs?: number;
  concurrency?: number;
  /** The pods to poll now (two-node clusters only). */
  targets: () => RoleTarget[];
  fetchRole: (url: string, timeoutMs: number) => Promise<{ role: string; epoch: number }>;
  onChange: (cluster: string) => void;
}

export class RoleWatcher {
  readonly #o: Required<RoleWatcherOptions>;
  /** Last answer per "cluster/pod": "role@epoch". */
  readonly #last = new Map<string, string>();
  #timer: Timer | null = null;
  #running = false;
  /** Rounds completed (tests wait on it). */
  rounds = 0;

  constructor(options: RoleWatcherOptions) {
    this.#o = { intervalMs: ROLE_POLL_INTERVAL_MS, timeoutMs: ROLE_POLL_TIMEOUT_MS, concurrency: ROLE_POLL_CONCURRENCY, ...options };
    if (!(this.#o.concurrency >= 1)) throw new RangeError('concurrency must be at least 1');
  }

  start(): void {
    if (this.#running) return;
    this.#running = true;
    this.#schedule();
  }

  stop(): void {
    this.#running = false;
    this.#timer?.cancel();
  }

  #schedule(): void {
    if (!this.#running) return;
    this.#timer = this.#o.clock.after(this.#o.intervalMs, () => void this.pollOnce().finally(() => this.#schedule()));
  }

  /** One round over every target; resolves when every call has answered or timed out. */
  async pollOnce(): Promise<void> {
    const targets = this.#o.targets();
    const live = new Set(targets.map((t) => `${t.cluster}/${t.pod}`));
    for (const k of [...this.#last.keys()]) if (!live.has(k)) this.#last.delete(k);
    const changed = new Set<string>();
    let next = 0;
    const worker = async (): Promise<void> => {
      while (next < targets.length && this.#running) {
        const t = targets[next++]!;
        let seen: string;
        try {
          const s = await this.#o.fetchRole(t.url, this.#o.timeoutMs);
          seen = `${s.role}@${s.epoch}`;
        } catch {
          continue; // unreachable: no news; the reconcile pass decides what an unanswered node means
        }
        const key = `${t.cluster}/${t.pod}`;
        const before = this.#last.get(key);
        this.#last.set(key, seen);
        if (before !== undefined && before !== seen) changed.add(t.cluster);
      }
    };
    await Promise.all(Array.from({ length: Math.min(this.#o.concurrency, targets.length) }, () => worker()));
    this.rounds += 1;
    if (!this.#running) return;
    for (const cluster of changed) this.#o.onChange(cluster);
  }
}

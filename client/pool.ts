// Connections to the nodes of one cluster, and the choice of node per request.
//
// Per node: `connectionsPerNode` slots, each dialled on first use and re-dialled after it breaks;
// a request's slot comes from a hash of its aggregate key, so one aggregate's requests share one
// connection and keep their order. A circuit breaker stops dialling a node that just refused.
//
// Across nodes (failover): requests go to the cached leader. A request that certainly did not
// take effect is tried again, for up to failoverTimeoutMs:
//   2011 naming the leader     the cache moves there and the request goes straight there;
//   2011 without a name, a     the next node is tried at once; once every node was tried in
//   failed connect, an open    this round, a backoff wait, then a new round from the cached
//   circuit breaker            leader (an election, up to ~2 s, is ridden out this way);
//   2012 busy                  a backoff wait, then the same node again.
// Reads and pings (they change nothing) are also tried on the next node after a lost connection
// or a timeout. A write that was sent and then lost (timeout, broken connection) or answered 2007
// (not acknowledged) has an unknown outcome and is never resent here: that is the caller's
// decision, and the exactly-once helper's job.
import { Connection, parseAddress } from './connection.ts';
import { setTimeout as sleep } from 'node:timers/promises';
import {
  ConnectFailedError,
  ConnectionError,
  NotAcknowledgedError,
  NotLeaderError,
  ServerBusyError,
  TimeoutError,
  errorFromCode,
  type CelerError,
  type ErrorDetail,
} from './errors.ts';
import type { ResolvedOptions } from './options.ts';
import { Op, decodeError, type Frame } from './wire.ts';

export type BreakerState = 'closed' | 'open';

/** Where the op byte sits in a frame (u32 length, u32 correlation id, then the op; frame.ts). */
const FRAME_OP_AT = 8;

type TryResult = { answer: Frame } | { fail: Error } | { retry: Error; next: string; resend: boolean };

class NodePool {
  readonly address: string;
  private readonly options: ResolvedOptions;
  private readonly slots: (Connection | undefined)[];
  private readonly dials: (Promise<Connection> | undefined)[];
  private failures = 0;
  private openUntil = 0;
  private lastError: Error | undefined;
  private closed = false;

  constructor(address: string, options: ResolvedOptions) {
    this.address = address;
    this.options = options;
    this.slots = new Array<Connection | undefined>(options.connectionsPerNode).fill(undefined);
    this.dials = new Array<Promise<Connection> | undefined>(options.connectionsPerNode).fill(undefined);
  }

  get breaker(): BreakerState {
    return Date.now() < this.openUntil ? 'open' : 'closed';
  }

  /** The live connection of a slot, without waiting (the hot path). */
  ready(slot: number): Connection | undefined {
    const c = this.slots[slot];
    return c !== undefined && c.alive ? c : undefined;
  }

  /** The slot's connection, dialling it if needed; concurrent callers share one dial. */
  acquire(slot: number): Promise<Connection> {
    const c = this.ready(slot);
    if (c !== undefined) return Promise.resolve(c);
    if (this.closed) return Promise.reject(new ConnectionError('the client is closed'));
    const pending = this.dials[slot];
    if (pending !== undefined) return pending;
    if (this.breaker === 'open') {
      return Promise.reject(
        new ConnectFailedError(
          `${this.address} is skipped for ${this.openUntil - Date.now()} more ms after ${this.failures} failed connect(s) ` +
            `(circuit breaker); last error: ${this.lastError?.message ?? 'none'}`,
          { cause: this.lastError },
        ),
      );
    }
    const dial = Connection.dial(this.address, this.options).then(
      (conn) => {
        this.dials[slot] = undefined;
        this.failures = 0;
        if (this.closed) {
          conn.close();
          throw new ConnectionError('the client is closed');
        }
        this.slots[slot] = conn;
        conn.onClose((dead) => {
          if (this.slots[slot] === dead) this.slots[slot] = undefined;
        });
        return conn;
      },
      (err: Error) => {
        this.dials[slot] = undefined;
        this.failures++;
        this.lastError = err;
        if (this.failures >= this.options.circuitBreakerThreshold) this.openUntil = Date.now() + this.options.circuitBreakerOpenMs;
        throw err;
      },
    );
    this.dials[slot] = dial;
    return dial;
  }

  stats(): NodeStats {
    let connections = 0;
    let inFlight = 0;
    for (const c of this.slots) {
      if (c === undefined || !c.alive) continue;
      connections++;
      inFlight += c.inFlightCount;
    }
    return { address: this.address, connections, inFlight, breaker: this.breaker };
  }

  close(): void {
    this.closed = true;
    for (const c of this.slots) c?.close();
  }
}

/** What the client holds open to one node (for dashboards and tests). */
export interface NodeStats {
  address: string;
  /** Live connections. */
  connections: number;
  /** Requests sent on them and not answered yet. */
  inFlight: number;
  breaker: BreakerState;
}

/** FNV-1a over the 48 key bytes at `at` in a frame: the slot of an aggregate. */
export function keySlot(frame: Uint8Array, at: number, slots: number): number {
  let h = 0x811c9dc5;
  for (let i = at; i < at + 48; i++) h = Math.imul(h ^ frame[i]!, 0x01000193);
  return (h >>> 0) % slots;
}

/** Maps wire error detail (JSON) onto ErrorDetail: numbers that stand for u64 values become strings. */
function toErrorDetail(raw: Record<string, unknown>): ErrorDetail {
  const d: Record<string, unknown> = { ...raw };
  for (const k of ['currentVersion', 'lastClientSeq', 'minVersion'] as const) {
    const v = d[k];
    if (typeof v === 'number' || typeof v === 'bigint') d[k] = String(v);
    else if (v !== undefined && typeof v !== 'string') delete d[k];
  }
  if (d.leader !== undefined && typeof d.leader !== 'string') delete d.leader;
  return d as ErrorDetail;
}

/** The typed error an Op.Error frame carries. */
export function serverError(frame: Frame): CelerError {
  const e = decodeError(frame.body);
  return errorFromCode(e.code, e.message, toErrorDetail(e.detail));
}

export class Pool {
  private readonly options: ResolvedOptions;
  private readonly seeds: readonly string[];
  private readonly nodes = new Map<string, NodePool>();
  private leader: string;
  private roundRobin = 0;
  private closed = false;
  /** Aborted by close(), so requests waiting out a failover stop waiting. */
  private readonly closing = new AbortController();

  constructor(seeds: readonly string[], options: ResolvedOptions) {
    this.seeds = seeds;
    this.options = options;
    this.leader = seeds[0]!;
  }

  /** The node requests go to now. */
  get leaderAddress(): string {
    return this.leader;
  }

  get isClosed(): boolean {
    return this.closed;
  }

  /** Opens a first connection, walking the seeds; the first that answers becomes the leader guess. */
  async open(): Promise<void> {
    const errors: string[] = [];
    for (const seed of this.seeds) {
      try {
        await this.node(seed).acquire(0);
        this.leader = seed;
        return;
      } catch (err) {
        errors.push((err as Error).message);
      }
    }
    this.close();
    throw new ConnectFailedError(`no seed address could be reached: ${errors.join('; ')}`);
  }

  /** A slot for requests without a key (ping): spread across the slots. */
  anySlot(): number {
    this.roundRobin = (this.roundRobin + 1) % this.options.connectionsPerNode;
    return this.roundRobin;
  }

  slotOf(frame: Uint8Array, keyAt: number): number {
    return keySlot(frame, keyAt, this.options.connectionsPerNode);
  }

  /**
   * Sends a frame to the leader and resolves with its successful answer, following the leader
   * across a failover (see the top of this file). An error answer is thrown as its typed class
   * (errorFromCode); a retryable one (2011, 2012, connect failures) only once failoverTimeoutMs
   * or maxLeaderRetries are spent, as the last error seen.
   */
  async send(frame: Uint8Array, slot: number): Promise<Frame> {
    if (this.closed) throw new ConnectionError('the client is closed');
    const o = this.options;
    // A write or a delete whose outcome is unknown is never resent: the write could land twice,
    // the delete could remove an aggregate recreated meanwhile. A trim repeats harmlessly.
    const op = frame[FRAME_OP_AT];
    const idempotent = op !== Op.Write && op !== Op.Delete;
    const deadline = performance.now() + o.failoverTimeoutMs;
    const tried = new Set<string>();
    let target = this.leader;
    let payload = frame;
    let rounds = 0;
    for (let retries = 0; ; retries++) {
      tried.add(target);
      const r = await this.tryNode(target, slot, payload, idempotent);
      if ('answer' in r) return r.answer;
      if ('fail' in r) throw r.fail;
      if (this.closed) throw new ConnectionError('the client is closed', { cause: r.retry });
      if (retries >= o.maxLeaderRetries) throw r.retry;
      let next = r.next;
      if (tried.has(next)) {
        // Every candidate of this round has been asked: wait, then start a new round.
        const left = deadline - performance.now();
        if (left <= 0) throw r.retry;
        await this.pause(Math.min(left, this.backoffMs(rounds++)));
        if (this.closed) throw new ConnectionError('the client is closed', { cause: r.retry });
        tried.clear();
        // 2012 asks the same node again; otherwise the round starts at the leader as known now
        // (a redirect moved it, or another request learnt it while this one waited).
        if (next !== target) next = this.leader;
      } else if (rounds > 0 && performance.now() >= deadline) {
        throw r.retry;
      }
      // A frame handed to a connection that then broke may still sit in its socket's queue.
      if (r.resend) payload = payload.slice();
      target = next;
    }
  }

  /** One try at one node: an answer to return, an error to throw, or the error and where to go next. */
  private async tryNode(target: string, slot: number, frame: Uint8Array, idempotent: boolean): Promise<TryResult> {
    const node = this.node(target);
    let conn: Connection;
    try {
      conn = node.ready(slot) ?? (await node.acquire(slot));
    } catch (err) {
      // Nothing was sent (a refused or timed-out connect, or an open circuit breaker).
      if (err instanceof ConnectFailedError) return { retry: err, next: this.nextSeed(target), resend: false };
      return { fail: err as Error };
    }
    let answer: Frame;
    try {
      answer = await conn.request(frame);
    } catch (err) {
      // Sent, or maybe sent, and then lost: only a request that changes nothing may go again.
      if (idempotent && (err instanceof TimeoutError || err instanceof ConnectionError)) return { retry: err, next: this.nextSeed(target), resend: true };
      // A write timed out (the node is hung or paused): its outcome is unknown and it is not
      // resent, but the next requests try another node first rather than wait on this one again.
      if (!idempotent && err instanceof TimeoutError && this.leader === target) this.leader = this.nextSeed(target);
      return { fail: err as Error };
    }
    if (answer.op !== Op.Error) {
      if (!idempotent) this.leader = target; // it took a write: it leads
      return { answer };
    }
    const e = serverError(answer);
    if (e instanceof NotLeaderError) {
      const named = e.leader !== undefined && parseAddress(e.leader) !== undefined ? e.leader : undefined;
      if (named !== undefined && named !== target) {
        this.leader = named;
        return { retry: e, next: named, resend: false };
      }
      return { retry: e, next: this.nextSeed(target), resend: false };
    }
    if (e instanceof ServerBusyError) return { retry: e, next: target, resend: false };
    // It judged the write itself (a guard, a bad request …): it is the node in charge. Not after
    // 2007, which a leader that has just been fenced also answers.
    if (!idempotent && !(e instanceof NotAcknowledgedError)) this.leader = target;
    return { fail: e };
  }

  /** The wait before round `round + 1`: exponential, capped, jittered into its upper half. */
  private backoffMs(round: number): number {
    const d = Math.min(this.options.failoverBackoffMaxMs, this.options.failoverBackoffInitialMs * 2 ** round);
    return d / 2 + (d / 2) * Math.random();
  }

  /** Waits `ms`, or less when the client is closed meanwhile. */
  private async pause(ms: number): Promise<void> {
    try {
      await sleep(ms, undefined, { signal: this.closing.signal });
    } catch {
      // aborted by close(): the caller checks `closed`
    }
  }

  stats(): NodeStats[] {
    return [...this.nodes.values()].map((n) => n.stats());
  }

  close(): void {
    this.closed = true;
    this.closing.abort();
    for (const n of this.nodes.values()) n.close();
  }

  private node(address: string): NodePool {
    let n = this.nodes.get(address);
    if (n === undefined) {
      n = new NodePool(address, this.options);
      this.nodes.set(address, n);
    }
    return n;
  }

  /** The seed after `current` (the first seed when `current` was learnt from a redirect). */
  private nextSeed(current: string): string {
    const i = this.seeds.indexOf(current);
    return this.seeds[(i + 1) % this.seeds.length]!;
  }
}

// Connections to the nodes of one cluster, and the choice of node per request.
//
// Per node: `connectionsPerNode` slots, each dialled on first use and re-dialled after it breaks;
// a request's slot comes from a hash of its aggregate key, so one aggregate's requests share one
// connection and keep their order. A circuit breaker stops dialling a node that just refused.
//
// Across nodes: requests go to the cached leader. "Not leader" naming the leader moves the cache
// and retries once there; "not leader" without a name, or a node that cannot be reached, walks
// the seed addresses (at most maxLeaderRetries more tries). A request that was sent and then lost
// (timeout, broken connection) is never resent here: for a write that is the caller's decision.
import { Connection, parseAddress } from './connection.ts';
import { ConnectFailedError, ConnectionError, NotLeaderError, errorFromCode, type CelerError, type ErrorDetail } from './errors.ts';
import type { ResolvedOptions } from './options.ts';
import { Op, decodeError, type Frame } from './wire.ts';

export type BreakerState = 'closed' | 'open';

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
   * Sends a frame to the leader and resolves with its successful answer, following leader
   * redirects. An error answer is thrown as its typed class (errorFromCode); "not leader" only
   * once the redirect and the seed walk are spent.
   */
  async send(frame: Uint8Array, slot: number): Promise<Frame> {
    if (this.closed) throw new ConnectionError('the client is closed');
    let target = this.leader;
    let redirected = false;
    let walks = 0;
    for (;;) {
      const node = this.node(target);
      let answer: Frame;
      try {
        const conn = node.ready(slot) ?? (await node.acquire(slot));
        answer = await conn.request(frame);
      } catch (err) {
        // Only a failed connect is safe to retry elsewhere: the request never left.
        const next = this.nextSeed(target);
        if (err instanceof ConnectFailedError && !this.closed && walks < this.options.maxLeaderRetries && next !== target) {
          walks++;
          target = next;
          continue;
        }
        throw err;
      }
      if (answer.op !== Op.Error) {
        this.leader = target;
        return answer;
      }
      const e = serverError(answer);
      if (!(e instanceof NotLeaderError)) {
        this.leader = target; // it answered as the node in charge
        throw e;
      }
      const named = e.leader !== undefined && parseAddress(e.leader) !== undefined ? e.leader : undefined;
      if (named !== undefined && named !== target && !redirected) {
        redirected = true;
        this.leader = named;
        target = named;
        continue;
      }
      const next = this.nextSeed(target);
      if (walks < this.options.maxLeaderRetries && next !== target) {
        walks++;
        target = next;
        continue;
      }
      throw e;
    }
  }

  stats(): NodeStats[] {
    return [...this.nodes.values()].map((n) => n.stats());
  }

  close(): void {
    this.closed = true;
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

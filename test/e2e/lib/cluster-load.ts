// The write load and read-back of the cluster suites (cluster.ts re-exports all of it): a
// closed-loop load through connect([a, b]) that records every acknowledgement, and reading every
// aggregate back from each node to compare.
import { connect, WrongExpectedVersionError, type AggregateKey, type Batch, type CelerClient, type ClientOptions } from '@celer/client';
import type { Cluster } from './cluster.ts';
import { now, sleep } from './wait.ts';

const te = new TextEncoder();
const td = new TextDecoder();

// ---------------------------------------------------------------------------------------------
// Reading back

/** Every batch of `key` on the node `client` talks to ([] when it does not exist). */
export async function readBatches(client: CelerClient, key: AggregateKey): Promise<Batch[]> {
  const out: Batch[] = [];
  try {
    for await (const b of client.readAll(key)) out.push(b);
  } catch (e) {
    if ((e as { code?: number }).code === 1001) return [];
    throw e;
  }
  return out;
}

/** A comparable text form of a batch list: versions, position, clientId and every payload. */
export function batchesText(batches: Batch[]): string {
  return batches
    .map((b) => `${b.fromVersion}-${b.toVersion}@${b.position.shard}:${b.position.seq} c${b.clientId} ` + b.events.map((e) => `${e.version}:${e.type}:${td.decode(e.data)}`).join(','))
    .join('\n');
}

/** Reads every key from both nodes (each through its own client) and checks they hold the same batches. */
export async function readBothAndCompare(c: Cluster, keys: AggregateKey[]): Promise<Map<string, Batch[]>> {
  const clients = await Promise.all([c.clientOf(0), c.clientOf(1)]);
  try {
    const out = new Map<string, Batch[]>();
    for (const key of keys) {
      const [a, b] = (await Promise.all(clients.map((cl) => readBatches(cl, key)))) as [Batch[], Batch[]];
      const ta = batchesText(a);
      const tb = batchesText(b);
      if (ta !== tb) throw new Error(`aggregate ${String(key.org)}/${String(key.type)}/${String(key.id)} differs between the nodes:\nn0:\n${ta}\nn1:\n${tb}`);
      out.set(keyText(key), a);
    }
    return out;
  } finally {
    await Promise.all(clients.map((cl) => cl.close()));
  }
}

export function keyText(k: AggregateKey): string {
  return `${String(k.org)}/${String(k.type)}/${String(k.id)}`;
}

// ---------------------------------------------------------------------------------------------
// A write load

export interface LoadOptions {
  writers: number;
  /** Writers [0, exactlyOnce) use appendExactlyOnce with 'any'; the rest plain appends guarded by the exact version. */
  exactlyOnce: number;
  org: number;
  clientOptions?: ClientOptions;
  /** The addresses given to connect(), in this order (default: n0's, n1's). */
  addresses?: string[];
  /** Pause between a writer's writes (ms); 0 = back to back. */
  thinkMs?: number;
}

export interface WriterState {
  key: AggregateKey;
  exactlyOnce: boolean;
  /** Acknowledged payloads, in order, with the version each was acknowledged at (plain) or null (exactly-once). */
  acked: Array<{ data: string; version: bigint | null; at: number; issued: number }>;
  /** Every payload sent (acknowledged or not). */
  sent: Set<string>;
}

/**
 * Writers, each on its own aggregate (org/1/w), through one client given both addresses. Plain
 * writers guard with the exact version they know; after an unknown outcome they send a new
 * payload at the same version (a 2003 tells them the earlier one landed). Exactly-once writers
 * use clientId 1000+w and clientSeq 1, 2, … with 'any'; an error thrown by the helper is retried
 * with the same clientSeq. Every error reaching the caller is recorded with its time.
 */
export class Load {
  readonly writers: WriterState[] = [];
  readonly errors: Array<{ at: number; writer: number; error: string }> = [];
  readonly ackTimes: number[] = [];
  private stopping = false;
  private done: Promise<void> = Promise.resolve();
  client: CelerClient | null = null;
  private cluster: Pick<Cluster, 'addresses' | 'waitFor'> | null = null;
  readonly options: LoadOptions;

  constructor(options: LoadOptions) {
    this.options = options;
    for (let w = 0; w < options.writers; w++) {
      this.writers.push({ key: { org: options.org, type: 1, id: w }, exactlyOnce: w < options.exactlyOnce, acked: [], sent: new Set() });
    }
  }

  /** Starts the writers against `c` (a Cluster, or anything with its addresses and waitFor). */
  async start(c: Pick<Cluster, 'addresses' | 'waitFor'>): Promise<void> {
    this.cluster = c;
    this.client = await connect(this.options.addresses ?? c.addresses, { requestTimeoutMs: 5_000, failoverTimeoutMs: 10_000, ...this.options.clientOptions });
    this.done = Promise.all(this.writers.map((_, w) => this.writer(w))).then(() => {});
  }

  get acks(): number {
    return this.ackTimes.length;
  }

  /** Resolves once `n` more acknowledgements than now have arrived. */
  async waitAcks(n: number, timeoutMs = 30_000): Promise<void> {
    const target = this.acks + n;
    await this.cluster!.waitFor(`${n} more acknowledged writes (${this.acks} so far; client errors: ${this.errorSummary()})`, () => this.acks >= target, timeoutMs);
  }

  /** The first acknowledgement time at or after `t` (ms, performance.now()), or null. */
  firstAckAfter(t: number): number | null {
    for (const x of this.ackTimes) if (x >= t) return x;
    return null;
  }

  /** The longest gap between consecutive acknowledgements within [from, to]. */
  longestGap(from: number, to: number): number {
    let prev = from;
    let gap = 0;
    for (const x of this.ackTimes) {
      if (x < from) continue;
      if (x > to) break;
      gap = Math.max(gap, x - prev);
      prev = x;
    }
    return Math.max(gap, to - prev);
  }

  /** Stops the writers; requests still waiting out a failover are given up (closing the client). */
  async stop(): Promise<void> {
    this.stopping = true;
    const closer = setTimeout(() => void this.client?.close(), 15_000);
    await this.done;
    clearTimeout(closer);
    await this.client?.close();
  }

  /** The helper's wait between attempts; gives up (throws) once the load stops. */
  private readonly helperSleep = async (ms: number): Promise<void> => {
    if (this.stopping) throw new Error('load stopped');
    await sleep(ms);
  };

  private async writer(w: number): Promise<void> {
    const st = this.writers[w]!;
    const c = this.client!;
    let version = 0n;
    let attempt = 0;
    let seq = 1n;
    /** Exactly-once: when the first attempt of the current clientSeq was issued. */
    let firstIssued: number | null = null;
    while (!this.stopping) {
      if (st.exactlyOnce) {
        const data = `w${w}-s${seq}`;
        st.sent.add(data);
        const issued = now();
        try {
          await c.appendExactlyOnce(st.key, [{ type: 'Tick', data: te.encode(data) }], { clientId: 1000 + w, clientSeq: seq, expectedVersion: 'any', sleep: this.helperSleep });
          const at = now();
          st.acked.push({ data, version: null, at, issued: firstIssued ?? issued });
          firstIssued = null;
          this.ackTimes.push(at);
          seq++;
        } catch (e) {
          if (this.stopping) break;
          this.errors.push({ at: now(), writer: w, error: errorText(e) });
          firstIssued ??= issued;
          await sleep(50); // unknown outcome: the same clientSeq again
        }
      } else {
        const data = `w${w}-a${++attempt}`;
        st.sent.add(data);
        const issued = now();
        try {
          const r = await c.append(st.key, [{ type: 'Tick', data: te.encode(data) }], { expectedVersion: version });
          version = r.toVersion;
          const at = now();
          st.acked.push({ data, version, at, issued });
          this.ackTimes.push(at);
        } catch (e) {
          if (e instanceof WrongExpectedVersionError) {
            version = e.currentVersion; // an earlier unknown outcome landed
          } else {
            if (this.stopping) break;
            this.errors.push({ at: now(), writer: w, error: errorText(e) });
            await sleep(50);
          }
        }
      }
      if (this.options.thinkMs) await sleep(this.options.thinkMs);
    }
  }

  keys(): AggregateKey[] {
    return this.writers.map((s) => s.key);
  }

  /**
   * Checks what `batches` (per key, as read back) hold against what was acknowledged: every
   * acknowledged payload present (plain ones at their acknowledged version), none twice, nothing
   * that was never sent, versions 1..n gapless. Returns the problems found.
   */
  check(batches: Map<string, Batch[]>): string[] {
    const problems: string[] = [];
    for (const [w, st] of this.writers.entries()) {
      const bs = batches.get(keyText(st.key)) ?? [];
      const byData = new Map<string, bigint[]>();
      let expect = 1n;
      for (const b of bs) {
        for (const e of b.events) {
          if (e.version !== expect) problems.push(`writer ${w}: version ${e.version} where ${expect} was expected`);
          expect = e.version + 1n;
          const d = td.decode(e.data);
          byData.set(d, [...(byData.get(d) ?? []), e.version]);
          if (!st.sent.has(d)) problems.push(`writer ${w}: payload ${d} was never sent`);
        }
      }
      for (const [d, vs] of byData) if (vs.length > 1) problems.push(`writer ${w}: payload ${d} applied ${vs.length} times (versions ${vs.join(', ')})`);
      for (const a of st.acked) {
        const vs = byData.get(a.data);
        if (!vs) problems.push(`writer ${w}: acknowledged ${a.data}${a.version !== null ? ` (version ${a.version})` : ''} is missing`);
        else if (a.version !== null && vs[0] !== a.version) problems.push(`writer ${w}: acknowledged ${a.data} at version ${a.version} but read back at ${vs[0]}`);
      }
    }
    return problems;
  }

  /** The error messages seen, counted. */
  errorSummary(): string {
    const counts = new Map<string, number>();
    for (const e of this.errors) counts.set(e.error, (counts.get(e.error) ?? 0) + 1);
    return [...counts].map(([k, v]) => `${v}× ${k}`).join('; ') || 'none';
  }
}

export function errorText(e: unknown): string {
  const x = e as { code?: unknown; name?: string; message?: string };
  return `${x.name ?? 'Error'}${x.code !== undefined ? ` ${String(x.code)}` : ''}: ${(x.message ?? String(e)).slice(0, 160)}`;
}


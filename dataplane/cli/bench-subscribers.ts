// Live subscribers during `celer bench` (--subscribers N [--slow-subscriber-ms MS]): N org
// subscriptions (`client.subscribe({ org }, { from })`) on the org the bench writes to, run in a
// worker thread (bench-subscribers-worker.ts) so their decoding does not share the writers' event
// loop (it still shares the machine's cores with the node and the writers). With N ≥ 1 one of them
// is deliberately slow: it sleeps MS after every batch it receives.
//
// Where they start: every bench run writes to a fresh org (bench.ts: org = the run's id), and the
// subscribers start from the current tail: the worker reads each shard's committed seq
// (readShard from beyond the tip answers at once with the tip and no data) and subscribes from the
// checkpoint made of those seqs, before the first write. So they measure live delivery, not a
// catch-up through the data directory's history, and still miss none of the run's writes.
//
// Delivery latency: a batch's serverTimestampMs is the time the server placed the write (before
// its fdatasync), in whole milliseconds, so it is not the commit time. The bench therefore records,
// per writer and version, when the writer got its durable ack (AckLog, shared memory), and each
// fast subscriber computes receipt − ack for the batches it gets. The commit lies between placement
// and the ack, so receipt − ack is a lower bound of commit → subscriber and receipt −
// serverTimestampMs an upper bound; both are reported. A batch that reaches a subscriber before its
// writer has seen the ack counts as 0 (and is counted). Only writes acknowledged inside the
// measured window are sampled; the slow subscriber is left out of the latency and reported by how
// many batches behind it was when the writers stopped.
import { Worker } from 'node:worker_threads';
import { percentile } from './bench.ts';

/**
 * Highest `--subscriber-nice`. The subscribers are clients: in production they run on their own
 * machines, here they share the node's cores. At nice 19 their thread gets only the CPU the node
 * and the writers leave (Linux schedules threads by nice), which is the closest this one machine
 * comes to subscribers elsewhere; the delivery latency then shows whether they still keep up.
 */
export const SUBSCRIBER_NICE_MAX = 19;
/** Connections the subscribers share (subscriber j uses connection j mod this); the slow one shares too. */
export const SUBSCRIBER_CONNECTIONS = 4;
/** Most subscribers: each keeps a long poll waiting at every shard's tail, and a shard admits FEED_WAITERS_PER_SHARD_MAX (1024). */
export const SUBSCRIBERS_MAX = 1000;
/** Default sleep of the slow subscriber after each batch. */
export const SLOW_SUBSCRIBER_MS_DEFAULT = 50;
/** After the writers stop, how long the fast subscribers get to receive every acknowledged write. */
export const DRAIN_MS = 10_000;
/** After the drain, how long to wait for the node to answer the page reads still out for the subscribers. */
export const QUIET_MAX_MS = 300_000;
/** The longest the worker may take to report after the writers stopped (the drain, the quiet wait, closing, slack). */
const STOP_TIMEOUT_MS = DRAIN_MS + QUIET_MAX_MS + 30_000;
/** Ack times kept per writer (a ring indexed by version): enough for a subscriber this many writes behind its writer. */
export const ACK_RING = 4096;
/**
 * Every how many batches a fast subscriber measures one delivery's latency. Measuring takes two
 * clock reads and a lookup: on every batch of 100 subscribers it was the largest cost of the
 * subscriber thread (2 cores, 2026-12-03), a load the writers then shared.
 */
export const LATENCY_SAMPLE_EVERY = 8;
/** Delivery latency samples kept (uniform reservoir), per measure. */
const DELIVERY_SAMPLES_MAX = 1_000_000;

/** The parsed `--subscribers` value: one count, or a comma-separated list of distinct counts to compare in rounds. */
export function parseSubscriberCounts(text: string): number[] {
  const parts = text.split(',').map((p) => p.trim());
  const counts = parts.map((p) => {
    if (!/^\d+$/.test(p)) throw new RangeError(`--subscribers takes N or N,M,… (integers 0..${SUBSCRIBERS_MAX}); got "${text}"`);
    const n = Number(p);
    if (n > SUBSCRIBERS_MAX) throw new RangeError(`--subscribers ${n} is above ${SUBSCRIBERS_MAX} (each subscriber waits at every shard's tail; a shard admits 1024 waiters)`);
    return n;
  });
  if (new Set(counts).size !== counts.length) throw new RangeError(`--subscribers lists a count twice: "${text}"`);
  return counts;
}

/** The system name of a subscriber count in the rounds table. */
export const subscribersName = (n: number): string => `subs=${n}`;

/**
 * When each writer's write of each version was acknowledged, in shared memory: the main thread
 * records, the subscriber worker looks up. One ring of `ring` slots per writer, slot = version mod
 * ring; the version is stored last with Atomics.store (and read first with Atomics.load), so a
 * reader that sees the version sees its time.
 */
export class AckLog {
  readonly writers: number;
  readonly ring: number;
  readonly times: Float64Array;
  readonly versions: Int32Array;

  constructor(writers: number, ring: number, shared?: { times: SharedArrayBuffer; versions: SharedArrayBuffer }) {
    this.writers = writers;
    this.ring = ring;
    this.times = new Float64Array(shared?.times ?? new SharedArrayBuffer(writers * ring * 8));
    this.versions = new Int32Array(shared?.versions ?? new SharedArrayBuffer(writers * ring * 4));
  }

  get shared(): { times: SharedArrayBuffer; versions: SharedArrayBuffer } {
    return { times: this.times.buffer as SharedArrayBuffer, versions: this.versions.buffer as SharedArrayBuffer };
  }

  record(writer: number, version: number, atMs: number): void {
    const slot = writer * this.ring + (version % this.ring);
    this.times[slot] = atMs;
    Atomics.store(this.versions, slot, version);
  }

  /** The ack time; -1 when that version's ack is not recorded yet, -2 when its slot was reused (or no such writer). */
  lookup(writer: number, version: number): number {
    if (!Number.isSafeInteger(writer) || writer < 0 || writer >= this.writers || version < 1) return -2;
    const slot = writer * this.ring + (version % this.ring);
    const v = Atomics.load(this.versions, slot);
    if (v === version) return this.times[slot]!;
    return v < version ? -1 : -2;
  }
}

/** Milliseconds on the process's monotonic clock since `base` (process.hrtime.bigint()), the same in every thread. */
export const monotonicMs = (base: bigint): (() => number) => () => Number(process.hrtime.bigint() - base) / 1e6;

export interface LatencySummary {
  /** Values seen (the percentiles are of a uniform sample of at most DELIVERY_SAMPLES_MAX of them). */
  count: number;
  p50: number;
  p99: number;
  max: number;
}

/** A uniform reservoir of latency values with percentiles. */
export class Reservoir {
  private readonly samples: Float64Array;
  private n = 0;
  private seen = 0;
  private maxSeen = 0;

  constructor(capacity = DELIVERY_SAMPLES_MAX) {
    this.samples = new Float64Array(capacity);
  }

  add(ms: number): void {
    this.seen++;
    if (this.seen === 1 || ms > this.maxSeen) this.maxSeen = ms;
    if (this.n < this.samples.length) {
      this.samples[this.n++] = ms;
      return;
    }
    const j = Math.floor(Math.random() * this.seen);
    if (j < this.samples.length) this.samples[j] = ms;
  }

  summary(): LatencySummary {
    const sorted = this.samples.slice(0, this.n).sort();
    return { count: this.seen, p50: percentile(sorted, 50), p99: percentile(sorted, 99), max: this.maxSeen };
  }
}

export interface DeliveryReport {
  subscribers: number;
  /** Sleep of the slow subscriber per batch; undefined when there is none (N = 0). */
  slowMs: number | undefined;
  connections: number;
  /** The checkpoint the subscribers started from (each shard's committed seq before the first write). */
  from: string;
  /** Writes acknowledged to the writers over the whole run (warm-up included). */
  acked: number;
  /** Batches each subscriber received by the end of the drain; index 0 is the slow one when there is one. */
  delivered: number[];
  /** The nice value the subscribers' thread ran at, or why it could not be set. */
  nice: number | string;
  /** How many times each subscriber was dropped for falling behind the tail (SubscriberTooSlowError) and resumed from its checkpoint. */
  drops: number[];
  /** The first drop's message. */
  dropMessage: string | undefined;
  /** Fast subscribers, every LATENCY_SAMPLE_EVERY-th delivery of a write acknowledged in the measured window: receipt − writer's ack (lower bound of commit → subscriber). */
  afterAck: LatencySummary;
  /** Of those, how many arrived before the writer had its ack (counted as 0 in afterAck). */
  beforeAck: number;
  /** Deliveries whose ack time was no longer in the AckLog ring (or not of a bench writer): not sampled. */
  unmatched: number;
  /** The same deliveries: receipt − serverTimestampMs (placement, before the fdatasync; 1 ms resolution): an upper bound. */
  afterPlacement: LatencySummary;
  /** acked − the slow subscriber's deliveries when the writers stopped; undefined without one. */
  slowBehindAtStop: number | undefined;
  /** How long the fast subscribers took after the writers stopped to have every acked write (the drain limit when some did not). */
  drainMs: number;
  /**
   * When, after the writers stopped, the node had answered every page read the subscribers had
   * asked for (only tail waits left out); the next run starts after it. `quiet` false: it had not
   * within QUIET_MAX_MS, and the next run competes with that work.
   */
  quietMs: number;
  quiet: boolean;
  /** Fast subscribers with fewer batches than acked at the end of the drain. */
  missing: number;
  /** Subscribers that failed, with why. */
  errors: string[];
}

const ms = (x: number): string => (x >= 100 ? x.toFixed(0) : x >= 10 ? x.toFixed(1) : x.toFixed(2));

/** The lines `celer bench` prints for the subscribers of one run (each prefixed by the caller). */
export function formatDelivery(r: DeliveryReport): string[] {
  const fast = r.delivered.length - (r.slowMs === undefined ? 0 : 1);
  const head =
    `subscribers ${r.subscribers} (${r.slowMs === undefined ? 'none slow' : `1 slow, ${r.slowMs} ms/batch`}) over ${r.connections} connection(s) in a worker thread${r.nice === 0 ? '' : typeof r.nice === 'number' ? ` at nice ${r.nice}` : ` (nice not set: ${r.nice})`}, ` +
    `from the tail (${r.from.length > 40 ? r.from.slice(0, 40) + '…' : r.from})`;
  const lines = [head];
  if (fast > 0 && r.afterAck.count === 0) {
    lines.push(`subscribers ${r.subscribers}: delivered: no write acknowledged in the measured window reached a fast subscriber by the end of the drain (no latency to report)`);
  } else if (fast > 0) {
    const a = r.afterAck;
    const p = r.afterPlacement;
    const early = (100 * r.beforeAck) / a.count;
    lines.push(
      `subscribers ${r.subscribers}: delivered p50 ${ms(a.p50)} ms p99 ${ms(a.p99)} ms max ${ms(a.max)} ms after the writer's ack ` +
        `(${a.count} deliveries to ${fast} fast subscribers in the window, 1 in ${LATENCY_SAMPLE_EVERY} of each one's; ${early.toFixed(1)}% before the ack, counted as 0${r.unmatched > 0 ? `; ${r.unmatched} not matched` : ''}); ` +
        `p50 ${ms(p.p50)} ms p99 ${ms(p.p99)} ms max ${ms(p.max)} ms after the server placed the write` +
        (r.missing > 0 ? ` (of the batches that arrived by the end: the rest took longer)` : ''),
    );
  }
  if (fast > 0) {
    const fastCounts = r.slowMs === undefined ? r.delivered : r.delivered.slice(1);
    lines.push(
      `subscribers ${r.subscribers}: fast subscribers received ${Math.min(...fastCounts)}..${Math.max(...fastCounts)} batches of ${r.acked} acknowledged writes, ` +
        `${r.missing === 0 ? `all of them ${(r.drainMs / 1000).toFixed(1)} s after the writers stopped` : `${r.missing} short after the ${(r.drainMs / 1000).toFixed(1)} s drain`}`,
    );
  }
  if (r.slowBehindAtStop !== undefined) {
    lines.push(`subscribers ${r.subscribers}: slow subscriber ${r.slowBehindAtStop} batches behind when the writers stopped (received ${r.delivered[0]} of ${r.acked} by the end)`);
    lines.push(`subscribers ${r.subscribers}: slow subscriber dropped ${r.drops[0]} time(s) for falling behind the tail, each time resumed from its checkpoint`);
  }
  if (fast > 0) {
    const fastDrops = r.slowMs === undefined ? r.drops : r.drops.slice(1);
    const dropped = fastDrops.filter((d) => d > 0).length;
    lines.push(`subscribers ${r.subscribers}: fast subscribers dropped: ${dropped} of ${fast}${dropped > 0 ? ` (${fastDrops.reduce((a, b) => a + b, 0)} drops in all)` : ''}`);
  }
  if (r.dropMessage !== undefined) lines.push(`subscribers ${r.subscribers}: first drop: ${r.dropMessage}`);
  lines.push(
    r.quiet
      ? `subscribers ${r.subscribers}: the node had answered every page read still out for them ${(r.quietMs / 1000).toFixed(1)} s after the writers stopped (the next run starts after that)`
      : `WARNING: the node was still reading pages for the subscribers ${(r.quietMs / 1000).toFixed(0)} s after the writers stopped; a next run competes with that work`,
  );
  if (r.missing > 0) lines.push(`WARNING: ${r.missing} of ${fast} fast subscribers did not receive every acknowledged write within the ${(DRAIN_MS / 1000).toFixed(0)} s drain`);
  for (const e of r.errors) lines.push(`WARNING: ${e}`);
  return lines;
}

export interface SubscribersOptions {
  addresses: string[];
  /** The org the bench writes to. */
  org: bigint;
  subscribers: number;
  slowMs: number;
  /** Nice value for the subscribers' thread (0 = as the bench). */
  nice: number;
  writers: number;
}

/** What the worker is given (workerData). */
export interface WorkerInput extends SubscribersOptions {
  connections: number;
  ack: { times: SharedArrayBuffer; versions: SharedArrayBuffer };
  ring: number;
  clockBase: bigint;
  /** [start, end) of the measured window on the shared clock; start is +∞ until the window opens. */
  window: SharedArrayBuffer;
  drainMs: number;
  quietMaxMs: number;
}

export type WorkerMessage = { type: 'ready'; from: string } | { type: 'report'; report: DeliveryReport } | { type: 'error'; message: string };

/** The subscribers of a run: started before the writers, told the window, stopped after them. */
export interface Subscribers {
  /** Where they started. */
  from: string;
  /** The writer's write of `version` got its ack (call right after it). */
  acked(writer: number, version: bigint): void;
  windowOpen(): void;
  windowClose(): void;
  /** After the writers stopped: drains, reports, ends the worker. */
  stop(): Promise<DeliveryReport>;
  /** Ends the worker at once (on failure). */
  terminate(): Promise<void>;
}

export async function startSubscribers(o: SubscribersOptions): Promise<Subscribers> {
  const clockBase = process.hrtime.bigint();
  const now = monotonicMs(clockBase);
  const ack = new AckLog(o.writers, ACK_RING);
  const windowBuf = new SharedArrayBuffer(16);
  const window = new Float64Array(windowBuf);
  window[0] = Infinity;
  window[1] = Infinity;
  const input: WorkerInput = { ...o, connections: SUBSCRIBER_CONNECTIONS, ack: ack.shared, ring: ACK_RING, clockBase, window: windowBuf, drainMs: DRAIN_MS, quietMaxMs: QUIET_MAX_MS };
  const worker = new Worker(new URL('./bench-subscribers-worker.ts', import.meta.url), { workerData: input });
  let total = 0;
  const next = (): Promise<WorkerMessage> =>
    new Promise((resolve, reject) => {
      const onMessage = (m: WorkerMessage): void => {
        worker.off('error', onError);
        worker.off('exit', onExit);
        resolve(m);
      };
      const onError = (e: Error): void => {
        worker.off('message', onMessage);
        worker.off('exit', onExit);
        reject(e);
      };
      const onExit = (code: number): void => {
        worker.off('message', onMessage);
        worker.off('error', onError);
        reject(new Error(`the subscriber worker exited with ${code} before it answered`));
      };
      worker.once('message', onMessage);
      worker.once('error', onError);
      worker.once('exit', onExit);
    });
  const fail = async (m: WorkerMessage): Promise<never> => {
    await worker.terminate();
    throw new Error(m.type === 'error' ? `subscribers: ${m.message}` : `subscribers: unexpected message ${m.type}`);
  };
  const ready = await next().catch(async (e: unknown) => {
    await worker.terminate();
    throw e;
  });
  if (ready.type !== 'ready') return fail(ready);
  return {
    from: ready.from,
    acked: (writer, version) => {
      total++;
      ack.record(writer, Number(version), now());
    },
    windowOpen: () => void (window[0] = now()),
    windowClose: () => void (window[1] = now()),
    stop: async () => {
      const answer = next();
      worker.postMessage({ type: 'stop', acked: total });
      let timer: NodeJS.Timeout | undefined;
      const late = new Promise<never>((_, reject) => {
        timer = setTimeout(() => reject(new Error(`subscribers: no report ${STOP_TIMEOUT_MS} ms after the writers stopped`)), STOP_TIMEOUT_MS);
      });
      let m: WorkerMessage;
      try {
        m = await Promise.race([answer, late]);
      } finally {
        clearTimeout(timer);
        await worker.terminate();
      }
      if (m.type !== 'report') throw new Error(m.type === 'error' ? `subscribers: ${m.message}` : `subscribers: unexpected message ${m.type}`);
      return m.report;
    },
    terminate: async () => void (await worker.terminate()),
  };
}

// An example projection: follows every shard's feed of a Celer node (subscribeShard) into a
// PostgreSQL read model, exactly once across crashes and restarts (see model.ts and README.md).
//
//   node examples/projection-postgres/projection.ts [--celer HOST:PORT] [--pg postgres://… | --pg HOST:PORT] [--org N]
//
// Per shard, a pump reads the feed into a bounded queue and an applier drains it, up to
// TXN_BATCHES_MAX batches per PostgreSQL transaction (while one transaction commits, the next
// batches queue up, so the transactions grow with the load). SIGTERM / SIGINT: the transaction in
// flight finishes, nothing new starts, exit 0. Any PostgreSQL error ends the process with 1: a
// restart resumes from the checkpoints, which is always safe.
import { parseArgs } from 'node:util';
import pg from 'pg';
import { connect, normalizeKey, type CelerClient, type ShardBatch } from '@celer/client';
import { applyBatches, ensureSchema, INSTANCE_LOCK, readCheckpoints } from './model.ts';

/** Most feed batches applied in one PostgreSQL transaction. */
export const TXN_BATCHES_MAX = 500;
/** Most batches read ahead of the applier, per shard (the pump stops reading the feed beyond it). */
const QUEUE_BATCHES_MAX = 4_000;
/** Most event bytes read ahead of the applier, per shard. */
const QUEUE_BYTES_MAX = 16 * 1024 * 1024;
/** Feed page size: small enough that a restart far behind the tail gets its first batches quickly. */
const FEED_PAGE_BYTES = 256 * 1024;
/** Long-poll wait of the feed at the tail. */
const POLL_WAIT_MS = 5_000;
/** How often a progress line may be printed (only when something was applied). */
const PROGRESS_INTERVAL_MS = 1_000;
/** Waits before subscribing again after the feed failed (doubling up to the max). */
const RESUBSCRIBE_MIN_MS = 100;
const RESUBSCRIBE_MAX_MS = 5_000;
/** How often a second instance asks for the instance lock. */
const LOCK_RETRY_MS = 500;
/** The projection only reads; a fixed clientId names it in the node's connection stats. */
const CLIENT_ID = 0x70726f6a;
/** Largest seq: a feed read from it returns a shard's committed seq without data. */
const TIP = Number.MAX_SAFE_INTEGER;

const USAGE = `usage: node examples/projection-postgres/projection.ts [--celer HOST:PORT] [--pg URL|HOST:PORT] [--org N]
  --celer HOST:PORT   a Celer node's native address (default 127.0.0.1:7400)
  --pg URL|HOST:PORT  PostgreSQL: a postgres:// connection string, or host:port as user postgres,
                      database postgres (default: libpq's PGHOST, PGPORT, PGUSER, PGDATABASE, …)
  --org N             only this org's aggregates go into the read model (decimal or UUID)`;

const say = (line: string): void => void process.stdout.write(`${new Date().toISOString().slice(11, 23)} ${line}\n`);

function pgConfig(v: string | undefined): pg.ClientConfig {
  if (v === undefined) return {};
  if (/^postgres(ql)?:\/\//.test(v)) return { connectionString: v };
  const m = /^(.+):(\d+)$/.exec(v);
  if (!m) throw new Error(`--pg must be a postgres:// URL or HOST:PORT; got "${v}"`);
  return { host: m[1]!.replace(/^\[(.*)\]$/, '$1'), port: Number(m[2]), user: 'postgres', database: 'postgres' };
}

function describePg(c: pg.ClientConfig): string {
  if (c.connectionString) return c.connectionString.replace(/\/\/([^:@/]+):[^@/]*@/, '//$1:***@');
  if (c.host) return `${c.host}:${c.port}`;
  return 'PG* environment defaults';
}

interface Stats {
  batches: number;
  events: number;
  txns: number;
}

/** One shard: a pump (feed → queue) and an applier (queue → PostgreSQL), sharing `next`. */
class ShardFollower {
  readonly queue: ShardBatch[] = [];
  queuedBytes = 0;
  /** The committed checkpoint: the next seq to apply. */
  next: bigint;
  /** The next seq to read from the feed. */
  private fetch: bigint;
  committedSeq = 0n;
  private wakeApplier: (() => void) | null = null;
  private wakePump: (() => void) | null = null;
  private stopping = false;

  readonly shard: number;
  private readonly celer: CelerClient;
  private readonly db: pg.Client;
  private readonly keep: (b: ShardBatch) => boolean;
  private readonly stats: Stats;

  constructor(shard: number, from: bigint, celer: CelerClient, db: pg.Client, keep: (b: ShardBatch) => boolean, stats: Stats) {
    this.shard = shard;
    this.celer = celer;
    this.db = db;
    this.keep = keep;
    this.stats = stats;
    this.next = from;
    this.fetch = from;
  }

  stop(): void {
    this.stopping = true;
    this.wakeApplier?.();
    this.wakePump?.();
  }

  private full(): boolean {
    return this.queue.length >= QUEUE_BATCHES_MAX || this.queuedBytes >= QUEUE_BYTES_MAX;
  }

  async pump(): Promise<void> {
    let backoff = RESUBSCRIBE_MIN_MS;
    while (!this.stopping) {
      try {
        for await (const b of this.celer.subscribeShard(this.shard, { from: this.fetch, maxBytes: FEED_PAGE_BYTES, pollWaitMs: POLL_WAIT_MS })) {
          if (this.stopping) return;
          if (b.position.seq !== this.fetch) throw new Error(`shard ${this.shard}: the feed gave seq ${b.position.seq}, expected ${this.fetch}`);
          this.queue.push(b);
          this.queuedBytes += b.events.reduce((n, e) => n + e.data.length, 0);
          this.fetch++;
          this.wakeApplier?.();
          while (this.full() && !this.stopping) await new Promise<void>((r) => (this.wakePump = r));
          backoff = RESUBSCRIBE_MIN_MS;
        }
      } catch (e) {
        if (this.stopping) return;
        say(`shard ${this.shard}: feed failed (${(e as Error).message}); subscribing again from seq ${this.fetch} in ${backoff} ms`);
        await new Promise<void>((r) => {
          const t = setTimeout(r, backoff);
          this.wakePump = () => (clearTimeout(t), r());
        });
        backoff = Math.min(backoff * 2, RESUBSCRIBE_MAX_MS);
      }
    }
  }

  async applier(): Promise<void> {
    while (!this.stopping) {
      if (this.queue.length === 0) {
        await new Promise<void>((r) => (this.wakeApplier = r));
        this.wakeApplier = null;
        // Woken by the first batch of a page: let the rest of the page queue up first.
        await new Promise((r) => setImmediate(r));
        continue;
      }
      const take = this.queue.slice(0, TXN_BATCHES_MAX);
      const r = await applyBatches(this.db, this.shard, this.next, take, this.keep);
      this.queue.splice(0, take.length);
      this.queuedBytes -= take.reduce((n, b) => n + b.events.reduce((m, e) => m + e.data.length, 0), 0);
      this.next += BigInt(take.length);
      this.stats.batches += r.applied;
      this.stats.events += r.events;
      this.stats.txns++;
      this.wakePump?.();
    }
  }
}

async function main(argv: string[]): Promise<number> {
  const { values } = parseArgs({ args: argv, options: { celer: { type: 'string' }, pg: { type: 'string' }, org: { type: 'string' }, help: { type: 'boolean' } }, strict: true });
  if (values.help) {
    process.stdout.write(USAGE + '\n');
    return 0;
  }
  const celerAddr = values.celer ?? '127.0.0.1:7400';
  const pgConf = pgConfig(values.pg);
  const org = values.org === undefined ? undefined : normalizeKey({ org: values.org, type: 0, id: 0 }).org;
  const keep = org === undefined ? () => true : (b: ShardBatch) => b.key.org === org;

  let stopSignal: NodeJS.Signals | null = null;
  let onStop: () => void = () => {};
  const stop = (sig: NodeJS.Signals): void => {
    if (stopSignal !== null) return;
    stopSignal = sig;
    onStop();
  };
  process.on('SIGTERM', stop);
  process.on('SIGINT', stop);

  const celer = await connect(celerAddr, { clientId: CLIENT_ID });
  const dbs: pg.Client[] = [];
  const newDb = async (): Promise<pg.Client> => {
    const c = new pg.Client(pgConf);
    c.on('error', (e) => say(`postgres connection error: ${e.message}`));
    await c.connect();
    dbs.push(c);
    return c;
  };
  try {
    const numShards = (await celer.readShard(0, { from: TIP })).numShards;
    say(`projection: celer ${celerAddr} (${numShards} shards), postgres ${describePg(pgConf)}, ${org === undefined ? 'every org' : `org ${org}`}`);
    const admin = await newDb();
    let waiting = false;
    for (;;) {
      const r = await admin.query<{ ok: boolean }>('SELECT pg_try_advisory_lock($1) AS ok', [INSTANCE_LOCK]);
      if (r.rows[0]?.ok) break;
      if (!waiting) say('projection: another instance holds the projection lock; waiting for it to end');
      waiting = true;
      if (stopSignal !== null) return 0;
      await new Promise((res) => setTimeout(res, LOCK_RETRY_MS));
    }
    await ensureSchema(admin, numShards);
    const checkpoints = await readCheckpoints(admin);
    const stats: Stats = { batches: 0, events: 0, txns: 0 };
    const followers: ShardFollower[] = [];
    for (let s = 0; s < numShards; s++) {
      const from = checkpoints.get(s) ?? 1n;
      followers.push(new ShardFollower(s, from, celer, await newDb(), keep, stats));
      say(`projection: shard ${s} resumes at seq ${from}${from === 1n ? ' (from the beginning)' : ''}`);
    }

    // Progress: a line per interval in which something was applied; "following the tail" once caught up.
    let printed = { batches: 0, at: performance.now() };
    let caughtUp = false;
    const progress = setInterval(() => {
      void (async () => {
        for (const f of followers) f.committedSeq = (await celer.readShard(f.shard, { from: TIP })).committedSeq;
        const lag = followers.reduce((n, f) => n + (f.committedSeq + 1n > f.next ? f.committedSeq + 1n - f.next : 0n), 0n);
        const now = performance.now();
        if (stats.batches !== printed.batches) {
          const perS = ((stats.batches - printed.batches) * 1000) / (now - printed.at);
          const rate = perS >= 10 ? perS.toFixed(0) : perS.toFixed(1);
          const shards = followers.map((f) => `${f.shard}:${f.next - 1n}/${f.committedSeq}`).join(' ');
          say(`progress: ${stats.batches} batches (${stats.events} events) in ${stats.txns} transactions, ${rate} batches/s; applied/committed seq ${shards}; lag ${lag}`);
          printed = { batches: stats.batches, at: now };
        }
        if (lag <= 0n && !caughtUp) say(`caught up: ${followers.map((f) => `shard ${f.shard} at seq ${f.next - 1n}`).join(', ')}; following the tail`);
        caughtUp = lag <= 0n;
      })().catch(() => undefined);
    }, PROGRESS_INTERVAL_MS);

    const pumps = followers.map((f) => f.pump());
    const appliers = followers.map((f) => f.applier());
    const stopped = new Promise<void>((res) => (onStop = res));
    if (stopSignal !== null) onStop();
    // The first applier to fail ends the run; a signal ends it too.
    const failed = new Promise<Error>((res) => appliers.forEach((a) => a.catch((e: unknown) => res(e as Error))));
    await Promise.race([stopped, failed]);
    clearInterval(progress);
    for (const f of followers) f.stop();
    // Transactions in flight finish (or fail); nothing new starts.
    const ended = await Promise.allSettled(appliers);
    const rejected = ended.find((r): r is PromiseRejectedResult => r.status === 'rejected');
    const err = rejected === undefined ? null : (rejected.reason as Error);
    await celer.close();
    await Promise.allSettled(pumps);
    const at = followers.map((f) => `shard ${f.shard} next seq ${f.next}`).join(', ');
    if (err) {
      process.stderr.write(`projection: failed: ${err.message}\n`);
      say(`projection: stopped on an error; checkpoints ${at}; ${stats.batches} batches applied by this run in ${stats.txns} transactions`);
      return 1;
    }
    say(`projection: ${stopSignal ?? 'stopped'}: stopped cleanly; checkpoints ${at}; ${stats.batches} batches applied by this run in ${stats.txns} transactions`);
    return 0;
  } finally {
    await celer.close().catch(() => undefined);
    await Promise.allSettled(dbs.map((c) => c.end()));
  }
}

main(process.argv.slice(2)).then(
  (code) => process.exit(code),
  (e: unknown) => {
    process.stderr.write(`projection: ${(e as Error).message}\n${USAGE}\n`);
    process.exit(1);
  },
);

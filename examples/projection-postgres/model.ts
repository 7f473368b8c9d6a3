// The read model of the example projection and the one transaction that moves it forward.
//
// Tables (created if absent):
//   checkpoint(shard PK, next_seq)   the next position of each shard to apply (inclusive seq)
//   applied(shard, seq PK, key, …)   one row per applied feed batch: the "nothing applied twice" ledger
//   aggregate_summary(org, type, id PK, version, event_count, batch_count, last_type,
//                     amount_total, last_shard, last_seq, digest)   the read model itself
//
// Exactly once: a shard's batches [from, to) are applied in ONE PostgreSQL transaction that also
// moves that shard's checkpoint from `from` to `to`. The transaction commits all of it or none of
// it, so after any crash the checkpoint names exactly the first batch whose rows are not there,
// and a restart resumes from it. The checkpoint UPDATE is conditional (`WHERE next_seq = from`):
// a second instance working from a stale checkpoint finds 0 rows and rolls back instead of
// applying its batches again. Two more guards inside the transaction: the ledger's primary key
// refuses a (shard, seq) seen before, and a batch must continue its aggregate's version.
//
// One transaction is four statements whatever its size: the checkpoint move, the summaries of
// the aggregates involved (SELECT … FOR UPDATE), then, folded here, one multi-row INSERT into the
// ledger and one multi-row upsert of the summaries.
import { createHash } from 'node:crypto';
import type { ShardBatch } from '@celer/client';
import type pg from 'pg';

/** Serialises schema creation between instances that start at the same time. */
const SCHEMA_LOCK = 0x63656c65; // "cele"
/** Held (session lock) by the running instance, so a second instance waits instead of competing. */
export const INSTANCE_LOCK = 0x70726f6a; // "proj"

export const SCHEMA_SQL = [
  `CREATE TABLE IF NOT EXISTS checkpoint (
     shard integer PRIMARY KEY,
     next_seq bigint NOT NULL CHECK (next_seq >= 1),
     updated_at timestamptz NOT NULL DEFAULT now())`,
  `CREATE TABLE IF NOT EXISTS applied (
     shard integer NOT NULL,
     seq bigint NOT NULL,
     org numeric(39, 0) NOT NULL,
     type numeric(39, 0) NOT NULL,
     id numeric(39, 0) NOT NULL,
     from_version bigint NOT NULL,
     to_version bigint NOT NULL,
     PRIMARY KEY (shard, seq))`,
  `CREATE TABLE IF NOT EXISTS aggregate_summary (
     org numeric(39, 0) NOT NULL,
     type numeric(39, 0) NOT NULL,
     id numeric(39, 0) NOT NULL,
     version bigint NOT NULL,
     event_count bigint NOT NULL,
     batch_count bigint NOT NULL,
     last_type text NOT NULL,
     amount_total numeric NOT NULL,
     last_shard integer NOT NULL,
     last_seq bigint NOT NULL,
     digest text NOT NULL,
     deleted boolean NOT NULL DEFAULT false,
     PRIMARY KEY (org, type, id))`,
  // A read model made before tombstones were projected.
  `ALTER TABLE aggregate_summary ADD COLUMN IF NOT EXISTS deleted boolean NOT NULL DEFAULT false`,
];

/** Moves a shard's checkpoint, only from where this instance believes it is. */
const CHECKPOINT_SQL = 'UPDATE checkpoint SET next_seq = $3, updated_at = now() WHERE shard = $1 AND next_seq = $2';

const LOAD_SQL = `
SELECT s.org::text, s.type::text, s.id::text, s.version::text, s.event_count::text, s.batch_count::text,
       s.last_type, s.amount_total::text, s.last_shard, s.last_seq::text, s.digest, s.deleted
  FROM aggregate_summary AS s
  JOIN unnest($1::numeric[], $2::numeric[], $3::numeric[]) AS k(org, type, id)
    ON (s.org, s.type, s.id) = (k.org, k.type, k.id)
   FOR UPDATE OF s`;

const LEDGER_SQL = `
INSERT INTO applied (shard, seq, org, type, id, from_version, to_version)
SELECT * FROM unnest($1::integer[], $2::bigint[], $3::numeric[], $4::numeric[], $5::numeric[], $6::bigint[], $7::bigint[])`;

const UPSERT_SQL = `
INSERT INTO aggregate_summary AS s
  (org, type, id, version, event_count, batch_count, last_type, amount_total, last_shard, last_seq, digest, deleted)
SELECT * FROM unnest($1::numeric[], $2::numeric[], $3::numeric[], $4::bigint[], $5::bigint[], $6::bigint[],
                     $7::text[], $8::numeric[], $9::integer[], $10::bigint[], $11::text[], $12::boolean[])
ON CONFLICT (org, type, id) DO UPDATE SET
  version = EXCLUDED.version, event_count = EXCLUDED.event_count, batch_count = EXCLUDED.batch_count,
  last_type = EXCLUDED.last_type, amount_total = EXCLUDED.amount_total, last_shard = EXCLUDED.last_shard,
  last_seq = EXCLUDED.last_seq, digest = EXCLUDED.digest, deleted = EXCLUDED.deleted`;

/** One row of aggregate_summary. */
export interface Summary {
  org: bigint;
  type: bigint;
  id: bigint;
  version: bigint;
  eventCount: bigint;
  batchCount: bigint;
  lastType: string;
  amountTotal: bigint;
  lastShard: number;
  lastSeq: bigint;
  digest: string;
  /** The aggregate was deleted (a `delete` tombstone in the feed); a later write recreates it. */
  deleted: boolean;
}

/** A batch's content hash: position, versions, every event's version, type and data. */
export function batchHash(b: ShardBatch): string {
  const h = createHash('sha256');
  const u64 = (v: bigint | number): void => {
    const buf = Buffer.alloc(8);
    buf.writeBigUInt64BE(BigInt(v));
    h.update(buf);
  };
  const bytes = (d: Uint8Array): void => {
    u64(d.length);
    h.update(d);
  };
  u64(b.position.shard);
  u64(b.position.seq);
  u64(b.fromVersion);
  u64(b.toVersion);
  for (const e of b.events) {
    u64(e.version);
    bytes(Buffer.from(e.type, 'utf8'));
    bytes(e.data);
  }
  return h.digest('hex');
}

/** The next digest of an aggregate: md5(previous digest ‖ batch hash), '' before the first batch. */
export function nextDigest(previous: string, hash: string): string {
  return createHash('md5').update(previous + hash).digest('hex');
}

const td = new TextDecoder('utf-8', { fatal: true });

/** The sum of the integer `amount` fields of the batch's JSON events (other events count 0). */
export function batchAmount(b: ShardBatch): bigint {
  let sum = 0n;
  for (const e of b.events) {
    try {
      const v = JSON.parse(td.decode(e.data)) as unknown;
      const amount = v !== null && typeof v === 'object' ? (v as { amount?: unknown }).amount : undefined;
      if (typeof amount === 'number' && Number.isSafeInteger(amount)) sum += BigInt(amount);
    } catch {
      // not JSON: no amount
    }
  }
  return sum;
}

/** Creates the tables if absent and a checkpoint row (next_seq 1) for every shard that has none. */
export async function ensureSchema(db: pg.Client, numShards: number): Promise<void> {
  await db.query('BEGIN');
  try {
    await db.query('SELECT pg_advisory_xact_lock($1)', [SCHEMA_LOCK]);
    for (const sql of SCHEMA_SQL) await db.query(sql);
    const other = await db.query<{ shard: number }>('SELECT shard FROM checkpoint WHERE shard >= $1 ORDER BY shard LIMIT 1', [numShards]);
    if (other.rows.length > 0) {
      throw new Error(`the checkpoint table has a row for shard ${other.rows[0]!.shard} but this Celer has ${numShards} shards: this read model was built from another cluster`);
    }
    await db.query('INSERT INTO checkpoint (shard, next_seq) SELECT s, 1 FROM generate_series(0, $1::integer - 1) AS s ON CONFLICT (shard) DO NOTHING', [numShards]);
    await db.query('COMMIT');
  } catch (e) {
    await db.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
}

export async function readCheckpoints(db: pg.Client): Promise<Map<number, bigint>> {
  const r = await db.query<{ shard: number; next_seq: string }>('SELECT shard, next_seq::text FROM checkpoint ORDER BY shard');
  return new Map(r.rows.map((row) => [row.shard, BigInt(row.next_seq)]));
}

/** Another instance moved the checkpoint: this one's view is stale. Nothing was applied. */
export class CheckpointMovedError extends Error {}

export interface ApplyResult {
  /** Batches whose rows were written (those the org filter kept). */
  applied: number;
  events: number;
}

const keyOf = (k: { org: bigint; type: bigint; id: bigint }): string => `${k.org}/${k.type}/${k.id}`;

/**
 * The summary after `b`; throws if `b` does not continue the aggregate. Tombstones take no
 * version: a `trim` changes nothing here (the totals describe what happened, not what is still
 * readable), a `delete` marks the row deleted, and a write after it (allowRecreate) starts the
 * aggregate's new life from fresh totals, its versions going on.
 */
export function fold(previous: Summary | undefined, b: ShardBatch): Summary {
  const version = previous?.version ?? 0n;
  if (b.fromVersion !== version + 1n) {
    throw new Error(`shard ${b.position.shard} seq ${b.position.seq}: ${keyOf(b.key)} versions ${b.fromVersion}-${b.toVersion} do not continue the read model's version ${version}`);
  }
  if (b.op !== 'write') {
    if (previous === undefined) throw new Error(`shard ${b.position.shard} seq ${b.position.seq}: a ${b.op} of ${keyOf(b.key)}, which the read model does not have`);
    return b.op === 'delete' ? { ...previous, deleted: true } : previous;
  }
  const state = previous?.deleted === true ? undefined : previous;
  return {
    ...b.key,
    version: b.toVersion,
    eventCount: (state?.eventCount ?? 0n) + BigInt(b.events.length),
    batchCount: (state?.batchCount ?? 0n) + 1n,
    lastType: b.events[b.events.length - 1]?.type ?? '',
    amountTotal: (state?.amountTotal ?? 0n) + batchAmount(b),
    lastShard: b.position.shard,
    lastSeq: b.position.seq,
    digest: nextDigest(state?.digest ?? '', batchHash(b)),
    deleted: false,
  };
}

/**
 * Applies `batches` (consecutive seqs of `shard`, starting at `from`) in one transaction together
 * with the checkpoint move to one past the last. `keep` says which batches go into the read model;
 * the others only advance the checkpoint. Throws (after ROLLBACK) if anything does not hold.
 */
export async function applyBatches(
  db: pg.Client,
  shard: number,
  from: bigint,
  batches: readonly ShardBatch[],
  keep: (b: ShardBatch) => boolean = () => true,
): Promise<ApplyResult> {
  batches.forEach((b, i) => {
    if (b.position.shard !== shard || b.position.seq !== from + BigInt(i)) {
      throw new Error(`shard ${shard}: expected the batch at seq ${from + BigInt(i)}, got ${b.position.shard}:${b.position.seq}`);
    }
  });
  const to = from + BigInt(batches.length);
  const kept = batches.filter(keep);
  const events = kept.reduce((n, b) => n + b.events.length, 0);
  await db.query('BEGIN');
  try {
    // The checkpoint first: its row lock makes a concurrent instance wait here, then find 0 rows.
    const cp = await db.query({ name: 'checkpoint', text: CHECKPOINT_SQL, values: [shard, from.toString(), to.toString()] });
    if (cp.rowCount !== 1) throw new CheckpointMovedError(`shard ${shard}: the checkpoint is no longer at seq ${from} (another projection instance moved it)`);
    if (kept.length > 0) {
      const keys = [...new Map(kept.map((b) => [keyOf(b.key), b.key])).values()];
      const loaded = await db.query<Record<string, string | number | boolean>>({
        name: 'load',
        text: LOAD_SQL,
        values: [keys.map((k) => k.org.toString()), keys.map((k) => k.type.toString()), keys.map((k) => k.id.toString())],
      });
      const states = new Map<string, Summary>();
      for (const r of loaded.rows) {
        const s: Summary = {
          org: BigInt(r.org!),
          type: BigInt(r.type!),
          id: BigInt(r.id!),
          version: BigInt(r.version!),
          eventCount: BigInt(r.event_count!),
          batchCount: BigInt(r.batch_count!),
          lastType: String(r.last_type),
          amountTotal: BigInt(r.amount_total!),
          lastShard: Number(r.last_shard),
          lastSeq: BigInt(r.last_seq!),
          digest: String(r.digest),
          deleted: r.deleted === true,
        };
        states.set(keyOf(s), s);
      }
      for (const b of kept) states.set(keyOf(b.key), fold(states.get(keyOf(b.key)), b));
      const col = <T>(f: (b: ShardBatch) => T): T[] => kept.map(f);
      await db.query({
        name: 'ledger',
        text: LEDGER_SQL,
        values: [
          col(() => shard),
          col((b) => b.position.seq.toString()),
          col((b) => b.key.org.toString()),
          col((b) => b.key.type.toString()),
          col((b) => b.key.id.toString()),
          col((b) => b.fromVersion.toString()),
          col((b) => b.toVersion.toString()),
        ],
      });
      const rows = keys.map((k) => states.get(keyOf(k))!);
      const sc = <T>(f: (s: Summary) => T): T[] => rows.map(f);
      await db.query({
        name: 'upsert',
        text: UPSERT_SQL,
        values: [
          sc((s) => s.org.toString()),
          sc((s) => s.type.toString()),
          sc((s) => s.id.toString()),
          sc((s) => s.version.toString()),
          sc((s) => s.eventCount.toString()),
          sc((s) => s.batchCount.toString()),
          sc((s) => s.lastType),
          sc((s) => s.amountTotal.toString()),
          sc((s) => s.lastShard),
          sc((s) => s.lastSeq.toString()),
          sc((s) => s.digest),
          sc((s) => s.deleted),
        ],
      });
    }
    await db.query('COMMIT');
  } catch (e) {
    await db.query('ROLLBACK').catch(() => undefined);
    throw e;
  }
  return { applied: kept.length, events };
}

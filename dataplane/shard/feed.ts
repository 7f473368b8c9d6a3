// The shard feed (SPEC §4 readShard / subscribeShard): one page of a shard's committed batches in
// position order, optionally only those of one org, one org+type or one aggregate, and a long
// poll that waits for the next commit when the reader is at the tail. Runs on the shard's worker
// thread. Only committed batches are ever returned, so a checkpoint taken from a page holds on
// either node of a cluster (both hold the same records at the same seqs).
import { decodeReadShardRequest, FeedFilter, Op, Writer, writeBatchHeader, type WireReadShardRequest } from '../../client/wire.ts';
import { ErrorCode } from '../../client/errors.ts';
import { FEED_LINGER_MS, FEED_WAITERS_PER_SHARD_MAX } from '../constants.ts';
import type { RecordAt } from '../storage/segment-set.ts';
import { batchesOf, type BatchView } from '../storage/record.ts';
import { diskEventAt, writeWireEvent } from './events.ts';
import { err, type ShardResult } from './results.ts';
import { isSystemKeyBytes } from '../schema/system.ts';

/** What the feed needs of its shard. */
export interface FeedContext {
  readonly id: number;
  readonly numShards: number;
  readonly committedSeq: number;
  readCommitted(fromSeq: number, maxBytes: number): Promise<RecordAt[]>;
  /** Resolves when the committed seq reaches `seq`, after `ms`, or when the shard stops (whichever first). */
  waitCommitted(seq: number, ms: number): Promise<void>;
  /** Resolves after `ms` (the shard's clock). */
  sleep(ms: number): Promise<void>;
  readonly feedWaiters: number;
}

/**
 * A batch of a record as the feed serves it, with its wire encoding made once and kept with the
 * record (a WeakMap on the record's bytes, so it lives as long as the feed tail or a cache holds
 * the record): a fan-out of N subscribers over the same records decodes and encodes each batch
 * once, not N times.
 */
interface FeedBatch {
  seq: number;
  key: Uint8Array;
  view: BatchView;
  rec: RecordAt;
  full?: Uint8Array;
  headers?: Uint8Array;
}

const feedBatches = new WeakMap<Uint8Array, FeedBatch[]>();

function feedBatchesOf(rec: RecordAt): FeedBatch[] {
  let list = feedBatches.get(rec.bytes);
  if (list === undefined) {
    list = [...batchesOf(rec.bytes, rec.header)].map((view) => ({ seq: view.seq, key: view.key, view, rec }));
    feedBatches.set(rec.bytes, list);
  }
  return list;
}

/** key | u8 op | u64 minVersion | batch header | events (none when headersOnly). */
function encodedBatch(fb: FeedBatch, shard: number, headersOnly: boolean): Uint8Array {
  const done = headersOnly ? fb.headers : fb.full;
  if (done !== undefined) return done;
  const b = fb.view;
  const w = new Writer(headersOnly ? 128 : 128 + b.events.length * 2);
  w.bytes(b.key);
  w.u8(b.op);
  w.u64n(b.minVersion);
  writeBatchHeader(w, {
    fromVersion: BigInt(b.fromVersion),
    toVersion: BigInt(b.toVersion),
    shard,
    seq: BigInt(b.seq),
    clientId: fb.rec.header.clientId,
    serverTimestampMs: fb.rec.header.timestampMs,
    eventCount: headersOnly ? 0 : b.eventCount,
  });
  if (!headersOnly) {
    let at = 0;
    for (let i = 0; i < b.eventCount; i++) {
      const ev = diskEventAt(b.events, at);
      at = ev.next;
      w.u64(BigInt(b.fromVersion + i));
      writeWireEvent(w, ev.fields);
    }
  }
  const out = w.buf.slice(0, w.pos);
  if (headersOnly) fb.headers = out;
  else fb.full = out;
  return out;
}

/** The key bytes a filter compares (org | type | id, 16 bytes each, big-endian): the first `n`. */
function filterBytes(req: WireReadShardRequest): { want: Uint8Array; n: number } {
  const w = new Writer(48);
  w.key(req.key);
  return { want: w.finish(), n: req.filter === FeedFilter.Org ? 16 : req.filter === FeedFilter.OrgType ? 32 : 48 };
}

function matches(req: WireReadShardRequest, f: { want: Uint8Array; n: number }, key: Uint8Array): boolean {
  // The reserved org (the schema registry) is Celer's own; an unfiltered feed leaves it out (the
  // router refuses a filter naming it), so a projection reading a whole shard never meets it.
  if (req.filter === FeedFilter.None) return !isSystemKeyBytes(key);
  for (let i = 0; i < f.n; i++) if (key[i] !== f.want[i]) return false;
  return true;
}

export async function readShardPage(ctx: FeedContext, body: Uint8Array): Promise<ShardResult> {
  const req = decodeReadShardRequest(body);
  const from = Number(req.from);
  if (req.waitMs > 0 && from > ctx.committedSeq) {
    if (ctx.feedWaiters >= FEED_WAITERS_PER_SHARD_MAX) {
      return err(
        ErrorCode.ServerBusy,
        `shard ${ctx.id} has ${ctx.feedWaiters} feed readers waiting for commits, its limit (FEED_WAITERS_PER_SHARD_MAX ${FEED_WAITERS_PER_SHARD_MAX}); retry with backoff, or share one feed between readers`,
        { limit: 'FEED_WAITERS_PER_SHARD_MAX', max: FEED_WAITERS_PER_SHARD_MAX },
      );
    }
    await ctx.waitCommitted(from, req.waitMs);
    // Woken by a commit: linger a moment so the commits right behind it come in the same page — a
    // reader at the tail then asks about FEED_LINGER_MS apart, not once per group commit.
    if (ctx.committedSeq >= from) await ctx.sleep(FEED_LINGER_MS);
  }
  // The tip this page is read against: later commits are the next page's.
  const tip = ctx.committedSeq;
  const filter = filterBytes(req);
  const records = from > tip ? [] : await ctx.readCommitted(from, req.maxBytes);
  const w = new Writer(4096);
  w.u32(ctx.id);
  w.u32(ctx.numShards);
  const nextAt = w.pos;
  w.u64(0n);
  w.u64(BigInt(tip));
  w.u8(req.headersOnly ? 1 : 0);
  const countAt = w.reserveU32();
  let count = 0;
  let next = from;
  outer: for (const rec of records) {
    for (const b of feedBatchesOf(rec)) {
      if (b.seq < from) continue;
      if (b.seq > tip) break outer;
      // The page is full: the rest is the next page's (at least one batch per page).
      if (count > 0 && w.pos >= req.maxBytes) break outer;
      next = b.seq + 1;
      if (!matches(req, filter, b.key)) continue;
      w.bytes(encodedBatch(b, ctx.id, req.headersOnly));
      count++;
    }
  }
  w.patchU32(countAt, count);
  w.view.setBigUint64(nextAt, BigInt(next));
  return { op: Op.ReadShardOk, body: w.finish() };
}

// A shard's read side: one page of an aggregate's committed batches (walking its batch chain back
// from the committed tip, or resuming where the previous page's read-ahead stopped) and its
// details. Runs on the shard's worker thread, through the narrow view of the shard it is given.
import { Writer, Op, encodeDetailsOk, writeBatchHeader } from '../../client/wire.ts';
import { ErrorCode } from '../../client/errors.ts';
import { WALK_ENTRY_BYTES_ESTIMATE } from '../constants.ts';
import type { Lru } from '../storage/lru.ts';
import { BATCH_DELETED, type BatchView, type RecordHeader } from '../storage/record.ts';
import { keyString, type AggState, type BatchLoc } from './state.ts';
import { decodeKeyTrusted, decodeReadTrusted, describeKey } from './requests.ts';
import { diskEventAt, writeWireEvent } from './events.ts';
import { err, type ShardResult } from './results.ts';

export interface WalkEntry {
  loc: BatchLoc;
  fromVersion: number;
  toVersion: number;
  seq: number;
}

/** Batches a truncated page did not return, keyed by "key|nextVersion". */
export type ReadAheadCache = Lru<string, { entries: WalkEntry[]; tipSeq: number }>;

/** What the read side needs of its shard. */
export interface ReadContext {
  readonly id: number;
  readonly readAhead: ReadAheadCache;
  getState(key: Uint8Array): Promise<AggState>;
  batchAt(loc: BatchLoc): Promise<{ batch: BatchView; header: RecordHeader; record: Uint8Array }>;
  locBySeq(seq: number): Promise<BatchLoc | null>;
}

const td = new TextDecoder();


export async function readPage(ctx: ReadContext, body: Uint8Array): Promise<ShardResult> {
  const q = decodeReadTrusted(body);
  const s = await ctx.getState(q.key);
  if (s.cVersion === 0) return err(ErrorCode.AggregateNotFound, `aggregate ${describeKey(q.key)} does not exist`);
  if ((s.cFlags & BATCH_DELETED) !== 0) {
    return err(ErrorCode.AggregateNotFound, `aggregate ${describeKey(q.key)} was deleted at version ${s.cVersion}`, { deleted: true, version: String(s.cVersion) });
  }
  // The committed tip as of now: awaits below may see later commits, which this page must not
  // claim to cover (the read-ahead records exactly what it walked).
  const tipSeq = s.cSeq;
  const tipLoc = s.cLoc;
  const from = q.from === 0n ? s.minVersion : Number(q.from);
  const to = q.to === 0n ? s.cVersion : Math.min(Number(q.to), s.cVersion);
  if (from < s.minVersion) {
    return err(ErrorCode.ReadBelowTrimmed, `version ${from} of ${describeKey(q.key)} was trimmed; the first readable version is ${s.minVersion}`, { minVersion: String(s.minVersion) });
  }
  // The batches from `from` to the committed tip, oldest first: from the read-ahead left by the
  // previous page of this read (readAll), else by walking the aggregate's chain back from its tip.
  const ks = keyString(q.key);
  const ahead = ctx.readAhead.get(`${ks}|${from}`);
  let entries: WalkEntry[];
  if (ahead !== undefined && ahead.tipSeq <= tipSeq) {
    ctx.readAhead.delete(`${ks}|${from}`);
    entries = ahead.entries;
    if (tipSeq > ahead.tipSeq) entries = entries.concat(await walkBack(ctx, tipLoc, (e) => e.seq <= ahead.tipSeq));
  } else {
    entries = await walkBack(ctx, tipLoc, (e) => e.toVersion < from);
  }
  const types = q.eventTypes.length > 0 ? new Set(q.eventTypes) : null;
  const w = new Writer(4096);
  w.u64(0n);
  const countAt = w.reserveU32();
  let count = 0;
  let next = 0n;
  for (let e = 0; e < entries.length; e++) {
    const entry = entries[e]!;
    if (entry.fromVersion > to) break;
    if (count > 0 && w.pos >= q.maxBytes) {
      const nextFrom = Math.max(entry.fromVersion, from);
      next = BigInt(nextFrom);
      const rest = entries.slice(e);
      ctx.readAhead.set(`${ks}|${nextFrom}`, { entries: rest, tipSeq }, rest.length * WALK_ENTRY_BYTES_ESTIMATE);
      break;
    }
    const { batch, header } = await ctx.batchAt(entry.loc);
    const start = w.pos;
    writeBatchHeader(w, {
      fromVersion: BigInt(batch.fromVersion),
      toVersion: BigInt(batch.toVersion),
      shard: ctx.id,
      seq: BigInt(batch.seq),
      clientId: header.clientId,
      serverTimestampMs: header.timestampMs,
      eventCount: 0,
    });
    const evCountAt = w.pos - 4;
    let n = 0;
    let at = 0;
    for (let i = 0; i < batch.eventCount; i++) {
      const ev = diskEventAt(batch.events, at);
      at = ev.next;
      const version = batch.fromVersion + i;
      if (version < from || version > to) continue;
      if (types !== null && !types.has(td.decode(ev.fields.type))) continue;
      w.u64(BigInt(version));
      writeWireEvent(w, ev.fields);
      n++;
    }
    if (n === 0) {
      w.pos = start;
      continue;
    }
    w.patchU32(evCountAt, n);
    count++;
  }
  w.patchU32(countAt, count);
  w.view.setBigUint64(0, next);
  return { op: Op.ReadOk, body: w.finish() };
}

/** Walks an aggregate's batches back from `loc` until `stop` says so; returns them oldest first. */
async function walkBack(ctx: ReadContext, loc: BatchLoc | null, stop: (e: WalkEntry) => boolean): Promise<WalkEntry[]> {
  const out: WalkEntry[] = [];
  while (loc !== null) {
    const { batch } = await ctx.batchAt(loc);
    const e: WalkEntry = { loc, fromVersion: batch.fromVersion, toVersion: batch.toVersion, seq: batch.seq };
    if (stop(e)) break;
    out.push(e);
    loc = await ctx.locBySeq(batch.prevSeq);
  }
  return out.reverse();
}

export async function details(ctx: ReadContext, body: Uint8Array): Promise<ShardResult> {
  const key = decodeKeyTrusted(body);
  const s = await ctx.getState(key);
  if (s.cVersion === 0) return err(ErrorCode.AggregateNotFound, `aggregate ${describeKey(key)} does not exist`);
  return {
    op: Op.DetailsOk,
    body: encodeDetailsOk({
      version: BigInt(s.cVersion),
      minVersion: BigInt(s.minVersion),
      shard: ctx.id,
      lastSeq: BigInt(s.cSeq),
      lastClientId: s.cClientId,
      lastServerTimestampMs: s.cTimestampMs,
      deleted: (s.cFlags & BATCH_DELETED) !== 0,
    }),
  };
}

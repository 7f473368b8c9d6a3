// Test helper, not part of the package API: a FeedSend (client/feed.ts) that answers ReadShard
// requests with pages built by hand, for tests of the subscription iterators without a server.
import assert from 'node:assert/strict';
import type { FeedSend } from './feed.ts';
import { decodeReadShardRequest, Op, Writer, writeBatchHeader, writeEvent, type Frame, type WireEvent, type WireReadShardRequest } from './wire.ts';
import type { NormalizedKey } from './key.ts';

export const KEY: NormalizedKey = { org: 1n, type: 2n, id: 3n };

export interface FakeBatch {
  seq: bigint;
  key?: NormalizedKey;
  fromVersion?: bigint;
  toVersion?: bigint;
  /** Events of the batch (versions from fromVersion); none by default. */
  events?: WireEvent[];
}

export interface FakePage {
  shard?: number;
  numShards?: number;
  next: bigint;
  committed: bigint;
  batches?: FakeBatch[];
}

/** A ReadShardOk body as dataplane/shard/feed.ts encodes it (events only where a batch names them, and none for headersOnly). */
export function pageBody(p: FakePage, req: WireReadShardRequest): Uint8Array {
  const w = new Writer(256);
  w.u32(p.shard ?? req.shard);
  w.u32(p.numShards ?? 1);
  w.u64(p.next);
  w.u64(p.committed);
  w.u8(req.headersOnly ? 1 : 0);
  const batches = p.batches ?? [];
  w.u32(batches.length);
  for (const b of batches) {
    w.key(b.key ?? KEY);
    w.u8(0);
    w.u64(1n);
    const from = b.fromVersion ?? b.seq;
    const events = req.headersOnly ? [] : (b.events ?? []);
    writeBatchHeader(w, { fromVersion: from, toVersion: b.toVersion ?? b.seq, shard: p.shard ?? req.shard, seq: b.seq, clientId: 9n, serverTimestampMs: 1, eventCount: events.length });
    events.forEach((e, i) => {
      w.u64(from + BigInt(i));
      writeEvent(w, e);
    });
  }
  return w.finish();
}

/** A FeedSend whose answers come from `answer` (a probe from the tip is answered by `probe`). */
export function fakeSend(answer: (req: WireReadShardRequest, n: number) => Promise<FakePage> | FakePage, probe: FakePage = { next: 0n, committed: 0n }): { send: FeedSend; requests: WireReadShardRequest[] } {
  const requests: WireReadShardRequest[] = [];
  const send: FeedSend = async (frame: Uint8Array): Promise<Frame> => {
    assert.equal(frame[8], Op.ReadShard);
    const req = decodeReadShardRequest(frame.subarray(9));
    if (req.from === BigInt(Number.MAX_SAFE_INTEGER)) return { correlationId: 0, op: Op.ReadShardOk, body: pageBody({ ...probe, next: req.from }, req) };
    requests.push(req);
    const p = await answer(req, requests.length);
    return { correlationId: 0, op: Op.ReadShardOk, body: pageBody(p, req) };
  };
  return { send, requests };
}

export const never = <T>(): Promise<T> => new Promise<T>(() => {});
export const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));
/** What `p` settles to within `ms`, or 'pending'. */
export async function within<T>(p: Promise<T>, ms: number): Promise<T | 'pending'> {
  let t: NodeJS.Timeout | undefined;
  const r = await Promise.race([p, new Promise<'pending'>((res) => (t = setTimeout(() => res('pending'), ms)))]);
  clearTimeout(t);
  return r;
}


/** A shard's committed log that grows, served like dataplane/shard/feed.ts: a long poll at the tail, then every batch from `from` to the tip. */
export class FakeShard {
  readonly batches: FakeBatch[] = [];
  private waiters: (() => void)[] = [];
  get tip(): bigint {
    return BigInt(this.batches.length);
  }
  commit(b: Omit<FakeBatch, 'seq'>): void {
    this.batches.push({ ...b, seq: this.tip + 1n });
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
  }
  async answer(req: WireReadShardRequest): Promise<FakePage> {
    if (req.from > this.tip && req.waitMs > 0) {
      await new Promise<void>((r) => {
        const t = setTimeout(r, req.waitMs);
        this.waiters.push(() => (clearTimeout(t), r()));
      });
    }
    const tip = this.tip;
    const out = this.batches.slice(Number(req.from) - 1, Number(tip));
    return { next: req.from + BigInt(out.length), committed: tip, batches: out };
  }
}

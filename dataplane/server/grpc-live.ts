// gRPC Subscribe and Watch (grpc.ts registers them): the TypeScript client's own subscriptions
// (client/feed.ts) run inside the node, over a FeedSend that hands each feed read straight to the
// Dispatcher. A gRPC subscriber thus gets what a TypeScript one gets, from one implementation:
// no gap or duplicate across the history → tail switch, checkpoints, coalesced notifications,
// and the bounded queue at the tail (a stream whose reader falls SUBSCRIPTION_QUEUE_BATCHES_DEFAULT
// batches behind fails with 2012 and detail.resumeFrom). Runs on the node's main thread: one
// iterator per call, returned when the call is cancelled or closed.
import * as grpc from '@grpc/grpc-js';
import { decodeReadPage } from '../../client/decode.ts';
import { encodeRead } from '../../client/encode.ts';
import { CelerError, SubscriberTooSlowError } from '../../client/errors.ts';
import { subscribeKey, subscribeOrg, watch, type FeedSend, type SubscribedBatch, type WatchHeartbeat, type WatchNotification } from '../../client/feed.ts';
import { FRAME_HEADER_BYTES } from '../../client/frame.ts';
import type { AggregateKey, NormalizedKey } from '../../client/key.ts';
import type { Batch } from '../../client/types.ts';
import { decodeError, Op, WireError, type Frame } from '../../client/wire.ts';
import type { Dispatcher } from './dispatch.ts';
import { CelerFailure, badRequest, convertKey, u64, type PbKey } from './grpc-convert.ts';

/** Most batches one Subscribe message carries (those already received when the stream can take more). */
export const SUBSCRIBE_BATCHES_PER_MESSAGE_MAX = 256;

export interface PbSubscribeRequest {
  key?: PbKey | null;
  fromVersion?: string;
  org?: string;
  type?: string;
  fromCheckpoint?: string;
  maxBytes?: number;
}

export interface PbWatchRequest {
  key?: PbKey | null;
  org?: string;
  type?: string;
  maxLatencyMs?: number;
  heartbeats?: boolean;
}

/** Feed reads and aggregate reads of the client library, answered by this node's Dispatcher. */
export function localFeed(dispatcher: Dispatcher): { send: FeedSend; readAll: (key: AggregateKey, from: bigint) => AsyncIterable<Batch> } {
  const ask = async (frame: Uint8Array): Promise<Frame> => {
    const res = await dispatcher.dispatch(frame[8]!, frame.subarray(FRAME_HEADER_BYTES));
    if (res.op === Op.Error) {
      const e = decodeError(res.body);
      throw new CelerFailure(e.code, e.message, e.detail);
    }
    return { correlationId: 0, op: res.op, body: res.body };
  };
  async function* readAll(key: AggregateKey, from: bigint): AsyncGenerator<Batch, void, undefined> {
    for (;;) {
      const page = decodeReadPage(await ask(encodeRead(key, { from })));
      yield* page.batches;
      const next = page.nextVersion;
      if (next === undefined) return;
      if (next <= (from === 0n ? 1n : from)) throw new WireError(`the read page from ${from} did not advance (next ${next})`);
      from = next;
    }
  }
  return { send: ask, readAll };
}

/** A client library error as the gRPC caller gets it: its code and detail (a drop's resumeFrom too). */
export function asFailure(err: unknown): unknown {
  if (err instanceof SubscriberTooSlowError) {
    const detail: Record<string, unknown> = { ...err.detail };
    if (err.resumeFrom !== undefined) detail.resumeFrom = String(err.resumeFrom);
    return new CelerFailure(err.code, err.message, detail);
  }
  if (err instanceof CelerError) return new CelerFailure(err.code, err.message, { ...err.detail });
  return err;
}

const keyToPb = (k: NormalizedKey): PbKey => ({ org: k.org.toString(), type: k.type.toString(), id: k.id.toString() });

function batchToPb(b: Batch): object {
  return {
    fromVersion: b.fromVersion.toString(),
    toVersion: b.toVersion.toString(),
    position: { shard: b.position.shard, seq: b.position.seq.toString() },
    clientId: b.clientId.toString(),
    serverTimestampMs: String(b.serverTimestampMs),
    events: b.events.map((e) => ({
      version: e.version.toString(),
      type: e.type,
      data: e.data,
      ...(e.metadata !== undefined ? { metadata: e.metadata } : {}),
      ...(e.schemaVersion !== undefined ? { schemaVersion: { major: e.schemaVersion.major, minor: e.schemaVersion.minor } } : {}),
      ...(e.iv !== undefined ? { iv: e.iv } : {}),
    })),
  };
}

/** An org subscription's batch, or (with `key`) one of an aggregate subscription. */
export function subscribedToPb(b: Batch | SubscribedBatch, key?: NormalizedKey): object {
  if ('checkpoint' in b) return { key: keyToPb(b.key), batch: batchToPb(b), op: b.op, minVersion: b.minVersion.toString(), checkpoint: b.checkpoint };
  return { key: keyToPb(key!), batch: batchToPb(b), op: 'write' };
}

export function notificationToPb(n: WatchNotification | WatchHeartbeat): object {
  if (n.op === 'heartbeat') return { op: 'heartbeat', committed: n.committed.map((c) => ({ shard: c.shard, seq: c.seq.toString() })) };
  return { op: n.op, key: keyToPb(n.key), fromVersion: n.fromVersion.toString(), toVersion: n.toVersion.toString(), position: { shard: n.position.shard, seq: n.position.seq.toString() } };
}

const hasKey = (k: PbKey | null | undefined): k is PbKey => k !== undefined && k !== null;

/** The iterator a Subscribe request asks for, and the key of an aggregate subscription. */
export function openSubscription(dispatcher: Dispatcher, r: PbSubscribeRequest): { it: AsyncGenerator<Batch | SubscribedBatch, void, undefined>; key?: NormalizedKey } {
  const feed = localFeed(dispatcher);
  const maxBytes = r.maxBytes === undefined || r.maxBytes === 0 ? {} : { maxBytes: r.maxBytes };
  if (hasKey(r.key)) {
    if (r.org !== undefined || r.type !== undefined || (r.fromCheckpoint ?? '') !== '') throw badRequest('give either key (and from_version) or org/type (and from_checkpoint), not both');
    const key = convertKey(r.key, 'key');
    const fromVersion = u64(r.fromVersion);
    const from = fromVersion === 0n ? {} : { from: fromVersion };
    return { it: subscribeKey(feed.send, feed.readAll, key, { ...from, ...maxBytes }), key };
  }
  if (r.org === undefined) throw badRequest('Subscribe needs key, or org (and type)');
  if (u64(r.fromVersion) !== 0n) throw badRequest('from_version is for an aggregate subscription; an org subscription resumes from from_checkpoint');
  const from = (r.fromCheckpoint ?? '') === '' ? {} : { from: r.fromCheckpoint! };
  return { it: subscribeOrg(feed.send, { org: r.org, ...(r.type !== undefined ? { type: r.type } : {}) }, { ...from, ...maxBytes }) };
}

export function openWatch(dispatcher: Dispatcher, r: PbWatchRequest): AsyncGenerator<WatchNotification | WatchHeartbeat, void, undefined> {
  const feed = localFeed(dispatcher);
  const opts = { ...(r.maxLatencyMs !== undefined ? { maxLatencyMs: r.maxLatencyMs } : {}), heartbeats: r.heartbeats === true };
  if (hasKey(r.key)) {
    if (r.org !== undefined || r.type !== undefined) throw badRequest('give either key or org/type, not both');
    return watch(feed.send, { key: convertKey(r.key, 'key') }, opts);
  }
  if (r.org === undefined) throw badRequest('Watch needs key, or org (and type)');
  return watch(feed.send, { org: r.org, ...(r.type !== undefined ? { type: r.type } : {}) }, opts);
}

const NOT_YET: unique symbol = Symbol('not yet');
const notYet = Promise.resolve(NOT_YET);

/**
 * Streams `it` until it ends or the call is cancelled: each message holds what the iterator has
 * ready (at most `max` items, at least one), and the next is written once the transport has
 * taken the last one, so a slow reader leaves the batches in the iterator's bounded queue.
 */
export async function pump<T>(stream: grpc.ServerWritableStream<unknown, unknown>, it: AsyncIterator<T>, toMessage: (items: T[]) => object, max: number): Promise<void> {
  const closed = new Promise<void>((resolve) => {
    stream.once('cancelled', () => resolve());
    stream.once('close', () => resolve());
  });
  void closed.then(() => it.return?.());
  // A next() still out while a message is being written may fail meanwhile: handled when awaited.
  const pull = (): Promise<IteratorResult<T>> => {
    const p = it.next();
    p.catch(() => {});
    return p;
  };
  try {
    let pending = pull();
    for (;;) {
      const first = await Promise.race([pending, closed.then(() => null)]);
      if (first === null || first.done === true || stream.cancelled) return;
      const items = [first.value];
      pending = pull();
      let ended = false;
      let failed: { error: unknown } | undefined;
      while (items.length < max) {
        let r: IteratorResult<T> | typeof NOT_YET;
        try {
          r = await Promise.race([pending, notYet]);
        } catch (error) {
          // The items in hand go out first: a drop's resumeFrom is already past them.
          failed = { error };
          break;
        }
        if (r === NOT_YET) break;
        if (r.done === true) {
          ended = true;
          break;
        }
        items.push(r.value);
        pending = pull();
      }
      await Promise.race([new Promise<void>((resolve) => stream.write(toMessage(items), () => resolve())), closed]);
      if (failed !== undefined) throw failed.error;
      if (ended || stream.cancelled) return;
    }
  } finally {
    await it.return?.();
  }
}

// The leader's side of replication: one stream per shard to the same shard on the follower, and
// the S3 fallback when the follower cannot take it. `commit(shard, from, to, records)` is the
// shard's commit step (shard/shard.ts CommitStep): it resolves once the follower fdatasync'd
// those records, or once they are in S3, and only while this node still has the authority to
// acknowledge (the `authority` callback); it rejects otherwise, and the writes get 2007.
//
// Stream: probe → the follower says where its log ends (placed) → the leader resends from the
// record that ends there (the anchor: the follower checks it holds the same record, so a
// divergent tail is found even when it is as long as the leader's) and then everything after it,
// pipelined, without waiting for acknowledgements (bounded by STREAM_INFLIGHT_BYTES_MAX). Every
// refusal or probe answer restarts the stream at the follower's position under a new session
// number; answers of older sessions are ignored (messages may be lost, duplicated or reordered).
//
// Runs on the node's main thread (real) or in the simulator's single thread; no I/O but the ports.
import type { ObjectStore } from './object-store.ts';
import type { Append, AppendOk, AppendReject, ClusterMessage, ProbeState } from './messages.ts';
import type { Channel, ClusterCounters, Clock, ShardPort } from './ports.ts';
import { encodeFallback, fallbackKey, parseFallbackKey, shardPrefix } from './fallback.ts';
import { firstSeqOf, lastSeqOf } from './records-pack.ts';

export { firstSeqOf, lastSeqOf };

/** Replicated bytes on the wire per shard stream, not yet acknowledged. */
export const STREAM_INFLIGHT_BYTES_MAX = 16 * 1024 * 1024;
/** Bytes per append frame when catching a follower up from the log. */
export const APPEND_BYTES_MAX = 1024 * 1024;
/** Records kept in memory per shard for the stream (beyond it the stream reads the log). */
export const STREAM_CACHE_BYTES_MAX = 32 * 1024 * 1024;
/** S3 fallback uploads in flight, over all shards. */
export const FALLBACK_UPLOADS_MAX = 16;
/** Backoff between failed fallback uploads of one batch. */
export const FALLBACK_RETRY_MS = { initial: 50, max: 500 } as const;

export class NotCommittedError extends Error {
  override name = 'NotCommittedError';
}

interface Wait {
  from: number;
  to: number;
  records: readonly Uint8Array[];
  resolve: () => void;
  reject: (e: Error) => void;
  settled: boolean;
  /** Settled as committed (not refused). */
  ok: boolean;
  uploading: boolean;
  /** Its S3 object landed: it commits when every earlier wait has (its promise settles in seq order). */
  covered: boolean;
  cancelTimer: (() => void) | null;
}

interface Cached {
  first: number;
  last: number;
  bytes: Uint8Array;
}

class Stream {
  session = 0;
  state: 'down' | 'probing' | 'streaming' = 'down';
  /** Highest seq the follower holds (this session), durably. */
  ackSeq = 0;
  /** Highest seq sent in this session. */
  sentSeq = 0;
  /** Where the next send starts; -1: send the anchor (the record ending at `anchor`) first. */
  anchor = -1;
  /** Highest seq durable here (handed to the commit step). */
  durable = 0;
  /** Highest seq handed to the stream: durable here, or being written (the early hand-off, `send`). */
  sendable = 0;
  /** Highest seq committed (every wait up to it resolved, in order). */
  committed = 0;
  inflight: { last: number; bytes: number; sentAt: number }[] = [];
  inflightBytes = 0;
  cache: Cached[] = [];
  cacheBytes = 0;
  waits: Wait[] = [];
  pumping = false;
  cancelProbe: (() => void) | null = null;
  /** Fallback objects this leader uploaded and has not cleaned up yet. */
  s3Dirty = false;
  readonly port: ShardPort;
  constructor(port: ShardPort) {
    this.port = port;
  }
}

export interface ReplicatorOptions {
  nodeId: string;
  clock: Clock;
  store: ObjectStore;
  send: (channel: Channel, msg: ClusterMessage) => boolean;
  connected: () => boolean;
  /** True while this node may acknowledge writes (leader, authority not expired). */
  authority: () => boolean;
  /** Group commits wait this long for the follower before they go to S3. */
  replicationTimeoutMs: number;
  /** Interval of probe retries. */
  probeIntervalMs: number;
  counters: ClusterCounters;
  log: (msg: string) => void;
  /** Called when a shard's committed seq moves (the node tells the follower). */
  onCommitted: (shard: number, committed: number) => void;
  /** Called when a group is refused for lack of authority (the node steps down and rewinds). */
  onRefused: (why: string) => void;
}

export class Replicator {
  private readonly o: ReplicatorOptions;
  private readonly streams = new Map<number, Stream>();
  private epoch = 0;
  private active = false;
  private uploadsInFlight = 0;
  private readonly uploadWaiters: (() => void)[] = [];

  constructor(o: ReplicatorOptions, shards: readonly ShardPort[]) {
    this.o = o;
    for (const s of shards) this.streams.set(s.id, new Stream(s));
  }

  /** Starts streaming under `epoch` (this node just became leader). */
  async start(epoch: number): Promise<void> {
    this.epoch = epoch;
    this.active = true;
    for (const st of this.streams.values()) {
      const tip = await st.port.tip();
      st.durable = tip.durableSeq;
      st.sendable = tip.durableSeq;
      st.committed = tip.committedSeq;
      st.ackSeq = 0;
      st.cache = [];
      st.cacheBytes = 0;
      st.s3Dirty = true; // a new leader cleans up what earlier epochs left, once the follower has it
      this.probe(st);
    }
  }

  /** Stops (demotion, fencing, shutdown): every pending commit fails (2007: outcome unknown). */
  stop(why: string): void {
    this.active = false;
    for (const st of this.streams.values()) {
      st.cancelProbe?.();
      st.cancelProbe = null;
      st.state = 'down';
      st.session++;
      st.inflight = [];
      st.inflightBytes = 0;
      st.cache = [];
      st.cacheBytes = 0;
      const waits = st.waits;
      st.waits = [];
      for (const w of waits) this.settle(w, new NotCommittedError(why));
    }
  }

  /** The link came up or went down. */
  linkChanged(up: boolean): void {
    if (!this.active) return;
    for (const st of this.streams.values()) {
      if (up) this.probe(st);
      else {
        st.state = 'down';
        st.session++;
        st.inflight = [];
        st.inflightBytes = 0;
        for (const w of st.waits) this.fallback(st, w);
      }
    }
  }

  /**
   * Called every heartbeat interval: a stream whose oldest append has gone unanswered for twice
   * the replication timeout (lost on a link that stayed up) starts over with a probe; one that
   * lags with nothing in flight sends again.
   */
  tick(): void {
    if (!this.active) return;
    const now = this.o.clock.monoMs();
    for (const st of this.streams.values()) {
      if (st.state !== 'streaming') continue;
      const oldest = st.inflight[0];
      if (oldest !== undefined && now - oldest.sentAt > 2 * this.o.replicationTimeoutMs) this.probe(st);
      else if (oldest === undefined && st.ackSeq < st.sendable) void this.pump(st);
    }
  }

  /** Whether any shard is currently committing through S3. */
  get fallbackActive(): boolean {
    if (!this.active) return false;
    for (const st of this.streams.values()) if (st.state === 'down' || st.waits.some((w) => w.uploading)) return true;
    return false;
  }

  /** The follower cannot take this shard's records now: S3 for every wait, a probe after an interval. */
  private markDown(st: Stream): void {
    st.session++;
    st.state = 'down';
    st.inflight = [];
    st.inflightBytes = 0;
    for (const w of st.waits) this.fallback(st, w);
    st.cancelProbe?.();
    st.cancelProbe = this.o.clock.after(this.o.probeIntervalMs, () => {
      st.cancelProbe = null;
      if (this.active && st.state === 'down' && this.o.connected()) this.probe(st);
    });
  }

  /** The peer's clock is off by more than the limit (or back within it): its copies do not count meanwhile. */
  setPeerUsable(usable: boolean): void {
    if (this.peerUsable === usable) return;
    this.peerUsable = usable;
    if (!this.active) return;
    for (const st of this.streams.values()) {
      if (!usable) this.markDown(st);
      else if (st.state === 'down') this.probe(st);
    }
  }
  private peerUsable = true;

  /** Per shard, the follower's acknowledged seq (for lag). */
  lag(): number {
    let n = 0;
    for (const st of this.streams.values()) n += Math.max(0, st.durable - st.ackSeq);
    return n;
  }

  /** True when the follower holds everything durable here, on every shard. */
  caughtUp(): boolean {
    for (const st of this.streams.values()) if (st.state !== 'streaming' || st.ackSeq < st.durable || st.waits.length > 0) return false;
    return true;
  }

  committedSeqs(): number[] {
    const out: number[] = [];
    for (const [id, st] of this.streams) out[id] = st.committed;
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // The commit step

  /**
   * The early hand-off (CommitStep.send): a group the shard is writing now, not yet durable here.
   * It is streamed at once, so the follower's fdatasync overlaps the leader's; `commit` for it
   * comes after the local fdatasync, and only then can it be acknowledged. A follower holding it
   * while this node never makes it durable (a crash, a failed write) holds an unacknowledged tail,
   * like any other: rewound, or committed by a later leader (its writers were told "unknown").
   */
  send(shard: number, records: readonly Uint8Array[]): void {
    const st = this.streams.get(shard);
    if (st === undefined || !this.active || !this.o.authority()) return;
    this.take(st, records);
    if (st.state === 'streaming') void this.pump(st);
  }

  /** Caches the records not handed to the stream yet and moves `sendable` past them. */
  private take(st: Stream, records: readonly Uint8Array[]): void {
    let i = 0;
    while (i < records.length && lastSeqOf(records[i]!) <= st.sendable) i++;
    if (i === records.length) return;
    const fresh = i === 0 ? records : records.slice(i);
    this.addToCache(st, fresh);
    st.sendable = lastSeqOf(fresh[fresh.length - 1]!);
  }

  commit(shard: number, from: number, to: number, records: readonly Uint8Array[]): Promise<void> {
    const st = this.streams.get(shard);
    if (st === undefined) return Promise.reject(new Error(`internal: no stream for shard ${shard}`));
    if (!this.active || !this.o.authority()) return Promise.reject(new NotCommittedError('this node is no longer the leader'));
    return new Promise<void>((resolve, reject) => {
      this.take(st, records);
      // Empty: handed over by `send` (or a tail kept over a restart, read from the log when needed).
      const own = records.length > 0 ? records : (this.cached(st, from, to) ?? []);
      const w: Wait = { from, to, records: own, resolve, reject, settled: false, ok: false, uploading: false, covered: false, cancelTimer: null };
      st.waits.push(w);
      if (to > st.durable) st.durable = to;
      if (to > st.sendable) st.sendable = to;
      if (st.ackSeq >= to) {
        this.resolveUpTo(st);
        return;
      }
      // No link, or a follower that refused (busy/fatal): S3 now. A stream still probing (it just
      // (re)connected) gets the same grace as a streaming one.
      if (st.state === 'down' || !this.o.connected()) {
        this.fallback(st, w);
        return;
      }
      w.cancelTimer = this.o.clock.after(this.o.replicationTimeoutMs, () => {
        w.cancelTimer = null;
        if (w.settled) return;
        // The follower is connected but not answering (hung, paused, overloaded): stop waiting
        // for it — this group and the next go to S3 at once until a probe is answered again.
        this.o.log(`replication of shard ${st.port.id}: no answer from the follower within ${this.o.replicationTimeoutMs} ms; committing through S3 until it answers a probe`);
        this.markDown(st);
      });
      void this.pump(st);
    });
  }

  private addToCache(st: Stream, records: readonly Uint8Array[]): void {
    for (const r of records) {
      const v = new DataView(r.buffer, r.byteOffset, r.length);
      const first = Number(v.getBigUint64(24));
      const last = first + v.getUint16(18) - 1;
      const prev = st.cache[st.cache.length - 1];
      if (prev !== undefined && first !== prev.last + 1) {
        st.cache = [];
        st.cacheBytes = 0;
      }
      st.cache.push({ first, last, bytes: r });
      st.cacheBytes += r.length;
    }
    while (st.cacheBytes > STREAM_CACHE_BYTES_MAX && st.cache.length > 0) st.cacheBytes -= st.cache.shift()!.bytes.length;
  }

  private settle(w: Wait, e: Error | null): void {
    if (w.settled) return;
    w.settled = true;
    w.ok = e === null;
    w.cancelTimer?.();
    w.cancelTimer = null;
    if (e === null) w.resolve();
    else w.reject(e);
  }

  /** Resolves waits, in order, that the follower (or S3) now covers; checks authority first. */
  private resolveUpTo(st: Stream): void {
    while (st.waits.length > 0) {
      const w = st.waits[0]!;
      if (!w.settled && !w.covered && st.ackSeq < w.to) break;
      st.waits.shift();
      if (!w.settled) {
        if (!this.active || !this.o.authority()) {
          this.settle(w, new NotCommittedError('this node lost its authority to acknowledge before the follower confirmed'));
          this.o.onRefused('its authority lapsed while a group waited for the follower');
        } else this.settle(w, null);
      }
      if (!w.ok) {
        // A refused group is a hole: nothing after it commits (the shard stops too), and the
        // committed seq the follower is told never passes it.
        this.dropSettled(st);
        return;
      }
      if (w.to > st.committed) {
        st.committed = w.to;
        this.o.onCommitted(st.port.id, st.committed);
      }
    }
    // Drop cached records the follower holds.
    while (st.cache.length > 0 && st.cache[0]!.last <= st.ackSeq) st.cacheBytes -= st.cache.shift()!.bytes.length;
  }

  // -------------------------------------------------------------------------------------------
  // The stream

  private probe(st: Stream): void {
    if (!this.active) return;
    if (!this.peerUsable) {
      st.state = 'down';
      return;
    }
    st.session++;
    st.state = 'probing';
    st.inflight = [];
    st.inflightBytes = 0;
    st.cancelProbe?.();
    const session = st.session;
    const send = (): void => {
      st.cancelProbe = null;
      if (!this.active || st.session !== session || st.state !== 'probing') return;
      this.o.send('data', { t: 'probe', epoch: this.epoch, shard: st.port.id, session });
      st.cancelProbe = this.o.clock.after(this.o.probeIntervalMs, send);
    };
    send();
  }

  onMessage(m: ClusterMessage): void {
    if (!this.active) return;
    if (m.t !== 'probeState' && m.t !== 'appendOk' && m.t !== 'appendReject') return;
    if (m.epoch !== this.epoch) return;
    const st = this.streams.get(m.shard);
    if (st === undefined || m.session !== st.session) return;
    if (m.t === 'appendOk') this.onAck(st, m);
    else this.onRestart(st, m);
  }

  private onAck(st: Stream, m: AppendOk): void {
    this.o.counters.appendAcks++;
    if (m.ackSeq > st.ackSeq) st.ackSeq = m.ackSeq;
    while (st.inflight.length > 0 && st.inflight[0]!.last <= st.ackSeq) st.inflightBytes -= st.inflight.shift()!.bytes;
    this.resolveUpTo(st);
    void this.pump(st);
    if (st.s3Dirty && st.ackSeq >= st.durable && st.waits.length === 0) void this.cleanUp(st);
  }

  private onRestart(st: Stream, m: ProbeState | AppendReject): void {
    if (m.t === 'appendReject') {
      this.o.log(`replication of shard ${st.port.id}: the follower refused (${m.reason}: ${m.message}); resending from seq ${m.placed + 1}`);
      if (m.reason === 'fatal' || m.reason === 'busy') {
        // fatal: the follower's acknowledged history differs from ours — never paper over it
        // (it is probed again, and refuses again, loudly). busy: it cannot take records now (a
        // full disk, rewinding). Either way the waits go to S3 meanwhile.
        this.markDown(st);
        return;
      }
    }
    st.cancelProbe?.();
    st.cancelProbe = null;
    st.session++;
    st.state = 'streaming';
    st.inflight = [];
    st.inflightBytes = 0;
    const cursor = Math.min(m.placed, st.durable);
    st.ackSeq = Math.min(st.ackSeq, cursor);
    st.sentSeq = cursor;
    st.anchor = cursor > 0 ? cursor : -1;
    void this.pump(st);
  }

  /** Sends what the follower lacks, from the cache or the log, up to the in-flight bound. */
  private async pump(st: Stream): Promise<void> {
    if (st.pumping) return;
    st.pumping = true;
    try {
      while (this.active && st.state === 'streaming' && this.o.connected() && st.inflightBytes < STREAM_INFLIGHT_BYTES_MAX) {
        const session = st.session;
        let records: Uint8Array[];
        if (st.anchor > 0) {
          records = await st.port.readDurable(st.anchor, st.anchor, 1);
        } else {
          if (st.sentSeq >= st.sendable) break;
          // Beyond `durable` the records are only in the cache (handed over while being written).
          records = this.fromCache(st, st.sentSeq + 1) ?? (st.sentSeq < st.durable ? await st.port.readDurable(st.sentSeq + 1, st.durable, APPEND_BYTES_MAX) : []);
        }
        if (session !== st.session || !this.active) continue;
        if (records.length === 0) break;
        const first = firstSeqOf(records[0]!);
        const last = lastSeqOf(records[records.length - 1]!);
        let bytes = 0;
        for (const r of records) bytes += r.length;
        const msg: Append = { t: 'append', epoch: this.epoch, shard: st.port.id, session, first, last, committed: st.committed, tip: st.sendable, records };
        if (!this.o.send('data', msg)) break;
        st.anchor = -1;
        st.sentSeq = Math.max(st.sentSeq, last);
        st.inflight.push({ last, bytes, sentAt: this.o.clock.monoMs() });
        st.inflightBytes += bytes;
        this.o.counters.appendsSent++;
        this.o.counters.appendBytesSent += bytes;
      }
    } finally {
      st.pumping = false;
    }
  }

  /** Index of the cached record that starts at `from`, or -1. */
  private cacheIndex(st: Stream, from: number): number {
    const c = st.cache;
    if (c.length === 0 || c[0]!.first > from || c[c.length - 1]!.last < from) return -1;
    let i = 0;
    while (c[i]!.last < from) i++;
    return c[i]!.first === from ? i : -1;
  }

  /** The cached records covering exactly `from..to`, or null. */
  private cached(st: Stream, from: number, to: number): Uint8Array[] | null {
    const c = st.cache;
    const out: Uint8Array[] = [];
    for (let i = this.cacheIndex(st, from); i >= 0 && i < c.length && c[i]!.last <= to; i++) out.push(c[i]!.bytes);
    return out.length > 0 && lastSeqOf(out[out.length - 1]!) === to ? out : null;
  }

  /** Cached records from `from` on, up to about APPEND_BYTES_MAX; null when `from` is not cached. */
  private fromCache(st: Stream, from: number): Uint8Array[] | null {
    const c = st.cache;
    let i = this.cacheIndex(st, from);
    if (i < 0) return null;
    const out: Uint8Array[] = [];
    let bytes = 0;
    for (; i < c.length && (out.length === 0 || bytes + c[i]!.bytes.length <= APPEND_BYTES_MAX); i++) {
      out.push(c[i]!.bytes);
      bytes += c[i]!.bytes.length;
    }
    return out;
  }

  // -------------------------------------------------------------------------------------------
  // S3 fallback

  private fallback(st: Stream, w: Wait): void {
    if (w.settled || w.uploading || w.covered) return;
    w.uploading = true;
    w.cancelTimer?.();
    w.cancelTimer = null;
    void this.upload(st, w);
  }

  private async upload(st: Stream, w: Wait): Promise<void> {
    let delay: number = FALLBACK_RETRY_MS.initial;
    const epoch = this.epoch;
    while (!w.settled) {
      if (!this.active || epoch !== this.epoch || !this.o.authority()) {
        this.settle(w, new NotCommittedError('neither the follower nor S3 confirmed these records before this node lost its authority'));
        this.dropSettled(st);
        if (this.active && epoch === this.epoch) this.o.onRefused('its authority lapsed while a group waited for S3');
        return;
      }
      await this.uploadSlot();
      try {
        if (w.settled) return;
        // The slot may have taken long: a node that lost its authority meanwhile uploads nothing.
        if (!this.active || epoch !== this.epoch || !this.o.authority()) continue;
        // The group's own records when they cover it exactly, else from the log.
        const exact = w.records.length > 0 && firstSeqOf(w.records[0]!) === w.from && lastSeqOf(w.records[w.records.length - 1]!) === w.to;
        const records = exact ? w.records : await this.readRange(st, w.from, w.to);
        const body = encodeFallback(st.port.id, w.from, w.to, epoch, records);
        const r = await this.o.store.putIfAbsent(fallbackKey(st.port.id, w.from, w.to, epoch, this.o.nodeId), body);
        // 'exists': the same range, epoch and uploader — our own earlier attempt that landed.
        void r;
        st.s3Dirty = true;
        this.o.counters.s3FallbackBatches++;
        if (w.settled) return;
        // Uploaded: it counts as the second copy. Commit it in order with the others.
        if (!this.active || epoch !== this.epoch || !this.o.authority()) {
          this.settle(w, new NotCommittedError('the S3 upload finished after this node lost its authority'));
          this.dropSettled(st);
          if (this.active && epoch === this.epoch) this.o.onRefused('its authority lapsed during an S3 upload');
          return;
        }
        // Covered: committed in order with the others — resolveUpTo stops at the first wait
        // neither acknowledged nor covered, and only then settles this one (a later group's
        // upload can land while an earlier one's never does).
        w.uploading = false;
        w.covered = true;
        this.resolveUpTo(st);
        return;
      } catch (e) {
        this.o.log(`shard ${st.port.id}: S3 fallback upload of seqs ${w.from}..${w.to} failed (${(e as Error).message}); retrying`);
      } finally {
        this.releaseUploadSlot();
      }
      await new Promise<void>((r) => this.o.clock.after(delay, r));
      delay = Math.min(FALLBACK_RETRY_MS.max, delay * 2);
    }
  }

  private dropSettled(st: Stream): void {
    // A failed wait stops the shard's commits (the shard stops writes); later waits fail too.
    const waits = st.waits;
    st.waits = [];
    for (const w of waits) this.settle(w, new NotCommittedError('an earlier group of this shard was not committed'));
  }

  private async readRange(st: Stream, from: number, to: number): Promise<Uint8Array[]> {
    const out: Uint8Array[] = [];
    let next = from;
    while (next <= to) {
      const recs = await st.port.readDurable(next, to, APPEND_BYTES_MAX);
      if (recs.length === 0) throw new Error(`shard ${st.port.id}: seqs ${next}..${to} are not durable here`);
      out.push(...recs);
      next = lastSeqOf(recs[recs.length - 1]!) + 1;
    }
    return out;
  }

  private async uploadSlot(): Promise<void> {
    while (this.uploadsInFlight >= FALLBACK_UPLOADS_MAX) await new Promise<void>((r) => this.uploadWaiters.push(r));
    this.uploadsInFlight++;
  }
  private releaseUploadSlot(): void {
    this.uploadsInFlight--;
    this.uploadWaiters.shift()?.();
  }

  /** Deletes fallback objects the follower holds now (both nodes have those records). */
  private async cleanUp(st: Stream): Promise<void> {
    st.s3Dirty = false;
    const upTo = st.ackSeq;
    try {
      const objs = await this.o.store.list(shardPrefix(st.port.id));
      for (const o of objs) {
        const k = parseFallbackKey(o.key);
        if (k !== null && k.to <= upTo) await this.o.store.delete(o.key);
      }
    } catch (e) {
      st.s3Dirty = true;
      this.o.log(`shard ${st.port.id}: cleaning up S3 fallback objects failed (${(e as Error).message}); will retry`);
    }
  }
}

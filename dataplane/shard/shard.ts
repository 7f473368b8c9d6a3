// One shard: the semantics of SPEC §3–§4 on top of its log. Runs on the worker thread that owns
// the shard and nowhere else, so its state needs no locks: every check-and-place below runs in one
// synchronous section, and awaits only happen before it (cold loads) or after it (durability).
import { Writer, Expect, Op, encodeError, encodeDetailsOk, writeBatchHeader, skipEvent, Reader } from '../../client/wire.ts';
import { ErrorCode } from '../../client/errors.ts';
import { COLD_LOADS_MAX, HEADER_CATCH_UP_IDLE_MS, READ_AHEAD_SHARE, RECENT_CACHE_SHARE, WALK_ENTRY_BYTES_ESTIMATE, SHARD_QUEUE_WRITES_MAX, STATE_ENTRY_BYTES_ESTIMATE, STATE_LOAD_ATTEMPTS_MAX } from '../constants.ts';
import { Lru } from '../storage/lru.ts';
import { batchesOf, encodeRecord, recordSize, type BatchInput, type BatchLoc, type BatchView, type RecordHeader } from '../storage/record.ts';
import { CorruptionError, ShardLog, type ShardLogOptions } from '../storage/shard-log.ts';
import type { ShardState } from '../server/status.ts';
import { keyString, newState, setFloor, type AggState } from './state.ts';
import { decodeKeyTrusted, decodeReadTrusted, decodeWriteTrusted, describeKey, type TrustedWrite } from './requests.ts';

export interface ShardOptions extends ShardLogOptions {
  /** This shard's share of the node's memory budget. */
  memoryBudgetBytes: number;
  now?: () => number;
}

export interface ShardResult {
  op: number;
  body: Uint8Array;
}

interface WalkEntry {
  loc: BatchLoc;
  fromVersion: number;
  toVersion: number;
  seq: number;
}

interface CachedRecord {
  bytes: Uint8Array;
  header: RecordHeader;
}

interface Waiter {
  lastSeq: number;
  done: () => void;
  fail: (e: Error) => void;
}

export interface FsyncSample {
  seconds: number;
  records: number;
}

function err(code: number, message: string, detail: Record<string, unknown> = {}): ShardResult {
  return { op: Op.Error, body: encodeError(code, message, detail) };
}

/** A request refused after an await; carries its error response. */
class Refusal extends Error {
  readonly result: ShardResult;
  constructor(result: ShardResult) {
    super('refused');
    this.result = result;
  }
}

export class Shard {
  readonly id: number;
  state: ShardState = 'opening';
  reason: string | undefined;
  private log: ShardLog | null = null;
  private readonly opts: ShardOptions;
  private states: Lru<string, AggState>;
  private recent: Lru<string, CachedRecord>;
  /** Batches not yet returned by a truncated read, keyed by "key|nextVersion": readAll's next page
   * starts here instead of walking the whole chain back again (which made long reads quadratic). */
  private readAhead: Lru<string, { entries: WalkEntry[]; tipSeq: number }>;
  private readonly loading = new Map<string, Promise<AggState>>();
  private coldInFlight = 0;
  private readonly coldWaiters: (() => void)[] = [];
  private waiters: Waiter[] = [];
  private committing = false;
  private idleTimer: NodeJS.Timeout | null = null;
  private syncingHeader: Promise<void> | null = null;
  private readonly now: () => number;
  private readonly recordWriter = new Writer(64 * 1024);
  private readonly responseWriter = new Writer(1024);
  /** Samples for metrics, drained by the worker. */
  fsyncSamples: FsyncSample[] = [];

  private constructor(opts: ShardOptions) {
    this.opts = opts;
    this.id = opts.shard;
    this.now = opts.now ?? Date.now;
    const recentBytes = Math.floor(opts.memoryBudgetBytes * RECENT_CACHE_SHARE);
    const readAheadBytes = Math.floor(opts.memoryBudgetBytes * READ_AHEAD_SHARE);
    const stateEntries = Math.max(16, Math.floor((opts.memoryBudgetBytes - recentBytes - readAheadBytes) / STATE_ENTRY_BYTES_ESTIMATE));
    this.readAhead = new Lru(Math.max(64 * 1024, readAheadBytes));
    this.states = new Lru<string, AggState>(stateEntries, (s) => s.pending > 0);
    this.recent = new Lru<string, CachedRecord>(Math.max(64 * 1024, recentBytes));
  }

  /** Opens the shard. Corruption does not throw: the shard comes up 'corrupt' and refuses requests. */
  static async open(opts: ShardOptions): Promise<Shard> {
    const s = new Shard(opts);
    try {
      s.log = await ShardLog.open(opts);
      s.state = 'serving';
    } catch (e) {
      s.state = e instanceof CorruptionError ? 'corrupt' : 'failed';
      s.reason = (e as Error).message;
      opts.log(`shard ${opts.shard} is not served: ${s.reason}`);
    }
    return s;
  }

  get writeSeq(): number {
    return this.log ? this.log.nextSeq - 1 : 0;
  }
  get commitSeq(): number {
    return this.log?.durableSeq ?? 0;
  }
  /** Bytes held and allowed per cache (the state cache counts entries at their size estimate). */
  get cacheUsage(): Record<'aggregate_state' | 'recent_records' | 'read_ahead', { bytes: number; capacityBytes: number }> {
    return {
      aggregate_state: { bytes: this.states.size * STATE_ENTRY_BYTES_ESTIMATE, capacityBytes: this.states.capacity * STATE_ENTRY_BYTES_ESTIMATE },
      recent_records: { bytes: this.recent.usedSize, capacityBytes: this.recent.capacity },
      read_ahead: { bytes: this.readAhead.usedSize, capacityBytes: this.readAhead.capacity },
    };
  }
  get cacheStats(): { states: { hits: number; misses: number }; recent: { hits: number; misses: number } } {
    return { states: { hits: this.states.hits, misses: this.states.misses }, recent: { hits: this.recent.hits, misses: this.recent.misses } };
  }

  async handle(op: number, body: Uint8Array): Promise<ShardResult> {
    if (this.state !== 'serving' || this.log === null) {
      return err(ErrorCode.ShardUnavailable, `shard ${this.id} is not being served (${this.state}): ${this.reason ?? 'opening'}`, { shard: this.id });
    }
    try {
      switch (op) {
        case Op.Write:
          return await this.write(decodeWriteTrusted(body));
        case Op.Read:
          return await this.read(body);
        case Op.Details:
          return await this.details(body);
        default:
          return err(ErrorCode.BadRequest, `operation ${op} is not served by a shard`);
      }
    } catch (e) {
      if (e instanceof Refusal) return e.result;
      if (e instanceof CorruptionError) {
        this.fail('corrupt', e.message);
        return err(ErrorCode.ShardUnavailable, `shard ${this.id} stopped serving: ${e.message}`, { shard: this.id });
      }
      throw e;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Writes

  private async write(req: TrustedWrite): Promise<ShardResult> {
    const log = this.log!;
    if (log.queuedRecords >= SHARD_QUEUE_WRITES_MAX) {
      return err(ErrorCode.ServerBusy, `shard ${this.id} has ${log.queuedRecords} writes waiting for disk; retry with backoff`);
    }
    const keys = req.writes.map((w) => keyString(w.key));
    if (keys.length > 1 && new Set(keys).size !== keys.length) {
      return err(ErrorCode.BadRequest, 'the same aggregate appears more than once in one write; put all its events in one entry');
    }
    let states = await this.ensureStates(req, keys);
    // Resuming after the await is a separate microtask: another request's cold load may have
    // evicted one of these states meanwhile. Use them only if they are still the cached ones.
    for (let attempt = 1; !this.statesCurrent(req, keys, states); attempt++) {
      if (attempt >= STATE_LOAD_ATTEMPTS_MAX) {
        return err(ErrorCode.ServerBusy, `shard ${this.id}: aggregate state cache is too small for the current load; retry, or raise --memory-budget-mb`);
      }
      states = await this.ensureStates(req, keys);
    }
    // ---- synchronous from here: check every guard, then every floor, then place the record ----
    if (this.state !== 'serving') return err(ErrorCode.ShardUnavailable, `shard ${this.id} is not being served (${this.state}): ${this.reason ?? ''}`);
    for (let i = 0; i < req.writes.length; i++) {
      const guard = this.checkGuard(req.writes[i]!, states[i]!);
      if (guard) return guard;
    }
    for (let i = 0; i < req.writes.length; i++) {
      const w = req.writes[i]!;
      const s = states[i]!;
      if (w.clientSeq > 0n) {
        const f = s.floors.get(req.clientId);
        if (f !== undefined && w.clientSeq <= f.seq) {
          const detail = { lastClientSeq: f.seq.toString(), attemptedClientSeq: w.clientSeq.toString() };
          if (f.atSeq > log.durableSeq) {
            return err(ErrorCode.DuplicateInFlight, `clientSeq ${w.clientSeq} of this client on ${describeKey(w.key)} is still being written (last ${f.seq}); retry later`, detail);
          }
          return err(ErrorCode.AlreadyApplied, `clientSeq ${w.clientSeq} of this client on ${describeKey(w.key)} was already applied (last ${f.seq})`, detail);
        }
      }
    }
    const batches: BatchInput[] = req.writes.map((w, i) => ({
      key: w.key,
      fromVersion: states[i]!.version + 1,
      clientSeq: w.clientSeq,
      eventCount: w.eventCount,
      prev: states[i]!.lastLoc,
      events: w.events,
    }));
    const len = recordSize(batches);
    if (len > log.recordBytesMax) {
      return err(ErrorCode.BadRequest, `this write needs a ${len}-byte record; a record must fit in one segment (at most ${log.recordBytesMax} bytes with --segment-mb ${log.opts.segmentBytes / 1048576}); split it or use larger segments`);
    }
    const place = log.reserve(len);
    const ts = this.now();
    // Encode into a reused buffer and keep an exact copy: one allocation per record.
    const w = this.recordWriter;
    w.pos = 0;
    const bytes = encodeRecord(w, { firstSeq: place.firstSeq, vouchedEnd: place.vouchedEnd, timestampMs: ts, prevHash: place.prevHash, clientId: req.clientId, batches }).slice();
    log.commitPlacement(bytes, batches.map((b) => b.key), batches.length);
    const lastSeq = place.firstSeq + batches.length - 1;
    for (let i = 0; i < batches.length; i++) {
      const s = states[i]!;
      const wr = req.writes[i]!;
      s.version += wr.eventCount;
      s.lastLoc = { segment: place.segment, offset: place.offset, index: i };
      s.pending++;
      if (wr.clientSeq > 0n) setFloor(s, req.clientId, { seq: wr.clientSeq, atSeq: place.firstSeq + i }, log.durableSeq);
    }
    // ---- end of the synchronous section ----
    await this.durable(lastSeq);
    const header: RecordHeader = { length: len, vouchedEnd: place.vouchedEnd, batchCount: batches.length, firstSeq: place.firstSeq, timestampMs: ts, prevHash: place.prevHash, clientId: req.clientId };
    this.recent.set(`${place.segment}:${place.offset}`, { bytes, header }, len);
    const ok = this.responseWriter;
    ok.pos = 0;
    ok.u32(this.id);
    ok.u64n(place.firstSeq);
    ok.u16(batches.length);
    for (let i = 0; i < batches.length; i++) {
      const s = states[i]!;
      const b = batches[i]!;
      s.pending--;
      const seq = place.firstSeq + i;
      if (seq > s.cSeq) {
        s.cVersion = b.fromVersion + b.eventCount - 1;
        s.cLoc = { segment: place.segment, offset: place.offset, index: i };
        s.cSeq = seq;
        s.cClientId = req.clientId;
        s.cTimestampMs = ts;
      }
      ok.u64n(b.fromVersion);
      ok.u64n(b.fromVersion + b.eventCount - 1);
    }
    // Same bytes as encodeWriteOk (client/wire.ts), written without intermediate objects.
    return { op: Op.WriteOk, body: ok.buf.slice(0, ok.pos) };
  }

  private checkGuard(w: TrustedWrite['writes'][number], s: AggState): ShardResult | null {
    const v = s.version;
    let ok: boolean;
    let expected: string;
    switch (w.expectMode) {
      case Expect.Any:
        return null;
      case Expect.NoStream:
        ok = v === 0;
        expected = 'no_stream (the aggregate must not exist)';
        break;
      case Expect.StreamExists:
        ok = v > 0;
        expected = 'stream_exists (the aggregate must exist)';
        break;
      case Expect.Exact:
        ok = BigInt(v) === w.expectVersion;
        expected = `version ${w.expectVersion}`;
        break;
    }
    if (ok) return null;
    return err(
      ErrorCode.WrongExpectedVersion,
      `wrong expected version on ${describeKey(w.key)}: expected ${expected}, current version is ${v}; re-read and decide again`,
      { currentVersion: String(v) },
    );
  }

  /** Resolves once every record up to `lastSeq` is durable; starts a group commit if none runs. */
  private durable(lastSeq: number): Promise<void> {
    return new Promise<void>((done, fail) => {
      if (this.state !== 'serving') {
        fail(new Refusal(err(ErrorCode.ShardUnavailable, `shard ${this.id} stopped serving: ${this.reason ?? ''}`)));
        return;
      }
      this.waiters.push({ lastSeq, done, fail });
      if (!this.committing) void this.commitLoop();
    });
  }

  private async commitLoop(): Promise<void> {
    const log = this.log!;
    this.committing = true;
    if (this.idleTimer) {
      clearTimeout(this.idleTimer);
      this.idleTimer = null;
    }
    try {
      // An idle header catch-up may still be writing; the log does one write at a time.
      if (this.syncingHeader) await this.syncingHeader;
      while (log.queuedRecords > 0 && this.state === 'serving') {
        const t0 = performance.now();
        const durableSeq = await log.flush();
        if (durableSeq === null) break;
        let n = 0;
        while (n < this.waiters.length && this.waiters[n]!.lastSeq <= durableSeq) n++;
        const done = this.waiters.splice(0, n);
        this.fsyncSamples.push({ seconds: (performance.now() - t0) / 1000, records: done.length });
        if (this.fsyncSamples.length > 1000) this.fsyncSamples.splice(0, this.fsyncSamples.length - 1000);
        for (const w of done) w.done();
      }
    } catch (e) {
      // After a failed fdatasync the kernel may have dropped the dirty data: nothing placed since
      // the last good fsync can be trusted, and neither can retrying (fsyncgate). Stop the shard.
      this.fail('failed', `write to disk failed: ${(e as Error).message}; restart the node to recover from the log`);
    } finally {
      this.committing = false;
    }
    if (this.state === 'serving' && log.headerBehind) {
      this.idleTimer = setTimeout(() => {
        this.idleTimer = null;
        if (this.committing || this.state !== 'serving') return;
        this.syncingHeader = log
          .syncHeader()
          .catch((e: Error) => this.fail('failed', `header write failed: ${e.message}`))
          .finally(() => (this.syncingHeader = null));
      }, HEADER_CATCH_UP_IDLE_MS);
      this.idleTimer.unref();
    }
  }

  private fail(state: ShardState, reason: string): void {
    if (this.state === 'serving') this.opts.log(`shard ${this.id} stopped serving: ${reason}`);
    this.state = state;
    this.reason = reason;
    const waiters = this.waiters;
    this.waiters = [];
    for (const w of waiters) w.fail(new Refusal(err(ErrorCode.ShardUnavailable, `shard ${this.id} stopped serving before this write was durable: ${reason}`)));
  }

  // -------------------------------------------------------------------------------------------
  // Aggregate state: cache, cold loads, exactly-once floors

  private statesCurrent(req: TrustedWrite, keys: string[], states: AggState[]): boolean {
    for (let i = 0; i < keys.length; i++) {
      const s = states[i]!;
      if (this.states.peek(keys[i]!) !== s) return false;
      if (req.writes[i]!.clientSeq > 0n && !s.floors.has(req.clientId)) return false;
    }
    return true;
  }

  private async ensureStates(req: TrustedWrite, keys: string[]): Promise<AggState[]> {
    for (let attempt = 0; attempt < STATE_LOAD_ATTEMPTS_MAX; attempt++) {
      const states: AggState[] = [];
      const missing: Promise<unknown>[] = [];
      for (let i = 0; i < keys.length; i++) {
        const s = this.states.get(keys[i]!);
        if (s === undefined) {
          missing.push(this.loadState(keys[i]!, req.writes[i]!.key));
          continue;
        }
        states.push(s);
        const w = req.writes[i]!;
        if (w.clientSeq > 0n && !s.floors.has(req.clientId)) missing.push(this.loadFloor(s, req.clientId));
      }
      if (missing.length === 0) return states;
      await Promise.all(missing);
      // Loop: the states are only used if all of them are in the cache in one synchronous pass
      // (a load may evict another's state while we wait).
    }
    throw new Refusal(err(ErrorCode.ServerBusy, `shard ${this.id}: aggregate state cache is too small for the current load; retry, or raise --memory-budget-mb`));
  }

  private async getState(key: Uint8Array): Promise<AggState> {
    const ks = keyString(key);
    return this.states.get(ks) ?? (await this.loadState(ks, key));
  }

  private loadState(ks: string, key: Uint8Array): Promise<AggState> {
    let p = this.loading.get(ks);
    if (p === undefined) {
      p = this.coldLoad(ks, key.slice()).finally(() => this.loading.delete(ks));
      this.loading.set(ks, p);
    }
    return p;
  }

  private async coldLoad(ks: string, key: Uint8Array): Promise<AggState> {
    await this.coldSlot();
    try {
      const found = await this.log!.findLatest(key);
      const present = this.states.peek(ks);
      if (present) return present;
      const s = newState(key);
      if (found) {
        s.version = s.cVersion = found.batch.toVersion;
        s.lastLoc = s.cLoc = found.loc;
        s.cSeq = found.batch.seq;
        s.cClientId = found.header.clientId;
        s.cTimestampMs = found.header.timestampMs;
      }
      this.states.set(ks, s);
      return s;
    } finally {
      this.releaseColdSlot();
    }
  }

  /** Finds this writer's highest clientSeq on the aggregate by walking its durable batches back. */
  private async loadFloor(s: AggState, clientId: bigint): Promise<void> {
    let loc = s.cLoc;
    let floor = { seq: 0n, atSeq: 0 };
    await this.coldSlot();
    try {
      while (loc !== null) {
        const { batch, header } = await this.batchAt(loc);
        if (header.clientId === clientId && batch.clientSeq > 0n) {
          floor = { seq: batch.clientSeq, atSeq: batch.seq };
          break;
        }
        loc = batch.prev;
      }
    } finally {
      this.releaseColdSlot();
    }
    if (!s.floors.has(clientId)) setFloor(s, clientId, floor, this.log!.durableSeq);
  }

  private async coldSlot(): Promise<void> {
    while (this.coldInFlight >= COLD_LOADS_MAX) await new Promise<void>((r) => this.coldWaiters.push(r));
    this.coldInFlight++;
  }

  private releaseColdSlot(): void {
    this.coldInFlight--;
    this.coldWaiters.shift()?.();
  }

  private async batchAt(loc: BatchLoc): Promise<{ batch: BatchView; header: RecordHeader; record: Uint8Array }> {
    const id = `${loc.segment}:${loc.offset}`;
    let rec = this.recent.get(id);
    if (rec === undefined) {
      rec = await this.log!.readRecord(loc.segment, loc.offset);
      this.recent.set(id, rec, rec.bytes.length);
    }
    for (const b of batchesOf(rec.bytes, rec.header)) if (b.index === loc.index) return { batch: b, header: rec.header, record: rec.bytes };
    throw new CorruptionError(`shard ${this.id}: record at segment ${loc.segment} offset ${loc.offset} has no batch ${loc.index}`);
  }

  // -------------------------------------------------------------------------------------------
  // Reads

  private async read(body: Uint8Array): Promise<ShardResult> {
    const q = decodeReadTrusted(body);
    const s = await this.getState(q.key);
    if (s.cVersion === 0) return err(ErrorCode.AggregateNotFound, `aggregate ${describeKey(q.key)} does not exist`);
    // The committed tip as of now: awaits below may see later commits, which this page must not
    // claim to cover (the read-ahead records exactly what it walked).
    const tipSeq = s.cSeq;
    const tipLoc = s.cLoc;
    const from = Number(q.from);
    const to = q.to === 0n ? s.cVersion : Math.min(Number(q.to), s.cVersion);
    if (from < s.minVersion) {
      return err(ErrorCode.ReadBelowTrimmed, `version ${from} of ${describeKey(q.key)} was trimmed; the first readable version is ${s.minVersion}`, { minVersion: String(s.minVersion) });
    }
    // The batches from `from` to the committed tip, oldest first: from the read-ahead left by the
    // previous page of this read (readAll), else by walking the aggregate's chain back from its tip.
    const ks = keyString(q.key);
    const ahead = this.readAhead.get(`${ks}|${from}`);
    let entries: WalkEntry[];
    if (ahead !== undefined && ahead.tipSeq <= tipSeq) {
      this.readAhead.delete(`${ks}|${from}`);
      entries = ahead.entries;
      if (tipSeq > ahead.tipSeq) entries = entries.concat(await this.walkBack(tipLoc, (e) => e.seq <= ahead.tipSeq));
    } else {
      entries = await this.walkBack(tipLoc, (e) => e.toVersion < from);
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
        this.readAhead.set(`${ks}|${nextFrom}`, { entries: rest, tipSeq }, rest.length * WALK_ENTRY_BYTES_ESTIMATE);
        break;
      }
      const { batch, header } = await this.batchAt(entry.loc);
      const start = w.pos;
      writeBatchHeader(w, {
        fromVersion: BigInt(batch.fromVersion),
        toVersion: BigInt(batch.toVersion),
        shard: this.id,
        seq: BigInt(batch.seq),
        clientId: header.clientId,
        serverTimestampMs: header.timestampMs,
        eventCount: 0,
      });
      const evCountAt = w.pos - 4;
      let n = 0;
      const r = new Reader(batch.events);
      for (let i = 0; i < batch.eventCount; i++) {
        const at = r.pos;
        skipEvent(r);
        const version = batch.fromVersion + i;
        if (version < from || version > to) continue;
        if (types !== null && !types.has(eventType(batch.events, at))) continue;
        w.u64(BigInt(version));
        w.bytes(batch.events.subarray(at, r.pos));
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
  private async walkBack(loc: BatchLoc | null, stop: (e: WalkEntry) => boolean): Promise<WalkEntry[]> {
    const out: WalkEntry[] = [];
    while (loc !== null) {
      const { batch } = await this.batchAt(loc);
      const e: WalkEntry = { loc, fromVersion: batch.fromVersion, toVersion: batch.toVersion, seq: batch.seq };
      if (stop(e)) break;
      out.push(e);
      loc = batch.prev;
    }
    return out.reverse();
  }

  private async details(body: Uint8Array): Promise<ShardResult> {
    const key = decodeKeyTrusted(body);
    const s = await this.getState(key);
    if (s.cVersion === 0) return err(ErrorCode.AggregateNotFound, `aggregate ${describeKey(key)} does not exist`);
    return {
      op: Op.DetailsOk,
      body: encodeDetailsOk({
        version: BigInt(s.cVersion),
        minVersion: BigInt(s.minVersion),
        shard: this.id,
        lastSeq: BigInt(s.cSeq),
        lastClientId: s.cClientId,
        lastServerTimestampMs: s.cTimestampMs,
        deleted: false,
      }),
    };
  }

  async close(): Promise<void> {
    if (this.idleTimer) clearTimeout(this.idleTimer);
    while (this.committing) await new Promise((r) => setTimeout(r, 1));
    if (this.syncingHeader) await this.syncingHeader;
    if (this.state === 'serving' && this.log?.headerBehind) await this.log.syncHeader();
    await this.log?.close();
  }
}

const td = new TextDecoder();
function eventType(events: Uint8Array, at: number): string {
  const len = events[at + 1]!;
  return td.decode(events.subarray(at + 2, at + 2 + len));
}

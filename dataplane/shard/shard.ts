// One shard: the semantics of SPEC §3–§4 on top of its log. Runs on the worker thread that owns
// the shard and nowhere else, so its state needs no locks: every check-and-place below runs in one
// synchronous section, and awaits only happen before it (cold loads) or after it (durability and
// commit).
//
// Three watermarks, placed ≥ durable ≥ committed (asserted after every change):
//   placed    — records reserved in the log; guards and exactly-once floors see these;
//   durable   — fdatasync'd locally (the log's group commit);
//   committed — passed the commit step after the fdatasync (standalone: nothing more; a cluster:
//               the follower has them too, or S3 does). Reads, details, cold state loads, the 2002
//               answer and acknowledgements see only committed records.
import { Writer, Expect, Op, encodeControlOk } from '../../client/wire.ts';
import { ErrorCode } from '../../client/errors.ts';
import { BARRIER_RIDE_WAIT_MAX_MS, COLD_LOADS_MAX, FEED_TAIL_SHARE, HEADER_CATCH_UP_IDLE_MS, READ_AHEAD_SHARE, RECENT_CACHE_SHARE, SHARD_QUEUE_WRITES_MAX, STATE_ENTRY_BYTES_ESTIMATE, STATE_LOAD_ATTEMPTS_MAX } from '../constants.ts';
import { isDiskFull } from '../storage/disk.ts';
import { Lru } from '../storage/lru.ts';
import { BATCH_DELETED, BATCH_RECREATABLE, BatchOp, RECORD_FORMAT, batchesOf, checkRecord, encodeRecord, keysOf, recordHash, recordSize, relocateRecord, type BatchInput, type BatchView, type RecordHeader } from '../storage/record.ts';
import { equalBytes, ZERO_HASH } from '../storage/checksum.ts';
import { CorruptionError, DiskFullError, FormatError, GroupWriteError, ShardLog, type RecordAt, type ShardLogOptions } from '../storage/shard-log.ts';
import type { ShardState } from '../server/status.ts';
import { keyString, newState, setFloor, type AggState, type BatchLoc } from './state.ts';
import { decodeDeleteTrusted, decodeTrimTrusted, decodeWriteTrusted, describeKey, type TrustedWrite } from './requests.ts';
import { wireToDisk } from './events.ts';
import { details, readPage, type ReadAheadCache, type ReadContext } from './reads.ts';
import { readShardPage, type FeedContext } from './feed.ts';
import { FeedTail } from './feed-tail.ts';
import { err, Refusal, type ShardResult } from './results.ts';

/**
 * What "committed" requires after the local fdatasync. Called once per group commit, in seq
 * order, with the group's seq range; the promise resolves when those records are committed (for
 * a cluster: the follower fdatasync'd them, or they are in S3) and rejects when they cannot be.
 * Standalone has none: records commit at their fdatasync.
 */
export interface CommitStep {
  /** `records`: the group's encoded records when the shard still holds them (empty for a tail kept over a restart). */
  commit(fromSeq: number, toSeq: number, records: readonly Uint8Array[]): Promise<void>;
  /**
   * Optional early hand-off (a leader's shard): the group `records` (seq order) is about to be
   * written here; the cluster may stream it to the follower now, so both fdatasyncs overlap. Its
   * `commit` follows after the local fdatasync as always; nothing commits on this call. Once a
   * group was handed off, a failure to write it is never answered "not stored" (the follower may
   * hold it): the shard stops writes and the outcome is unknown.
   */
  send?(records: readonly Uint8Array[]): void;
}

/** Why a replica refused replicated records (the leader re-syncs from the replica's tip). */
export class ReplicaRejectError extends Error {
  override name = 'ReplicaRejectError';
  readonly reason: 'gap' | 'diverged' | 'invalid' | 'busy';
  readonly placedSeq: number;
  constructor(message: string, reason: 'gap' | 'diverged' | 'invalid' | 'busy', placedSeq: number) {
    super(message);
    this.reason = reason;
    this.placedSeq = placedSeq;
  }
}

/** A replica's position, for the leader's handshake. */
export interface ShardTip {
  placedSeq: number;
  durableSeq: number;
  committedSeq: number;
  barrierSeq: number;
  /** Hash of the record ending at durableSeq (zeros for an empty shard). */
  tipHash: Uint8Array;
}

export interface ShardOptions extends Omit<ShardLogOptions, 'ackAtDurable'> {
  /** This shard's share of the node's memory budget. */
  memoryBudgetBytes: number;
  /** The writing node's id (16 bytes, a UUID), carried by every record it writes. */
  nodeId: Uint8Array;
  /** The writer's epoch, carried by every record (0 standalone). */
  epoch?: number;
  commitStep?: CommitStep;
  /** Open as a replica (a cluster node starts so; the cluster makes it leader). Needs a commit step. */
  replica?: boolean;
}

export type { ShardResult } from './results.ts';

interface CachedRecord {
  bytes: Uint8Array;
  header: RecordHeader;
}

interface Waiter {
  lastSeq: number;
  done: () => void;
  fail: (e: Error) => void;
}

/** Thrown when the three watermarks are out of order: a bug, and the shard stops rather than serve on. */
export class WatermarkError extends Error {
  override name = 'WatermarkError';
}

export interface FsyncSample {
  seconds: number;
  records: number;
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
  private readAhead: ReadAheadCache;
  /** The read side's view of this shard (reads.ts). */
  private readonly readSide: ReadContext;
  private readonly feedSide: FeedContext;
  /** Feed readers at the tail waiting for the committed seq to reach `seq` (long poll); at most FEED_WAITERS_PER_SHARD_MAX. */
  private tailWaiters: { seq: number; done: () => void }[] = [];
  /** The records placed most recently, by seq: the shard feed's live tail from memory (feed-tail.ts). */
  private readonly feedTail: FeedTail;
  private readonly loading = new Map<string, Promise<AggState>>();
  private coldInFlight = 0;
  private readonly coldWaiters: (() => void)[] = [];
  private waiters: Waiter[] = [];
  private committing = false;
  private cancelIdle: (() => void) | null = null;
  private syncingHeader: Promise<void> | null = null;
  private readonly responseWriter = new Writer(1024);
  /** The committed watermark. */
  committedSeq = 0;
  /** Commit steps in flight resolve in seq order through this chain. */
  private commitChain: Promise<void> = Promise.resolve();
  private durableSent = 0;
  /** Set after a failed fdatasync or commit step: no more writes on this shard, reads go on. */
  private writesStopped: string | null = null;
  /** A truncateAfter is running: writes wait it out (2012). */
  private truncating = false;
  /**
   * States cold-loaded while durable batches of their aggregate were not committed yet (a tail
   * kept over a restart): their committed view is older than what the disk will hold once that
   * tail commits. Dropped from the cache (or left to their pending writes) when it does.
   */
  private readonly behindTail = new Set<string>();
  private closing = false;
  /** The running (or last) group-commit loop; close() waits for it. */
  private loopDone: Promise<void> = Promise.resolve();
  /** Resolves when the running truncateAfter (if any) has finished. */
  private truncationDone: Promise<void> = Promise.resolve();
  /** writesStopped came from a failed commit step (a truncateAfter that removes the hole lifts it), not from a failed fdatasync. */
  private stoppedByCommit = false;
  /** Bumped by truncateAfter: commit-step results of an older log are ignored. */
  private generation = 0;
  /** Bumped when a commit step fails: the links queued after the hole are ignored (becomeLeader re-sends the tail under the new value). */
  private commitRun = 0;
  /** The group being written was handed to the commit step's `send` (a failure of it is then never "not stored"). */
  private groupSent = false;
  /** Samples for metrics, drained by the worker. */
  fsyncSamples: FsyncSample[] = [];
  /**
   * Replica mode (a cluster node that is not the leader): records arrive through
   * applyReplicated, become durable with the same group commit, and commit when the leader says
   * (commitTo); the commit step does not run. Cluster nodes start as replicas.
   */
  private replica: boolean;
  /** The epoch new records carry. */
  private epoch: number;
  /** Replicated records not yet durable: their keys' cached states are dropped once they are. */
  private replicaKeys: { lastSeq: number; keys: string[] }[] = [];
  /** Keys whose cold load was in flight when a replicated record of theirs became durable: that load retries. */
  private readonly staleLoads = new Set<string>();
  private durableWaiters: Waiter[] = [];
  /** Group records the commit step has not been handed yet, in seq order (leader role). */
  private unsent: { lastSeq: number; bytes: Uint8Array }[] = [];

  private constructor(opts: ShardOptions) {
    this.opts = opts;
    this.id = opts.shard;
    this.replica = opts.replica === true && opts.commitStep !== undefined;
    this.epoch = opts.epoch ?? 0;
    const recentBytes = Math.floor(opts.memoryBudgetBytes * RECENT_CACHE_SHARE);
    const readAheadBytes = Math.floor(opts.memoryBudgetBytes * READ_AHEAD_SHARE);
    const feedTailBytes = Math.floor(opts.memoryBudgetBytes * FEED_TAIL_SHARE);
    this.feedTail = new FeedTail(Math.max(64 * 1024, feedTailBytes));
    const stateEntries = Math.max(16, Math.floor((opts.memoryBudgetBytes - recentBytes - readAheadBytes - feedTailBytes) / STATE_ENTRY_BYTES_ESTIMATE));
    this.readAhead = new Lru(Math.max(64 * 1024, readAheadBytes));
    // eslint-disable-next-line @typescript-eslint/no-this-alias -- the feed's getters read live fields
    const shard = this;
    this.readSide = {
      id: this.id,
      readAhead: this.readAhead,
      getState: (key) => this.getState(key),
      batchAt: (loc) => this.batchAt(loc),
      locBySeq: (seq) => this.locBySeq(seq),
    };
    this.feedSide = {
      id: this.id,
      numShards: opts.numShards,
      get committedSeq() {
        return shard.committedSeq;
      },
      get feedWaiters() {
        return shard.tailWaiters.length;
      },
      readCommitted: (from, maxBytes) => this.readCommitted(from, maxBytes),
      waitCommitted: (seq, ms) => this.waitCommitted(seq, ms),
      sleep: (ms) => new Promise<void>((resolve) => void this.opts.clock.after(ms, resolve)),
    };
    this.states = new Lru<string, AggState>(stateEntries, (s) => s.pending > 0);
    this.recent = new Lru<string, CachedRecord>(Math.max(64 * 1024, recentBytes));
  }

  /** Opens the shard. Corruption does not throw: the shard comes up 'corrupt' and refuses requests. */
  static async open(opts: ShardOptions): Promise<Shard> {
    const s = new Shard(opts);
    try {
      s.log = await ShardLog.open(s.logOptions());
      s.committedSeq = s.opts.commitStep === undefined ? s.log.durableSeq : s.log.barrierSeq;
      // A durable tail above the barrier (kept from before a restart) has not been through the
      // commit step: the next group's commit covers it too.
      s.durableSent = s.committedSeq;
      s.checkWatermarks();
      s.state = 'serving';
    } catch (e) {
      if (isDiskFull(e)) {
        // Nothing to serve from and no room to start: refuse to start rather than come up broken.
        throw new DiskFullError(`shard ${opts.shard}: the disk is full: no room to create its first segment in ${opts.dir} (${(e as Error).message}); free some space and start again`);
      }
      s.state = e instanceof CorruptionError || e instanceof FormatError ? 'corrupt' : 'failed';
      s.reason = (e as Error).message;
      opts.log(`shard ${opts.shard} is not served: ${s.reason}`);
    }
    return s;
  }

  private logOptions(): ShardLogOptions {
    return { ...this.opts, ackAtDurable: this.opts.commitStep === undefined };
  }

  /** Placed watermark: the last seq reserved in the log. */
  get placedSeq(): number {
    return this.log ? this.log.placedSeq : 0;
  }
  /** Durable watermark: the last seq fdatasync'd. */
  get durableSeq(): number {
    return this.log?.durableSeq ?? 0;
  }
  get writeSeq(): number {
    return this.durableSeq;
  }
  get commitSeq(): number {
    return this.committedSeq;
  }

  /** placed ≥ durable ≥ committed, always; a violation stops the shard. */
  private checkWatermarks(): void {
    const p = this.placedSeq;
    const d = this.durableSeq;
    const c = this.committedSeq;
    if (!(p >= d && d >= c && c >= 0)) throw new WatermarkError(`shard ${this.id}: watermarks out of order: placed ${p}, durable ${d}, committed ${c}`);
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
        case Op.Delete:
        case Op.Trim: {
          if (this.replica) return err(ErrorCode.NotLeader, `shard ${this.id} is a replica: this node is not the leader`);
          if (this.closing) return err(ErrorCode.ShardUnavailable, `shard ${this.id} is shutting down`, { shard: this.id });
          if (this.truncating) return err(ErrorCode.ServerBusy, `shard ${this.id} is rewinding its log; retry`);
          if (this.writesStopped !== null) {
            return err(ErrorCode.StorageFailed, `shard ${this.id} takes no more writes: ${this.writesStopped}; reads of committed data go on; restart the node to recover from the log`, { shard: this.id, diskFull: false });
          }
          // Deletes and trims are one-aggregate writes without events (requests.ts).
          return await this.write(op === Op.Write ? decodeWriteTrusted(body) : op === Op.Delete ? decodeDeleteTrusted(body) : decodeTrimTrusted(body));
        }
        case Op.Read:
          return await readPage(this.readSide, body);
        case Op.Details:
          return await details(this.readSide, body);
        case Op.ReadShard:
          return await readShardPage(this.feedSide, body);
        default:
          return err(ErrorCode.BadRequest, `operation ${op} is not served by a shard`);
      }
    } catch (e) {
      if (e instanceof Refusal) return e.result;
      if (e instanceof CorruptionError || e instanceof WatermarkError) {
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
    if (this.replica) return err(ErrorCode.NotLeader, `shard ${this.id} is a replica: this node is not the leader`);
    if (this.state !== 'serving') return err(ErrorCode.ShardUnavailable, `shard ${this.id} is not being served (${this.state}): ${this.reason ?? ''}`);
    if (this.writesStopped !== null) return err(ErrorCode.StorageFailed, `shard ${this.id} takes no more writes: ${this.writesStopped}`, { shard: this.id, diskFull: false });
    // A truncation reopened the log while this write loaded its states: start over.
    if (this.log !== log || this.truncating) return err(ErrorCode.ServerBusy, `shard ${this.id} is rewinding its log; retry`);
    for (let i = 0; i < req.writes.length; i++) {
      const guard = this.checkGuard(req.writes[i]!, states[i]!) ?? this.checkLife(req.writes[i]!, states[i]!, req.clientId);
      if (guard) return guard;
    }
    const control = req.writes[0]!.control;
    if (control !== undefined) {
      const s = states[0]!;
      const unchanged = control.op === 'delete' ? (s.pFlags & BATCH_DELETED) !== 0 : control.keepFrom <= s.pMinVersion;
      // Already so (a retried delete, a trim below an earlier one): nothing to write, once what made it so is committed.
      if (unchanged) return this.controlUnchanged(s, control.op);
    }
    for (let i = 0; i < req.writes.length; i++) {
      const w = req.writes[i]!;
      const s = states[i]!;
      if (w.clientSeq > 0n) {
        const f = s.floors.get(req.clientId);
        if (f !== undefined && w.clientSeq <= f.seq) {
          const detail = { lastClientSeq: f.seq.toString(), attemptedClientSeq: w.clientSeq.toString() };
          if (f.atSeq > this.committedSeq) {
            return err(ErrorCode.DuplicateInFlight, `clientSeq ${w.clientSeq} of this client on ${describeKey(w.key)} is still being written (last ${f.seq}); retry later`, detail);
          }
          return err(ErrorCode.AlreadyApplied, `clientSeq ${w.clientSeq} of this client on ${describeKey(w.key)} was already applied (last ${f.seq})`, detail);
        }
      }
    }
    const batches: BatchInput[] = req.writes.map((w, i) => {
      const s = states[i]!;
      const ev = wireToDisk(w.events, w.eventCount);
      const c = w.control;
      return {
        key: w.key,
        fromVersion: s.version + 1,
        clientSeq: w.clientSeq,
        eventCount: w.eventCount,
        prevSeq: s.lastSeq,
        eventsBytes: ev.size,
        writeEvents: ev.write,
        // A write to a deleted aggregate that may be recreated recreates it, from after the tombstone.
        op: c === undefined ? BatchOp.Write : c.op === 'delete' ? BatchOp.Delete : BatchOp.Trim,
        flags: c === undefined ? 0 : c.op === 'delete' ? BATCH_DELETED | (c.allowRecreate ? BATCH_RECREATABLE : 0) : s.pFlags,
        minVersion: c === undefined ? s.pMinVersion : c.op === 'delete' ? s.version + 1 : c.keepFrom,
      };
    });
    const len = recordSize(batches);
    if (len > log.recordBytesMax) {
      return err(ErrorCode.BadRequest, `this write needs a ${len}-byte record; a record must fit in one segment (at most ${log.recordBytesMax} bytes with --segment-mb ${log.opts.segmentBytes / 1048576}); split it or use larger segments`);
    }
    let place: ReturnType<ShardLog['reserve']>;
    try {
      place = log.reserve(len);
    } catch (e) {
      if (e instanceof DiskFullError) return err(ErrorCode.StorageFailed, e.message, { shard: this.id, diskFull: true });
      throw e;
    }
    const ts = this.opts.clock.nowMs();
    const bytes = encodeRecord({
      shard: this.id,
      firstSeq: place.firstSeq,
      epoch: this.epoch,
      nodeId: this.opts.nodeId,
      vouchedEnd: place.vouchedEnd,
      timestampMs: ts,
      prevHash: place.prevHash,
      clientId: req.clientId,
      batches,
    });
    log.commitPlacement(bytes, batches.map((b) => b.key), batches.length);
    const header: RecordHeader = {
      length: len,
      format: RECORD_FORMAT,
      vouchedEnd: place.vouchedEnd,
      batchCount: batches.length,
      shard: this.id,
      firstSeq: place.firstSeq,
      epoch: this.epoch,
      timestampMs: ts,
      nodeId: this.opts.nodeId,
      prevHash: place.prevHash,
      clientId: req.clientId,
    };
    this.feedTail.placed({ bytes, header, segment: place.segment, offset: place.offset });
    const lastSeq = place.firstSeq + batches.length - 1;
    if (this.opts.commitStep !== undefined) this.unsent.push({ lastSeq, bytes });
    for (let i = 0; i < batches.length; i++) {
      const s = states[i]!;
      const wr = req.writes[i]!;
      s.version += wr.eventCount;
      s.lastSeq = place.firstSeq + i;
      s.pMinVersion = batches[i]!.minVersion!;
      s.pFlags = batches[i]!.flags!;
      s.pending++;
      if (wr.clientSeq > 0n) setFloor(s, req.clientId, { seq: wr.clientSeq, atSeq: place.firstSeq + i }, this.committedSeq);
    }
    // ---- end of the synchronous section ----
    try {
      await this.committed(lastSeq);
    } finally {
      for (const s of states) s.pending--;
    }
    this.recent.set(`${place.segment}:${place.offset}`, { bytes, header }, len);
    const ok = this.responseWriter;
    ok.pos = 0;
    ok.u32(this.id);
    ok.u64n(place.firstSeq);
    ok.u16(batches.length);
    for (let i = 0; i < batches.length; i++) {
      const s = states[i]!;
      const b = batches[i]!;
      const seq = place.firstSeq + i;
      if (seq > s.cSeq) {
        s.cVersion = b.fromVersion + b.eventCount - 1;
        s.cLoc = { segment: place.segment, offset: place.offset, index: i };
        s.cSeq = seq;
        s.cClientId = req.clientId;
        s.cTimestampMs = ts;
        s.minVersion = b.minVersion!;
        s.cFlags = b.flags!;
      }
      ok.u64n(b.fromVersion);
      ok.u64n(b.fromVersion + b.eventCount - 1);
    }
    if (control !== undefined) {
      const b = batches[0]!;
      const body = encodeControlOk({ shard: this.id, seq: BigInt(place.firstSeq), version: BigInt(b.fromVersion - 1), minVersion: BigInt(b.minVersion!), unchanged: false });
      return { op: control.op === 'delete' ? Op.DeleteOk : Op.TrimOk, body };
    }
    // Same bytes as encodeWriteOk (client/wire.ts), written without intermediate objects.
    return { op: Op.WriteOk, body: ok.buf.slice(0, ok.pos) };
  }

  /** Deletes and trims: refusals by the aggregate's life (write-ahead view); writes to a deleted aggregate. */
  private checkLife(w: TrustedWrite['writes'][number], s: AggState, clientId: bigint): ShardResult | null {
    const deleted = (s.pFlags & BATCH_DELETED) !== 0;
    const c = w.control;
    if (c === undefined) {
      if (deleted && (s.pFlags & BATCH_RECREATABLE) === 0) {
        // A retry of a write that landed before the delete: its floor answers (2002/2013) below.
        const f = w.clientSeq > 0n ? s.floors.get(clientId) : undefined;
        if (f !== undefined && w.clientSeq <= f.seq) return null;
        return err(ErrorCode.AggregateNotFound, `aggregate ${describeKey(w.key)} was deleted at version ${s.version} without allowRecreate: it cannot be written again; use another key, or delete with allowRecreate`, { deleted: true, version: String(s.version) });
      }
      return null;
    }
    if (s.version === 0) return err(ErrorCode.AggregateNotFound, `aggregate ${describeKey(w.key)} does not exist: there is nothing to ${c.op}`);
    if (c.op === 'trim') {
      if (deleted) return err(ErrorCode.AggregateNotFound, `aggregate ${describeKey(w.key)} was deleted at version ${s.version}: there is nothing to trim`, { deleted: true, version: String(s.version) });
      if (c.keepFrom > s.version + 1) {
        return err(ErrorCode.BadRequest, `cannot keep ${describeKey(w.key)} from version ${c.keepFrom}: its version is ${s.version}, so at most ${s.version + 1} (which trims everything)`, { version: String(s.version) });
      }
    }
    return null;
  }

  /** The answer to a delete or trim that changes nothing, once the batch that made it so is committed. */
  private async controlUnchanged(s: AggState, op: 'delete' | 'trim'): Promise<ShardResult> {
    const seq = s.lastSeq;
    const version = s.version;
    const minVersion = s.pMinVersion;
    if (seq > this.committedSeq) await this.committed(seq);
    const body = encodeControlOk({ shard: this.id, seq: BigInt(seq), version: BigInt(version), minVersion: BigInt(minVersion), unchanged: true });
    return { op: op === 'delete' ? Op.DeleteOk : Op.TrimOk, body };
  }

  private checkGuard(w: TrustedWrite['writes'][number], s: AggState): ShardResult | null {
    const v = s.version;
    let ok: boolean;
    let expected: string;
    switch (w.expectMode) {
      case Expect.Any:
        return null;
      // A deleted aggregate does not exist (its version goes on: versions never rewind).
      case Expect.NoStream:
        ok = v === 0 || (s.pFlags & BATCH_DELETED) !== 0;
        expected = 'no_stream (the aggregate must not exist)';
        break;
      case Expect.StreamExists:
        ok = v > 0 && (s.pFlags & BATCH_DELETED) === 0;
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

  /** Resolves once every record up to `lastSeq` is committed (and its ack barrier durable); starts a group commit if none runs. */
  private committed(lastSeq: number): Promise<void> {
    return new Promise<void>((done, fail) => {
      if (this.state !== 'serving' || this.writesStopped !== null) {
        fail(new Refusal(err(ErrorCode.ShardUnavailable, `shard ${this.id} stopped serving: ${this.reason ?? this.writesStopped ?? ''}`)));
        return;
      }
      this.waiters.push({ lastSeq, done, fail });
      if (!this.committing) this.loopDone = this.commitLoop();
    });
  }

  private async commitLoop(): Promise<void> {
    const log = this.log!;
    this.committing = true;
    this.cancelIdle?.();
    this.cancelIdle = null;
    try {
      // An idle header catch-up may still be writing; the log does one write at a time.
      if (this.syncingHeader) await this.syncingHeader;
      while (log.queuedRecords > 0 && this.state === 'serving' && this.writesStopped === null) {
        const t0 = this.opts.clock.monoMs();
        this.groupSent = false;
        const durableSeq = await log.flush(this.sendEarly);
        if (durableSeq === null) break;
        const flushMs = this.opts.clock.monoMs() - t0;
        this.fsyncSamples.push({ seconds: flushMs / 1000, records: durableSeq - this.durableSent });
        if (this.fsyncSamples.length > 1000) this.fsyncSamples.splice(0, this.fsyncSamples.length - 1000);
        const chain = this.commitChain;
        this.afterDurable(durableSeq);
        this.releaseWaiters();
        // A leader: the follower's answer for this group (the chain's new link, which settles once
        // the barrier is set) is usually a round trip away. Waiting for it (at most as long as the
        // flush took) lets the next write carry the ack barrier; not waiting means that write goes
        // without it and the acknowledgements wait for a third.
        if (this.commitChain !== chain && log.queuedRecords > 0) await this.within(this.commitChain, Math.min(flushMs, BARRIER_RIDE_WAIT_MAX_MS));
      }
    } catch (e) {
      if (e instanceof DiskFullError) {
        // The next segment could not be made, before anything of the group was written: refuse the
        // queued writes as not stored, put the log back at its durable end, forget their state.
        this.rewindToDurable(e.message, e.diskFull);
      } else if (e instanceof GroupWriteError && isDiskFull(e.cause) && !this.groupSent && (await this.eraseFailedGroup())) {
        // The disk took part of the group, then ran out of space; those bytes are zeroed and synced
        // now, so the writes were not stored and later ones may go on.
        this.rewindToDurable(`the disk is full (${(e.cause as Error).message}); writes resume by themselves once space is freed`, true);
      } else {
        // After a failed fdatasync the kernel may have dropped the dirty data: nothing placed
        // since the last good fsync can be trusted, and retrying the fsync cannot tell (fsyncgate).
        // Writes stop on this shard; committed data stays readable.
        this.stopWrites(`a write to disk failed (${(e as Error).message}); writes not yet acknowledged may or may not be stored`);
        // Even when a failed commit step stopped writes first: a failed write is not lifted by a rewind or a role change.
        this.stoppedByCommit = false;
      }
    } finally {
      this.committing = false;
    }
    // A failed commit step stopped writes with groups still queued (the loop waits for a group's
    // commit before it writes the next): their writes were answered 2007 and nothing of them was
    // written or handed over. Forget them, or the rewind (truncateAfter) and a later becomeLeader
    // refuse for records in flight, and a replica's appends would link to them.
    if (this.stoppedByCommit && this.log === log && log.queuedRecords > 0) this.dropQueuedAfterCommitStop();
    if (this.state === 'serving' && this.writesStopped === null && log.headerBehind) {
      this.cancelIdle = this.opts.clock.after(this.opts.commitStep === undefined ? HEADER_CATCH_UP_IDLE_MS : 0, () => {
        this.cancelIdle = null;
        if (this.committing || this.truncating || this.log !== log || this.state !== 'serving' || this.writesStopped !== null) return;
        this.syncingHeader = log
          .syncHeader()
          .then(() => this.releaseWaiters())
          .catch((e: Error) => this.stopWrites(`a header write failed (${e.message})`))
          .finally(() => (this.syncingHeader = null));
      });
    }
  }

  /** Resolves when `p` settles or after `ms` of the shard's clock, whichever comes first. */
  private within(p: Promise<void>, ms: number): Promise<void> {
    if (ms <= 0) return Promise.resolve();
    return new Promise<void>((done) => {
      const cancel = this.opts.clock.after(ms, done);
      void p.then(
        () => (cancel(), done()),
        () => (cancel(), done()),
      );
    });
  }

  /** Called by the log just before a group's write: a leader hands the group to the commit step's `send`. */
  private readonly sendEarly = (lastSeq: number): void => {
    const step = this.opts.commitStep;
    if (step?.send === undefined || this.replica) return;
    // The group is the head of `unsent` (an earlier group left it when it became durable).
    const records: Uint8Array[] = [];
    for (const u of this.unsent) {
      if (u.lastSeq > lastSeq) break;
      records.push(u.bytes);
    }
    if (records.length === 0) return;
    this.groupSent = true;
    try {
      step.send(records);
    } catch (e) {
      // The commit after the fdatasync still runs (and streams it); nothing is lost here.
      this.opts.log(`shard ${this.id}: handing a group to the replication early failed (${(e as Error).message})`);
    }
  };

  /** A group became durable: run the commit step (standalone: none) in seq order. */
  private afterDurable(durableSeq: number): void {
    const from = this.durableSent + 1;
    this.durableSent = durableSeq;
    const step = this.opts.commitStep;
    if (step === undefined) {
      this.advanceCommitted(durableSeq);
      return;
    }
    if (this.replica) {
      // Writes placed while this shard still led, and durable only now that it follows: they
      // never reach the commit step; their outcome is unknown (the tail is rewound).
      if (this.waiters.length > 0) this.failWaitersAbove(this.committedSeq, new Error('this node stopped leading before the write was replicated'));
      this.unsent = [];
      this.replicaDurable(durableSeq);
      return;
    }
    let n = 0;
    while (n < this.unsent.length && this.unsent[n]!.lastSeq <= durableSeq) n++;
    const records = this.unsent.splice(0, n).map((u) => u.bytes);
    const gen = this.generation;
    const run = this.commitRun;
    // Settled at once (a rejection is a value here, never an unhandled one), applied in seq order.
    const settled = step.commit(from, durableSeq, records).then(
      () => null,
      (e: unknown) => (e instanceof Error ? e : new Error(String(e))),
    );
    this.commitChain = this.commitChain.then(async () => {
      const failure = await settled;
      if (gen !== this.generation || this.state !== 'serving') return;
      // An earlier range failed: nothing after it commits, whatever its own step answered (an S3
      // upload of a later group can land while an earlier one never does), in either role.
      if (run !== this.commitRun || this.writesStopped !== null) return;
      if (failure !== null) {
        this.commitRun++;
        // A hole: these records are durable here but not committed, and nothing after them may
        // commit past them. Writes stop (like after a failed fdatasync); the cluster layer decides
        // what becomes of the tail (truncateAfter, or a commit on promotion). A shard that has
        // become a replica meanwhile takes no writes anyway: its waiters fail, nothing stops.
        this.failWaitersAbove(this.committedSeq, failure);
        if (this.replica) return;
        this.stoppedByCommit = true;
        this.stopWrites(`the commit step failed for seqs ${from}..${durableSeq} (${failure.message})`, ErrorCode.NotAcknowledged);
        return;
      }
      try {
        this.advanceCommitted(durableSeq);
        this.log!.setAcked(this.committedSeq);
      } catch (e) {
        this.fail('corrupt', (e as Error).message);
        return;
      }
      // The barrier must be durable before the acks: a header write, with the next group or alone.
      if (!this.committing && !this.closing) this.loopDone = this.commitLoop();
    });
  }

  private advanceCommitted(seq: number): void {
    if (seq > this.committedSeq) this.committedSeq = seq;
    this.checkWatermarks();
    if (this.tailWaiters.length > 0) this.releaseTailWaiters(false);
    if (this.behindTail.size > 0) {
      for (const ks of this.behindTail) {
        const st = this.states.peek(ks);
        if (st === undefined) this.behindTail.delete(ks);
        else if (st.lastSeq <= this.committedSeq && st.pending === 0) {
          // Its newest durable batch is committed now: reload the committed view from the log.
          this.states.delete(ks);
          this.behindTail.delete(ks);
        }
      }
    }
  }

  /** Waits until the committed seq reaches `seq`, for at most `ms` (a feed reader's long poll). */
  private waitCommitted(seq: number, ms: number): Promise<void> {
    if (seq <= this.committedSeq || this.closing || this.state !== 'serving') return Promise.resolve();
    return new Promise<void>((resolve) => {
      const cancel = this.opts.clock.after(ms, () => {
        const i = this.tailWaiters.indexOf(w);
        if (i >= 0) this.tailWaiters.splice(i, 1);
        resolve();
      });
      const w = {
        seq,
        done: () => {
          cancel();
          resolve();
        },
      };
      this.tailWaiters.push(w);
    });
  }

  /** Wakes the feed readers whose seq is committed now (all of them when `all`: the shard stops). */
  private releaseTailWaiters(all: boolean): void {
    const keep: typeof this.tailWaiters = [];
    const wake: typeof this.tailWaiters = [];
    for (const w of this.tailWaiters) (all || w.seq <= this.committedSeq ? wake : keep).push(w);
    this.tailWaiters = keep;
    for (const w of wake) w.done();
  }

  /** Acknowledges every waiter whose records are committed and covered by a durable ack barrier. */
  private releaseWaiters(): void {
    const limit = this.opts.commitStep === undefined ? this.committedSeq : Math.min(this.committedSeq, this.log!.barrierDurableSeq);
    let n = 0;
    while (n < this.waiters.length && this.waiters[n]!.lastSeq <= limit) n++;
    if (n === 0) return;
    const done = this.waiters.splice(0, n);
    for (const w of done) w.done();
  }

  /** The commit step failed: those writes are not acknowledged (2007: outcome unknown). */
  private failWaitersAbove(seq: number, e: Error): void {
    const keep: Waiter[] = [];
    for (const w of this.waiters) {
      if (w.lastSeq <= seq) keep.push(w);
      else w.fail(new Refusal(err(ErrorCode.NotAcknowledged, `shard ${this.id}: not acknowledged: ${e.message}; the outcome is unknown, retry with the same clientSeq`)));
    }
    this.waiters = keep;
  }

  /** Zeroes what a failed group left after the durable end; false when even that fails. */
  private async eraseFailedGroup(): Promise<boolean> {
    try {
      await this.log!.eraseUndurable();
      return true;
    } catch (e) {
      this.opts.log(`shard ${this.id}: could not erase a failed group commit (${(e as Error).message})`);
      return false;
    }
  }

  /** Refuses every queued write with 2008 and puts the log and the state back at the durable end. */
  private rewindToDurable(why: string, diskFull: boolean): void {
    this.opts.log(`shard ${this.id}: refusing queued writes: ${why}`);
    this.discardQueued();
    this.replicaKeys = [];
    for (const w of this.durableWaiters.splice(0)) w.fail(new Refusal(err(ErrorCode.StorageFailed, `shard ${this.id}: replicated records were not stored: ${why}`, { shard: this.id, diskFull })));
    // Durable writes still waiting for their commit step stay: only what never reached the disk fails.
    const durable = this.log!.durableSeq;
    const waiters = this.waiters.filter((w) => w.lastSeq > durable);
    this.waiters = this.waiters.filter((w) => w.lastSeq <= durable);
    for (const w of waiters) w.fail(new Refusal(err(ErrorCode.StorageFailed, `shard ${this.id}: this write was not stored: ${why}`, { shard: this.id, diskFull })));
  }

  /** Queued (never written) records after writes stopped for a failed commit step: gone, like the writes' answers said may be. */
  private dropQueuedAfterCommitStop(): void {
    this.opts.log(`shard ${this.id}: dropping ${this.log!.queuedRecords} queued records after the failed commit step (never written)`);
    this.discardQueued();
    this.failWaitersAbove(this.log!.durableSeq, new Error('an earlier group was not committed'));
  }

  /** Puts the log back at its durable end (queued records never written) and drops the states placed ahead of it (they reload from disk). */
  private discardQueued(): void {
    const log = this.log!;
    log.discardQueued();
    this.feedTail.dropAbove(log.durableSeq);
    this.unsent = this.unsent.filter((u) => u.lastSeq <= log.durableSeq);
    this.states.clear();
    this.readAhead.clear();
  }

  private stopWrites(why: string, code: number = ErrorCode.StorageFailed): void {
    if (this.writesStopped === null) this.opts.log(`shard ${this.id} takes no more writes: ${why}; reads of committed data go on`);
    this.writesStopped ??= why;
    const waiters = this.waiters.concat(this.durableWaiters);
    this.waiters = [];
    this.durableWaiters = [];
    for (const w of waiters) w.fail(new Refusal(err(code, `shard ${this.id}: this write was not acknowledged: ${why}; restart the node to recover from the log`, { shard: this.id, diskFull: false })));
  }

  /** Why writes are refused on this shard, when they are (a failed fdatasync). */
  get writesRefused(): string | null {
    return this.writesStopped;
  }

  private fail(state: ShardState, reason: string): void {
    if (this.state === 'serving') this.opts.log(`shard ${this.id} stopped serving: ${reason}`);
    this.state = state;
    this.reason = reason;
    this.releaseTailWaiters(true);
    const waiters = this.waiters.concat(this.durableWaiters);
    this.waiters = [];
    this.durableWaiters = [];
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
    for (;;) {
      const s = await this.coldLoadOnce(ks, key);
      if (s !== null) return s;
      // What was read belongs to a log that truncateAfter replaced: read again from the new one.
      await this.truncationDone;
    }
  }

  /** One cold load; null when a truncateAfter replaced the log while it read. */
  private async coldLoadOnce(ks: string, key: Uint8Array): Promise<AggState | null> {
    await this.coldSlot();
    const gen = this.generation;
    const log = this.log!;
    // The committed seq this load reads against; if it moves while the load reads, load again.
    const cs = this.committedSeq;
    const replaced = (): boolean => gen !== this.generation || this.truncating || this.log !== log;
    try {
      let found: Awaited<ReturnType<ShardLog['findLatest']>>;
      let c: { loc: BatchLoc; batch: BatchView; header: RecordHeader } | null;
      try {
        found = await log.findLatest(key);
        // The committed view must not show a durable batch that is not committed yet (a
        // speculative tail kept from before a restart): walk back to the newest committed one.
        c = found ? { loc: { segment: found.segment, offset: found.offset, index: found.batch.index }, batch: found.batch, header: found.header } : null;
        while (c !== null && c.batch.seq > cs) {
          const prev = await this.locBySeq(c.batch.prevSeq, log);
          c = prev === null ? null : { loc: prev, ...(await this.batchAt(prev, log)) };
        }
      } catch (e) {
        // A truncateAfter replaced the log meanwhile: what was read may be gone; read again.
        if (replaced()) return null;
        throw e;
      }
      // Only a load that walked back over an uncommitted tail depends on the committed seq (a
      // load of an aggregate with nothing uncommitted is right whatever commits meanwhile).
      if (replaced() || (found !== null && found.batch.seq > cs && this.committedSeq !== cs)) return null;
      // A replicated record of this aggregate became durable while it loaded: load again.
      if (this.staleLoads.delete(ks)) return null;
      const present = this.states.peek(ks);
      if (present) return present;
      if (found !== null && found.batch.seq > cs) this.behindTail.add(ks);
      const s = newState(key);
      if (found) {
        s.version = found.batch.toVersion;
        s.lastSeq = found.batch.seq;
        s.pMinVersion = found.batch.minVersion;
        s.pFlags = found.batch.flags;
      }
      if (c !== null) {
        s.minVersion = c.batch.minVersion;
        s.cFlags = c.batch.flags;
        s.cVersion = c.batch.toVersion;
        s.cLoc = c.loc;
        s.cSeq = c.batch.seq;
        s.cClientId = c.header.clientId;
        s.cTimestampMs = c.header.timestampMs;
      }
      this.states.set(ks, s);
      return s;
    } finally {
      this.releaseColdSlot();
    }
  }

  /**
   * Finds this writer's highest clientSeq on the aggregate by walking its durable batches back
   * from the newest durable one (a durable batch not yet committed still counts: its retry is 2013).
   */
  private async loadFloor(s: AggState, clientId: bigint): Promise<void> {
    let floor = { seq: 0n, atSeq: 0 };
    await this.coldSlot();
    const gen = this.generation;
    const log = this.log!;
    const replaced = (): boolean => gen !== this.generation || this.truncating || this.log !== log;
    try {
      // From the newest durable batch of the aggregate: with writes of other clients still placed
      // (not durable, not readable yet) that is not lastSeq, and it may be above the committed
      // seq (a tail adopted by a new leader, whose retries must still find their floor).
      let seq = s.lastSeq;
      if (s.pending > 0) {
        const newest = await log.findLatest(s.key);
        seq = newest === null ? 0 : newest.batch.seq;
      }
      while (seq > 0) {
        const loc = await this.locBySeq(seq, log);
        if (loc === null) break;
        const { batch, header } = await this.batchAt(loc, log);
        if (header.clientId === clientId && batch.clientSeq > 0n) {
          floor = { seq: batch.clientSeq, atSeq: batch.seq };
          break;
        }
        seq = batch.prevSeq;
      }
    } catch (e) {
      // A truncateAfter replaced the log while this walked it: set nothing; the write loads again.
      if (replaced()) return;
      throw e;
    } finally {
      this.releaseColdSlot();
    }
    if (replaced()) return;
    if (!s.floors.has(clientId)) setFloor(s, clientId, floor, this.committedSeq);
  }

  /** Where the durable batch `seq` lies (null for 0 or a seq that is not durable). */
  private async locBySeq(seq: number, log: ShardLog = this.log!): Promise<BatchLoc | null> {
    if (seq === 0) return null;
    const at = await log.locate(seq);
    if (at === null) throw new CorruptionError(`shard ${this.id}: batch seq ${seq} is linked to but not in the log`);
    return { segment: at.segment, offset: at.offset, index: seq - at.firstSeq };
  }

  private async coldSlot(): Promise<void> {
    while (this.coldInFlight >= COLD_LOADS_MAX) await new Promise<void>((r) => this.coldWaiters.push(r));
    this.coldInFlight++;
  }

  private releaseColdSlot(): void {
    this.coldInFlight--;
    this.coldWaiters.shift()?.();
  }

  private async batchAt(loc: BatchLoc, log: ShardLog = this.log!): Promise<{ batch: BatchView; header: RecordHeader; record: Uint8Array }> {
    const id = `${loc.segment}:${loc.offset}`;
    let rec = this.recent.get(id);
    if (rec === undefined) {
      rec = await log.readRecord(loc.segment, loc.offset);
      // Not into the cache of a log that replaced this one meanwhile.
      if (log === this.log) this.recent.set(id, rec, rec.bytes.length);
    }
    for (const b of batchesOf(rec.bytes, rec.header)) if (b.index === loc.index) return { batch: b, header: rec.header, record: rec.bytes };
    throw new CorruptionError(`shard ${this.id}: record at segment ${loc.segment} offset ${loc.offset} has no batch ${loc.index}`);
  }

  /**
   * Durably removes the records after `seq` (a speculative tail; never at or below the ack
   * barrier: TruncateRefusedError), then reopens the log, so indexes, blooms, caches and
   * exactly-once floors are exactly as if those records had never been written. Writes must not
   * be in flight (the caller stops them first).
   */
  async truncateAfter(seq: number): Promise<void> {
    const log = this.log;
    if (log === null) throw new Error(`shard ${this.id} is not open`);
    if (this.truncating) throw new Error(`shard ${this.id}: a truncateAfter is already running`);
    this.truncating = true;
    let finished!: () => void;
    this.truncationDone = new Promise<void>((r) => (finished = r));
    try {
      // New writes are refused (2012) from here; wait out what is in flight.
      await this.commitChain;
      if (this.waiters.length > 0 || this.committing || log.queuedRecords > 0) throw new Error(`shard ${this.id}: truncateAfter needs writes to be stopped first`);
      this.cancelIdle?.();
      this.cancelIdle = null;
      if (this.syncingHeader) await this.syncingHeader;
      await log.truncateAfter(seq);
      this.feedTail.dropAbove(seq);
      this.generation++;
      this.unsent = [];
      this.replicaKeys = [];
      await log.close();
      this.states.clear();
      this.behindTail.clear();
      this.recent.clear();
      this.readAhead.clear();
      this.log = await ShardLog.open(this.logOptions());
      this.committedSeq = Math.min(this.committedSeq, this.log.durableSeq);
      this.durableSent = this.committedSeq;
      this.checkWatermarks();
      // The range whose commit failed is gone when the cut is at or below the committed seq.
      if (this.stoppedByCommit && this.log.durableSeq <= this.committedSeq) {
        this.writesStopped = null;
        this.stoppedByCommit = false;
      }
    } catch (e) {
      if (this.log === log && !(e instanceof Error && /truncateAfter needs|refusing to truncate|inside a record/.test(e.message))) this.fail('failed', `truncateAfter failed: ${(e as Error).message}`);
      throw e;
    } finally {
      this.truncating = false;
      finished();
    }
  }

  // -------------------------------------------------------------------------------------------
  // Cluster roles and replication (dataplane/cluster drives these)

  /** Where this shard's log stands, for the leader's handshake. */
  tip(): ShardTip {
    const log = this.log;
    if (log === null) return { placedSeq: 0, durableSeq: 0, committedSeq: 0, barrierSeq: 0, tipHash: ZERO_HASH };
    return { placedSeq: log.placedSeq, durableSeq: log.durableSeq, committedSeq: this.committedSeq, barrierSeq: log.barrierSeq, tipHash: log.tipHash };
  }

  /** Hash and writer's epoch of the durable record that ends at `seq` (zeros/0 for 0); null when no durable record ends there. */
  async recordAt(seq: number): Promise<{ hash: Uint8Array; epoch: number } | null> {
    const log = this.log;
    if (log === null) return null;
    if (seq === 0) return { hash: ZERO_HASH, epoch: 0 };
    if (seq > log.durableSeq) return null;
    const at = await log.locate(seq);
    if (at === null) return null;
    const rec = await log.readRecord(at.segment, at.offset);
    if (rec.header.firstSeq + rec.header.batchCount - 1 !== seq) return null;
    return { hash: recordHash(rec.bytes, rec.header.length), epoch: rec.header.epoch };
  }

  /** Durable records from the one holding `fromSeq` up to `toSeq`, about `maxBytes` (at least one). */
  async readDurable(fromSeq: number, toSeq: number, maxBytes: number): Promise<Uint8Array[]> {
    const log = this.log;
    if (log === null || fromSeq > Math.min(toSeq, log.durableSeq)) return [];
    return (await log.readFrom(fromSeq, Math.min(toSeq, log.durableSeq), maxBytes)).map((r) => r.bytes);
  }

  /**
   * Replica: appends records the leader wrote (exact bytes, so both nodes hold the same chain)
   * through the same group commit, and resolves with the durable seq once they are fdatasync'd.
   * A record that repeats one already held (same seq, same hash) is skipped. Refuses
   * (ReplicaRejectError) a record that leaves a gap, does not link to the local tip, or fails its
   * checks; nothing after a refused record is placed.
   */
  async applyReplicated(records: readonly Uint8Array[]): Promise<number> {
    const log = this.log;
    if (log === null || this.state !== 'serving') throw new ReplicaRejectError(`shard ${this.id} is not being served (${this.state})`, 'busy', 0);
    if (!this.replica) throw new ReplicaRejectError(`shard ${this.id} is not a replica`, 'busy', log.placedSeq);
    if (this.truncating) throw new ReplicaRejectError(`shard ${this.id} is rewinding its log`, 'busy', log.placedSeq);
    if (this.writesStopped !== null) throw new ReplicaRejectError(`shard ${this.id} takes no more writes: ${this.writesStopped}`, 'busy', log.placedSeq);
    let lastSeq = log.placedSeq;
    try {
      lastSeq = await this.placeReplicated(log, records);
    } catch (e) {
      // What was placed before the refusal still becomes durable (the leader resends after it).
      if (log.queuedRecords > 0 && !this.committing) this.loopDone = this.commitLoop();
      throw e;
    }
    if (lastSeq <= log.durableSeq) return log.durableSeq;
    await new Promise<void>((done, fail) => {
      this.durableWaiters.push({ lastSeq, done, fail });
      if (!this.committing) this.loopDone = this.commitLoop();
    });
    return log.durableSeq;
  }

  private async placeReplicated(log: ShardLog, records: readonly Uint8Array[]): Promise<number> {
    let lastSeq = log.placedSeq;
    for (const input of records) {
      const c = checkRecord(input, 0, input.length);
      if (!c.ok || ('incomplete' in c)) throw new ReplicaRejectError(`shard ${this.id}: a replicated record fails its checks (${'why' in c ? c.why : 'incomplete'})`, 'invalid', log.placedSeq);
      const h = c.header;
      if (h.shard !== this.id) throw new ReplicaRejectError(`shard ${this.id}: a replicated record belongs to shard ${h.shard}`, 'invalid', log.placedSeq);
      const recLast = h.firstSeq + h.batchCount - 1;
      if (h.firstSeq <= log.placedSeq && recLast > log.placedSeq) {
        throw new ReplicaRejectError(`shard ${this.id}: replicated record ${h.firstSeq}..${recLast} overlaps the end of the local log at ${log.placedSeq}`, 'diverged', log.placedSeq);
      }
      if (recLast <= log.placedSeq) {
        // A repeat (a resent batch): fine if it is the record we hold, divergence if not.
        if (recLast <= log.durableSeq) {
          const held = await this.recordAt(recLast);
          if (held !== null && equalBytes(held.hash, recordHash(input, h.length))) continue;
        }
        if (recLast > log.durableSeq) throw new ReplicaRejectError(`shard ${this.id}: replicated seqs ${h.firstSeq}..${recLast} repeat records not yet durable here`, 'busy', log.placedSeq);
        throw new ReplicaRejectError(`shard ${this.id}: replicated seqs ${h.firstSeq}..${recLast} differ from the records held there`, 'diverged', log.placedSeq);
      }
      if (h.firstSeq !== log.placedSeq + 1) throw new ReplicaRejectError(`shard ${this.id}: replicated record starts at seq ${h.firstSeq}, the log ends at ${log.placedSeq}`, 'gap', log.placedSeq);
      if (!equalBytes(h.prevHash, log.tipHash)) throw new ReplicaRejectError(`shard ${this.id}: replicated record at seq ${h.firstSeq} does not link to the local tip`, 'diverged', log.placedSeq);
      if (h.length > log.recordBytesMax) throw new ReplicaRejectError(`shard ${this.id}: a ${h.length}-byte replicated record does not fit a segment here`, 'invalid', log.placedSeq);
      let place: ReturnType<ShardLog['reserve']>;
      try {
        place = log.reserve(h.length);
      } catch (e) {
        if (e instanceof DiskFullError) throw new ReplicaRejectError(e.message, 'busy', log.placedSeq);
        throw e;
      }
      const bytes = input.slice(0, h.length);
      relocateRecord(bytes, place.vouchedEnd);
      const keys = keysOf(bytes, h);
      log.commitPlacement(bytes, keys, h.batchCount);
      this.feedTail.placed({ bytes, header: { ...h, vouchedEnd: place.vouchedEnd }, segment: place.segment, offset: place.offset });
      this.replicaKeys.push({ lastSeq: recLast, keys: keys.map((k) => keyString(k)) });
      lastSeq = recLast;
    }
    return lastSeq;
  }

  /** Replica: replicated records up to `durableSeq` are on disk; their aggregates' cached states are stale now. */
  private replicaDurable(durableSeq: number): void {
    let n = 0;
    while (n < this.replicaKeys.length && this.replicaKeys[n]!.lastSeq <= durableSeq) n++;
    for (const r of this.replicaKeys.splice(0, n)) {
      for (const ks of r.keys) {
        this.states.delete(ks);
        if (this.loading.has(ks)) this.staleLoads.add(ks);
      }
    }
    let w = 0;
    while (w < this.durableWaiters.length && this.durableWaiters[w]!.lastSeq <= durableSeq) w++;
    for (const x of this.durableWaiters.splice(0, w)) x.done();
  }

  /**
   * Makes records up to `seq` (at most the durable seq) visible and marks them acknowledged (the
   * ack barrier: never truncated). A replica calls it with what the leader committed; a new leader
   * with the tail it adopts. Returns the committed seq.
   */
  commitTo(seq: number): number {
    const log = this.log;
    // Not while a truncateAfter runs: the barrier must not rise over records being cut.
    if (log === null || this.state !== 'serving' || this.truncating) return this.committedSeq;
    const to = Math.min(seq, log.durableSeq);
    if (to <= this.committedSeq) return this.committedSeq;
    this.advanceCommitted(to);
    log.setAcked(to);
    if (this.durableSent < to) this.durableSent = to;
    this.releaseWaiters();
    if (!this.committing && log.headerBehind) this.loopDone = this.commitLoop();
    return this.committedSeq;
  }

  /**
   * Leader role with `epoch`: writes are taken (new records carry the epoch), and the durable tail
   * above the committed seq goes through the commit step before anything after it commits.
   */
  becomeLeader(epoch: number): void {
    if (this.durableWaiters.length > 0 || (this.log !== null && this.log.queuedRecords > 0)) {
      throw new Error(`shard ${this.id}: becomeLeader while replicated records are in flight (quiesce first)`);
    }
    this.replica = false;
    this.epoch = epoch;
    this.replicaKeys = [];
    // A commit step that failed under an earlier leadership: its tail commits again now.
    if (this.stoppedByCommit) {
      this.writesStopped = null;
      this.stoppedByCommit = false;
    }
    this.states.clear();
    this.readAhead.clear();
    this.behindTail.clear();
    const log = this.log;
    if (log === null || this.state !== 'serving') return;
    this.durableSent = this.committedSeq;
    if (log.durableSeq > this.committedSeq) this.afterDurable(log.durableSeq);
  }

  /**
   * Waits, for at most `ms`, until every record durable now is committed (a new leader's adopted
   * tail commits after its writes opened; the schema registry must not read before it). Resolves
   * with the durable seq waited for and the committed seq then.
   */
  async untilCommitted(ms: number): Promise<{ durableSeq: number; committedSeq: number }> {
    const durableSeq = this.durableSeq;
    await this.waitCommitted(durableSeq, ms);
    return { durableSeq, committedSeq: this.committedSeq };
  }

  /** Replica role: writes are refused (2011); the caller rewinds the speculative tail with truncateAfter(committedSeq). */
  becomeReplica(epoch: number): void {
    this.replica = true;
    this.epoch = epoch;
    this.unsent = [];
    // Cached states hold this node's write-ahead view (writes that may never commit, committed
    // views that will not see a kept tail commit): reload them from the log from now on.
    this.states.clear();
    this.readAhead.clear();
    this.behindTail.clear();
    for (const ks of this.loading.keys()) this.staleLoads.add(ks);
    // A commit step that failed while leading stopped writes; as a replica the records it left
    // are the leader's to settle (kept, rewound or linked), so appends may go on.
    if (this.stoppedByCommit) {
      this.writesStopped = null;
      this.stoppedByCommit = false;
    }
  }

  /** Writes, commit steps and replicated appends in flight have settled (a truncateAfter may run). */
  async quiesce(): Promise<void> {
    // A commit-chain link can start a loop (the barrier's header write) and a loop can add links:
    // wait until neither moved while we waited.
    for (;;) {
      const chain = this.commitChain;
      const loop = this.loopDone;
      await chain;
      await loop;
      if (chain === this.commitChain && loop === this.loopDone && !this.committing) break;
    }
  }

  /** Committed records from `fromSeq` in position order, up to about `maxBytes` (at least one). */
  async readCommitted(fromSeq: number, maxBytes: number): Promise<RecordAt[]> {
    if (this.log === null || fromSeq > this.committedSeq) return [];
    return this.feedTail.read(fromSeq, this.committedSeq, maxBytes) ?? this.log.readFrom(fromSeq, this.committedSeq, maxBytes);
  }

  async close(): Promise<void> {
    this.closing = true;
    this.releaseTailWaiters(true);
    this.cancelIdle?.();
    // A loop started while we waited is waited for too. (Commit steps still running are not:
    // the closing flag keeps them from starting new loops, and their writes stay unacknowledged.)
    for (let done = this.loopDone; ; done = this.loopDone) {
      await done;
      if (done === this.loopDone && !this.committing) break;
    }
    this.cancelIdle?.();
    if (this.syncingHeader) await this.syncingHeader;
    if (this.state === 'serving' && this.log?.headerBehind) await this.log.syncHeader();
    await this.log?.close();
  }
}



// The Celer client: connect() and the operations of SPEC §3–§4 over the native protocol.
import { parseAddress } from './connection.ts';
import { decodeControl, decodeDetails, decodePong, decodeReadPage, decodeRegisterSchema, decodeSchemaList, decodeWriteResults } from './decode.ts';
import { CONTROL_KEY_AT, KEY_AT, WRITE_KEY_AT, badRequest, encodeDelete, encodeDetails, encodeListSchemas, encodePing, encodeRead, encodeRegisterSchema, encodeTrim, encodeWrite, toClientId, toU64 } from './encode.ts';
import {
  appendExactlyOnce,
  writeExactlyOnce,
  type AppendExactlyOnceOptions,
  type AppendExactlyOnceResult,
  type ExactlyOnceOptions,
  type WriteExactlyOnceResult,
} from './exactly-once.ts';
import type { AggregateKey } from './key.ts';
import { resolveOptions, type ClientOptions, type ResolvedOptions } from './options.ts';
import { Pool, type NodeStats } from './pool.ts';
import type {
  AggregateDetails,
  AppendOptions,
  AppendResult,
  Batch,
  DeleteOptions,
  DeleteResult,
  EventInput,
  ListSchemasFilter,
  ReadOptions,
  ReadPage,
  RegisteredSchema,
  RegisterSchemaResult,
  SchemaInput,
  WriteInput,
  WriteResult,
} from './types.ts';
import { Op, WireError, type Frame } from './wire.ts';
import {
  readShard,
  subscribeKey,
  subscribeOrg,
  subscribeShard,
  watch,
  type ReadShardOptions,
  type ShardBatch,
  type ShardPage,
  type SubscribedBatch,
  type SubscribeKeyOptions,
  type SubscribeOrgFilter,
  type SubscribeOrgOptions,
  type SubscribeShardOptions,
  type WatchFilter,
  type WatchHeartbeat,
  type WatchNotification,
  type WatchOptions,
} from './feed.ts';

/** Seed addresses per client: a cluster has two nodes; more is a configuration mistake. */
const SEEDS_MAX = 64;

export class CelerClient {
  /** The clientId used by writes that name none (from connect options), or undefined. */
  readonly defaultClientId: bigint | undefined;
  private readonly pool: Pool;

  /** Use connect(). */
  private constructor(pool: Pool, options: ResolvedOptions) {
    this.pool = pool;
    this.defaultClientId = options.clientId === undefined ? undefined : toClientId(options.clientId, undefined);
  }

  /** Connects to the first reachable seed address ("host:port"); see ClientOptions. */
  static async connect(address: string | readonly string[], options: ClientOptions = {}): Promise<CelerClient> {
    const seeds = typeof address === 'string' ? [address] : [...address];
    if (seeds.length === 0 || seeds.length > SEEDS_MAX) throw badRequest(`connect needs 1..${SEEDS_MAX} addresses; got ${seeds.length}`);
    for (const s of seeds) {
      if (typeof s !== 'string' || parseAddress(s) === undefined) throw badRequest(`"${String(s)}" is not a host:port address`);
    }
    let resolved: ResolvedOptions;
    try {
      resolved = resolveOptions(options);
    } catch (err) {
      throw badRequest((err as Error).message);
    }
    const pool = new Pool(seeds, resolved);
    const client = new CelerClient(pool, resolved);
    await pool.open();
    return client;
  }

  /** The node requests currently go to (the leader, as far as the client knows). */
  get leader(): string {
    return this.pool.leaderAddress;
  }

  /** Appends events to one aggregate. Throws WrongExpectedVersionError (2003) when the guard fails. */
  async append(key: AggregateKey, events: EventInput[], opts: AppendOptions = {}): Promise<AppendResult> {
    if (opts === null || typeof opts !== 'object') throw badRequest('append options must be an object');
    const clientId = toClientId(opts.clientId, this.defaultClientId);
    const { frame, count } = encodeWrite(clientId, [{ key, events, expectedVersion: opts.expectedVersion, clientSeq: opts.clientSeq }], 'append');
    const answer = await this.pool.send(frame, this.pool.slotOf(frame, WRITE_KEY_AT));
    return decodeWriteResults(answer, count)[0]!;
  }

  /**
   * Writes to several aggregates of one shard atomically: every guard passes and all events land,
   * or nothing does (9001 when the keys span shards).
   */
  async write(input: WriteInput): Promise<WriteResult> {
    if (input === null || typeof input !== 'object') throw badRequest('write input must be { clientId, writes: [...] }');
    const clientId = toClientId(input.clientId, this.defaultClientId);
    const { frame, count } = encodeWrite(clientId, input.writes);
    const answer = await this.pool.send(frame, this.pool.slotOf(frame, WRITE_KEY_AT));
    return { results: decodeWriteResults(answer, count) };
  }

  /** One page of an aggregate's batches; `nextVersion` is set when there is more. */
  async read(key: AggregateKey, opts: ReadOptions = {}): Promise<ReadPage> {
    const frame = encodeRead(key, opts);
    return decodeReadPage(await this.pool.send(frame, this.pool.slotOf(frame, KEY_AT)));
  }

  /** Every batch from `opts.from` (to `opts.to`), page after page. */
  async *readAll(key: AggregateKey, opts: ReadOptions = {}): AsyncGenerator<Batch, void, undefined> {
    // 0: from the first readable version (after trims).
    let from = opts.from === undefined ? 0n : toU64(opts.from, 'from');
    for (;;) {
      const page = await this.read(key, { ...opts, from });
      yield* page.batches;
      const next = page.nextVersion;
      if (next === undefined) return;
      // A page that does not move forward would loop for ever.
      if (next <= (from === 0n ? 1n : from)) throw new WireError(`the server returned nextVersion ${next} for a page that started at ${from}`);
      if (opts.to !== undefined && next > BigInt(opts.to)) return;
      from = next;
    }
  }

  /**
   * Deletes an aggregate (SPEC §5): a tombstone in its shard's log. Reads then get 1001; its
   * version stays (versions never rewind), so do exactly-once floors. With `allowRecreate` a later
   * write recreates it from version + 1, its old events still unreadable; without, writes get 1001.
   * Deleting a deleted aggregate changes nothing (`unchanged`).
   */
  async delete(key: AggregateKey, opts: DeleteOptions = {}): Promise<DeleteResult> {
    const frame = encodeDelete(toClientId(opts?.clientId, this.defaultClientId), key, opts);
    return decodeControl(await this.pool.send(frame, this.pool.slotOf(frame, CONTROL_KEY_AT)), Op.DeleteOk, 'delete');
  }

  /**
   * Makes the versions below `keepFromVersion` unreadable (reads from below get 1000, reads without
   * `from` start at it). At most version + 1 (trims everything); a trim never lowers the point
   * (a lower one is `unchanged`). The space is not reclaimed in this version.
   */
  async trimStart(key: AggregateKey, keepFromVersion: bigint | number): Promise<DeleteResult> {
    const frame = encodeTrim(toClientId(undefined, this.defaultClientId), key, keepFromVersion);
    return decodeControl(await this.pool.send(frame, this.pool.slotOf(frame, CONTROL_KEY_AT)), Op.TrimOk, 'trim');
  }

  async details(key: AggregateKey): Promise<AggregateDetails> {
    const frame = encodeDetails(key);
    return decodeDetails(await this.pool.send(frame, this.pool.slotOf(frame, KEY_AT)));
  }

  /** One page of a shard's committed batches in position order (SPEC §4; `from` an inclusive seq). */
  readShard(shard: number, opts: ReadShardOptions = {}): Promise<ShardPage> {
    return readShard(this.feedSend, shard, opts);
  }

  /** A shard's committed batches from `opts.from`, then its live tail, until the caller breaks out. */
  subscribeShard(shard: number, opts: SubscribeShardOptions = {}): AsyncGenerator<ShardBatch, void, undefined> {
    return subscribeShard(this.feedSend, shard, opts);
  }

  /**
   * One aggregate from a version (history, then the live tail), or every batch of an org (or one
   * type in it) from a checkpoint: each batch carries `checkpoint`; pass it back as `from` to resume.
   */
  subscribe(key: AggregateKey, opts?: SubscribeKeyOptions): AsyncGenerator<Batch, void, undefined>;
  subscribe(filter: SubscribeOrgFilter, opts?: SubscribeOrgOptions): AsyncGenerator<SubscribedBatch, void, undefined>;
  subscribe(target: AggregateKey | SubscribeOrgFilter, opts: SubscribeKeyOptions | SubscribeOrgOptions = {}): AsyncGenerator<Batch | SubscribedBatch, void, undefined> {
    if (target !== null && typeof target === 'object' && 'id' in target && target.id !== undefined) {
      return subscribeKey(this.feedSend, (k, from) => this.readAll(k, { from }), target as AggregateKey, opts as SubscribeKeyOptions);
    }
    return subscribeOrg(this.feedSend, target as SubscribeOrgFilter, opts as SubscribeOrgOptions);
  }

  /** Change notifications after commit for `{ key }`, `{ org, type }` or `{ org }`. */
  watch(filter: WatchFilter, opts: WatchOptions = {}): AsyncGenerator<WatchNotification | WatchHeartbeat, void, undefined> {
    return watch(this.feedSend, filter, opts);
  }

  private readonly feedSend = (frame: Uint8Array): Promise<Frame> => this.pool.send(frame, this.pool.anySlot());

  /**
   * Registers a schema (SPEC §5). Registered schemas are immutable: the same text again resolves
   * `{ registered: false }`, another text for a registered version is refused (2022, detail.reason
   * 'immutable'); a new minor must be backward compatible with the minor below it (additive only),
   * else 2022 with detail.reason 'incompatible' and the reason; a schema that does not compile is
   * 9100 with the compiler's message. Idempotent, so the pool may send it again after a lost
   * connection (then `registered` may be false for the call that registered it).
   */
  async registerSchema(input: SchemaInput): Promise<RegisterSchemaResult> {
    return decodeRegisterSchema(await this.pool.send(encodeRegisterSchema(input), this.pool.anySlot()));
  }

  /** The schemas registered for an org (or one aggregate type of it), by type, event type and version. */
  async listSchemas(filter: ListSchemasFilter): Promise<RegisteredSchema[]> {
    return decodeSchemaList(await this.pool.send(encodeListSchemas(filter), this.pool.anySlot()));
  }

  /** A round trip to the leader; resolves with its duration in milliseconds. */
  async ping(): Promise<number> {
    const started = performance.now();
    decodePong(await this.pool.send(encodePing(), this.pool.anySlot()));
    return performance.now() - started;
  }

  /** append, retried until the outcome is definite; see exactly-once.ts. */
  appendExactlyOnce(key: AggregateKey, events: EventInput[], opts: AppendExactlyOnceOptions): Promise<AppendExactlyOnceResult> {
    return appendExactlyOnce(this, key, events, opts);
  }

  /** write, retried until the outcome is definite; every write needs a clientSeq ≥ 1. */
  writeExactlyOnce(input: WriteInput, opts?: ExactlyOnceOptions): Promise<WriteExactlyOnceResult> {
    return writeExactlyOnce(this, input, opts);
  }

  /** Connections, requests in flight and breaker state per node the client has talked to. */
  stats(): NodeStats[] {
    return this.pool.stats();
  }

  /** Closes every connection; requests still outstanding fail with ConnectionError. */
  async close(): Promise<void> {
    this.pool.close();
  }
}

/** Connects to a Celer node or cluster: `await connect('127.0.0.1:7000')`. */
export function connect(address: string | readonly string[], options?: ClientOptions): Promise<CelerClient> {
  return CelerClient.connect(address, options);
}

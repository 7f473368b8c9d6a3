// The main thread's Dispatcher: validates each request, finds its shard (SPEC §2: routing part
// mod numShards on the low 64 bits), and hands it to the worker thread that owns the shard.
//
// Cost of the hop: requests are gathered for one event-loop tick and posted to each worker as one
// message with one transferred buffer (node24-microbench §2: ~0.6 µs per request under load,
// versus ~6.7 µs for a message per request; an idle worker adds ~77 µs of wake-up latency).
import assert from 'node:assert/strict';
import { Worker } from 'node:worker_threads';
import { ErrorCode } from '../../client/errors.ts';
import { U64_MAX, type NormalizedKey } from '../../client/key.ts';
import {
  decodeDeleteRequest,
  decodeKeyRequest,
  decodeListSchemasRequest,
  decodeReadRequest,
  decodeReadShardRequest,
  decodeRegisterSchemaRequest,
  decodeTrimRequest,
  decodeWriteRequest,
  encodeError,
  FeedFilter,
  Limits,
  Op,
  SHARD_OF_KEY,
  WireError,
  Writer,
} from '../../client/wire.ts';
import { DISPATCH_BATCH_MAX, DISPATCH_BYTES_IN_FLIGHT_MAX, DISPATCH_IN_FLIGHT_MAX, FEED_WAITS_PER_NODE_MAX } from '../constants.ts';
import { REQ_ITEM_WIDTH, RES_ITEM_WIDTH, type ShardInfo, type WorkerConfig } from '../shard/worker.ts';
import { applyWorkerStats, setCacheUsage, setFeedWaitsSource, type CacheUsage, type WorkerStats } from './metrics.ts';
import type { DispatchResult, Dispatcher } from './dispatch.ts';
import type { Routing } from '../storage/segment.ts';
import type { ClusterRpc } from '../shard/worker.ts';
import { unpackRecords } from '../cluster/records-pack.ts';
import { ReplicaRejectError } from '../shard/shard.ts';
import { SchemaRegistry } from '../schema/registry.ts';
import { isSystemOrg, reservedOrgMessage, SCHEMA_REGISTRY_KEY } from '../schema/system.ts';

export interface RouterConfig {
  dataDir: string;
  numShards: number;
  routing: Routing;
  workers: number;
  segmentBytes: number;
  memoryBudgetBytes: number;
  unsafeNoDirectIo: boolean;
  forceSyncIo: boolean;
  /** This node's id (a UUID), written into every record it writes. */
  nodeId?: string;
  log: (msg: string) => void;
  /** Overrides DISPATCH_BYTES_IN_FLIGHT_MAX (tests); at least Limits.frameBytesMax. */
  bytesInFlightMax?: number;
  /** Feed long polls in flight on the node; default FEED_WAITS_PER_NODE_MAX (tests lower it). */
  feedWaitsMax?: number;
  /** A cluster node: shards are replicas until the cluster makes them lead; writes pass the gate first. */
  cluster?: ClusterHooks;
}

/** What the router asks of the cluster (server/node.ts wires a ClusterNode in). */
export interface ClusterHooks {
  /** A shard's commit step: resolves once the group is on the follower or in S3. */
  commit(shard: number, from: number, to: number, records: Uint8Array[]): Promise<void>;
  /** A leader's group being written (the early hand-off): streamed to the follower at once. */
  send(shard: number, records: Uint8Array[]): void;
  /** Null when writes are taken now; else 2011 with the leader's address. */
  writeGate(): { message: string; leader: string | null } | null;
  /** The current lease epoch (the schema registry's cache is complete per epoch: schema/registry.ts). */
  epoch(): number;
}

interface WorkerHandle {
  worker: Worker;
  items: number[];
  bodies: Writer;
  scheduled: boolean;
  /** The thread has exited (crash or close): nothing more will come from it. */
  exited: boolean;
}

const ROUTING_INDEX: Record<Routing, keyof NormalizedKey> = { org: 'org', type: 'type', id: 'id' };
const MAX_SAFE = BigInt(Number.MAX_SAFE_INTEGER);

// Any one request must fit when nothing else is in flight, or it would get 2012 forever.
if (DISPATCH_BYTES_IN_FLIGHT_MAX < Limits.frameBytesMax) {
  throw new Error(`DISPATCH_BYTES_IN_FLIGHT_MAX (${DISPATCH_BYTES_IN_FLIGHT_MAX}) is below the largest frame (${Limits.frameBytesMax})`);
}

/** Old-generation heap limit of a shard worker: 3× its budget share (caches are JS objects with
 * overhead) plus 128 MiB for the engine's own working memory, and never below 256 MiB. */
export function workerHeapMb(budgetShareBytes: number): number {
  return Math.max(256, Math.ceil((3 * budgetShareBytes) / 1048576) + 128);
}

function error(code: number, message: string, detail: Record<string, unknown> = {}): DispatchResult {
  return { op: Op.Error, body: encodeError(code, message, detail) };
}

export class Router implements Dispatcher {
  readonly cfg: RouterConfig;
  private readonly workers: WorkerHandle[] = [];
  /** Requests sent to a worker and not answered yet: id → [resolve, worker index, body bytes]. */
  private readonly pending = new Map<number, [(r: DispatchResult) => void, number, number]>();
  /** Sum of the body bytes of `pending`; at most bytesInFlightMax. Released with each answer. */
  private pendingBytes = 0;
  private readonly bytesInFlightMax: number;
  private nextId = 1;
  private readonly shards = new Map<number, ShardInfo>();
  io = '';
  private closing = false;
  private nextRpc = 1;
  private readonly rpcs = new Map<number, { resolve: (v: unknown) => void; reject: (e: Error) => void; worker: number }>();
  /** The schema registry (SPEC §5): its cache, registration, and the check of every write naming a schema. */
  readonly schemas: SchemaRegistry;
  /**
   * Set while the registry is read before a write can be checked (once per epoch, see
   * schema/registry.ts): later writes wait behind it, so writes still reach their shard in the order
   * they were dispatched (a pipelining client's writes to one aggregate keep their order).
   */
  private schemaRead: Promise<unknown> | null = null;

  private constructor(cfg: RouterConfig) {
    this.cfg = cfg;
    this.schemas = new SchemaRegistry({
      dispatch: (op, body) => this.route(op, body, true),
      untilCommitted: (ms) => this.registryCommitted(ms),
      epoch: () => cfg.cluster?.epoch() ?? 0,
      log: cfg.log,
    });
    this.bytesInFlightMax = cfg.bytesInFlightMax ?? DISPATCH_BYTES_IN_FLIGHT_MAX;
    this.feedWaitsMax = cfg.feedWaitsMax ?? FEED_WAITS_PER_NODE_MAX;
    setFeedWaitsSource(() => this.feedWaits);
    if (!(this.bytesInFlightMax >= Limits.frameBytesMax)) {
      throw new Error(`bytesInFlightMax ${this.bytesInFlightMax} is below the largest frame (${Limits.frameBytesMax}); such a request could never be accepted`);
    }
  }

  /** Requests handed to the workers and not answered yet. */
  get requestsInFlight(): number {
    return this.pending.size;
  }

  /** Body bytes of those requests (bounded by DISPATCH_BYTES_IN_FLIGHT_MAX). */
  get bytesInFlight(): number {
    return this.pendingBytes;
  }

  /** Starts the workers and waits until each has opened its shards. */
  static async start(cfg: RouterConfig): Promise<Router> {
    const r = new Router(cfg);
    const ready: Promise<void>[] = [];
    for (let i = 0; i < cfg.workers; i++) {
      const wc: WorkerConfig = {
        index: i,
        workers: cfg.workers,
        dataDir: cfg.dataDir,
        numShards: cfg.numShards,
        routing: { org: 0, type: 1, id: 2 }[cfg.routing],
        segmentBytes: cfg.segmentBytes,
        memoryBudgetPerShardBytes: Math.floor(cfg.memoryBudgetBytes / cfg.numShards),
        unsafeNoDirectIo: cfg.unsafeNoDirectIo,
        forceSyncIo: cfg.forceSyncIo,
        nodeId: cfg.nodeId ?? '00000000-0000-0000-0000-000000000000',
        cluster: cfg.cluster !== undefined,
      };
      const worker = new Worker(new URL('../shard/worker.ts', import.meta.url), {
        workerData: wc,
        name: `celer-shards-${i}`,
        // Keep each worker's JS heap in proportion to its share of the memory budget, so garbage
        // is collected before RSS drifts far past the budget (V8 otherwise grows the heap freely).
        resourceLimits: { maxOldGenerationSizeMb: workerHeapMb(cfg.memoryBudgetBytes / cfg.workers), maxYoungGenerationSizeMb: 8 },
      });
      const h: WorkerHandle = { worker, items: [], bodies: new Writer(64 * 1024), scheduled: false, exited: false };
      r.workers.push(h);
      ready.push(
        new Promise<void>((resolve, reject) => {
          worker.on('message', (m: WorkerMessage) => {
            switch (m.t) {
              case 'ready':
                for (const s of m.shards) r.shards.set(s.shard, s);
                r.io = m.io;
                resolve();
                break;
              case 'fatal':
                reject(new Error(m.msg));
                break;
              default:
                r.onMessage(m);
            }
          });
          worker.on('error', (e) => {
            cfg.log(`worker ${i} crashed: ${e.stack ?? e.message}`);
            reject(e);
          });
          worker.on('exit', (code) => {
            h.exited = true;
            if (r.closing) return;
            // Its shards are gone until the node restarts: say so in /status and /readyz, answer
            // their requests with 9200, and fail what was waiting (outcome unknown for writes).
            const why = `worker thread ${i} exited (code ${code}); restart the node`;
            cfg.log(why);
            reject(new Error(why));
            for (let shard = i; shard < cfg.numShards; shard += cfg.workers) {
              const info = r.shards.get(shard);
              r.shards.set(shard, { shard, state: 'failed', reason: why, writeSeq: info?.writeSeq ?? '0', commitSeq: info?.commitSeq ?? '0' });
            }
            r.failAll(why, i);
          });
        }),
      );
    }
    try {
      await Promise.all(ready);
    } catch (e) {
      await Promise.all(r.workers.map((w) => w.worker.terminate()));
      throw e;
    }
    return r;
  }

  private onMessage(m: WorkerMessage): void {
    switch (m.t) {
      case 'res': {
        const all = new Uint8Array(m.buf);
        for (let i = 0; i < m.items.length; i += RES_ITEM_WIDTH) {
          const id = m.items[i]!;
          const p = this.pending.get(id);
          if (p === undefined) continue;
          this.settle(id, p);
          p[0]({ op: m.items[i + 1]!, body: all.subarray(m.items[i + 2]!, m.items[i + 2]! + m.items[i + 3]!) });
        }
        break;
      }
      case 'stats':
        for (const s of m.shards) this.shards.set(s.shard, s);
        applyWorkerStats(m.stats);
        setCacheUsage(m.worker, m.caches);
        break;
      case 'log':
        this.cfg.log(m.msg);
        break;
      case 'send':
        this.cfg.cluster?.send(m.shard, unpackRecords(m.buf));
        break;
      case 'commit': {
        const h = this.workers[m.shard % this.workers.length]!;
        const hooks = this.cfg.cluster;
        const p = hooks === undefined ? Promise.reject(new Error('not a cluster node')) : hooks.commit(m.shard, m.from, m.to, unpackRecords(m.buf));
        p.then(
          () => h.worker.postMessage({ t: 'commitRes', id: m.id, ok: true }),
          (e: Error) => h.worker.postMessage({ t: 'commitRes', id: m.id, ok: false, msg: e.message }),
        );
        break;
      }
      case 'crpcRes': {
        const r = this.rpcs.get(m.id);
        this.rpcs.delete(m.id);
        if (r === undefined) break;
        if (m.ok) r.resolve(m.v);
        else if (m.e.name === 'ReplicaRejectError') r.reject(new ReplicaRejectError(m.e.message, m.e.reason as ReplicaRejectError['reason'], m.e.placedSeq ?? 0));
        else r.reject(Object.assign(new Error(m.e.message), { name: m.e.name }));
        break;
      }
      case 'closed':
      case 'ready':
      case 'fatal':
        break;
    }
  }

  /** Fails the requests waiting on `worker` (all workers when undefined). */
  private failAll(why: string, worker?: number): void {
    for (const [id, r] of this.rpcs) {
      if (worker !== undefined && r.worker !== worker) continue;
      this.rpcs.delete(id);
      r.reject(new Error(why));
    }
    for (const [id, p] of this.pending) {
      if (worker !== undefined && p[1] !== worker) continue;
      this.settle(id, p);
      p[0](error(ErrorCode.ShardUnavailable, why));
    }
  }

  /** The one place a pending request leaves the books: its slot and its bytes are released. */
  private settle(id: number, p: [(r: DispatchResult) => void, number, number]): void {
    this.pending.delete(id);
    this.pendingBytes -= p[2];
    if (this.pendingBytes < 0 || (this.pending.size === 0 && this.pendingBytes !== 0)) {
      assert.fail(`bytes in flight ${this.pendingBytes} with ${this.pending.size} requests in flight`);
    }
  }

  shardOf(key: NormalizedKey): number {
    const part = key[ROUTING_INDEX[this.cfg.routing]];
    return Number((part & U64_MAX) % BigInt(this.cfg.numShards));
  }

  /** A cluster operation on one shard, run on its worker (shard/worker.ts ClusterRpc). */
  rpc(shard: number, op: ClusterRpc['op'], a: unknown[] = [], transfer: ArrayBuffer[] = []): Promise<unknown> {
    const h = this.workers[shard % this.workers.length]!;
    if (h.exited) return Promise.reject(new Error(`the worker of shard ${shard} has exited`));
    const id = this.nextRpc++;
    return new Promise((resolve, reject) => {
      this.rpcs.set(id, { resolve, reject, worker: shard % this.workers.length });
      h.worker.postMessage({ t: 'crpc', id, shard, op, a } satisfies ClusterRpc, transfer);
    });
  }

  /** Per-shard state as last reported by the workers. */
  shardInfo(): ShardInfo[] {
    return [...this.shards.values()].sort((a, b) => a.shard - b.shard);
  }

  dispatch(op: number, body: Uint8Array): Promise<DispatchResult> {
    return this.route(op, body, false);
  }

  /** `system`: a request of the node itself (the schema registry), allowed into the reserved org. */
  private route(op: number, body: Uint8Array, system: boolean): Promise<DispatchResult> {
    let shard: number;
    let feedWait = false;
    try {
      switch (op) {
        case Op.Ping:
          return Promise.resolve({ op: Op.Pong, body: new Uint8Array(0) });
        case Op.Write: {
          if (!system && this.schemaRead !== null) return this.schemaRead.then(() => this.route(op, body, false));
          const gate = this.cfg.cluster?.writeGate() ?? null;
          if (gate !== null) return Promise.resolve(error(ErrorCode.NotLeader, gate.message, gate.leader === null ? {} : { leader: gate.leader }));
          const req = decodeWriteRequest(body);
          const shards = new Set<number>();
          let schemaEvents = false;
          for (let i = 0; i < req.writes.length; i++) {
            const w = req.writes[i]!;
            if (!system && isSystemOrg(w.key.org)) throw new WireError(reservedOrgMessage(`writes[${i}].key.org`));
            if (w.expectVersion > MAX_SAFE) throw new WireError(`expectedVersion ${w.expectVersion} is beyond any possible version`);
            if (w.schemaEvents > 0) schemaEvents = true;
            shards.add(this.shardOf(w.key));
          }
          if (shards.size > 1) {
            const list = [...shards].sort((a, b) => a - b);
            return Promise.resolve(
              error(
                ErrorCode.CrossShardWrite,
                `this write touches shards ${list.join(', ')}; a multi-aggregate write must stay in one shard (shard = ${this.cfg.routing} mod ${this.cfg.numShards}). Choose ${this.cfg.routing} values with the same remainder to co-locate these aggregates.`,
                { numShards: this.cfg.numShards, shards: list },
              ),
            );
          }
          // Schemas (SPEC §5): an event naming a registered schema version must validate, or the
          // whole write is refused (2022) here, before its shard sees any of it.
          if (schemaEvents) {
            const verdict = this.schemas.checkWrite(req);
            if (verdict === 'refresh') return this.readSchemasThen(op, body);
            if (verdict !== null) return Promise.resolve(error(verdict.code, verdict.message, verdict.detail));
          }
          shard = [...shards][0]!;
          break;
        }
        case Op.Delete:
        case Op.Trim: {
          // In order with the writes before it, as a write is.
          if (!system && this.schemaRead !== null) return this.schemaRead.then(() => this.route(op, body, false));
          const gate = this.cfg.cluster?.writeGate() ?? null;
          if (gate !== null) return Promise.resolve(error(ErrorCode.NotLeader, gate.message, gate.leader === null ? {} : { leader: gate.leader }));
          const req = op === Op.Delete ? decodeDeleteRequest(body) : decodeTrimRequest(body);
          if (isSystemOrg(req.key.org)) throw new WireError(reservedOrgMessage('key.org'));
          if ('expectVersion' in req && req.expectVersion > MAX_SAFE) throw new WireError(`expectedVersion ${req.expectVersion} is beyond any possible version`);
          if ('keepFromVersion' in req && req.keepFromVersion > MAX_SAFE) throw new WireError(`keepFromVersion ${req.keepFromVersion} is beyond any possible version`);
          shard = this.shardOf(req.key);
          break;
        }
        case Op.Read: {
          const req = decodeReadRequest(body);
          if (!system && isSystemOrg(req.key.org)) throw new WireError(reservedOrgMessage('key.org'));
          if (req.from > MAX_SAFE || req.to > MAX_SAFE) throw new WireError('read range is beyond any possible version');
          shard = this.shardOf(req.key);
          break;
        }
        case Op.Details: {
          const key = decodeKeyRequest(body);
          if (isSystemOrg(key.org)) throw new WireError(reservedOrgMessage('key.org'));
          shard = this.shardOf(key);
          break;
        }
        case Op.RegisterSchema: {
          const s = decodeRegisterSchemaRequest(body);
          const gate = this.cfg.cluster?.writeGate() ?? null;
          if (gate !== null) return Promise.resolve(error(ErrorCode.NotLeader, gate.message, gate.leader === null ? {} : { leader: gate.leader }));
          return this.schemas.register(s);
        }
        case Op.ListSchemas: {
          const req = decodeListSchemasRequest(body);
          if (isSystemOrg(req.org)) throw new WireError(reservedOrgMessage('org'));
          return this.schemas.list(req);
        }
        case Op.ReadShard: {
          const req = decodeReadShardRequest(body);
          if (req.filter !== FeedFilter.None && isSystemOrg(req.key.org)) throw new WireError(reservedOrgMessage('org'));
          if (req.shard === SHARD_OF_KEY) shard = this.shardOf(req.key);
          else if (req.shard >= this.cfg.numShards) throw new WireError(`shard ${req.shard} does not exist; this node has shards 0..${this.cfg.numShards - 1}`);
          else shard = req.shard;
          if (req.from > MAX_SAFE) throw new WireError(`from ${req.from} is beyond any possible position`);
          if (req.waitMs > 0) feedWait = true;
          break;
        }
        default:
          throw new WireError(
            `unknown operation ${op}; this server knows write (${Op.Write}), read (${Op.Read}), details (${Op.Details}), ping (${Op.Ping}), readShard (${Op.ReadShard}), registerSchema (${Op.RegisterSchema}), listSchemas (${Op.ListSchemas}), delete (${Op.Delete}) and trim (${Op.Trim})`,
          );
      }
    } catch (e) {
      if (e instanceof WireError) return Promise.resolve(error(ErrorCode.BadRequest, e.message));
      throw e;
    }
    if (this.pending.size >= DISPATCH_IN_FLIGHT_MAX) {
      return Promise.resolve(
        error(
          ErrorCode.ServerBusy,
          `the node has ${this.pending.size} requests in flight, its limit (DISPATCH_IN_FLIGHT_MAX ${DISPATCH_IN_FLIGHT_MAX}); retry with backoff, or spread the load over fewer concurrent requests`,
          { limit: 'DISPATCH_IN_FLIGHT_MAX', max: DISPATCH_IN_FLIGHT_MAX, inFlight: this.pending.size },
        ),
      );
    }
    if (this.pendingBytes + body.length > this.bytesInFlightMax) {
      return Promise.resolve(
        error(
          ErrorCode.ServerBusy,
          `the node has ${this.pendingBytes} bytes of requests in flight and this one adds ${body.length}, over its limit (DISPATCH_BYTES_IN_FLIGHT_MAX ${this.bytesInFlightMax} bytes); retry with backoff, or send fewer large requests at once`,
          { limit: 'DISPATCH_BYTES_IN_FLIGHT_MAX', maxBytes: this.bytesInFlightMax, bytesInFlight: this.pendingBytes, requestBytes: body.length },
        ),
      );
    }
    const info = this.shards.get(shard);
    if (info !== undefined && info.state !== 'serving') {
      return Promise.resolve(error(ErrorCode.ShardUnavailable, `shard ${shard} is not being served (${info.state}): ${info.reason ?? ''}`, { shard }));
    }
    if (feedWait) {
      if (this.feedWaits >= this.feedWaitsMax) {
        return Promise.resolve(
          error(
            ErrorCode.ServerBusy,
            `the node has ${this.feedWaits} subscription or watch long polls waiting, its limit (FEED_WAITS_PER_NODE_MAX ${this.feedWaitsMax}); retry with backoff, or share subscriptions between readers`,
            { limit: 'FEED_WAITS_PER_NODE_MAX', max: this.feedWaitsMax },
          ),
        );
      }
      this.feedWaits++;
      return this.send(shard, op, body).finally(() => this.feedWaits--);
    }
    return this.send(shard, op, body);
  }

  /** Long polls of the shard feed in flight on this node, at most feedWaitsMax. */
  feedWaits = 0;
  private readonly feedWaitsMax: number;

  private send(shard: number, op: number, body: Uint8Array): Promise<DispatchResult> {
    // Skip an id still pending (a request stuck across 2^31 others), or its entry and bytes would be lost.
    let id = this.nextId;
    while (this.pending.has(id)) id = id >= 0x7fff_ffff ? 1 : id + 1;
    this.nextId = id >= 0x7fff_ffff ? 1 : id + 1;
    const h = this.workers[shard % this.workers.length]!;
    h.items.push(id, op, shard, h.bodies.pos, body.length);
    h.bodies.bytes(body);
    if (h.items.length >= DISPATCH_BATCH_MAX * REQ_ITEM_WIDTH) this.flush(h);
    else if (!h.scheduled) {
      h.scheduled = true;
      setImmediate(() => this.flush(h));
    }
    const workerIndex = shard % this.workers.length;
    this.pendingBytes += body.length;
    return new Promise<DispatchResult>((resolve) => this.pending.set(id, [resolve, workerIndex, body.length]));
  }

  /** Reads the schema registry to its end, then routes the write again; later writes wait behind it. */
  /**
   * For the registry's read (schema/registry.ts): null once the registry's shard has committed
   * what is durable on it. Only a leader can hold a durable tail that commits later and mark its
   * cache complete by reading; standalone commits what is durable at once, and a follower's cache
   * is never complete for an epoch it takes writes at (it may list what is committed).
   */
  private async registryCommitted(ms: number): Promise<string | null> {
    if (this.cfg.cluster === undefined || this.cfg.cluster.writeGate() !== null) return null;
    const shard = this.shardOf(SCHEMA_REGISTRY_KEY);
    try {
      const r = (await this.rpc(shard, 'untilCommitted', [ms])) as { durableSeq: number; committedSeq: number };
      return r.committedSeq >= r.durableSeq ? null : `shard ${shard} holds records up to seq ${r.durableSeq} and has committed ${r.committedSeq} (the tail a new leader adopted commits after its writes opened)`;
    } catch (e) {
      return `shard ${shard} did not answer (${(e as Error).message})`;
    }
  }

  private readSchemasThen(op: number, body: Uint8Array): Promise<DispatchResult> {
    const read = this.schemas.refresh();
    this.schemaRead = read;
    void read.finally(() => {
      if (this.schemaRead === read) this.schemaRead = null;
    });
    return read.then((failed) => (failed !== null ? error(failed.code, failed.message, failed.detail) : this.route(op, body, false)));
  }

  private flush(h: WorkerHandle): void {
    h.scheduled = false;
    if (h.items.length === 0) return;
    // Typed arrays are copied as one block; a JS array of numbers is serialised element by element.
    const items = Float64Array.from(h.items);
    const buf = h.bodies.buf.slice(0, h.bodies.pos).buffer;
    h.worker.postMessage({ t: 'req', items, buf }, [buf, items.buffer]);
    h.items = [];
    h.bodies.pos = 0;
  }

  async close(): Promise<void> {
    this.closing = true;
    await Promise.all(
      this.workers.map(
        (h) =>
          new Promise<void>((resolve) => {
            if (h.exited) return resolve(); // it crashed: there is no one to say 'closed'
            const timer = setTimeout(() => void h.worker.terminate().then(() => resolve()), 10_000);
            h.worker.on('message', (m: WorkerMessage) => {
              if (m.t === 'closed') {
                clearTimeout(timer);
                void h.worker.terminate().then(() => resolve());
              }
            });
            h.worker.once('exit', () => {
              clearTimeout(timer);
              resolve();
            });
            h.worker.postMessage({ t: 'close' });
          }),
      ),
    );
    this.failAll('the node is shutting down');
  }
}

type WorkerMessage =
  | { t: 'res'; items: Float64Array; buf: ArrayBuffer }
  | { t: 'ready'; shards: ShardInfo[]; io: string }
  | { t: 'stats'; stats: WorkerStats; shards: ShardInfo[]; caches: CacheUsage; worker: number }
  | { t: 'log'; msg: string }
  | { t: 'send'; shard: number; buf: ArrayBuffer }
  | { t: 'commit'; id: number; shard: number; from: number; to: number; buf: ArrayBuffer }
  | { t: 'crpcRes'; id: number; ok: true; v: unknown }
  | { t: 'crpcRes'; id: number; ok: false; e: { name: string; message: string; reason?: string; placedSeq?: number } }
  | { t: 'fatal'; msg: string }
  | { t: 'closed' };

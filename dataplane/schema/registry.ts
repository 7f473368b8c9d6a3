// The schema registry (SPEC §5), on the main thread: registration, listing, and the check of each
// write's events against their registered schema before the write is handed to its shard.
//
// Where the schemas live: as events of one aggregate in the reserved org (system.ts), appended
// through the ordinary write path with an exact expected version. So a registration is fsync'd,
// replicated to the follower (or S3) and acknowledged like any write, survives restarts and
// failovers, and two registrations racing for the same version cannot both land (2003, then the
// loser re-reads and decides again).
//
// This class is a cache of that aggregate: `version` is the last event applied. Registered schemas
// are immutable, so an entry is never stale; only absence can be. The cache is *complete* — an
// event type/version it does not hold is really unregistered — once it has read the aggregate to
// its end while this node leads at the current epoch: only the leader writes, and within one epoch
// only this node, which adds its own registrations as they land. In standalone the epoch never
// changes, so after the first read the check of a write is a map lookup. After a failover (a new
// epoch) the first write naming a schema version reads the aggregate from `version + 1` first —
// after the registry's shard has committed what is durable on it: reads see committed records
// only, and the tail a new leader adopts (the old leader's last writes, maybe a registration)
// commits after the write gate has opened.
//
// Bounds: SCHEMAS_MAX schemas and SCHEMA_REGISTRY_BYTES_MAX bytes of text over every org, each
// schema at most SCHEMA_BYTES_MAX; a registration beyond them gets 9100. Validators are compiled
// on first use and kept with their entry.
import { ErrorCode } from '../../client/errors.ts';
import {
  decodeError,
  decodeReadOk,
  decodeWriteOk,
  encodeError,
  encodeListSchemasOk,
  encodeReadRequest,
  encodeRegisterSchemaOk,
  encodeWriteRequest,
  Expect,
  Limits,
  Op,
  readEvent,
  Reader,
  utf8Length,
  type WireListSchemasRequest,
  type WireSchema,
  type WireWriteRequest,
} from '../../client/wire.ts';
import { SCHEMA_REGISTER_ATTEMPTS_MAX, SCHEMA_REGISTRY_BYTES_MAX, SCHEMA_REGISTRY_COMMIT_WAIT_MS, SCHEMAS_MAX } from '../constants.ts';
import { compatibilityProblem, compileSchema, SchemaCompileError, SCHEMA_FORMATS, type CompiledSchema, type SchemaFormat } from './formats.ts';
import { isSystemOrg, reservedOrgMessage, SCHEMA_REGISTERED_EVENT, SCHEMA_REGISTRY_KEY } from './system.ts';

/** A request and its answer, as the Dispatcher speaks them (server/dispatch.ts). */
interface Answer {
  op: number;
  body: Uint8Array;
}

/** What the registry needs of its node. */
export interface RegistryIo {
  /** The router's dispatch, allowed into the reserved org (reads and appends of the registry aggregate). */
  dispatch(op: number, body: Uint8Array): Promise<Answer>;
  /**
   * Resolves null once the shard of the registry aggregate has committed every record durable on
   * it when asked (at once when there is nothing to wait for), or, after at most `timeoutMs`, with
   * what is still not committed (for the message).
   */
  untilCommitted(timeoutMs: number): Promise<string | null>;
  /** The epoch under which this node takes writes (a cluster's lease epoch; standalone: 0). */
  epoch(): number;
  log(msg: string): void;
}

/** A write refused by its schema (2022), or a failure to read the registry. */
export interface Refusal {
  code: number;
  message: string;
  detail: Record<string, unknown>;
}

interface Entry extends WireSchema {
  compiled: CompiledSchema | undefined;
}

const te = new TextEncoder();
const td = new TextDecoder('utf-8', { fatal: true });

function entryKey(org: bigint, type: bigint, eventType: string, major: number, minor: number): string {
  return `${org}:${type}:${major}:${minor}:${eventType}`;
}

function label(s: { org: bigint; type: bigint; eventType: string; major: number; minor: number }): string {
  return `schema ${s.major}.${s.minor} of event type "${s.eventType}" (org ${s.org}, type ${s.type})`;
}

function answerError(code: number, message: string, detail: Record<string, unknown> = {}): Answer {
  return { op: Op.Error, body: encodeError(code, message, detail) };
}

/** The registration event's data: JSON, 128-bit parts as decimal strings. */
interface RegisteredJson {
  org: string;
  type: string;
  eventType: string;
  major: number;
  minor: number;
  format: SchemaFormat;
  schema: string;
}

function toEventData(s: WireSchema): Uint8Array {
  const j: RegisteredJson = { org: s.org.toString(), type: s.type.toString(), eventType: s.eventType, major: s.major, minor: s.minor, format: s.format, schema: s.schema };
  return te.encode(JSON.stringify(j));
}

function fromEventData(data: Uint8Array): WireSchema {
  const j = JSON.parse(td.decode(data)) as RegisteredJson;
  if (typeof j.eventType !== 'string' || typeof j.schema !== 'string' || !SCHEMA_FORMATS.includes(j.format)) throw new Error('not a schema registration');
  if (!Number.isInteger(j.major) || !Number.isInteger(j.minor)) throw new Error('bad version');
  return { org: BigInt(j.org), type: BigInt(j.type), eventType: j.eventType, major: j.major, minor: j.minor, format: j.format, schema: j.schema };
}

export class SchemaRegistry {
  private readonly io: RegistryIo;
  private readonly entries = new Map<string, Entry>();
  /** Schemas per org: a write to an org without any is not looked at further. */
  private readonly perOrg = new Map<bigint, number>();
  /** Version of the registry aggregate applied so far. */
  private version = 0n;
  private textBytes = 0;
  /** The epoch at which the cache was last read to the end (null: not known complete). */
  private completeAt: number | null = null;
  /** Bumped when the cache may have missed a registration (one whose outcome is unknown). */
  private generation = 0;
  private refreshing: Promise<Refusal | null> | null = null;
  /** Registrations run one at a time on a node. */
  private queue: Promise<unknown> = Promise.resolve();

  constructor(io: RegistryIo) {
    this.io = io;
  }

  /** Schemas held (every org). */
  get size(): number {
    return this.entries.size;
  }

  /** Whether the cache is known complete now (no read is needed before checking a write). */
  get complete(): boolean {
    return this.completeAt === this.io.epoch();
  }

  /**
   * Checks every event of a decoded write that names a schemaVersion and carries no iv against its
   * registered schema. Synchronous: null = the write passes; a Refusal (2022) = the first event that
   * does not validate, with the validator's message; 'refresh' = the cache is not known complete:
   * await refresh(), then check again.
   */
  checkWrite(req: WireWriteRequest): Refusal | 'refresh' | null {
    for (let i = 0; i < req.writes.length; i++) {
      const w = req.writes[i]!;
      if (w.schemaEvents === 0) continue;
      if (this.completeAt !== this.io.epoch()) return 'refresh';
      if (!this.perOrg.has(w.key.org)) continue;
      const r = new Reader(w.events);
      for (let j = 0; j < w.eventCount; j++) {
        const e = readEvent(r, `writes[${i}].events[${j}]`);
        if (e.schemaMajor === undefined || e.iv !== undefined) continue;
        const major = e.schemaMajor;
        const minor = e.schemaMinor ?? 0;
        const entry = this.entries.get(entryKey(w.key.org, w.key.type, e.type, major, minor));
        if (entry === undefined) continue;
        const problem = this.compiled(entry).validate(e.data);
        if (problem === null) continue;
        return {
          code: ErrorCode.SchemaValidation,
          message: `writes[${i}].events[${j}] (event type "${e.type}", schema ${major}.${minor}, ${entry.format}) does not match its registered schema: ${problem}; nothing of this write was stored`,
          detail: { validator: problem, write: i, event: j, eventType: e.type, schemaVersion: `${major}.${minor}`, format: entry.format },
        };
      }
    }
    return null;
  }

  private compiled(entry: Entry): CompiledSchema {
    if (entry.compiled !== undefined) return entry.compiled;
    try {
      entry.compiled = compileSchema(entry.format, entry.schema, entry.eventType);
    } catch (e) {
      // It compiled when it was registered; a library upgrade could change that. Refuse its events
      // (never store what could not be checked) and say why.
      const why = `the registered ${label(entry)} no longer compiles on this node: ${(e as Error).message}`;
      this.io.log(why);
      entry.compiled = { format: entry.format, describe: 'uncompilable', validate: () => why };
    }
    return entry.compiled;
  }

  /** Reads the registry aggregate from `version + 1` to its end. Concurrent calls share one read. */
  refresh(): Promise<Refusal | null> {
    this.refreshing ??= this.readToEnd().finally(() => {
      this.refreshing = null;
    });
    return this.refreshing;
  }

  private async readToEnd(): Promise<Refusal | null> {
    const epoch = this.io.epoch();
    const generation = this.generation;
    // A read that missed a registration of an adopted tail (not committed yet) would still mark
    // the cache complete for the whole epoch: wait for that tail first.
    const pending = await this.io.untilCommitted(SCHEMA_REGISTRY_COMMIT_WAIT_MS);
    if (pending !== null) {
      return {
        code: ErrorCode.ServerBusy,
        message: `the schema registry cannot be read now: ${pending} (not committed within SCHEMA_REGISTRY_COMMIT_WAIT_MS ${SCHEMA_REGISTRY_COMMIT_WAIT_MS} ms); retry shortly`,
        detail: { limit: 'SCHEMA_REGISTRY_COMMIT_WAIT_MS', max: SCHEMA_REGISTRY_COMMIT_WAIT_MS },
      };
    }
    let from = this.version + 1n;
    for (;;) {
      const res = await this.io.dispatch(Op.Read, encodeReadRequest({ key: SCHEMA_REGISTRY_KEY, from, to: 0n, maxBytes: Limits.readPageBytesMax, eventTypes: [] }));
      if (res.op === Op.Error) {
        const e = decodeError(res.body);
        if (e.code === ErrorCode.AggregateNotFound) break; // nothing registered yet
        return { code: e.code, message: `the schema registry cannot be read now: ${e.message}`, detail: e.detail };
      }
      const page = decodeReadOk(res.body);
      for (const b of page.batches) for (const ev of b.events) this.apply(ev.version, ev.type, ev.data);
      if (page.nextVersion === 0n || page.nextVersion <= from) break;
      from = page.nextVersion;
    }
    if (this.io.epoch() === epoch && this.generation === generation) this.completeAt = epoch;
    return null;
  }

  /** Applies event `version` of the registry aggregate (in order; one already applied is skipped). */
  private apply(version: bigint, type: string, data: Uint8Array, compiled?: CompiledSchema): void {
    if (version <= this.version) return;
    if (version !== this.version + 1n) this.io.log(`schema registry: event ${version} follows ${this.version}; versions are gapless, so this is unexpected`);
    this.version = version;
    if (type !== SCHEMA_REGISTERED_EVENT) {
      this.io.log(`schema registry: event ${version} has type "${type}", which this version does not know; skipped`);
      return;
    }
    let s: WireSchema;
    try {
      s = fromEventData(data);
    } catch (e) {
      this.io.log(`schema registry: event ${version} is not a registration (${(e as Error).message}); skipped`);
      return;
    }
    const k = entryKey(s.org, s.type, s.eventType, s.major, s.minor);
    if (this.entries.has(k)) return; // registrations are checked against the cache: a second one is never written
    this.entries.set(k, { ...s, compiled });
    this.perOrg.set(s.org, (this.perOrg.get(s.org) ?? 0) + 1);
    this.textBytes += utf8Length(s.schema);
  }

  /** Registers a schema (serialised with the other registrations of this node). */
  register(s: WireSchema): Promise<Answer> {
    const p = this.queue.then(() => this.registerNow(s));
    this.queue = p.catch(() => undefined);
    return p;
  }

  private async registerNow(s: WireSchema): Promise<Answer> {
    if (isSystemOrg(s.org)) return answerError(ErrorCode.BadRequest, reservedOrgMessage('org'));
    let compiled: CompiledSchema;
    try {
      compiled = compileSchema(s.format, s.schema, s.eventType);
    } catch (e) {
      if (e instanceof SchemaCompileError) return answerError(ErrorCode.BadRequest, `${label(s)}: ${e.message}`);
      throw e;
    }
    const k = entryKey(s.org, s.type, s.eventType, s.major, s.minor);
    for (let attempt = 1; attempt <= SCHEMA_REGISTER_ATTEMPTS_MAX; attempt++) {
      // Decide against the registry as it stands in the log (another node may have led meanwhile).
      const failed = await this.refresh();
      if (failed !== null) return answerError(failed.code, failed.message, failed.detail);
      const existing = this.entries.get(k);
      if (existing !== undefined) {
        if (existing.format === s.format && existing.schema === s.schema) return { op: Op.RegisterSchemaOk, body: encodeRegisterSchemaOk(false) };
        return answerError(
          ErrorCode.SchemaValidation,
          `${label(s)} is already registered with ${existing.format === s.format ? 'a different text' : `another format (${existing.format})`}; registered schemas are immutable: register the change as a new version (${s.major}.${this.nextMinor(s)} if it only adds, ${s.major + 1}.0 if it breaks)`,
          { reason: 'immutable', format: existing.format },
        );
      }
      const incompatible = this.compatibility(s);
      if (incompatible !== null) {
        return answerError(
          ErrorCode.SchemaValidation,
          `${label(s)} is not backward compatible with ${incompatible.older}: ${incompatible.reason}. A minor version may only add (optional fields); register a breaking change as ${s.major + 1}.0`,
          { reason: 'incompatible', against: incompatible.against, validator: incompatible.reason },
        );
      }
      if (this.entries.size >= SCHEMAS_MAX) {
        return answerError(ErrorCode.BadRequest, `the schema registry holds ${this.entries.size} schemas, its limit (SCHEMAS_MAX ${SCHEMAS_MAX}) over every org; ${label(s)} was not registered`, { limit: 'SCHEMAS_MAX', max: SCHEMAS_MAX });
      }
      const bytes = utf8Length(s.schema);
      if (this.textBytes + bytes > SCHEMA_REGISTRY_BYTES_MAX) {
        return answerError(
          ErrorCode.BadRequest,
          `the schema registry holds ${this.textBytes} bytes of schemas and this one adds ${bytes}, over its limit (SCHEMA_REGISTRY_BYTES_MAX ${SCHEMA_REGISTRY_BYTES_MAX}); ${label(s)} was not registered`,
          { limit: 'SCHEMA_REGISTRY_BYTES_MAX', max: SCHEMA_REGISTRY_BYTES_MAX },
        );
      }
      const data = toEventData(s);
      const body = encodeWriteRequest({
        clientId: 0n,
        writes: [{ key: SCHEMA_REGISTRY_KEY, expectMode: Expect.Exact, expectVersion: this.version, clientSeq: 0n, events: [{ type: SCHEMA_REGISTERED_EVENT, data }] }],
      });
      const res = await this.io.dispatch(Op.Write, body);
      if (res.op === Op.WriteOk) {
        const landed = decodeWriteOk(res.body).ranges[0]!.toVersion;
        this.apply(landed, SCHEMA_REGISTERED_EVENT, data, compiled);
        return { op: Op.RegisterSchemaOk, body: encodeRegisterSchemaOk(true) };
      }
      const e = decodeError(res.body);
      // Another registration landed first: read it, decide again.
      if (e.code === ErrorCode.WrongExpectedVersion) continue;
      // Anything else: the append may or may not have landed (2007 …), so the cache is no longer
      // known complete; the next write naming a schema reads the registry first. Registering the
      // same text again is safe: it is a no-op once it is there.
      this.generation++;
      this.completeAt = null;
      return answerError(e.code, `${label(s)} was not registered: ${e.message}`, e.detail);
    }
    return answerError(ErrorCode.ServerBusy, `the schema registry changed under this registration ${SCHEMA_REGISTER_ATTEMPTS_MAX} times in a row; retry (registering the same text again is safe)`);
  }

  /** The next free minor of `s.major` (for messages). */
  private nextMinor(s: WireSchema): number {
    let max = -1;
    for (const e of this.family(s)) max = Math.max(max, e.minor);
    return max + 1;
  }

  /** Registered minors of the same org, type, event type and major. */
  private family(s: WireSchema): Entry[] {
    const out: Entry[] = [];
    for (const e of this.entries.values()) {
      if (e.org === s.org && e.type === s.type && e.eventType === s.eventType && e.major === s.major) out.push(e);
    }
    return out;
  }

  /**
   * A new minor must read everything the minor below it accepted, and the minor above it (when one
   * was registered first) must read everything the new one accepts.
   */
  private compatibility(s: WireSchema): { older: string; against: string; reason: string } | null {
    let lower: Entry | undefined;
    let higher: Entry | undefined;
    for (const e of this.family(s)) {
      if (e.minor < s.minor && (lower === undefined || e.minor > lower.minor)) lower = e;
      if (e.minor > s.minor && (higher === undefined || e.minor < higher.minor)) higher = e;
    }
    const pairs: [WireSchema, WireSchema, Entry][] = [];
    if (lower !== undefined) pairs.push([lower, s, lower]);
    if (higher !== undefined) pairs.push([s, higher, higher]);
    for (const [older, newer, other] of pairs) {
      const against = `${other.major}.${other.minor}`;
      const reason =
        older.format !== newer.format
          ? `${against} is ${other.format}; the minor versions of a major keep one format`
          : compatibilityProblem(older.format, older.schema, newer.schema, s.eventType);
      if (reason !== null) return { older: other === lower ? `the registered ${against}` : `${against}, registered before it (${against} must read what ${s.major}.${s.minor} accepts)`, against, reason };
    }
    return null;
  }

  /** The registered schemas of an org (and type), ordered by type, event type and version. */
  async list(req: WireListSchemasRequest): Promise<Answer> {
    const failed = await this.refresh();
    if (failed !== null) return answerError(failed.code, failed.message, failed.detail);
    const out: WireSchema[] = [];
    for (const e of this.entries.values()) {
      if (e.org !== req.org || (req.type !== undefined && e.type !== req.type)) continue;
      out.push({ org: e.org, type: e.type, eventType: e.eventType, major: e.major, minor: e.minor, format: e.format, schema: e.schema });
    }
    out.sort((a, b) => (a.type < b.type ? -1 : a.type > b.type ? 1 : a.eventType < b.eventType ? -1 : a.eventType > b.eventType ? 1 : a.major - b.major || a.minor - b.minor));
    return { op: Op.ListSchemasOk, body: encodeListSchemasOk(out) };
  }
}

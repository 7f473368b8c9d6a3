// gRPC front end: service celer.v1.EventStore (proto/celer/v1/eventstore.proto).
//
// Each call is turned into the native wire body (client/wire.ts), handed to the Dispatcher, and
// the wire response is turned back into protobuf. Input is validated here first (keys, events,
// limits), so every bad request is answered with INVALID_ARGUMENT and celer-code 9100 and a
// message that names the offending field. Errors carry the numeric Celer code and its detail in
// the trailing metadata (celer-code, celer-detail), so clients in any language see what the
// TypeScript client sees.
//
// protobufjs skips fields it does not know; Celer refuses them instead. Every request is walked
// once at the protobuf wire level against the message descriptors before it is decoded (see
// checkMessage), in the request deserializer. A deserializer that throws would make grpc-js
// answer INTERNAL, so ours returns a Rejected marker that the handler turns into 9100.
import { fileURLToPath } from 'node:url';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { ErrorCode } from '../../client/errors.ts';
import { KeyError, toU128, type NormalizedKey } from '../../client/key.ts';
import {
  checkEvent,
  decodeControlOk,
  decodeDetailsOk,
  decodeError,
  decodeListSchemasOk,
  decodeRegisterSchemaOk,
  encodeListSchemasRequest,
  encodeRegisterSchemaRequest,
  SchemaFormatCode,
  utf8Length,
  type SchemaFormatName,
  decodeReadOk,
  decodeReadShardOk,
  decodeWriteOk,
  encodeDeleteRequest,
  encodeKeyRequest,
  encodeReadRequest,
  encodeTrimRequest,
  encodeReadShardRequest,
  FeedFilter,
  SHARD_OF_KEY,
  encodeWriteRequest,
  Expect,
  Limits,
  Op,
  WireError,
  type ExpectMode,
  type FeedFilterMode,
  type WireEvent,
  type WireReadShardOk,
  type WireControlOk,
  type WireReadOk,
  type WireWriteInput,
} from '../../client/wire.ts';

/** ShardBatch.op by the wire's batch op. */
const FEED_OP_NAMES = ['write', 'delete', 'trim'] as const;
import { CONNECTION_REQUESTS_IN_FLIGHT_MAX, GRPC_FEED_WAIT_MS } from '../constants.ts';
import type { Dispatcher, DispatchResult } from './dispatch.ts';
import { buildMessageSchema, checkMessage, resolveTypeName } from './grpc-strict.ts';

export const PROTO_PATH = fileURLToPath(new URL('../../proto/celer/v1/eventstore.proto', import.meta.url));
export const SERVICE_NAME = 'celer.v1.EventStore';

/** Trailing-metadata keys carrying the Celer error (ASCII values). */
export const CELER_CODE_KEY = 'celer-code';
export const CELER_DETAIL_KEY = 'celer-detail';

/** How proto-loader turns messages into objects; the converters below rely on these. */
export const PROTO_LOADER_OPTIONS: protoLoader.Options = {
  keepCase: false,
  longs: String,
  enums: String,
  defaults: false,
  oneofs: true,
};

/** Celer error code → gRPC status code (SPEC §6; also documented in the .proto). */
export const GRPC_STATUS_BY_CODE: Readonly<Record<number, grpc.status>> = {
  [ErrorCode.ReadBelowTrimmed]: grpc.status.OUT_OF_RANGE,
  [ErrorCode.AggregateNotFound]: grpc.status.NOT_FOUND,
  [ErrorCode.AlreadyApplied]: grpc.status.ALREADY_EXISTS,
  // Not ABORTED: the same request will fail again until the caller re-reads the aggregate, and
  // keeping it apart from 2013 (ABORTED: resend the same request later) lets plain gRPC clients
  // choose the right reaction from the status code alone.
  [ErrorCode.WrongExpectedVersion]: grpc.status.FAILED_PRECONDITION,
  [ErrorCode.NotLeader]: grpc.status.UNAVAILABLE,
  [ErrorCode.ServerBusy]: grpc.status.RESOURCE_EXHAUSTED,
  [ErrorCode.DuplicateInFlight]: grpc.status.ABORTED,
  [ErrorCode.NotAcknowledged]: grpc.status.UNAVAILABLE,
  [ErrorCode.StorageFailed]: grpc.status.RESOURCE_EXHAUSTED,
  [ErrorCode.SchemaValidation]: grpc.status.INVALID_ARGUMENT,
  [ErrorCode.CrossShardWrite]: grpc.status.INVALID_ARGUMENT,
  [ErrorCode.BadRequest]: grpc.status.INVALID_ARGUMENT,
  [ErrorCode.ShardUnavailable]: grpc.status.UNAVAILABLE,
};

export function grpcStatusFor(code: number): grpc.status {
  return GRPC_STATUS_BY_CODE[code] ?? grpc.status.UNKNOWN;
}

/** A Celer error on its way to the gRPC caller. */
export class CelerFailure extends Error {
  override name = 'CelerFailure';
  readonly code: number;
  readonly detail: Record<string, unknown>;
  constructor(code: number, message: string, detail: Record<string, unknown> = {}) {
    super(message);
    this.code = code;
    this.detail = detail;
  }
}

function badRequest(message: string): CelerFailure {
  return new CelerFailure(ErrorCode.BadRequest, message);
}

/** JSON restricted to printable ASCII (gRPC metadata values must be). Still valid JSON. */
export function asciiJson(value: unknown): string {
  return JSON.stringify(value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v)).replace(
    /[^\x20-\x7e]/g,
    (c) => '\\u' + c.charCodeAt(0).toString(16).padStart(4, '0'),
  );
}

function toServiceError(err: unknown): grpc.ServerErrorResponse {
  const failure = err instanceof CelerFailure ? err : null;
  const metadata = new grpc.Metadata();
  let code: grpc.status;
  let details: string;
  if (failure) {
    code = grpcStatusFor(failure.code);
    details = failure.message;
    metadata.set(CELER_CODE_KEY, String(failure.code));
    metadata.set(CELER_DETAIL_KEY, asciiJson(failure.detail));
  } else {
    // A defect in this file or below; the caller gets no Celer code because there is none.
    code = grpc.status.INTERNAL;
    details = `internal error: ${err instanceof Error ? err.message : String(err)}`;
  }
  return Object.assign(new Error(details), { code, details, metadata });
}

// The strict protobuf check lives in grpc-strict.ts.
export { buildMessageSchema, checkMessage, type MessageSchema } from './grpc-strict.ts';

/** What a request deserializer returns for a message that failed the strict check. */
class Rejected {
  readonly message: string;
  constructor(message: string) {
    this.message = message;
  }
}

// ---------------------------------------------------------------------------------------------
// Request conversion (protobuf object → wire body)

interface PbKey {
  org?: string;
  type?: string;
  id?: string;
}
interface PbExpectedVersion {
  kind?: 'any' | 'noStream' | 'streamExists' | 'exact';
  exact?: string;
}
interface PbEvent {
  type?: string;
  data?: Uint8Array;
  metadata?: Uint8Array;
  schemaVersion?: { major?: number; minor?: number };
  iv?: Uint8Array;
}
interface PbAppendRequest {
  key?: PbKey;
  events?: PbEvent[];
  expectedVersion?: PbExpectedVersion;
  clientId?: string;
  clientSeq?: string;
}
interface PbAggregateWrite {
  key?: PbKey;
  events?: PbEvent[];
  expectedVersion?: PbExpectedVersion;
  clientSeq?: string;
}
interface PbWriteRequest {
  clientId?: string;
  writes?: PbAggregateWrite[];
}
interface PbReadRequest {
  key?: PbKey;
  from?: string;
  to?: string;
  eventTypes?: string[];
  maxBytes?: number;
}
interface PbDetailsRequest {
  key?: PbKey;
}
interface PbDeleteRequest {
  key?: PbKey;
  expectedVersion?: string;
  allowRecreate?: boolean;
  clientId?: string;
}
interface PbTrimStartRequest {
  key?: PbKey;
  keepFromVersion?: string;
  clientId?: string;
}

const EMPTY = new Uint8Array(0);
const te = new TextEncoder();

function convertKey(k: PbKey | undefined, where: string): NormalizedKey {
  if (k === undefined) throw badRequest(`${where} is required ({ org, type, id }, each decimal or UUID)`);
  return { org: toU128(k.org ?? '', `${where}.org`), type: toU128(k.type ?? '', `${where}.type`), id: toU128(k.id ?? '', `${where}.id`) };
}

function convertClientId(id: string | undefined): bigint {
  return id === undefined || id === '' ? 0n : toU128(id, 'clientId');
}

function convertExpected(ev: PbExpectedVersion | undefined, where: string): { expectMode: ExpectMode; expectVersion: bigint } {
  switch (ev?.kind) {
    case undefined:
    case 'any':
      return { expectMode: Expect.Any, expectVersion: 0n };
    case 'noStream':
      return { expectMode: Expect.NoStream, expectVersion: 0n };
    case 'streamExists':
      return { expectMode: Expect.StreamExists, expectVersion: 0n };
    case 'exact':
      return { expectMode: Expect.Exact, expectVersion: BigInt(ev.exact ?? '0') };
    default:
      throw badRequest(`${where} has an unknown kind`);
  }
}

function convertEvents(events: PbEvent[] | undefined, where: string): WireEvent[] {
  const n = events?.length ?? 0;
  if (n === 0) throw badRequest(`${where} is empty; a write appends 1..${Limits.eventsPerWriteMax} events per aggregate`);
  if (n > Limits.eventsPerWriteMax) throw badRequest(`${where} has ${n} events; the limit is ${Limits.eventsPerWriteMax} per aggregate`);
  const out: WireEvent[] = [];
  for (let i = 0; i < n; i++) {
    const e = events![i]!;
    const wire: WireEvent = { type: e.type ?? '', data: e.data ?? EMPTY };
    if (e.metadata !== undefined) wire.metadata = e.metadata;
    if (e.schemaVersion !== undefined) {
      wire.schemaMajor = e.schemaVersion.major ?? 0;
      wire.schemaMinor = e.schemaVersion.minor ?? 0;
    }
    if (e.iv !== undefined) wire.iv = e.iv;
    checkEvent(wire, `${where}[${i}]`);
    out.push(wire);
  }
  return out;
}

function u64(s: string | undefined): bigint {
  return BigInt(s ?? '0');
}

function checkBodySize(body: Uint8Array): Uint8Array {
  if (body.length > Limits.frameBytesMax) {
    throw badRequest(`the request is ${body.length} bytes once encoded; the limit is ${Limits.frameBytesMax}`);
  }
  return body;
}

export function appendToWire(req: PbAppendRequest): Uint8Array {
  const input: WireWriteInput = {
    clientId: convertClientId(req.clientId),
    writes: [
      {
        key: convertKey(req.key, 'key'),
        ...convertExpected(req.expectedVersion, 'expectedVersion'),
        clientSeq: u64(req.clientSeq),
        events: convertEvents(req.events, 'events'),
      },
    ],
  };
  return checkBodySize(encodeWriteRequest(input));
}

export function writeToWire(req: PbWriteRequest): Uint8Array {
  const writes = req.writes ?? [];
  if (writes.length === 0) throw badRequest(`writes is empty; a write touches 1..${Limits.writesPerRequestMax} aggregates`);
  if (writes.length > Limits.writesPerRequestMax) {
    throw badRequest(`writes has ${writes.length} entries; a write may touch at most ${Limits.writesPerRequestMax} aggregates`);
  }
  const input: WireWriteInput = {
    clientId: convertClientId(req.clientId),
    writes: writes.map((w, i) => ({
      key: convertKey(w.key, `writes[${i}].key`),
      ...convertExpected(w.expectedVersion, `writes[${i}].expectedVersion`),
      clientSeq: u64(w.clientSeq),
      events: convertEvents(w.events, `writes[${i}].events`),
    })),
  };
  return checkBodySize(encodeWriteRequest(input));
}

export function readToWire(req: PbReadRequest, from: bigint = u64(req.from)): Uint8Array {
  const key = convertKey(req.key, 'key');
  const to = u64(req.to);
  if (to !== 0n && to < (from === 0n ? 1n : from)) throw badRequest(`read range is empty: to (${to}) is below from (${from})`);
  const eventTypes = req.eventTypes ?? [];
  if (eventTypes.length > Limits.readTypesMax) {
    throw badRequest(`eventTypes names ${eventTypes.length} types; a read filter may name at most ${Limits.readTypesMax}`);
  }
  eventTypes.forEach((t, i) => {
    const n = te.encode(t).length;
    if (n < 1 || n > Limits.eventTypeBytesMax) throw badRequest(`eventTypes[${i}] must be 1..${Limits.eventTypeBytesMax} UTF-8 bytes; got ${n}`);
  });
  return encodeReadRequest({ key, from, to, maxBytes: req.maxBytes ?? 0, eventTypes });
}

interface PbReadShardRequest {
  shard?: number;
  from?: string;
  maxBytes?: number;
  waitMs?: number;
  org?: string;
  type?: string;
  key?: PbKey;
  headersOnly?: boolean;
}

export function readShardToWire(req: PbReadShardRequest, from: bigint = u64(req.from), waitMs = req.waitMs ?? 0): Uint8Array {
  let filter: FeedFilterMode = FeedFilter.None;
  let key: NormalizedKey = { org: 0n, type: 0n, id: 0n };
  if (req.key !== undefined && req.key !== null) {
    if (req.org !== undefined || req.type !== undefined) throw badRequest('give either key or org/type, not both');
    key = convertKey(req.key, 'key');
    filter = FeedFilter.Key;
  } else if (req.org !== undefined) {
    key = { org: toU128(req.org, 'org'), type: req.type === undefined ? 0n : toU128(req.type, 'type'), id: 0n };
    filter = req.type === undefined ? FeedFilter.Org : FeedFilter.OrgType;
  } else if (req.type !== undefined) throw badRequest('a type filter needs its org');
  if (waitMs > Limits.feedWaitMsMax) throw badRequest(`wait_ms ${waitMs} is above the longest feed wait, ${Limits.feedWaitMsMax} ms`);
  return encodeReadShardRequest({
    shard: filter === FeedFilter.Key ? SHARD_OF_KEY : (req.shard ?? 0),
    from,
    maxBytes: req.maxBytes ?? 0,
    waitMs,
    filter,
    key,
    headersOnly: req.headersOnly === true,
  });
}

interface PbSchema {
  org?: string;
  type?: string;
  eventType?: string;
  version?: { major?: number; minor?: number };
  format?: string;
  schema?: string;
}

interface PbListSchemasRequest {
  org?: string;
  type?: string;
}

export function registerSchemaToWire(req: PbSchema): Uint8Array {
  const org = toU128(req.org ?? '', 'org');
  const type = toU128(req.type ?? '', 'type');
  const eventType = req.eventType ?? '';
  const n = utf8Length(eventType);
  if (n < 1 || n > Limits.eventTypeBytesMax) throw badRequest(`event_type must be 1..${Limits.eventTypeBytesMax} UTF-8 bytes; got ${n}`);
  if (req.version === undefined || req.version === null) throw badRequest('version is required ({ major, minor })');
  const format = req.format ?? '';
  if (!Object.hasOwn(SchemaFormatCode, format)) throw badRequest(`format must be one of ${Object.keys(SchemaFormatCode).join(', ')}; got "${format}"`);
  const schema = req.schema ?? '';
  if (schema === '') throw badRequest('schema (the schema text) is required');
  const bytes = utf8Length(schema);
  if (bytes > Limits.schemaBytesMax) throw badRequest(`schema is ${bytes} bytes; the limit is ${Limits.schemaBytesMax}`);
  return encodeRegisterSchemaRequest({ org, type, eventType, major: req.version.major ?? 0, minor: req.version.minor ?? 0, format: format as SchemaFormatName, schema });
}

export function listSchemasToWire(req: PbListSchemasRequest): Uint8Array {
  return encodeListSchemasRequest({ org: toU128(req.org ?? '', 'org'), type: req.type === undefined ? undefined : toU128(req.type, 'type') });
}

function readShardToPb(ok: WireReadShardOk): object {
  return {
    shard: ok.shard,
    numShards: ok.numShards,
    next: ok.next.toString(),
    committedSeq: ok.committedSeq.toString(),
    batches: ok.batches.map((b) => ({
      key: { org: b.key.org.toString(), type: b.key.type.toString(), id: b.key.id.toString() },
      batch: batchesToPb([b])[0],
      op: FEED_OP_NAMES[b.op],
      minVersion: b.minVersion.toString(),
    })),
  };
}

export function deleteToWire(req: PbDeleteRequest): Uint8Array {
  const key = convertKey(req.key, 'key');
  const expected = req.expectedVersion === undefined ? undefined : u64(req.expectedVersion);
  if (expected === 0n) throw badRequest('delete with expected_version 0: there is nothing to delete at version 0');
  return encodeDeleteRequest({
    clientId: convertClientId(req.clientId),
    key,
    expectMode: expected === undefined ? Expect.Any : Expect.Exact,
    expectVersion: expected ?? 0n,
    allowRecreate: req.allowRecreate === true,
  });
}

export function trimStartToWire(req: PbTrimStartRequest): Uint8Array {
  const key = convertKey(req.key, 'key');
  const keep = u64(req.keepFromVersion);
  if (keep === 0n) throw badRequest('keep_from_version must be at least 1 (versions start at 1)');
  return encodeTrimRequest({ clientId: convertClientId(req.clientId), key, keepFromVersion: keep });
}

function controlToPb(ok: WireControlOk): { position: { shard: number; seq: string }; version: string; minVersion: string; unchanged: boolean } {
  return { position: { shard: ok.shard, seq: ok.seq.toString() }, version: ok.version.toString(), minVersion: ok.minVersion.toString(), unchanged: ok.unchanged };
}

export function detailsToWire(req: PbDetailsRequest): Uint8Array {
  return encodeKeyRequest(convertKey(req.key, 'key'));
}

// ---------------------------------------------------------------------------------------------
// Response conversion (wire body → protobuf object)

interface PbPosition {
  shard: number;
  seq: string;
}
interface PbAppendResult {
  fromVersion: string;
  toVersion: string;
  position: PbPosition;
}
interface PbRecordedEvent {
  version: string;
  type: string;
  data: Uint8Array;
  metadata?: Uint8Array;
  schemaVersion?: { major: number; minor: number };
  iv?: Uint8Array;
}
interface PbBatch {
  fromVersion: string;
  toVersion: string;
  position: PbPosition;
  clientId: string;
  serverTimestampMs: string;
  events: PbRecordedEvent[];
}

/** Throws the Celer error of an Op.Error response; checks the op otherwise. */
function expectOk(res: DispatchResult, okOp: number): Uint8Array {
  if (res.op === Op.Error) {
    const e = decodeError(res.body);
    throw new CelerFailure(e.code, e.message, e.detail);
  }
  if (res.op !== okOp) throw new Error(`dispatcher answered op 0x${res.op.toString(16)}; expected 0x${okOp.toString(16)}`);
  return res.body;
}

function writeResults(body: Uint8Array): PbAppendResult[] {
  const ok = decodeWriteOk(body);
  return ok.ranges.map((r, i) => ({
    fromVersion: r.fromVersion.toString(),
    toVersion: r.toVersion.toString(),
    position: { shard: ok.shard, seq: (ok.firstSeq + BigInt(i)).toString() },
  }));
}

function batchesToPb(batches: WireReadOk['batches']): PbBatch[] {
  return batches.map((b) => ({
    fromVersion: b.fromVersion.toString(),
    toVersion: b.toVersion.toString(),
    position: { shard: b.shard, seq: b.seq.toString() },
    clientId: b.clientId.toString(),
    serverTimestampMs: String(b.serverTimestampMs),
    events: b.events.map((e) => {
      const out: PbRecordedEvent = { version: e.version.toString(), type: e.type, data: e.data };
      if (e.metadata !== undefined) out.metadata = e.metadata;
      if (e.schemaMajor !== undefined) out.schemaVersion = { major: e.schemaMajor, minor: e.schemaMinor ?? 0 };
      if (e.iv !== undefined) out.iv = e.iv;
      return out;
    }),
  }));
}

/** Runs a request converter, turning client-side validation errors into 9100. */
function convert<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof KeyError || err instanceof WireError) throw badRequest(err.message);
    throw err;
  }
}

// ---------------------------------------------------------------------------------------------
// Server

export interface GrpcServerHandle {
  /** "host:port" actually bound (port 0 resolved). */
  address: string;
  close(): Promise<void>;
}

export interface GrpcServerOptions {
  /** Transport credentials (mTLS); insecure when absent. */
  credentials?: grpc.ServerCredentials;
  /** Grace period for in-flight calls on close before they are cancelled. Default 5 s. */
  closeGraceMs?: number;
}

/** Splits "host:port" ("[v6]:port" for IPv6). */
function splitAddress(address: string): { host: string; port: number } {
  const m = /^(\[[^\]]+\]|[^:]+):(\d+)$/.exec(address);
  if (!m) throw new Error(`gRPC listen address must be host:port; got "${address}"`);
  return { host: m[1]!, port: Number(m[2]) };
}

type AnyHandler = grpc.handleUnaryCall<unknown, unknown> | grpc.handleServerStreamingCall<unknown, unknown>;

export async function startGrpcServer(dispatcher: Dispatcher, address: string, options: GrpcServerOptions = {}): Promise<GrpcServerHandle> {
  const { host } = splitAddress(address);
  const def = await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const schema = buildMessageSchema(def);
  const service = def[SERVICE_NAME] as grpc.ServiceDefinition;

  // The same methods, with a request deserializer that refuses unknown fields.
  const strict: Record<string, grpc.MethodDefinition<unknown, unknown>> = {};
  for (const [name, method] of Object.entries(service)) {
    const requestType = resolveTypeName(def, SERVICE_NAME, (method as unknown as { requestType: { type: { name: string } } }).requestType.type.name);
    const decode = method.requestDeserialize;
    strict[name] = {
      ...method,
      requestDeserialize(buf: Buffer): unknown {
        try {
          checkMessage(schema, requestType, buf);
          return decode(buf);
        } catch (err) {
          return new Rejected(err instanceof WireError ? err.message : `malformed ${requestType}: ${err instanceof Error ? err.message : String(err)}`);
        }
      },
    };
  }

  const call = async (op: number, body: Uint8Array, okOp: number): Promise<Uint8Array> => expectOk(await dispatcher.dispatch(op, body), okOp);

  function unary<Req, Res>(run: (req: Req) => Promise<Res>): grpc.handleUnaryCall<unknown, unknown> {
    return (c, callback) => {
      const req = c.request;
      const p = req instanceof Rejected ? Promise.reject(badRequest(req.message)) : run(req as Req);
      p.then(
        (res) => callback(null, res),
        (err: unknown) => callback(toServiceError(err)),
      );
    };
  }

  const handlers: Record<string, AnyHandler> = {
    Append: unary(async (req: PbAppendRequest) => {
      const body = convert(() => appendToWire(req));
      const result = writeResults(await call(Op.Write, body, Op.WriteOk))[0];
      if (result === undefined) throw new Error('the write response holds no result');
      return result;
    }),
    Write: unary(async (req: PbWriteRequest) => {
      const body = convert(() => writeToWire(req));
      return { results: writeResults(await call(Op.Write, body, Op.WriteOk)) };
    }),
    Read: unary(async (req: PbReadRequest) => {
      const body = convert(() => readToWire(req));
      const ok = decodeReadOk(await call(Op.Read, body, Op.ReadOk));
      return { batches: batchesToPb(ok.batches), nextVersion: ok.nextVersion.toString() };
    }),
    Details: unary(async (req: PbDetailsRequest) => {
      const body = convert(() => detailsToWire(req));
      const d = decodeDetailsOk(await call(Op.Details, body, Op.DetailsOk));
      return {
        version: d.version.toString(),
        minVersion: d.minVersion.toString(),
        lastPosition: { shard: d.shard, seq: d.lastSeq.toString() },
        lastClientId: d.lastClientId.toString(),
        lastServerTimestampMs: String(d.lastServerTimestampMs),
        deleted: d.deleted,
      };
    }),
    Delete: unary(async (req: PbDeleteRequest) => {
      const body = convert(() => deleteToWire(req));
      return controlToPb(decodeControlOk(await call(Op.Delete, body, Op.DeleteOk)));
    }),
    TrimStart: unary(async (req: PbTrimStartRequest) => {
      const body = convert(() => trimStartToWire(req));
      return controlToPb(decodeControlOk(await call(Op.Trim, body, Op.TrimOk)));
    }),
    ReadShard: unary(async (req: PbReadShardRequest) => {
      const body = convert(() => readShardToWire(req));
      return readShardToPb(decodeReadShardOk(await call(Op.ReadShard, body, Op.ReadShardOk)));
    }),
    RegisterSchema: unary(async (req: PbSchema) => {
      const body = convert(() => registerSchemaToWire(req));
      return decodeRegisterSchemaOk(await call(Op.RegisterSchema, body, Op.RegisterSchemaOk));
    }),
    ListSchemas: unary(async (req: PbListSchemasRequest) => {
      const body = convert(() => listSchemasToWire(req));
      const schemas = decodeListSchemasOk(await call(Op.ListSchemas, body, Op.ListSchemasOk));
      return {
        schemas: schemas.map((x) => ({
          org: x.org.toString(),
          type: x.type.toString(),
          eventType: x.eventType,
          version: { major: x.major, minor: x.minor },
          format: x.format,
          schema: x.schema,
        })),
      };
    }),
    SubscribeShard: ((stream: grpc.ServerWritableStream<unknown, unknown>) => {
      subscribeShard(stream).catch((err: unknown) => {
        if (!stream.cancelled) stream.emit('error', toServiceError(err));
      });
    }) as grpc.handleServerStreamingCall<unknown, unknown>,
    ReadAll: ((stream: grpc.ServerWritableStream<unknown, unknown>) => {
      readAll(stream).catch((err: unknown) => {
        if (!stream.cancelled) stream.emit('error', toServiceError(err));
      });
    }) as grpc.handleServerStreamingCall<unknown, unknown>,
  };

  /** Follows pages until the end (or `to`), one streamed message per non-empty page. */
  async function readAll(stream: grpc.ServerWritableStream<unknown, unknown>): Promise<void> {
    const req = stream.request;
    if (req instanceof Rejected) throw badRequest(req.message);
    const r = req as PbReadRequest;
    // 0: from the first readable version (after trims).
    let from = u64(r.from);
    const closed = new Promise<void>((resolve) => {
      stream.once('cancelled', () => resolve());
      stream.once('close', () => resolve());
    });
    for (;;) {
      if (stream.cancelled) return;
      const body = convert(() => readToWire(r, from));
      const ok = decodeReadOk(await call(Op.Read, body, Op.ReadOk));
      if (stream.cancelled) return;
      if (ok.batches.length > 0) {
        // One page in flight at a time: the next page is read only once the transport has taken
        // this one, so a slow reader does not make the server buffer pages (up to 8 MiB each).
        const message = { batches: batchesToPb(ok.batches) };
        await Promise.race([new Promise<void>((resolve) => stream.write(message, () => resolve())), closed]);
      }
      if (ok.nextVersion === 0n) break;
      // From 0 (the first readable version, at least 1) a page covers at least version 1.
      if (ok.nextVersion <= (from === 0n ? 1n : from)) throw new Error(`read page did not advance (from ${from}, next ${ok.nextVersion})`);
      from = ok.nextVersion;
    }
    stream.end();
  }

  /** The shard feed, then its tail (long polls of GRPC_FEED_WAIT_MS), one page in flight, until cancelled. */
  async function subscribeShard(stream: grpc.ServerWritableStream<unknown, unknown>): Promise<void> {
    const req = stream.request;
    if (req instanceof Rejected) throw badRequest(req.message);
    const r = req as PbReadShardRequest;
    let from = u64(r.from);
    if (from === 0n) from = 1n;
    const closed = new Promise<void>((resolve) => {
      stream.once('cancelled', () => resolve());
      stream.once('close', () => resolve());
    });
    while (!stream.cancelled) {
      const body = convert(() => readShardToWire(r, from, GRPC_FEED_WAIT_MS));
      const ok = decodeReadShardOk(await call(Op.ReadShard, body, Op.ReadShardOk));
      if (stream.cancelled) return;
      if (ok.batches.length > 0) await Promise.race([new Promise<void>((resolve) => stream.write(readShardToPb(ok), () => resolve())), closed]);
      if (ok.next > from) from = ok.next;
    }
  }

  const server = new grpc.Server({
    'grpc.max_receive_message_length': Limits.frameBytesMax,
    'grpc.max_send_message_length': Limits.frameBytesMax,
    // Calls in flight per connection, as on the native protocol: sent to the client as HTTP/2
    // SETTINGS_MAX_CONCURRENT_STREAMS, so it queues further calls in order (backpressure) rather
    // than the server refusing them; a client that ignores the setting gets REFUSED_STREAM.
    'grpc.max_concurrent_streams': CONNECTION_REQUESTS_IN_FLIGHT_MAX,
  });
  server.addService(strict as grpc.ServiceDefinition, handlers as grpc.UntypedServiceImplementation);
  const port = await new Promise<number>((resolve, reject) => {
    server.bindAsync(address, options.credentials ?? grpc.ServerCredentials.createInsecure(), (err, p) => (err ? reject(err) : resolve(p)));
  });
  const graceMs = options.closeGraceMs ?? 5000;
  let closing: Promise<void> | undefined;
  return {
    address: `${host}:${port}`,
    close() {
      closing ??= new Promise<void>((resolve) => {
        const timer = setTimeout(() => {
          server.forceShutdown();
          resolve();
        }, graceMs);
        timer.unref();
        server.tryShutdown(() => {
          clearTimeout(timer);
          resolve();
        });
      });
      return closing;
    },
  };
}

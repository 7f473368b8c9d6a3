// gRPC ↔ native conversions for grpc.ts: each request's protobuf object (as proto-loader decodes
// it) checked and turned into the native wire body the Dispatcher takes, and each wire answer
// turned back into its protobuf object. Pure functions, run on the node's main thread by the
// gRPC handlers; a bad field throws CelerFailure 9100 naming it.
import { ErrorCode } from '../../client/errors.ts';
import { KeyError, toU128, type NormalizedKey } from '../../client/key.ts';
import {
  checkEvent,
  decodeError,
  encodeListSchemasRequest,
  encodeRegisterSchemaRequest,
  SchemaFormatCode,
  utf8Length,
  type SchemaFormatName,
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
import {} from '../constants.ts';
import type { DispatchResult } from './dispatch.ts';

/** ShardBatch.op by the wire's batch op. */
export const FEED_OP_NAMES = ['write', 'delete', 'trim'] as const;

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

export function badRequest(message: string): CelerFailure {
  return new CelerFailure(ErrorCode.BadRequest, message);
}

// ---------------------------------------------------------------------------------------------
// Request conversion (protobuf object → wire body)

export interface PbKey {
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
export interface PbAppendRequest {
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
export interface PbWriteRequest {
  clientId?: string;
  writes?: PbAggregateWrite[];
}
export interface PbReadRequest {
  key?: PbKey;
  from?: string;
  to?: string;
  eventTypes?: string[];
  maxBytes?: number;
}
export interface PbDetailsRequest {
  key?: PbKey;
}
export interface PbDeleteRequest {
  key?: PbKey;
  expectedVersion?: string;
  allowRecreate?: boolean;
  clientId?: string;
}
export interface PbTrimStartRequest {
  key?: PbKey;
  keepFromVersion?: string;
  clientId?: string;
}

const EMPTY = new Uint8Array(0);
const te = new TextEncoder();

export function convertKey(k: PbKey | undefined, where: string): NormalizedKey {
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

export function u64(s: string | undefined): bigint {
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

export interface PbReadShardRequest {
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

export interface PbSchema {
  org?: string;
  type?: string;
  eventType?: string;
  version?: { major?: number; minor?: number };
  format?: string;
  schema?: string;
}

export interface PbListSchemasRequest {
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

export function readShardToPb(ok: WireReadShardOk): object {
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

export function controlToPb(ok: WireControlOk): { position: { shard: number; seq: string }; version: string; minVersion: string; unchanged: boolean } {
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
export function expectOk(res: DispatchResult, okOp: number): Uint8Array {
  if (res.op === Op.Error) {
    const e = decodeError(res.body);
    throw new CelerFailure(e.code, e.message, e.detail);
  }
  if (res.op !== okOp) throw new Error(`dispatcher answered op 0x${res.op.toString(16)}; expected 0x${okOp.toString(16)}`);
  return res.body;
}

export function writeResults(body: Uint8Array): PbAppendResult[] {
  const ok = decodeWriteOk(body);
  return ok.ranges.map((r, i) => ({
    fromVersion: r.fromVersion.toString(),
    toVersion: r.toVersion.toString(),
    position: { shard: ok.shard, seq: (ok.firstSeq + BigInt(i)).toString() },
  }));
}

export function batchesToPb(batches: WireReadOk['batches']): PbBatch[] {
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
export function convert<T>(fn: () => T): T {
  try {
    return fn();
  } catch (err) {
    if (err instanceof KeyError || err instanceof WireError) throw badRequest(err.message);
    throw err;
  }
}

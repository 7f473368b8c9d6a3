// Caller input → request frames, checked before anything is sent. Every rejection is a
// BadRequestError (9100, as the server would answer) whose message names the field.
import { BadRequestError, ErrorCode } from './errors.ts';
import { KeyError, U64_MAX, normalizeKey, toU128, type AggregateKey, type KeyPart, type NormalizedKey } from './key.ts';
import type { AggregateWrite, DeleteOptions, EventInput, ExpectedVersion, ListSchemasFilter, ReadOptions, SchemaInput } from './types.ts';
import {
  Expect,
  FRAME_HEADER_BYTES,
  Limits,
  Op,
  WireError,
  Writer,
  beginFrame,
  checkEvent,
  endFrame,
  writeReadRequest,
  utf8Length,
  writeWriteRequest,
  encodeFrame,
  encodeListSchemasRequest,
  encodeRegisterSchemaRequest,
  SchemaFormatCode,
  type ExpectMode,
  type WireEvent,
} from './wire.ts';

/** Offset of the first aggregate key in a frame: write = header + clientId u128 + count u16; others = header. */
export const WRITE_KEY_AT = FRAME_HEADER_BYTES + 16 + 2;
export const KEY_AT = FRAME_HEADER_BYTES;

export function badRequest(message: string): BadRequestError {
  return new BadRequestError(ErrorCode.BadRequest, message);
}

/** Runs a check from key.ts / wire.ts and turns its error into a BadRequestError. */
function checked<T>(f: () => T): T {
  try {
    return f();
  } catch (err) {
    if (err instanceof KeyError || err instanceof WireError) throw badRequest(err.message);
    throw err;
  }
}

/** The normalised key; `where` replaces "key" in messages ("writes[2].key.org must ..."). */
export function checkedKey(key: AggregateKey, where: string): NormalizedKey {
  try {
    return normalizeKey(key);
  } catch (err) {
    if (err instanceof KeyError) throw badRequest(err.message.replace(/^key/, where));
    throw err;
  }
}

export function toClientId(id: KeyPart | undefined, fallback: KeyPart | undefined): bigint {
  const v = id ?? fallback;
  if (v === undefined) return 0n;
  return checked(() => toU128(v, 'clientId'));
}

/** A u64 given as bigint or safe-integer number; `what` names it in the message. */
export function toU64(v: unknown, what: string): bigint {
  if (typeof v === 'bigint') {
    if (v < 0n || v > U64_MAX) throw badRequest(`${what} must be 0..2^64-1; got ${v}`);
    return v;
  }
  if (typeof v === 'number' && Number.isSafeInteger(v) && v >= 0) return BigInt(v);
  throw badRequest(`${what} must be a non-negative integer (bigint or safe-integer number); got ${typeof v === 'string' ? `"${v}"` : String(v)}`);
}

export interface Guard {
  mode: ExpectMode;
  version: bigint;
}

const ANY: Guard = { mode: Expect.Any, version: 0n };
const NO_STREAM: Guard = { mode: Expect.NoStream, version: 0n };
const STREAM_EXISTS: Guard = { mode: Expect.StreamExists, version: 0n };

export function toGuard(ev: ExpectedVersion | undefined, where: string): Guard {
  if (ev === undefined || ev === 'any') return ANY;
  if (ev === 'no_stream') return NO_STREAM;
  if (ev === 'stream_exists') return STREAM_EXISTS;
  if (typeof ev === 'number' || typeof ev === 'bigint') return { mode: Expect.Exact, version: toU64(ev, where) };
  throw badRequest(`${where} must be 'any', 'no_stream', 'stream_exists' or an integer version >= 0; got ${typeof ev === 'string' ? `"${ev}"` : String(ev)}`);
}

/** Checks events and returns them as the codec sees them, plus their encoded size. */
function toWireEvents(events: unknown, where: string): { events: WireEvent[]; bytes: number } {
  if (!Array.isArray(events)) throw badRequest(`${where} must be an array of events`);
  if (events.length === 0 || events.length > Limits.eventsPerWriteMax) {
    throw badRequest(`${where} has ${events.length} events; a write appends 1..${Limits.eventsPerWriteMax}`);
  }
  const out: WireEvent[] = new Array<WireEvent>(events.length);
  let bytes = 0;
  for (let i = 0; i < events.length; i++) {
    const e = events[i] as EventInput;
    const at = `${where}[${i}]`;
    if (e === null || typeof e !== 'object') throw badRequest(`${at} must be an object { type, data }`);
    let we: WireEvent = e;
    const sv = e.schemaVersion;
    if (sv !== undefined) {
      if (sv === null || typeof sv !== 'object') throw badRequest(`${at}.schemaVersion must be { major, minor }`);
      we = { type: e.type, data: e.data, metadata: e.metadata, iv: e.iv, schemaMajor: sv.major, schemaMinor: sv.minor };
    }
    checked(() => checkEvent(we, at));
    // mask u8 + type len u8 + type + data len u32 + data [+ meta len u32 + meta] [+ schema 2×u32] [+ iv]
    bytes += 2 + utf8Length(we.type) + 4 + we.data.length;
    if (we.metadata !== undefined) bytes += 4 + we.metadata.length;
    if (we.schemaMajor !== undefined) bytes += 8;
    if (we.iv !== undefined) bytes += we.iv.length;
    out[i] = we;
  }
  return { events: out, bytes };
}

/** Per aggregate write on the wire: key + mode u8 + version u64 + clientSeq u64 + count u32. */
const AGGREGATE_WRITE_HEAD_BYTES = 48 + 1 + 8 + 8 + 4;

export interface EncodedWrite {
  frame: Uint8Array;
  /** Number of aggregate writes (answers carry one range each). */
  count: number;
}

/** Builds the frame of a write; `clientId` already resolved (0n = anonymous). */
export function encodeWrite(clientId: bigint, writes: readonly AggregateWrite[], where = 'writes'): EncodedWrite {
  if (!Array.isArray(writes)) throw badRequest(`${where} must be an array`);
  if (writes.length === 0 || writes.length > Limits.writesPerRequestMax) {
    throw badRequest(`a write touches 1..${Limits.writesPerRequestMax} aggregates; got ${writes.length}`);
  }
  let bytes = FRAME_HEADER_BYTES + 16 + 2;
  const wire = new Array<{ key: NormalizedKey; expectMode: ExpectMode; expectVersion: bigint; clientSeq: bigint; events: WireEvent[] }>(writes.length);
  for (let i = 0; i < writes.length; i++) {
    const w = writes[i]!;
    const at = writes.length === 1 && where === 'append' ? '' : `${where}[${i}].`;
    if (w === null || typeof w !== 'object') throw badRequest(`${where}[${i}] must be an object { key, events }`);
    const key = checkedKey(w.key, `${at}key`);
    const guard = toGuard(w.expectedVersion, `${at}expectedVersion`);
    const clientSeq = w.clientSeq === undefined ? 0n : toU64(w.clientSeq, `${at}clientSeq`);
    if (clientSeq !== 0n && clientId === 0n) {
      throw badRequest(`${at}clientSeq is set but no clientId is: deduplication is per (aggregate, clientId), so give this writer a stable clientId`);
    }
    const ev = toWireEvents(w.events, `${at}events`);
    bytes += AGGREGATE_WRITE_HEAD_BYTES + ev.bytes;
    wire[i] = { key, expectMode: guard.mode, expectVersion: guard.version, clientSeq, events: ev.events };
  }
  if (bytes - FRAME_HEADER_BYTES > Limits.frameBytesMax) {
    throw badRequest(`the write is ${bytes - FRAME_HEADER_BYTES} bytes encoded; a request may be at most ${Limits.frameBytesMax} bytes: split it`);
  }
  const w = new Writer(0, Buffer.allocUnsafe(bytes));
  beginFrame(w);
  writeWriteRequest(w, { clientId, writes: wire });
  return { frame: endFrame(w, 0, Op.Write), count: writes.length };
}

export function encodeRead(key: AggregateKey, opts: ReadOptions = {}): Uint8Array {
  const k = checkedKey(key, 'key');
  if (opts === null || typeof opts !== 'object') throw badRequest('read options must be an object');
  // 0 = from the aggregate's first readable version (after trims).
  const from = opts.from === undefined ? 0n : toU64(opts.from, 'from');
  const to = opts.to === undefined ? 0n : toU64(opts.to, 'to');
  if (opts.to !== undefined && (to === 0n || to < from)) throw badRequest(`read range is empty: to (${to}) is below from (${from})`);
  let maxBytes = 0;
  if (opts.maxBytes !== undefined) {
    if (!Number.isSafeInteger(opts.maxBytes) || opts.maxBytes < 1) throw badRequest(`maxBytes must be a positive integer; got ${String(opts.maxBytes)}`);
    maxBytes = Math.min(opts.maxBytes, Limits.readPageBytesMax);
  }
  const types = opts.eventTypes ?? [];
  if (!Array.isArray(types)) throw badRequest('eventTypes must be an array of strings');
  if (types.length > Limits.readTypesMax) throw badRequest(`eventTypes names ${types.length} types; the limit is ${Limits.readTypesMax}`);
  let bytes = FRAME_HEADER_BYTES + 48 + 8 + 8 + 4 + 1;
  for (let i = 0; i < types.length; i++) {
    const t = types[i];
    const n = typeof t === 'string' ? utf8Length(t) : -1;
    if (n < 1 || n > Limits.eventTypeBytesMax) throw badRequest(`eventTypes[${i}] must be a string of 1..${Limits.eventTypeBytesMax} UTF-8 bytes`);
    bytes += 1 + n;
  }
  const w = new Writer(0, Buffer.allocUnsafe(bytes));
  beginFrame(w);
  writeReadRequest(w, { key: k, from, to, maxBytes, eventTypes: types });
  return endFrame(w, 0, Op.Read);
}

export function encodeDetails(key: AggregateKey): Uint8Array {
  const k = checkedKey(key, 'key');
  const w = new Writer(0, Buffer.allocUnsafe(FRAME_HEADER_BYTES + 48));
  beginFrame(w);
  w.key(k);
  return endFrame(w, 0, Op.Details);
}

/** Where the key of a delete or trim frame lies (after the clientId), for the pool's slot choice. */
export const CONTROL_KEY_AT = FRAME_HEADER_BYTES + 16;

export function encodeDelete(clientId: bigint, key: AggregateKey, opts: DeleteOptions = {}): Uint8Array {
  const k = checkedKey(key, 'key');
  if (opts === null || typeof opts !== 'object') throw badRequest('delete options must be an object');
  const ev = opts.expectedVersion;
  if (ev !== undefined && ev !== 'any' && typeof ev !== 'number' && typeof ev !== 'bigint') {
    throw badRequest(`delete takes expectedVersion as a version (or 'any'); got ${typeof ev === 'string' ? `"${ev}"` : String(ev)}`);
  }
  const guard = toGuard(ev, 'expectedVersion');
  if (guard.mode === Expect.Exact && guard.version === 0n) throw badRequest('delete with expectedVersion 0: there is nothing to delete at version 0');
  if (opts.allowRecreate !== undefined && typeof opts.allowRecreate !== 'boolean') throw badRequest('allowRecreate must be a boolean');
  const w = new Writer(0, Buffer.allocUnsafe(FRAME_HEADER_BYTES + 16 + 48 + 1 + 8 + 1));
  beginFrame(w);
  w.u128(clientId);
  w.key(k);
  w.u8(guard.mode);
  w.u64(guard.version);
  w.u8(opts.allowRecreate === true ? 1 : 0);
  return endFrame(w, 0, Op.Delete);
}

export function encodeTrim(clientId: bigint, key: AggregateKey, keepFromVersion: bigint | number): Uint8Array {
  const k = checkedKey(key, 'key');
  const keep = toU64(keepFromVersion, 'keepFromVersion');
  if (keep === 0n) throw badRequest('keepFromVersion must be at least 1 (versions start at 1)');
  const w = new Writer(0, Buffer.allocUnsafe(FRAME_HEADER_BYTES + 16 + 48 + 8));
  beginFrame(w);
  w.u128(clientId);
  w.key(k);
  w.u64(keep);
  return endFrame(w, 0, Op.Trim);
}

export function encodePing(): Uint8Array {
  const w = new Writer(0, Buffer.allocUnsafe(FRAME_HEADER_BYTES));
  beginFrame(w);
  return endFrame(w, 0, Op.Ping);
}

const FORMATS = Object.keys(SchemaFormatCode);

export function encodeRegisterSchema(input: SchemaInput): Uint8Array {
  if (input === null || typeof input !== 'object') throw badRequest('registerSchema needs { org, type, eventType, version: { major, minor }, format, schema }');
  const org = checked(() => toU128(input.org, 'org'));
  const type = checked(() => toU128(input.type, 'type'));
  const eventType = input.eventType;
  const n = typeof eventType === 'string' ? utf8Length(eventType) : -1;
  if (n < 1 || n > Limits.eventTypeBytesMax) throw badRequest(`eventType must be a string of 1..${Limits.eventTypeBytesMax} UTF-8 bytes`);
  const v = input.version;
  if (v === null || typeof v !== 'object') throw badRequest('version must be { major, minor }');
  for (const [name, x] of [['major', v.major], ['minor', v.minor]] as const) {
    if (!Number.isInteger(x) || x < 0 || x > 0xffff_ffff) throw badRequest(`version.${name} must be an integer 0..2^32-1; got ${String(x)}`);
  }
  if (typeof input.format !== 'string' || !FORMATS.includes(input.format)) throw badRequest(`format must be one of ${FORMATS.join(', ')}; got ${String(input.format)}`);
  let text = input.schema;
  if (typeof text === 'object' && text !== null && input.format === 'json') text = JSON.stringify(text);
  if (typeof text !== 'string' || text.length === 0) throw badRequest(`schema must be the schema's text${input.format === 'json' ? ' (or a JSON Schema object)' : ''}`);
  const bytes = utf8Length(text);
  if (bytes > Limits.schemaBytesMax) throw badRequest(`the schema is ${bytes} bytes; the limit is ${Limits.schemaBytesMax}`);
  const body = encodeRegisterSchemaRequest({ org, type, eventType, major: v.major, minor: v.minor, format: input.format, schema: text });
  return encodeFrame(0, Op.RegisterSchema, body);
}

export function encodeListSchemas(filter: ListSchemasFilter): Uint8Array {
  if (filter === null || typeof filter !== 'object') throw badRequest('listSchemas needs { org, type? }');
  const org = checked(() => toU128(filter.org, 'org'));
  const type = filter.type === undefined ? undefined : checked(() => toU128(filter.type!, 'type'));
  return encodeFrame(0, Op.ListSchemas, encodeListSchemasRequest({ org, type }));
}

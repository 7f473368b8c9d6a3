// The native binary protocol's messages (shared by the client and the server). Framing is in
// frame.ts, byte primitives in codec.ts, limits in limits.ts; all are re-exported from here.
// Integers in bodies are big-endian; u128 values are 16 bytes big-endian (SPEC §1).
// Every field of every message is known: a decoder meets an unknown op, an unknown flag bit or
// trailing bytes and fails with WireError, which the server answers with 9100.
import type { NormalizedKey } from './key.ts';
import { Reader, te, td, WireError, Writer } from './codec.ts';
import { Limits } from './limits.ts';

// The primitives, limits and framing live in their own files; this module re-exports them so the
// protocol has one import for its users.
export { Reader, WireError, Writer } from './codec.ts';
export { Limits } from './limits.ts';
export * from './frame.ts';
export * from './wire-feed.ts';
export * from './wire-control.ts';
export * from './wire-schema.ts';

export const Op = {
  Write: 1,
  Read: 2,
  Details: 3,
  Ping: 4,
  ReadShard: 5,
  Delete: 10,
  Trim: 11,
  RegisterSchema: 6,
  ListSchemas: 7,
  WriteOk: 0x81,
  ReadOk: 0x82,
  DetailsOk: 0x83,
  Pong: 0x84,
  ReadShardOk: 0x85,
  DeleteOk: 0x8a,
  TrimOk: 0x8b,
  RegisterSchemaOk: 0x86,
  ListSchemasOk: 0x87,
  Error: 0xff,
} as const;
export type OpCode = (typeof Op)[keyof typeof Op];

/** Expected-version mode on the wire. */
export const Expect = { Any: 0, NoStream: 1, StreamExists: 2, Exact: 3 } as const;
export type ExpectMode = (typeof Expect)[keyof typeof Expect];

const EV_METADATA = 1;
const EV_SCHEMA = 2;
const EV_IV = 4;
const EV_KNOWN = EV_METADATA | EV_SCHEMA | EV_IV;
export const IV_BYTES = 12;

// ---------------------------------------------------------------------------------------------
// Events

/** An event as the codec sees it (normalised: absent optional fields are undefined). */
export interface WireEvent {
  type: string;
  data: Uint8Array;
  metadata?: Uint8Array | undefined;
  schemaMajor?: number | undefined;
  schemaMinor?: number | undefined;
  iv?: Uint8Array | undefined;
}

export function writeEvent(w: Writer, e: WireEvent): void {
  let mask = 0;
  if (e.metadata !== undefined) mask |= EV_METADATA;
  if (e.schemaMajor !== undefined) mask |= EV_SCHEMA;
  if (e.iv !== undefined) mask |= EV_IV;
  w.u8(mask);
  // The type goes straight into the buffer, without an intermediate array.
  const typeLen = utf8Length(e.type);
  w.u8(typeLen);
  w.ensure(typeLen);
  writeUtf8(w, e.type);
  w.u32(e.data.length);
  w.bytes(e.data);
  if (e.metadata !== undefined) {
    w.u32(e.metadata.length);
    w.bytes(e.metadata);
  }
  if (e.schemaMajor !== undefined) {
    w.u32(e.schemaMajor);
    w.u32(e.schemaMinor ?? 0);
  }
  if (e.iv !== undefined) w.bytes(e.iv);
}

/** UTF-8 length of a string, without encoding it (lone surrogates count 3, as TextEncoder writes U+FFFD). */
export function utf8Length(str: string): number {
  let n = 0;
  for (let i = 0; i < str.length; i++) {
    const c = str.charCodeAt(i);
    if (c < 0x80) n += 1;
    else if (c < 0x800) n += 2;
    else if (c >= 0xd800 && c <= 0xdbff && i + 1 < str.length && (str.charCodeAt(i + 1) & 0xfc00) === 0xdc00) {
      n += 4;
      i++;
    } else n += 3;
  }
  return n;
}

/** Writes `str` as UTF-8 at w.pos; room for utf8Length(str) bytes must be ensured. */
function writeUtf8(w: Writer, str: string): void {
  const buf = w.buf;
  let i = 0;
  // ASCII fast path (event type names nearly always are); the rest goes through encodeInto.
  for (; i < str.length; i++) {
    const c = str.charCodeAt(i);
    if (c >= 0x80) break;
    buf[w.pos++] = c;
  }
  if (i < str.length) w.pos += te.encodeInto(str.slice(i), buf.subarray(w.pos)).written;
}

/** Checks an event the caller built (client side), with the messages a person needs. */
export function checkEvent(e: WireEvent, where: string): void {
  if (typeof e.type !== 'string') throw new WireError(`${where}.type must be a string`);
  const typeBytes = utf8Length(e.type);
  if (typeBytes < 1 || typeBytes > Limits.eventTypeBytesMax) {
    throw new WireError(`${where}.type must be 1..${Limits.eventTypeBytesMax} UTF-8 bytes; got ${typeBytes}`);
  }
  if (!(e.data instanceof Uint8Array)) throw new WireError(`${where}.data must be a Uint8Array`);
  if (e.metadata !== undefined && !(e.metadata instanceof Uint8Array)) throw new WireError(`${where}.metadata must be a Uint8Array`);
  const size = e.data.length + (e.metadata?.length ?? 0);
  if (size > Limits.eventBytesMax) {
    throw new WireError(`${where} is ${size} bytes (data + metadata); the limit is ${Limits.eventBytesMax}`);
  }
  if (e.iv !== undefined && (!(e.iv instanceof Uint8Array) || e.iv.length !== IV_BYTES)) {
    throw new WireError(`${where}.iv must be a Uint8Array of ${IV_BYTES} bytes (AES-GCM nonce)`);
  }
  if (e.schemaMajor !== undefined) {
    for (const [n, v] of [['major', e.schemaMajor], ['minor', e.schemaMinor ?? 0]] as const) {
      if (!Number.isInteger(v) || v < 0 || v > 0xffff_ffff) throw new WireError(`${where}.schemaVersion.${n} must be an integer 0..2^32-1`);
    }
  }
}

/** Reads one event, validating every field. `where` names it in messages. */
export function readEvent(r: Reader, where: string): WireEvent {
  const mask = r.u8(`${where} field mask`);
  if ((mask & ~EV_KNOWN) !== 0) {
    throw new WireError(`${where} has unknown fields (flag bits 0x${(mask & ~EV_KNOWN).toString(16)}); this server knows metadata, schemaVersion and iv`);
  }
  const typeLen = r.u8(`${where}.type length`);
  if (typeLen === 0) throw new WireError(`${where}.type is empty; an event type is 1..${Limits.eventTypeBytesMax} UTF-8 bytes`);
  const type = r.utf8(typeLen, `${where}.type`);
  const dataLen = r.u32(`${where}.data length`);
  if (dataLen > Limits.eventBytesMax) {
    throw new WireError(`${where}.data is ${dataLen} bytes; the limit is ${Limits.eventBytesMax} bytes per event`);
  }
  const data = r.bytes(dataLen, `${where}.data`);
  const e: WireEvent = { type, data };
  if (mask & EV_METADATA) {
    const metaLen = r.u32(`${where}.metadata length`);
    if (dataLen + metaLen > Limits.eventBytesMax) {
      throw new WireError(`${where} is ${dataLen + metaLen} bytes (data + metadata); the limit is ${Limits.eventBytesMax}`);
    }
    e.metadata = r.bytes(metaLen, `${where}.metadata`);
  }
  if (mask & EV_SCHEMA) {
    e.schemaMajor = r.u32(`${where}.schemaVersion.major`);
    e.schemaMinor = r.u32(`${where}.schemaVersion.minor`);
  }
  if (mask & EV_IV) e.iv = r.bytes(IV_BYTES, `${where}.iv`);
  return e;
}

/** Skips over one already-validated event (trusted bytes). */
export function skipEvent(r: Reader): void {
  // Note: `r.pos += r.u8()` would add to the position read before u8() advanced it.
  const mask = r.u8('mask');
  const typeLen = r.u8('typeLen');
  r.pos += typeLen;
  const dataLen = r.u32('dataLen');
  r.pos += dataLen;
  if (mask & EV_METADATA) {
    const metaLen = r.u32('metaLen');
    r.pos += metaLen;
  }
  if (mask & EV_SCHEMA) r.pos += 8;
  if (mask & EV_IV) r.pos += IV_BYTES;
  if (r.pos > r.end) throw new WireError('event runs past the end of its message');
}

/** The parts of one event, as views into its message. */
export interface WireEventFields {
  type: Uint8Array;
  data: Uint8Array;
  metadata?: Uint8Array | undefined;
  schema?: { major: number; minor: number } | undefined;
  iv?: Uint8Array | undefined;
}

/** Reads one already-validated event as views (the shard transcodes these to its disk encoding). */
export function readEventFields(r: Reader): WireEventFields {
  const mask = r.u8('mask');
  const type = r.bytes(r.u8('typeLen'), 'type');
  const data = r.bytes(r.u32('dataLen'), 'data');
  const f: WireEventFields = { type, data };
  if (mask & EV_METADATA) f.metadata = r.bytes(r.u32('metaLen'), 'metadata');
  if (mask & EV_SCHEMA) f.schema = { major: r.u32('major'), minor: r.u32('minor') };
  if (mask & EV_IV) f.iv = r.bytes(IV_BYTES, 'iv');
  return f;
}

/** Writes one event from its parts (the inverse of readEventFields). */
export function writeEventFields(w: Writer, f: WireEventFields): void {
  let mask = 0;
  if (f.metadata !== undefined) mask |= EV_METADATA;
  if (f.schema !== undefined) mask |= EV_SCHEMA;
  if (f.iv !== undefined) mask |= EV_IV;
  w.u8(mask);
  w.u8(f.type.length);
  w.bytes(f.type);
  w.u32(f.data.length);
  w.bytes(f.data);
  if (f.metadata !== undefined) {
    w.u32(f.metadata.length);
    w.bytes(f.metadata);
  }
  if (f.schema !== undefined) {
    w.u32(f.schema.major);
    w.u32(f.schema.minor);
  }
  if (f.iv !== undefined) w.bytes(f.iv);
}

/** The type of an encoded event at `at` (trusted bytes), without decoding the rest. */
export function peekEventType(buf: Uint8Array, at: number): string {
  const len = buf[at + 1]!;
  return td.decode(buf.subarray(at + 2, at + 2 + len));
}

// ---------------------------------------------------------------------------------------------
// Requests

export interface WireAggregateWrite {
  key: NormalizedKey;
  expectMode: ExpectMode;
  /** Meaningful when expectMode is Exact. */
  expectVersion: bigint;
  /** 0 = no deduplication. */
  clientSeq: bigint;
  eventCount: number;
  /** How many of the events name a schemaVersion and carry no iv (those a registered schema checks). */
  schemaEvents: number;
  /** The encoded events, back to back (a view into the request). */
  events: Uint8Array;
}

export interface WireWriteRequest {
  clientId: bigint;
  writes: WireAggregateWrite[];
}

export interface WireWriteInput {
  clientId: bigint;
  writes: { key: NormalizedKey; expectMode: ExpectMode; expectVersion: bigint; clientSeq: bigint; events: WireEvent[] }[];
}

export function encodeWriteRequest(req: WireWriteInput): Uint8Array {
  const w = new Writer(64 + req.writes.length * 96);
  writeWriteRequest(w, req);
  return w.finish();
}

/** Appends a write request body to `w` (what encodeWriteRequest returns); lets a caller build a frame in one buffer. */
export function writeWriteRequest(w: Writer, req: WireWriteInput): void {
  w.u128(req.clientId);
  w.u16(req.writes.length);
  for (const a of req.writes) {
    w.key(a.key);
    w.u8(a.expectMode);
    w.u64(a.expectVersion);
    w.u64(a.clientSeq);
    w.u32(a.events.length);
    for (const e of a.events) writeEvent(w, e);
  }
}

export function decodeWriteRequest(body: Uint8Array): WireWriteRequest {
  const r = new Reader(body);
  const clientId = r.u128('clientId');
  const n = r.u16('write count');
  if (n === 0) throw new WireError('a write needs at least one aggregate write; got none');
  if (n > Limits.writesPerRequestMax) throw new WireError(`a write may touch at most ${Limits.writesPerRequestMax} aggregates; got ${n}`);
  const writes: WireAggregateWrite[] = [];
  for (let i = 0; i < n; i++) {
    const where = `writes[${i}]`;
    const key = r.key(`${where}.key`);
    const expectMode = r.u8(`${where}.expectedVersion mode`);
    if (expectMode > Expect.Exact) throw new WireError(`${where}.expectedVersion mode ${expectMode} is unknown (0 any, 1 no_stream, 2 stream_exists, 3 exact)`);
    const expectVersion = r.u64(`${where}.expectedVersion`);
    const clientSeq = r.u64(`${where}.clientSeq`);
    const eventCount = r.u32(`${where}.event count`);
    if (eventCount === 0) throw new WireError(`${where} has no events; an aggregate write appends 1..${Limits.eventsPerWriteMax} events`);
    if (eventCount > Limits.eventsPerWriteMax) throw new WireError(`${where} has ${eventCount} events; the limit is ${Limits.eventsPerWriteMax}`);
    const start = r.pos;
    let schemaEvents = 0;
    for (let j = 0; j < eventCount; j++) {
      const e = readEvent(r, `${where}.events[${j}]`);
      if (e.schemaMajor !== undefined && e.iv === undefined) schemaEvents++;
    }
    writes.push({ key, expectMode: expectMode as ExpectMode, expectVersion, clientSeq, eventCount, schemaEvents, events: body.subarray(start, r.pos) });
  }
  r.done('the write request');
  return { clientId, writes };
}

export interface WireReadRequest {
  key: NormalizedKey;
  from: bigint;
  /** 0 = to the end. */
  to: bigint;
  maxBytes: number;
  eventTypes: string[];
}

export function encodeReadRequest(req: WireReadRequest): Uint8Array {
  const w = new Writer(96);
  writeReadRequest(w, req);
  return w.finish();
}

/** Appends a read request body to `w` (what encodeReadRequest returns). */
export function writeReadRequest(w: Writer, req: WireReadRequest): void {
  w.key(req.key);
  w.u64(req.from);
  w.u64(req.to);
  w.u32(req.maxBytes);
  w.u8(req.eventTypes.length);
  for (const t of req.eventTypes) {
    const b = te.encode(t);
    w.u8(b.length);
    w.bytes(b);
  }
}

export function decodeReadRequest(body: Uint8Array): WireReadRequest {
  const r = new Reader(body);
  const key = r.key('key');
  let from = r.u64('from');
  if (from === 0n) from = 1n;
  const to = r.u64('to');
  if (to !== 0n && to < from) throw new WireError(`read range is empty: to (${to}) is below from (${from})`);
  let maxBytes = r.u32('maxBytes');
  if (maxBytes === 0) maxBytes = Limits.readPageBytesDefault;
  maxBytes = Math.min(maxBytes, Limits.readPageBytesMax);
  const nTypes = r.u8('event type count');
  if (nTypes > Limits.readTypesMax) throw new WireError(`a read filter may name at most ${Limits.readTypesMax} event types; got ${nTypes}`);
  const eventTypes: string[] = [];
  for (let i = 0; i < nTypes; i++) {
    const len = r.u8(`eventTypes[${i}] length`);
    if (len === 0) throw new WireError(`eventTypes[${i}] is empty`);
    eventTypes.push(r.utf8(len, `eventTypes[${i}]`));
  }
  r.done('the read request');
  return { key, from, to, maxBytes, eventTypes };
}


export function encodeKeyRequest(key: NormalizedKey): Uint8Array {
  const w = new Writer(48);
  w.key(key);
  return w.finish();
}

export function decodeKeyRequest(body: Uint8Array): NormalizedKey {
  const r = new Reader(body);
  const key = r.key('key');
  r.done('the request');
  return key;
}

// ---------------------------------------------------------------------------------------------
// Responses

export interface WireWriteOk {
  shard: number;
  /** Position of the first batch; batch i has firstSeq + i. */
  firstSeq: bigint;
  ranges: { fromVersion: bigint; toVersion: bigint }[];
}

export function encodeWriteOk(ok: WireWriteOk): Uint8Array {
  const w = new Writer(16 + ok.ranges.length * 16);
  w.u32(ok.shard);
  w.u64(ok.firstSeq);
  w.u16(ok.ranges.length);
  for (const rg of ok.ranges) {
    w.u64(rg.fromVersion);
    w.u64(rg.toVersion);
  }
  return w.finish();
}

export function decodeWriteOk(body: Uint8Array): WireWriteOk {
  const r = new Reader(body);
  const shard = r.u32('shard');
  const firstSeq = r.u64('firstSeq');
  const n = r.u16('count');
  const ranges = [];
  for (let i = 0; i < n; i++) ranges.push({ fromVersion: r.u64('fromVersion'), toVersion: r.u64('toVersion') });
  r.done('the write response');
  return { shard, firstSeq, ranges };
}

/** Batch header on the read response; events follow, each prefixed by its u64 version. */
export interface WireBatchHeader {
  fromVersion: bigint;
  toVersion: bigint;
  shard: number;
  seq: bigint;
  clientId: bigint;
  serverTimestampMs: number;
  eventCount: number;
}

export function writeBatchHeader(w: Writer, b: WireBatchHeader): void {
  w.u64(b.fromVersion);
  w.u64(b.toVersion);
  w.u32(b.shard);
  w.u64(b.seq);
  w.u128(b.clientId);
  w.u64n(b.serverTimestampMs);
  w.u32(b.eventCount);
}

export interface WireReadOk {
  nextVersion: bigint;
  batches: (WireBatchHeader & { events: (WireEvent & { version: bigint })[] })[];
}

/** The read response: u64 nextVersion (0 = complete) | u32 batch count | batches. */
export function decodeReadOk(body: Uint8Array): WireReadOk {
  const r = new Reader(body);
  const nextVersion = r.u64('nextVersion');
  const n = r.u32('batch count');
  const batches: WireReadOk['batches'] = [];
  for (let i = 0; i < n; i++) {
    const h: WireBatchHeader = {
      fromVersion: r.u64('fromVersion'),
      toVersion: r.u64('toVersion'),
      shard: r.u32('shard'),
      seq: r.u64('seq'),
      clientId: r.u128('clientId'),
      serverTimestampMs: r.u64n('serverTimestampMs'),
      eventCount: r.u32('eventCount'),
    };
    const events: (WireEvent & { version: bigint })[] = [];
    for (let j = 0; j < h.eventCount; j++) {
      const version = r.u64('version');
      events.push({ ...readEvent(r, `batches[${i}].events[${j}]`), version });
    }
    batches.push({ ...h, events });
  }
  r.done('the read response');
  return { nextVersion, batches };
}

export interface WireDetails {
  version: bigint;
  minVersion: bigint;
  shard: number;
  lastSeq: bigint;
  lastClientId: bigint;
  lastServerTimestampMs: number;
  deleted: boolean;
}

export function encodeDetailsOk(d: WireDetails): Uint8Array {
  const w = new Writer(64);
  w.u64(d.version);
  w.u64(d.minVersion);
  w.u32(d.shard);
  w.u64(d.lastSeq);
  w.u128(d.lastClientId);
  w.u64n(d.lastServerTimestampMs);
  w.u8(d.deleted ? 1 : 0);
  return w.finish();
}

export function decodeDetailsOk(body: Uint8Array): WireDetails {
  const r = new Reader(body);
  const d: WireDetails = {
    version: r.u64('version'),
    minVersion: r.u64('minVersion'),
    shard: r.u32('shard'),
    lastSeq: r.u64('lastSeq'),
    lastClientId: r.u128('lastClientId'),
    lastServerTimestampMs: r.u64n('lastServerTimestampMs'),
    deleted: r.u8('deleted') === 1,
  };
  r.done('the details response');
  return d;
}

export interface WireErrorBody {
  code: number;
  message: string;
  detail: Record<string, unknown>;
}

export function encodeError(code: number, message: string, detail: Record<string, unknown> = {}): Uint8Array {
  const w = new Writer(64 + message.length);
  const m = te.encode(message);
  const d = te.encode(JSON.stringify(detail));
  w.u16(code);
  w.u32(m.length);
  w.bytes(m);
  w.u32(d.length);
  w.bytes(d);
  return w.finish();
}

export function decodeError(body: Uint8Array): WireErrorBody {
  const r = new Reader(body);
  const code = r.u16('code');
  const message = r.utf8(r.u32('message length'), 'message');
  const detailText = r.utf8(r.u32('detail length'), 'detail');
  let parsed: unknown;
  try {
    parsed = JSON.parse(detailText);
  } catch {
    throw new WireError('error detail is not JSON');
  }
  // `null`, a number or an array would reach callers typed as a record and break `detail.x`.
  if (parsed === null || typeof parsed !== 'object' || Array.isArray(parsed)) throw new WireError('error detail is not a JSON object');
  r.done('the error response');
  return { code, message, detail: parsed as Record<string, unknown> };
}

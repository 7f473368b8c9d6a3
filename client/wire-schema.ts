// Schema registry messages (SPEC §5): registration and listing. Validation happens on the write
// path. Re-exported from wire.ts.
import { Reader, te, WireError, Writer } from './codec.ts';
import { Limits } from './limits.ts';

/** Schema formats on the wire (0 is not a format, so a zeroed field is caught). */
export const SchemaFormatCode = { json: 1, avro: 2, protobuf: 3 } as const;
export type SchemaFormatName = keyof typeof SchemaFormatCode;
const FORMAT_NAMES: readonly (SchemaFormatName | undefined)[] = [undefined, 'json', 'avro', 'protobuf'];

export function schemaFormatName(code: number): SchemaFormatName | undefined {
  return FORMAT_NAMES[code];
}

const SCHEMA_HAS_TYPE = 1;

/** One schema: which events it covers, its version, format and text. */
export interface WireSchema {
  org: bigint;
  /** The aggregate type (key part) whose events it covers. */
  type: bigint;
  eventType: string;
  major: number;
  minor: number;
  format: SchemaFormatName;
  /** The schema text as registered (JSON Schema, Avro schema JSON, or a .proto file). */
  schema: string;
}

function writeSchema(w: Writer, s: WireSchema): void {
  w.u128(s.org);
  w.u128(s.type);
  const t = te.encode(s.eventType);
  w.u8(t.length);
  w.bytes(t);
  w.u32(s.major);
  w.u32(s.minor);
  w.u8(SchemaFormatCode[s.format]);
  const text = te.encode(s.schema);
  w.u32(text.length);
  w.bytes(text);
}

function readSchema(r: Reader, where: string): WireSchema {
  const org = r.u128(`${where}.org`);
  const type = r.u128(`${where}.type`);
  const typeLen = r.u8(`${where}.eventType length`);
  if (typeLen === 0) throw new WireError(`${where}.eventType is empty; an event type is 1..${Limits.eventTypeBytesMax} UTF-8 bytes`);
  const eventType = r.utf8(typeLen, `${where}.eventType`);
  const major = r.u32(`${where}.version.major`);
  const minor = r.u32(`${where}.version.minor`);
  const code = r.u8(`${where}.format`);
  const format = schemaFormatName(code);
  if (format === undefined) throw new WireError(`${where}.format ${code} is unknown; known: 1 json, 2 avro, 3 protobuf`);
  const len = r.u32(`${where}.schema length`);
  if (len === 0) throw new WireError(`${where}.schema is empty`);
  if (len > Limits.schemaBytesMax) throw new WireError(`${where}.schema is ${len} bytes; the limit is ${Limits.schemaBytesMax} bytes (SCHEMA_BYTES_MAX)`);
  const schema = r.utf8(len, `${where}.schema`);
  return { org, type, eventType, major, minor, format, schema };
}

/** u128 org | u128 type | u8 len + eventType | u32 major | u32 minor | u8 format | u32 len + schema text (UTF-8). */
export function encodeRegisterSchemaRequest(s: WireSchema): Uint8Array {
  const w = new Writer(64 + s.schema.length * 3);
  writeSchema(w, s);
  return w.finish();
}

export function decodeRegisterSchemaRequest(body: Uint8Array): WireSchema {
  const r = new Reader(body);
  const s = readSchema(r, 'schema');
  r.done('the schema registration');
  return s;
}

/** u8 flags (1 = registered now; 0 = the same text was registered already). */
export function encodeRegisterSchemaOk(registered: boolean): Uint8Array {
  return Uint8Array.of(registered ? 1 : 0);
}

export function decodeRegisterSchemaOk(body: Uint8Array): { registered: boolean } {
  const r = new Reader(body);
  const flags = r.u8('flags');
  if ((flags & ~1) !== 0) throw new WireError(`unknown schema registration flags 0x${flags.toString(16)}`);
  r.done('the schema registration response');
  return { registered: flags === 1 };
}

export interface WireListSchemasRequest {
  org: bigint;
  /** Only this aggregate type's schemas; undefined = every type of the org. */
  type?: bigint | undefined;
}

/** u128 org | u8 flags (1 = type given) | u128 type (0 when not given). */
export function encodeListSchemasRequest(req: WireListSchemasRequest): Uint8Array {
  const w = new Writer(40);
  w.u128(req.org);
  w.u8(req.type === undefined ? 0 : SCHEMA_HAS_TYPE);
  w.u128(req.type ?? 0n);
  return w.finish();
}

export function decodeListSchemasRequest(body: Uint8Array): WireListSchemasRequest {
  const r = new Reader(body);
  const org = r.u128('org');
  const flags = r.u8('flags');
  if ((flags & ~SCHEMA_HAS_TYPE) !== 0) throw new WireError(`unknown schema list flags 0x${flags.toString(16)}`);
  const type = r.u128('type');
  r.done('the schema list request');
  return (flags & SCHEMA_HAS_TYPE) !== 0 ? { org, type } : { org };
}

/** u32 count | schemas. */
export function encodeListSchemasOk(schemas: readonly WireSchema[]): Uint8Array {
  const w = new Writer(64 + schemas.length * 256);
  w.u32(schemas.length);
  for (const s of schemas) writeSchema(w, s);
  return w.finish();
}

export function decodeListSchemasOk(body: Uint8Array): WireSchema[] {
  const r = new Reader(body);
  const n = r.u32('schema count');
  const out: WireSchema[] = [];
  for (let i = 0; i < n; i++) out.push(readSchema(r, `schemas[${i}]`));
  r.done('the schema list response');
  return out;
}

// The three schema formats of SPEC §5, each through its standard library: JSON Schema (ajv), Avro
// (avsc) and Protocol Buffers (protobufjs). For each: compile a schema text once into a validator
// of event payloads, and decide whether a new minor version is backward compatible with an older
// one (it can read every payload the older one accepted: additive changes only). Pure functions,
// no I/O; the registry (registry.ts) caches what they compile.
import { Ajv, type ValidateFunction } from 'ajv';
import { Ajv2019 } from 'ajv/dist/2019.js';
import { Ajv2020 } from 'ajv/dist/2020.js';
import avro from 'avsc';
import protobuf from 'protobufjs';
import { isDeepStrictEqual } from 'node:util';
import { RE2JS } from 're2js';

export type SchemaFormat = 'json' | 'avro' | 'protobuf';
export const SCHEMA_FORMATS: readonly SchemaFormat[] = ['json', 'avro', 'protobuf'];

/** A schema text that does not compile; the message is the compiler's, prefixed with what it is. */
export class SchemaCompileError extends Error {
  override name = 'SchemaCompileError';
}

/** A compiled schema. `validate` returns null when the payload conforms, else the validator's message. */
export interface CompiledSchema {
  readonly format: SchemaFormat;
  /** What the validator checks against: the JSON Schema dialect, the Avro type name, the protobuf message. */
  readonly describe: string;
  validate(data: Uint8Array): string | null;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** At most this many characters of a validator message (a message can quote the payload). */
const MESSAGE_CHARS_MAX = 1000;

function clip(s: string): string {
  return s.length <= MESSAGE_CHARS_MAX ? s : `${s.slice(0, MESSAGE_CHARS_MAX)}…`;
}

function messageOf(e: unknown): string {
  return e instanceof Error ? e.message : String(e);
}

export function compileSchema(format: SchemaFormat, text: string, eventType: string): CompiledSchema {
  switch (format) {
    case 'json':
      return compileJson(text);
    case 'avro':
      return compileAvro(text);
    case 'protobuf':
      return compileProtobuf(text, eventType);
  }
}

/**
 * Null when `newer` (a later minor of the same major) reads everything `older` accepted with
 * additive changes only; otherwise the reason, naming the field. Both texts must compile.
 */
export function compatibilityProblem(format: SchemaFormat, older: string, newer: string, eventType: string): string | null {
  switch (format) {
    case 'json':
      return jsonCompatibilityOf(parseJsonSchema(older), parseJsonSchema(newer));
    case 'avro':
      return avroCompatibility(older, newer);
    case 'protobuf':
      return protobufCompatibility(older, newer, eventType);
  }
}

// ---------------------------------------------------------------------------------------------
// JSON Schema (ajv). The dialect comes from "$schema": 2020-12, 2019-09, else draft-07 (ajv's
// default, which also reads draft-06). Unknown keywords are refused at registration (ajv's strict
// schema mode), so a typo does not silently validate nothing; "format" is an annotation and not
// asserted (as in 2020-12 by default; no format vocabulary is loaded).

// One instance per dialect; `addUsedSchema: false` keeps one registration's "$id" from clashing
// with another's (each schema is compiled on its own; ajv's cache holds the compiled functions).
/**
 * "pattern" and "patternProperties" run on RE2 (re2js: linear time), not JavaScript's
 * backtracking engine: validation runs on the main thread, and a pattern like ^(a|a)*$ took 19 s
 * on a 31-byte event there. RE2 has no lookaround or backreferences; such a pattern is refused at
 * registration with the parser's message. The regex is searched for, as JSON Schema says.
 */
const RE2_ENGINE = Object.assign(
  (pattern: string) => {
    const re = RE2JS.compile(pattern);
    // ajv keys its compiled patterns by toString(): each pattern must name itself.
    return { test: (text: string): boolean => re.matcher(text).find(), toString: () => `re2:${pattern}` };
  },
  { code: 'RE2JS' },
);

const AJV_OPTIONS = {
  code: { regExp: RE2_ENGINE },
  allErrors: false,
  strictSchema: true,
  strictNumbers: true,
  strictTypes: false,
  strictTuples: false,
  strictRequired: false,
  validateFormats: false,
  addUsedSchema: false,
  logger: false,
} as const;
let ajvInstances: { draft7: Ajv; d2019: Ajv2019; d2020: Ajv2020 } | undefined;

function ajvFor(schema: unknown): { ajv: Ajv | Ajv2019 | Ajv2020; dialect: string } {
  ajvInstances ??= { draft7: new Ajv(AJV_OPTIONS), d2019: new Ajv2019(AJV_OPTIONS), d2020: new Ajv2020(AJV_OPTIONS) };
  const id = schema !== null && typeof schema === 'object' ? (schema as { $schema?: unknown }).$schema : undefined;
  if (typeof id === 'string' && id.includes('2020-12')) return { ajv: ajvInstances.d2020, dialect: 'JSON Schema 2020-12' };
  if (typeof id === 'string' && id.includes('2019-09')) return { ajv: ajvInstances.d2019, dialect: 'JSON Schema 2019-09' };
  return { ajv: ajvInstances.draft7, dialect: 'JSON Schema draft-07' };
}

function parseJsonSchema(text: string): unknown {
  try {
    return JSON.parse(text) as unknown;
  } catch (e) {
    throw new SchemaCompileError(`the JSON Schema is not JSON: ${messageOf(e)}`);
  }
}

function compileJson(text: string): CompiledSchema {
  const schema = parseJsonSchema(text);
  if (typeof schema !== 'boolean' && (schema === null || typeof schema !== 'object' || Array.isArray(schema))) {
    throw new SchemaCompileError('a JSON Schema is an object (or true/false)');
  }
  const { ajv, dialect } = ajvFor(schema);
  let fn: ValidateFunction;
  try {
    fn = ajv.compile(schema as object);
  } catch (e) {
    throw new SchemaCompileError(`the JSON Schema does not compile (${dialect}): ${messageOf(e)}`);
  }
  return {
    format: 'json',
    describe: dialect,
    validate(data) {
      let value: unknown;
      try {
        value = JSON.parse(utf8.decode(data));
      } catch (e) {
        return clip(`data is not JSON: ${messageOf(e)}`);
      }
      try {
        if (fn(value)) return null;
      } catch (e) {
        // A schema that recurses ($ref) follows the data down one stack frame per level: data
        // nested deeper than the stack is refused, never thrown out of the write path.
        return clip(`data could not be validated (nested too deeply for the validator?): ${messageOf(e)}`);
      }
      return clip(ajv.errorsText(fn.errors, { dataVar: 'data' }));
    },
  };
}

type JsonNode = Record<string, unknown>;

function asNode(v: unknown): JsonNode | undefined {
  return v !== null && typeof v === 'object' && !Array.isArray(v) ? (v as JsonNode) : undefined;
}

function stringArray(v: unknown): string[] {
  return Array.isArray(v) ? v.filter((x): x is string => typeof x === 'string') : [];
}

/**
 * Additive only, checked structurally: the same `type` (and `const`), every property kept (and
 * checked the same way, recursively, also through `items`), no property newly required, no
 * `enum` value dropped, and `additionalProperties` not closed where it was open.
 */
interface JsonRoots {
  older: unknown;
  newer: unknown;
  /** Pairs of $refs already being compared (recursive schemas). */
  seen: Set<string>;
}

function jsonCompatibilityOf(older: unknown, newer: unknown): string | null {
  return jsonCompatibility(older, newer, '(root)', { older, newer, seen: new Set() });
}

/** A local "$ref" ("#/definitions/x", "#/$defs/x", any JSON pointer into the same document), resolved. */
function resolveRef(node: unknown, root: unknown): { node: unknown; ref: string } {
  const ref = asNode(node)?.$ref;
  if (typeof ref !== 'string' || !ref.startsWith('#')) return { node, ref: '' };
  let at: unknown = root;
  for (const raw of ref.slice(1).split('/').slice(1)) {
    const part = decodeURIComponent(raw).replace(/~1/g, '/').replace(/~0/g, '~');
    at = at !== null && typeof at === 'object' ? (at as Record<string, unknown>)[part] : undefined;
  }
  return { node: at ?? node, ref };
}

function jsonCompatibility(olderIn: unknown, newerIn: unknown, path: string, roots: JsonRoots): string | null {
  const ro = resolveRef(olderIn, roots.older);
  const rn = resolveRef(newerIn, roots.newer);
  if (ro.ref !== '' || rn.ref !== '') {
    const pair = `${ro.ref}|${rn.ref}`;
    if (roots.seen.has(pair)) return null;
    roots.seen.add(pair);
  }
  const older = ro.node;
  const newer = rn.node;
  if (typeof older === 'boolean' || typeof newer === 'boolean') {
    if (newer === true || older === newer) return null;
    return `${path}: the schema became ${JSON.stringify(newer)} where it was ${JSON.stringify(older)}`;
  }
  const o = asNode(older);
  const n = asNode(newer);
  if (o === undefined || n === undefined) return null;
  if (!isDeepStrictEqual(o.type, n.type)) return `${path}: type changed from ${JSON.stringify(o.type ?? 'any')} to ${JSON.stringify(n.type ?? 'any')}`;
  if (!isDeepStrictEqual(o.const, n.const)) return `${path}: const changed from ${JSON.stringify(o.const)} to ${JSON.stringify(n.const)}`;
  if (Array.isArray(o.enum)) {
    const kept = Array.isArray(n.enum) ? n.enum : undefined;
    if (kept === undefined) {
      // No enum any more: every old value is accepted.
    } else {
      const lost = o.enum.find((v) => !kept.some((k) => isDeepStrictEqual(k, v)));
      if (lost !== undefined) return `${path}: enum value ${JSON.stringify(lost)} was removed`;
    }
  } else if (Array.isArray(n.enum)) {
    return `${path}: an enum was added, so values the older version accepted would be refused`;
  }
  const required = new Set(stringArray(o.required));
  for (const r of stringArray(n.required)) {
    if (!required.has(r)) return `${path}: property "${r}" is newly required; events written with the older version may lack it (a new property must be optional)`;
  }
  if (n.additionalProperties === false && o.additionalProperties !== false) {
    return `${path}: additionalProperties became false; events with other properties were valid before`;
  }
  const op = asNode(o.properties) ?? {};
  const np = asNode(n.properties) ?? {};
  for (const name of Object.keys(op)) {
    if (!Object.hasOwn(np, name)) return `${path}: property "${name}" was removed (a minor version only adds)`;
    const problem = jsonCompatibility(op[name], np[name], `${path === '(root)' ? '' : path}/${name}`, roots);
    if (problem !== null) return problem;
  }
  const here = path === '(root)' ? '' : path;
  if (Array.isArray(o.items) || Array.isArray(n.items)) {
    // Tuples (draft-07 "items": [..]): position by position; past a tuple, "additionalItems" (default any).
    const tuple = (x: JsonNode, i: number): unknown => (Array.isArray(x.items) ? (x.items[i] ?? x.additionalItems ?? true) : (x.items ?? true));
    const len = Math.max(Array.isArray(o.items) ? o.items.length : 0, Array.isArray(n.items) ? n.items.length : 0);
    for (let i = 0; i <= len; i++) {
      const problem = jsonCompatibility(tuple(o, i), tuple(n, i), `${here}[${i === len ? `${len}…` : i}]`, roots);
      if (problem !== null) return problem;
    }
  } else if (o.items !== undefined || n.items !== undefined) {
    const problem = jsonCompatibility(o.items ?? true, n.items ?? true, `${here}[]`, roots);
    if (problem !== null) return problem;
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Avro (avsc). The schema text is Avro's JSON schema; an event's data is the Avro binary encoding
// of one value, the whole of it (trailing bytes are refused).

function parseAvro(text: string): avro.Type {
  let schema: unknown;
  try {
    schema = JSON.parse(text) as unknown;
  } catch (e) {
    throw new SchemaCompileError(`the Avro schema is not JSON: ${messageOf(e)}`);
  }
  try {
    return avro.Type.forSchema(schema as avro.Schema);
  } catch (e) {
    throw new SchemaCompileError(`the Avro schema does not compile: ${messageOf(e)}`);
  }
}

function avroName(t: avro.Type): string {
  return t.name ?? t.typeName;
}

function compileAvro(text: string): CompiledSchema {
  const type = parseAvro(text);
  return {
    format: 'avro',
    describe: `Avro ${avroName(type)}`,
    validate(data) {
      try {
        type.fromBuffer(Buffer.from(data.buffer, data.byteOffset, data.byteLength));
        return null;
      } catch (e) {
        return clip(`data is not an Avro ${avroName(type)}: ${messageOf(e)}`);
      }
    },
  };
}

/** The newer schema must resolve data written with the older (Avro's schema resolution: new fields
 * need defaults), and, additive only, keep every field of a record. */
function avroCompatibility(olderText: string, newerText: string): string | null {
  const older = parseAvro(olderText);
  const newer = parseAvro(newerText);
  try {
    newer.createResolver(older);
  } catch (e) {
    return `data written with the older schema cannot be read with the newer one: ${messageOf(e)}`;
  }
  return avroRemoval(older, newer, new Set());
}

/** A field of the older schema, at any depth (records in records, arrays, maps, unions), that the newer one lacks. */
function avroRemoval(older: avro.Type, newer: avro.Type, seen: Set<string>): string | null {
  if (older instanceof avro.types.RecordType && newer instanceof avro.types.RecordType) {
    const name = avroName(older);
    if (seen.has(name)) return null; // a recursive record: compared once
    seen.add(name);
    for (const f of older.fields) {
      const g = newer.fields.find((x) => x.name === f.name || x.aliases.includes(f.name));
      if (g === undefined) return `field "${f.name}" of ${name} was removed (a minor version only adds)`;
      const inner = avroRemoval(f.type, g.type, seen);
      if (inner !== null) return inner;
    }
    return null;
  }
  if (older instanceof avro.types.ArrayType && newer instanceof avro.types.ArrayType) return avroRemoval(older.itemsType, newer.itemsType, seen);
  if (older instanceof avro.types.MapType && newer instanceof avro.types.MapType) return avroRemoval(older.valuesType, newer.valuesType, seen);
  const branches = (t: avro.Type): avro.Type[] | null =>
    t instanceof avro.types.WrappedUnionType || t instanceof avro.types.UnwrappedUnionType ? t.types : null;
  const ob = branches(older);
  const nb = branches(newer);
  if (ob !== null && nb !== null) {
    for (const o of ob) {
      const n = nb.find((t) => t.typeName === o.typeName && t.name === o.name);
      if (n === undefined) continue; // the resolver decides whether the branch can still be read
      const inner = avroRemoval(o, n, seen);
      if (inner !== null) return inner;
    }
  }
  return null;
}

// ---------------------------------------------------------------------------------------------
// Protocol Buffers (protobufjs). The schema text is a .proto file; the message that describes the
// event is the one named after the event type (full name with package, or simple name), or the
// file's only message. Data is that message's binary encoding: decoded, then verified; a known
// field with the wrong wire type is refused too (protobufjs's decoder would misread it).

function messageTypes(ns: protobuf.NamespaceBase, out: protobuf.Type[] = []): protobuf.Type[] {
  for (const o of ns.nestedArray) {
    if (o instanceof protobuf.Type) out.push(o);
    if (o instanceof protobuf.Namespace || o instanceof protobuf.Type) messageTypes(o, out);
  }
  return out;
}

function parseProtobuf(text: string, eventType: string): protobuf.Type {
  let root: protobuf.Root;
  try {
    root = protobuf.parse(text, { keepCase: true }).root;
    root.resolveAll();
  } catch (e) {
    throw new SchemaCompileError(`the .proto does not compile: ${messageOf(e)}`);
  }
  const all = messageTypes(root);
  const exact = all.find((t) => t.fullName === `.${eventType}`);
  if (exact !== undefined) return exact;
  const named = all.filter((t) => t.name === eventType);
  if (named.length === 1) return named[0]!;
  if (named.length > 1) throw new SchemaCompileError(`the .proto defines several messages named "${eventType}" (${named.map((t) => t.fullName.slice(1)).join(', ')}); name the event type with its package`);
  const top = all.filter((t) => !(t.parent instanceof protobuf.Type));
  if (top.length === 1) return top[0]!;
  throw new SchemaCompileError(
    all.length === 0
      ? 'the .proto defines no message'
      : `the .proto defines no message named "${eventType}" and more than one message (${top.map((t) => t.fullName.slice(1)).join(', ')}); name the event's message after its event type`,
  );
}

const PB_WIRE_TYPES: Record<string, number> = {
  double: 1, fixed64: 1, sfixed64: 1, float: 5, fixed32: 5, sfixed32: 5, string: 2, bytes: 2,
};
const PB_PACKABLE = new Set(['double', 'float', 'int32', 'int64', 'uint32', 'uint64', 'sint32', 'sint64', 'fixed32', 'fixed64', 'sfixed32', 'sfixed64', 'bool']);
const PB_DEPTH_MAX = 32;

function expectedWireType(f: protobuf.Field): number {
  if (f.map) return 2;
  if (f.resolvedType instanceof protobuf.Type) return (f as unknown as { delimited?: boolean }).delimited === true ? 3 : 2;
  if (f.resolvedType instanceof protobuf.Enum) return 0;
  return PB_WIRE_TYPES[f.type] ?? 0;
}

/** Walks the encoded message: every known field must carry its type's wire type. */
function checkWireTypes(t: protobuf.Type, r: protobuf.Reader, end: number, depth: number): string | null {
  if (depth > PB_DEPTH_MAX) return `messages nested deeper than ${PB_DEPTH_MAX}`;
  while (r.pos < end) {
    const tag = r.uint32();
    const id = tag >>> 3;
    const wt = tag & 7;
    const f = t.fieldsById[id];
    if (f !== undefined) {
      const want = expectedWireType(f);
      const packed = f.repeated && wt === 2 && (PB_PACKABLE.has(f.type) || f.resolvedType instanceof protobuf.Enum);
      if (wt !== want && !packed) {
        return `field ${f.name} (${id}) of ${t.name} has wire type ${wt}; its type ${f.type} is encoded with wire type ${want}`;
      }
      if (wt === 2 && f.resolvedType instanceof protobuf.Type && !f.map) {
        const len = r.uint32();
        const stop = r.pos + len;
        if (stop > end) return `field ${f.name} (${id}) of ${t.name} runs past the end of the data`;
        const inner = checkWireTypes(f.resolvedType, r, stop, depth + 1);
        if (inner !== null) return inner;
        r.pos = stop;
        continue;
      }
    }
    r.skipType(wt);
  }
  return null;
}

function compileProtobuf(text: string, eventType: string): CompiledSchema {
  const type = parseProtobuf(text, eventType);
  const name = type.fullName.slice(1);
  return {
    format: 'protobuf',
    describe: `protobuf message ${name}`,
    validate(data) {
      try {
        const wire = checkWireTypes(type, protobuf.Reader.create(data), data.length, 0);
        if (wire !== null) return clip(`data is not a ${name}: ${wire}`);
        const problem = type.verify(type.decode(data));
        return problem === null ? null : clip(`data is not a valid ${name}: ${problem}`);
      } catch (e) {
        return clip(`data is not a ${name}: ${messageOf(e)}`);
      }
    },
  };
}

function describeField(f: protobuf.Field): string {
  const key = f instanceof protobuf.MapField ? `<${f.keyType}, ` : '';
  return `${f.map ? `map${key}` : f.repeated ? 'repeated ' : ''}${f.type}${key === '' ? '' : '>'}`;
}

/** Additive only: every field of the older message kept with its number, name, type and label,
 * no new required field, recursively through message-typed fields. */
function protobufMessageCompatibility(older: protobuf.Type, newer: protobuf.Type, seen: Set<string>): string | null {
  const key = `${older.fullName}>${newer.fullName}`;
  if (seen.has(key)) return null;
  seen.add(key);
  const where = older.fullName.slice(1);
  for (const of of older.fieldsArray) {
    const nf = newer.fieldsById[of.id];
    if (nf === undefined) return `field ${of.name} = ${of.id} of ${where} was removed (a minor version only adds; reserve the number in a new major instead)`;
    if (nf.name !== of.name) return `field ${of.id} of ${where} was renamed from ${of.name} to ${nf.name}`;
    if (describeField(nf) !== describeField(of)) return `field ${of.name} = ${of.id} of ${where} changed type from ${describeField(of)} to ${describeField(nf)}`;
    if (nf.required && !of.required) return `field ${of.name} = ${of.id} of ${where} became required`;
    if (of.resolvedType instanceof protobuf.Type && nf.resolvedType instanceof protobuf.Type) {
      const inner = protobufMessageCompatibility(of.resolvedType, nf.resolvedType, seen);
      if (inner !== null) return inner;
    }
    // An enum value the older version could send must still be one (else its events are refused).
    if (of.resolvedType instanceof protobuf.Enum && nf.resolvedType instanceof protobuf.Enum) {
      const ne = nf.resolvedType;
      for (const [name, n] of Object.entries(of.resolvedType.values)) {
        if (ne.values[name] !== n) return `value ${name} = ${n} of enum ${of.resolvedType.fullName.slice(1)} (field ${of.name} of ${where}) was removed or renumbered (a minor version only adds)`;
      }
    }
  }
  for (const nf of newer.fieldsArray) {
    if (older.fieldsById[nf.id] === undefined && nf.required) return `new field ${nf.name} = ${nf.id} of ${where} is required; events written with the older version lack it`;
  }
  return null;
}

function protobufCompatibility(olderText: string, newerText: string, eventType: string): string | null {
  const older = parseProtobuf(olderText, eventType);
  const newer = parseProtobuf(newerText, eventType);
  if (older.fullName !== newer.fullName) return `the event's message changed from ${older.fullName.slice(1)} to ${newer.fullName.slice(1)}`;
  return protobufMessageCompatibility(older, newer, new Set());
}

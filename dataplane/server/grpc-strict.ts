// Strict protobuf wire check for gRPC requests: unknown field numbers, wrong wire types, invalid
// UTF-8 and truncation are refused (protobufjs would skip unknown fields silently), so a client
// that sends a field this server does not know gets 9100 instead of having it ignored.
import type * as protoLoader from '@grpc/proto-loader';
import { WireError } from '../../client/wire.ts';

const WT_VARINT = 0;
const WT_I64 = 1;
const WT_LEN = 2;
const WT_I32 = 5;
const WIRE_TYPE_NAMES = ['varint', 'fixed64', 'length-delimited', 'start-group', 'end-group', 'fixed32', '6', '7'];
/** Nesting bound for the walker; the schema is far shallower. */
const MAX_DEPTH = 32;

interface FieldSpec {
  name: string;
  /** The wire type the field's type uses. */
  wireType: number;
  repeated: boolean;
  /** Fully qualified message type, for message fields. */
  message?: string;
  utf8: boolean;
}

/** Field number → spec, per fully qualified message name. */
export type MessageSchema = Map<string, { name: string; fields: Map<number, FieldSpec> }>;

interface DescriptorField {
  name: string;
  number: number;
  label: string;
  type: string;
  typeName: string;
}

function wireTypeOf(type: string): number {
  switch (type) {
    case 'TYPE_DOUBLE':
    case 'TYPE_FIXED64':
    case 'TYPE_SFIXED64':
      return WT_I64;
    case 'TYPE_FLOAT':
    case 'TYPE_FIXED32':
    case 'TYPE_SFIXED32':
      return WT_I32;
    case 'TYPE_STRING':
    case 'TYPE_BYTES':
    case 'TYPE_MESSAGE':
      return WT_LEN;
    case 'TYPE_GROUP':
      return 3;
    default:
      return WT_VARINT;
  }
}

/** Resolves a (possibly relative) type name from the scope of `fromType`, as protoc does. */
export function resolveTypeName(def: protoLoader.PackageDefinition, fromType: string, typeName: string): string {
  if (typeName.startsWith('.')) return typeName.slice(1);
  const scope = fromType.split('.');
  while (scope.length > 0) {
    const candidate = [...scope, typeName].join('.');
    if (candidate in def) return candidate;
    scope.pop();
  }
  if (typeName in def) return typeName;
  throw new Error(`cannot resolve protobuf type ${typeName} from ${fromType}`);
}

/** Builds the field tables of every message type in a loaded package definition. */
export function buildMessageSchema(def: protoLoader.PackageDefinition): MessageSchema {
  const schema: MessageSchema = new Map();
  for (const [fqn, entry] of Object.entries(def)) {
    if (!('format' in entry) || entry.format !== 'Protocol Buffer 3 DescriptorProto') continue;
    const descriptor = entry.type as { name: string; field: DescriptorField[] };
    const fields = new Map<number, FieldSpec>();
    for (const f of descriptor.field) {
      const spec: FieldSpec = {
        name: f.name,
        wireType: wireTypeOf(f.type),
        repeated: f.label === 'LABEL_REPEATED',
        utf8: f.type === 'TYPE_STRING',
      };
      if (f.type === 'TYPE_MESSAGE') spec.message = resolveTypeName(def, fqn, f.typeName);
      fields.set(f.number, spec);
    }
    schema.set(fqn, { name: descriptor.name, fields });
  }
  return schema;
}

const utf8 = new TextDecoder('utf-8', { fatal: true });

/** Reads a varint at `pos`; returns [value as number (exact below 2^53), next position]. */
function readVarint(buf: Uint8Array, pos: number, end: number, where: string): [number, number] {
  let value = 0;
  let scale = 1;
  for (let i = 0; i < 10; i++) {
    if (pos >= end) throw new WireError(`${where}: truncated varint`);
    const b = buf[pos++]!;
    value += (b & 0x7f) * scale;
    scale *= 128;
    if ((b & 0x80) === 0) return [value, pos];
  }
  throw new WireError(`${where}: varint longer than 10 bytes`);
}

/**
 * Walks one encoded message and throws WireError on any field number the schema does not
 * know, a wire type that does not match the field's type, truncation, or invalid UTF-8 in a
 * string field. Recurses into message fields.
 */
export function checkMessage(schema: MessageSchema, typeName: string, buf: Uint8Array, start = 0, end = buf.length, path = '', depth = 0): void {
  const type = schema.get(typeName);
  if (!type) throw new Error(`unknown protobuf type ${typeName}`);
  if (depth > MAX_DEPTH) throw new WireError(`${path || type.name}: messages nested deeper than ${MAX_DEPTH}`);
  const counts = new Map<number, number>();
  const here = path || type.name;
  let pos = start;
  while (pos < end) {
    const [tag, afterTag] = readVarint(buf, pos, end, `${here}: field tag`);
    pos = afterTag;
    const number = Math.floor(tag / 8);
    const wireType = tag % 8;
    const field = type.fields.get(number);
    if (!field) {
      throw new WireError(`${here} has an unknown field number ${number} (${WIRE_TYPE_NAMES[wireType]}); ${type.name} has fields ${[...type.fields].map(([n, f]) => `${n} ${f.name}`).join(', ')}`);
    }
    const index = counts.get(number) ?? 0;
    counts.set(number, index + 1);
    const where = `${path ? path + '.' : ''}${field.name}${field.repeated ? `[${index}]` : ''}`;
    const packed = field.repeated && wireType === WT_LEN && field.wireType !== WT_LEN;
    if (wireType !== field.wireType && !packed) {
      throw new WireError(`${where} has wire type ${WIRE_TYPE_NAMES[wireType]}; its type uses ${WIRE_TYPE_NAMES[field.wireType]}`);
    }
    switch (wireType) {
      case WT_VARINT:
        pos = readVarint(buf, pos, end, where)[1];
        break;
      case WT_I64:
      case WT_I32: {
        const n = wireType === WT_I64 ? 8 : 4;
        if (pos + n > end) throw new WireError(`${where}: truncated fixed-width value`);
        pos += n;
        break;
      }
      case WT_LEN: {
        const [len, body] = readVarint(buf, pos, end, `${where} length`);
        if (len > end - body) throw new WireError(`${where}: length ${len} runs past the end of the message`);
        const bodyEnd = body + len;
        if (packed) {
          if (field.wireType === WT_VARINT) {
            for (let p = body; p < bodyEnd; ) p = readVarint(buf, p, bodyEnd, where)[1];
          } else if (len % (field.wireType === WT_I64 ? 8 : 4) !== 0) {
            throw new WireError(`${where}: packed fixed-width values have a ragged length ${len}`);
          }
        } else if (field.message !== undefined) {
          checkMessage(schema, field.message, buf, body, bodyEnd, where, depth + 1);
        } else if (field.utf8) {
          try {
            utf8.decode(buf.subarray(body, bodyEnd));
          } catch {
            throw new WireError(`${where} is not valid UTF-8`);
          }
        }
        pos = bodyEnd;
        break;
      }
      default:
        throw new WireError(`${where} uses wire type ${WIRE_TYPE_NAMES[wireType]}, which Celer does not accept`);
    }
  }
}

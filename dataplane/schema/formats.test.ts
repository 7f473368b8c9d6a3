// The three formats: compiling (bad schemas refused with the compiler's message), validating
// payloads (the validator's message on failure), and the minor-version compatibility rule
// (additive only) with the reason named.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import avro from 'avsc';
import protobuf from 'protobufjs';
import { compatibilityProblem, compileSchema, SchemaCompileError } from './formats.ts';

const te = new TextEncoder();
const json = (v: unknown): Uint8Array => te.encode(JSON.stringify(v));

const JSON_V1 = JSON.stringify({
  type: 'object',
  properties: { amount: { type: 'number' }, currency: { type: 'string', enum: ['EUR', 'USD'] } },
  required: ['amount'],
});

describe('json', () => {
  test('valid payloads pass; invalid ones get ajv’s message', () => {
    const s = compileSchema('json', JSON_V1, 'Deposited');
    assert.equal(s.validate(json({ amount: 5, currency: 'EUR' })), null);
    assert.equal(s.validate(json({ amount: 'five' })), 'data/amount must be number');
    assert.equal(s.validate(json({ currency: 'EUR' })), "data must have required property 'amount'");
    assert.match(s.validate(te.encode('{"amount":')) ?? '', /^data is not JSON: /);
    assert.match(s.validate(Uint8Array.of(0xff, 0xfe)) ?? '', /^data is not JSON: /);
  });

  test('bad schemas are refused with the compiler’s message', () => {
    assert.throws(() => compileSchema('json', '{"type":', 'E'), (e: unknown) => e instanceof SchemaCompileError && /is not JSON/.test(e.message));
    assert.throws(() => compileSchema('json', '{"type":"objekt"}', 'E'), /does not compile \(JSON Schema draft-07\): .*type/);
    assert.throws(() => compileSchema('json', '{"type":"object","propertees":{}}', 'E'), /unknown keyword: "propertees"/);
    assert.throws(() => compileSchema('json', '[1]', 'E'), /is an object/);
  });

  test('the dialect follows $schema (2020-12 here: prefixItems)', () => {
    const s = compileSchema('json', JSON.stringify({ $schema: 'https://json-schema.org/draft/2020-12/schema', type: 'array', prefixItems: [{ type: 'integer' }] }), 'E');
    assert.equal(s.describe, 'JSON Schema 2020-12');
    assert.equal(s.validate(json([1, 'x'])), null);
    assert.equal(s.validate(json(['x'])), 'data/0 must be integer');
  });

  test('two schemas with the same $id compile side by side', () => {
    const a = compileSchema('json', JSON.stringify({ $id: 'https://example.com/e.json', type: 'string' }), 'E');
    const b = compileSchema('json', JSON.stringify({ $id: 'https://example.com/e.json', type: 'number' }), 'E');
    assert.equal(a.validate(json('s')), null);
    assert.equal(b.validate(json(1)), null);
  });

  test('compatibility: additive changes pass, everything else is named', () => {
    const v = (extra: object): string => JSON.stringify({ ...JSON.parse(JSON_V1), ...extra });
    const ok = v({ properties: { amount: { type: 'number' }, currency: { type: 'string', enum: ['EUR', 'USD', 'GBP'] }, note: { type: 'string' } } });
    assert.equal(compatibilityProblem('json', JSON_V1, ok, 'E'), null);
    assert.equal(compatibilityProblem('json', JSON_V1, JSON_V1, 'E'), null);
    assert.match(compatibilityProblem('json', JSON_V1, v({ properties: { currency: { type: 'string' } } }), 'E')!, /property "amount" was removed/);
    assert.match(
      compatibilityProblem('json', JSON_V1, v({ properties: { amount: { type: 'string' }, currency: { type: 'string', enum: ['EUR', 'USD'] } } }), 'E')!,
      /\/amount: type changed from "number" to "string"/,
    );
    assert.match(compatibilityProblem('json', JSON_V1, v({ required: ['amount', 'currency'] }), 'E')!, /property "currency" is newly required/);
    assert.match(
      compatibilityProblem('json', JSON_V1, v({ properties: { amount: { type: 'number' }, currency: { type: 'string', enum: ['EUR'] } } }), 'E')!,
      /\/currency: enum value "USD" was removed/,
    );
    assert.match(compatibilityProblem('json', JSON_V1, v({ additionalProperties: false }), 'E')!, /additionalProperties became false/);
    const nested = (t: string): string => JSON.stringify({ type: 'object', properties: { lines: { type: 'array', items: { type: 'object', properties: { qty: { type: t } } } } } });
    assert.match(compatibilityProblem('json', nested('integer'), nested('string'), 'E')!, /\/lines\[\]\/qty: type changed/);
  });
});

const AVRO_V1 = JSON.stringify({ type: 'record', name: 'Deposited', fields: [{ name: 'amount', type: 'long' }, { name: 'who', type: 'string' }] });

describe('avro', () => {
  const t1 = avro.Type.forSchema(JSON.parse(AVRO_V1) as avro.Schema);

  test('valid payloads pass; truncated, trailing or foreign bytes are refused with avsc’s message', () => {
    const s = compileSchema('avro', AVRO_V1, 'Deposited');
    const good = t1.toBuffer({ amount: 5, who: 'ann' });
    assert.equal(s.validate(good), null);
    assert.match(s.validate(good.subarray(0, good.length - 1)) ?? '', /^data is not an Avro Deposited: truncated buffer/);
    assert.match(s.validate(Buffer.concat([good, Buffer.of(1)])) ?? '', /trailing data/);
    assert.notEqual(s.validate(json({ amount: 5, who: 'ann' })), null);
  });

  test('bad schemas are refused with the compiler’s message', () => {
    assert.throws(() => compileSchema('avro', '{"type":"record","name":"R","fields":[{"name":"a","type":"int32"}]}', 'E'), /does not compile: .*int32/);
    assert.throws(() => compileSchema('avro', 'record R {}', 'E'), /is not JSON/);
  });

  test('compatibility: new fields need defaults, removed fields and type changes are refused', () => {
    const v = (fields: object[]): string => JSON.stringify({ type: 'record', name: 'Deposited', fields });
    const base = [{ name: 'amount', type: 'long' }, { name: 'who', type: 'string' }];
    assert.equal(compatibilityProblem('avro', AVRO_V1, v([...base, { name: 'note', type: 'string', default: '' }]), 'E'), null);
    assert.match(compatibilityProblem('avro', AVRO_V1, v([...base, { name: 'note', type: 'string' }]), 'E')!, /cannot be read with the newer one: .*note/);
    assert.match(compatibilityProblem('avro', AVRO_V1, v([base[0]!]), 'E')!, /field "who" of Deposited was removed/);
    assert.match(compatibilityProblem('avro', AVRO_V1, v([{ name: 'amount', type: 'string' }, base[1]!]), 'E')!, /cannot be read/);
    // Promotion (int → long) is a resolution Avro allows.
    assert.equal(compatibilityProblem('avro', v([{ name: 'n', type: 'int' }]), v([{ name: 'n', type: 'long' }]), 'E'), null);
  });
});

const PROTO_V1 = `syntax = "proto3";
package bank;
message Deposited { int64 amount = 1; string who = 2; Meta meta = 3; }
message Meta { string source = 1; }`;

describe('protobuf', () => {
  const root = protobuf.parse(PROTO_V1).root;
  const T = root.lookupType('bank.Deposited');

  test('the event’s message is found by name (with or without package), or is the only one', () => {
    assert.equal(compileSchema('protobuf', PROTO_V1, 'Deposited').describe, 'protobuf message bank.Deposited');
    assert.equal(compileSchema('protobuf', PROTO_V1, 'bank.Deposited').describe, 'protobuf message bank.Deposited');
    assert.equal(compileSchema('protobuf', 'syntax = "proto3"; message Any1 { string a = 1; }', 'Opened').describe, 'protobuf message Any1');
    assert.throws(() => compileSchema('protobuf', PROTO_V1, 'Opened'), /no message named "Opened" and more than one message \(bank.Deposited, bank.Meta\)/);
  });

  test('valid payloads pass; wrong wire types and truncation are refused', () => {
    const s = compileSchema('protobuf', PROTO_V1, 'Deposited');
    assert.equal(s.validate(T.encode(T.create({ amount: 5, who: 'ann', meta: { source: 'atm' } })).finish()), null);
    // Field 1 (int64) sent as a length-delimited string.
    assert.match(s.validate(Uint8Array.of(0x0a, 0x03, 0x61, 0x62, 0x63)) ?? '', /field amount \(1\) of Deposited has wire type 2; its type int64 is encoded with wire type 0/);
    // Inside the nested message: Meta.source (string) sent as a varint.
    assert.match(s.validate(Uint8Array.of(0x1a, 0x02, 0x08, 0x01)) ?? '', /field source \(1\) of Meta has wire type 0/);
    assert.match(s.validate(Uint8Array.of(0x12, 0x05, 0x61)) ?? '', /^data is not a bank.Deposited: /);
  });

  test('bad schemas are refused with the parser’s message', () => {
    assert.throws(() => compileSchema('protobuf', 'message X { int64 a = ; }', 'X'), /does not compile: illegal/);
    assert.throws(() => compileSchema('protobuf', 'syntax = "proto3"; message X { Missing a = 1; }', 'X'), /does not compile: no such Type or Enum 'Missing'/);
  });

  test('compatibility: new optional fields pass; removed, renumbered, retyped or required fields are named', () => {
    const withDeposited = (body: string): string => PROTO_V1.replace(/message Deposited \{[^}]*\}/, `message Deposited { ${body} }`);
    assert.equal(compatibilityProblem('protobuf', PROTO_V1, withDeposited('int64 amount = 1; string who = 2; Meta meta = 3; string note = 4;'), 'Deposited'), null);
    assert.match(compatibilityProblem('protobuf', PROTO_V1, withDeposited('int64 amount = 1; Meta meta = 3;'), 'Deposited')!, /field who = 2 of bank.Deposited was removed/);
    assert.match(compatibilityProblem('protobuf', PROTO_V1, withDeposited('int64 amount = 1; string author = 2; Meta meta = 3;'), 'Deposited')!, /field 2 of bank.Deposited was renamed from who to author/);
    assert.match(compatibilityProblem('protobuf', PROTO_V1, withDeposited('string amount = 1; string who = 2; Meta meta = 3;'), 'Deposited')!, /changed type from int64 to string/);
    const nested = PROTO_V1.replace('message Meta { string source = 1; }', 'message Meta { int32 source = 1; }');
    assert.match(compatibilityProblem('protobuf', PROTO_V1, nested, 'Deposited')!, /field source = 1 of bank.Meta changed type/);
    const p2 = (extra: string): string => `syntax = "proto2"; message E { optional int64 a = 1; ${extra} }`;
    assert.match(compatibilityProblem('protobuf', p2(''), p2('required string b = 2;'), 'E')!, /new field b = 2 of E is required/);
  });
});

// review6: "pattern" ran on JavaScript's backtracking engine on the main thread: ^(a|a)*$ against
// 40 a's and a b takes hours there (this test would hang to its timeout). On RE2 it is linear.
test('json "pattern" runs on a linear-time engine: a catastrophic-backtracking pattern answers at once; lookaround is refused at registration', () => {
  const s = compileSchema('json', JSON.stringify({ type: 'string', pattern: '^(a|a)*$' }), 'E');
  const te = new TextEncoder();
  assert.match(s.validate(te.encode(JSON.stringify(`${'a'.repeat(40)}b`))) ?? '', /pattern/);
  assert.equal(s.validate(te.encode(JSON.stringify('a'.repeat(40)))), null);
  const search = compileSchema('json', JSON.stringify({ type: 'string', pattern: 'b+' }), 'E');
  assert.equal(search.validate(te.encode(JSON.stringify('abbc'))), null, 'a pattern is searched for, not anchored');
  assert.throws(() => compileSchema('json', JSON.stringify({ type: 'string', pattern: '^(?=a)a$' }), 'E'), SchemaCompileError);
});

// review6: the removal check looked at top-level fields only.
test('avro: a field removed from a nested record (in a record, array, map or union) is incompatible', () => {
  const J = (v: unknown): string => JSON.stringify(v);
  const inner = (fields: unknown[]) => ({ type: 'record', name: 'Inner', fields });
  const full = [{ name: 'a', type: 'int' }, { name: 'b', type: 'string' }];
  const cut = [{ name: 'a', type: 'int' }];
  const wraps: ((t: unknown) => unknown)[] = [(t) => t, (t) => ({ type: 'array', items: t }), (t) => ({ type: 'map', values: t }), (t) => ['null', t]];
  for (const wrap of wraps) {
    const s = (fields: unknown[]) => J({ type: 'record', name: 'Outer', fields: [{ name: 'inner', type: wrap(inner(fields)) }] });
    assert.match(compatibilityProblem('avro', s(full), s(cut), 'E') ?? '', /field "b" of Inner was removed/, J(wrap('Inner')));
    assert.equal(compatibilityProblem('avro', s(cut), s([...cut, { name: 'c', type: 'int', default: 0 }]), 'E'), null, 'adding a field with a default still passes');
  }
  // A recursive record is compared once, not for ever.
  const node = (extra: unknown[]) => J({ type: 'record', name: 'Node', fields: [{ name: 'v', type: 'int' }, { name: 'next', type: ['null', 'Node'], default: null }, ...extra] });
  assert.equal(compatibilityProblem('avro', node([]), node([{ name: 'w', type: 'int', default: 1 }]), 'E'), null);
});

// review6: map key types and enum values were not compared.
test('protobuf: a map whose key type changes, and an enum value removed or renumbered, are incompatible; a new enum value is not', () => {
  const map = (k: string) => `syntax = "proto3"; message E { map<${k}, int32> m = 1; }`;
  assert.match(compatibilityProblem('protobuf', map('string'), map('int32'), 'E') ?? '', /changed type from map<string, int32> to map<int32, int32>/);
  assert.equal(compatibilityProblem('protobuf', map('string'), map('string'), 'E'), null);
  const en = (values: string) => `syntax = "proto3"; enum Color { ${values} } message E { Color c = 1; }`;
  assert.match(compatibilityProblem('protobuf', en('RED = 0; BLUE = 1;'), en('RED = 0;'), 'E') ?? '', /value BLUE = 1 of enum Color/);
  assert.match(compatibilityProblem('protobuf', en('RED = 0; BLUE = 1;'), en('RED = 0; BLUE = 2;'), 'E') ?? '', /renumbered/);
  assert.equal(compatibilityProblem('protobuf', en('RED = 0;'), en('RED = 0; BLUE = 1;'), 'E'), null);
});

// review6: tuple items and $ref'd definitions were not compared.
test('json: a tuple item that changes type, or a property whose $ref target changes type, is incompatible; recursive $refs are compared once', () => {
  const J = (v: unknown): string => JSON.stringify(v);
  assert.match(compatibilityProblem('json', J({ type: 'array', items: [{ type: 'number' }] }), J({ type: 'array', items: [{ type: 'string' }] }), 'E') ?? '', /\[0\]: type changed/);
  assert.match(compatibilityProblem('json', J({ type: 'array', items: [{ type: 'number' }] }), J({ type: 'array', items: [{ type: 'number' }, { type: 'string' }] }), 'E') ?? '', /\[1\]/, 'a new tuple position constrains what was free');
  assert.equal(compatibilityProblem('json', J({ type: 'array', items: [{ type: 'number' }] }), J({ type: 'array', items: [{ type: 'number' }] }), 'E'), null);
  const money = (t: string, key = 'definitions') => J({ type: 'object', properties: { amount: { $ref: `#/${key}/money` } }, [key]: { money: { type: t } } });
  assert.match(compatibilityProblem('json', money('number'), money('string'), 'E') ?? '', /amount: type changed from "number" to "string"/);
  assert.match(compatibilityProblem('json', money('number', '$defs'), money('string', '$defs'), 'E') ?? '', /type changed/);
  assert.equal(compatibilityProblem('json', money('number'), money('number'), 'E'), null);
  const tree = (extra: object) => J({ $ref: '#/definitions/node', definitions: { node: { type: 'object', properties: { v: { type: 'number' }, kids: { type: 'array', items: { $ref: '#/definitions/node' } }, ...extra } } } });
  assert.equal(compatibilityProblem('json', tree({}), tree({ label: { type: 'string' } }), 'E'), null);
  assert.match(compatibilityProblem('json', tree({ label: { type: 'string' } }), tree({ label: { type: 'number' } }), 'E') ?? '', /label: type changed/);
});

// Schemas (SPEC §5) against a real `celer serve --standalone` process: JSON Schema, Avro and
// protobuf registrations; valid events land, an invalid one fails its whole write with 2022 and the
// validator's message and nothing of it lands; immutability; minor-version compatibility;
// encrypted events skip validation; the registry survives a restart; the CLI and gRPC.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { writeFile } from 'node:fs/promises';
import { join } from 'node:path';
import { AggregateNotFoundError, BadRequestError, connect, SchemaValidationError, type CelerClient, type EventInput, type ReadPage } from '@celer/client';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import avro from 'avsc';
import protobuf from 'protobufjs';
import { PROTO_LOADER_OPTIONS, PROTO_PATH } from '../../dataplane/server/grpc.ts';
import { removeDir, runCeler, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';

const te = new TextEncoder();
const json = (v: unknown): Uint8Array => te.encode(JSON.stringify(v));
let node: CelerProcess;
let dir: string;
let client: CelerClient;
const ORG = 42;
const TYPE = 7;

async function start(): Promise<void> {
  node = await startCeler(dir, ['--shards', '2', '--grpc', '127.0.0.1:0']);
  client = await connect(node.native, { clientId: 1 });
}

before(async () => {
  dir = await tempDir('celer-e2e-schema-');
  await start();
});

after(async () => {
  await client?.close();
  await node?.stop();
  await removeDir(dir);
});

const DEPOSITED_JSON = { type: 'object', properties: { amount: { type: 'number' }, currency: { type: 'string' } }, required: ['amount'] };
const ACCOUNT_AVRO = { type: 'record', name: 'Opened', fields: [{ name: 'owner', type: 'string' }, { name: 'limit', type: 'long' }] };
const SHIPPED_PROTO = `syntax = "proto3";
package shop;
message Shipped { string parcel = 1; int32 items = 2; }`;

const key = (id: number) => ({ org: ORG, type: TYPE, id });

async function refusal(p: Promise<unknown>): Promise<SchemaValidationError> {
  const e = await p.then(
    () => assert.fail('expected 2022'),
    (err: unknown) => err,
  );
  assert.ok(e instanceof SchemaValidationError, String(e));
  assert.equal(e.code, 2022);
  return e;
}

async function notThere(id: number): Promise<void> {
  const page: ReadPage | unknown = await client.read(key(id)).catch((e: unknown) => e);
  if (page instanceof AggregateNotFoundError) return;
  if (page instanceof Error) throw page;
  assert.fail(`nothing of the refused write may land, but ${ORG}/${TYPE}/${id} holds ${(page as ReadPage).batches.reduce((n, b) => n + b.events.length, 0)} events`);
}

/** The write's outcome, then "nothing landed" (checked first), then the outcome is 2022. */
async function refusedAndNothingLanded(p: Promise<unknown>, ids: number[]): Promise<SchemaValidationError> {
  const outcome = p.then(
    () => null,
    (err: unknown) => err,
  );
  await outcome;
  for (const id of ids) await notThere(id);
  return refusal(outcome.then((e) => (e === null ? undefined : Promise.reject(e as Error))));
}

test('json: valid events land; a write with one valid and one invalid event is refused whole with the validator’s message', async () => {
  assert.deepEqual(await client.registerSchema({ org: ORG, type: TYPE, eventType: 'Deposited', version: { major: 1, minor: 0 }, format: 'json', schema: DEPOSITED_JSON }), { registered: true });
  const dep = (amount: unknown): EventInput => ({ type: 'Deposited', data: json({ amount }), schemaVersion: { major: 1, minor: 0 } });
  await client.append(key(1), [dep(5), dep(7)], { expectedVersion: 'no_stream' });
  const e = await refusedAndNothingLanded(client.append(key(2), [dep(5), dep('seven')], { expectedVersion: 'no_stream' }), [2]);
  assert.equal(e.message, 'writes[0].events[1] (event type "Deposited", schema 1.0, json) does not match its registered schema: data/amount must be number; nothing of this write was stored');
  assert.equal(e.validator, 'data/amount must be number');
  // A multi-aggregate write: the valid aggregate does not land either (ids 3 and 5 share shard 1).
  await refusedAndNothingLanded(
    client.write({
      writes: [
        { key: key(3), events: [dep(1)] },
        { key: key(5), events: [{ type: 'Deposited', data: te.encode('not json'), schemaVersion: { major: 1, minor: 0 } }] },
      ],
    }),
    [3, 5],
  );
  const page = await client.read(key(1));
  assert.equal(page.batches[0]!.events.length, 2);
});

test('avro: the Avro binary encoding validates; truncated or foreign data is refused', async () => {
  const t = avro.Type.forSchema(ACCOUNT_AVRO as avro.Schema);
  await client.registerSchema({ org: ORG, type: TYPE, eventType: 'Opened', version: { major: 1, minor: 0 }, format: 'avro', schema: JSON.stringify(ACCOUNT_AVRO) });
  const good = t.toBuffer({ owner: 'ann', limit: 100 });
  await client.append(key(10), [{ type: 'Opened', data: good, schemaVersion: { major: 1, minor: 0 } }]);
  const e = await refusal(client.append(key(11), [{ type: 'Opened', data: good.subarray(0, good.length - 1), schemaVersion: { major: 1, minor: 0 } }]));
  assert.match(e.message, /schema 1\.0, avro\) does not match its registered schema: data is not an Avro Opened: truncated buffer/);
  await refusal(client.append(key(11), [{ type: 'Opened', data: json({ owner: 'ann', limit: 100 }), schemaVersion: { major: 1, minor: 0 } }]));
  await notThere(11);
});

test('protobuf: the message named after the event type validates; a wrong wire type is refused', async () => {
  const T = protobuf.parse(SHIPPED_PROTO).root.lookupType('shop.Shipped');
  await client.registerSchema({ org: ORG, type: TYPE, eventType: 'Shipped', version: { major: 1, minor: 0 }, format: 'protobuf', schema: SHIPPED_PROTO });
  await client.append(key(20), [{ type: 'Shipped', data: T.encode(T.create({ parcel: 'p-1', items: 3 })).finish(), schemaVersion: { major: 1, minor: 0 } }]);
  // items (int32) sent as a string.
  const bad = Uint8Array.of(0x0a, 0x01, 0x70, 0x12, 0x01, 0x33);
  const e = await refusal(client.append(key(21), [{ type: 'Shipped', data: bad, schemaVersion: { major: 1, minor: 0 } }]));
  assert.match(e.message, /data is not a shop\.Shipped: field items \(2\) of Shipped has wire type 2; its type int32 is encoded with wire type 0/);
  await notThere(21);
});

test('immutability: the same text again is a no-op, another text is refused with the reason', async () => {
  const same = { org: ORG, type: TYPE, eventType: 'Deposited', version: { major: 1, minor: 0 }, format: 'json' as const, schema: DEPOSITED_JSON };
  assert.deepEqual(await client.registerSchema(same), { registered: false });
  const e = await refusal(client.registerSchema({ ...same, schema: { ...DEPOSITED_JSON, required: [] } }));
  assert.equal(e.detail.reason, 'immutable');
  assert.match(e.message, /is already registered with a different text; registered schemas are immutable: register the change as a new version \(1\.1 if it only adds, 2\.0 if it breaks\)/);
  const bad = await client.registerSchema({ ...same, eventType: 'Broken', schema: '{"type":"objekt"}' }).catch((err: unknown) => err);
  assert.ok(bad instanceof BadRequestError && /the JSON Schema does not compile/.test(bad.message), String(bad));
});

test('a new minor version: an incompatible one is refused with the reason, a compatible one accepted and used', async () => {
  const base = { org: ORG, type: TYPE, eventType: 'Deposited', format: 'json' as const };
  const breaking = { ...DEPOSITED_JSON, properties: { ...DEPOSITED_JSON.properties, amount: { type: 'string' } } };
  const e = await refusal(client.registerSchema({ ...base, version: { major: 1, minor: 1 }, schema: breaking }));
  assert.equal(e.detail.reason, 'incompatible');
  assert.match(e.message, /is not backward compatible with the registered 1\.0: \/amount: type changed from "number" to "string"/);
  const required = await refusal(client.registerSchema({ ...base, version: { major: 1, minor: 1 }, schema: { ...DEPOSITED_JSON, required: ['amount', 'currency'] } }));
  assert.match(required.message, /property "currency" is newly required/);
  const additive = { ...DEPOSITED_JSON, properties: { ...DEPOSITED_JSON.properties, note: { type: 'string', maxLength: 10 } } };
  assert.deepEqual(await client.registerSchema({ ...base, version: { major: 1, minor: 1 }, schema: additive }), { registered: true });
  await client.append(key(30), [{ type: 'Deposited', data: json({ amount: 1, note: 'short' }), schemaVersion: { major: 1, minor: 1 } }]);
  await refusal(client.append(key(31), [{ type: 'Deposited', data: json({ amount: 1, note: 'far too long a note' }), schemaVersion: { major: 1, minor: 1 } }]));
  // The avro rule too: a new field without a default cannot read old data.
  const avroBase = { org: ORG, type: TYPE, eventType: 'Opened', format: 'avro' as const };
  const noDefault = { ...ACCOUNT_AVRO, fields: [...ACCOUNT_AVRO.fields, { name: 'branch', type: 'string' }] };
  const a = await refusal(client.registerSchema({ ...avroBase, version: { major: 1, minor: 1 }, schema: JSON.stringify(noDefault) }));
  assert.match(a.message, /cannot be read with the newer one/);
  const withDefault = { ...ACCOUNT_AVRO, fields: [...ACCOUNT_AVRO.fields, { name: 'branch', type: 'string', default: 'main' }] };
  assert.deepEqual(await client.registerSchema({ ...avroBase, version: { major: 1, minor: 1 }, schema: JSON.stringify(withDefault) }), { registered: true });
});

test('encrypted events (with an iv) and unregistered versions are not validated', async () => {
  await client.append(key(40), [{ type: 'Deposited', data: Uint8Array.of(0xde, 0xad, 0xbe, 0xef), schemaVersion: { major: 1, minor: 0 }, iv: new Uint8Array(12).fill(9) }]);
  await client.append(key(40), [{ type: 'Deposited', data: te.encode('anything'), schemaVersion: { major: 1, minor: 9 } }]);
  await client.append(key(40), [{ type: 'Deposited', data: te.encode('no schema named') }]);
  const page = await client.read(key(40));
  assert.equal(page.batches.length, 3);
  assert.equal(page.batches[0]!.events[0]!.iv?.length, 12);
});

test('users cannot write or read the reserved org', async () => {
  const reserved = { org: (1n << 128n) - 1n, type: (1n << 128n) - 1n, id: 1n };
  const w = await client.append(reserved, [{ type: 'SchemaRegistered', data: json({}) }]).catch((err: unknown) => err);
  assert.ok(w instanceof BadRequestError && /the org Celer reserves for its own aggregates/.test(w.message), String(w));
  await assert.rejects(client.read(reserved), BadRequestError);
});

test('gRPC: RegisterSchema, ListSchemas, and an invalid Append is INVALID_ARGUMENT with celer-code 2022', async () => {
  const def = await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const Ctor = grpc.loadPackageDefinition(def).celer as unknown as { v1: { EventStore: new (a: string, c: grpc.ChannelCredentials) => grpc.Client & Record<string, (req: unknown, cb: (e: grpc.ServiceError | null, r?: unknown) => void) => void> } };
  const stub = new Ctor.v1.EventStore(node.grpc!, grpc.credentials.createInsecure());
  const call = (m: string, req: unknown) => new Promise<{ err: grpc.ServiceError | null; res: Record<string, unknown> | undefined }>((resolve) => stub[m]!(req, (err, res) => resolve({ err, res: res as Record<string, unknown> | undefined })));
  try {
    const reg = await call('RegisterSchema', { org: String(ORG), type: String(TYPE), eventType: 'Closed', version: { major: 1, minor: 0 }, format: 'json', schema: '{"type":"object","required":["reason"]}' });
    assert.equal(reg.err, null);
    assert.deepEqual(reg.res, { registered: true });
    const list = await call('ListSchemas', { org: String(ORG), type: String(TYPE) });
    const schemas = (list.res!.schemas as { eventType: string; version: { major: number; minor: number } }[]).map((s) => `${s.eventType} ${s.version.major}.${s.version.minor}`);
    assert.deepEqual(schemas, ['Closed 1.0', 'Deposited 1.0', 'Deposited 1.1', 'Opened 1.0', 'Opened 1.1', 'Shipped 1.0']);
    const bad = await call('Append', { key: { org: String(ORG), type: String(TYPE), id: '50' }, events: [{ type: 'Closed', data: json({}), schemaVersion: { major: 1, minor: 0 } }] });
    assert.equal(bad.err?.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(bad.err?.metadata.get('celer-code')[0], '2022');
    assert.match(bad.err!.details, /data must have required property 'reason'/);
  } finally {
    stub.close();
  }
  await notThere(50);
});

test('the registry survives a restart; the CLI registers and lists', async () => {
  await client.close();
  assert.equal(await node.stop(), 0);
  await start();
  const e = await refusal(client.append(key(60), [{ type: 'Deposited', data: json({ amount: 'x' }), schemaVersion: { major: 1, minor: 0 } }]));
  assert.match(e.message, /data\/amount must be number/);
  await notThere(60);
  assert.deepEqual(await client.registerSchema({ org: ORG, type: TYPE, eventType: 'Deposited', version: { major: 1, minor: 0 }, format: 'json', schema: DEPOSITED_JSON }), { registered: false });

  const file = join(dir, 'withdrawn.json');
  await writeFile(file, JSON.stringify({ type: 'object', properties: { amount: { type: 'integer' } }, required: ['amount'] }));
  const args = ['--addr', node.native, '--org', String(ORG), '--type', String(TYPE)];
  const reg = await runCeler(['schema', 'register', ...args, '--event-type', 'Withdrawn', '--version', '2.0', '--format', 'json', '--file', file]);
  assert.equal(reg.code, 0, reg.stderr);
  assert.deepEqual(JSON.parse(reg.stdout), { org: String(ORG), type: String(TYPE), eventType: 'Withdrawn', version: '2.0', format: 'json', registered: true });
  const again = await runCeler(['schema', 'register', ...args, '--event-type', 'Withdrawn', '--version', '2.0', '--format', 'json', '--file', file]);
  assert.equal(JSON.parse(again.stdout).registered, false);
  const list = await runCeler(['schema', 'list', ...args]);
  assert.equal(list.code, 0, list.stderr);
  const lines = list.stdout.trim().split('\n').map((l) => JSON.parse(l) as { eventType: string; version: string; format: string });
  assert.deepEqual(lines.map((l) => `${l.eventType} ${l.version} ${l.format}`), ['Closed 1.0 json', 'Deposited 1.0 json', 'Deposited 1.1 json', 'Opened 1.0 avro', 'Opened 1.1 avro', 'Shipped 1.0 protobuf', 'Withdrawn 2.0 json']);
  const w = await runCeler(['write', '--addr', node.native, `${ORG}/${TYPE}/70`, '--type', 'Withdrawn', '--data', '{"amount":1.5}', '--schema-version', '2.0']);
  assert.equal(w.code, 1);
  assert.match(w.stderr, /error 2022: .*data\/amount must be integer/);
  const ok = await runCeler(['write', '--addr', node.native, `${ORG}/${TYPE}/70`, '--type', 'Withdrawn', '--data', '{"amount":2}', '--schema-version', '2.0']);
  assert.equal(ok.code, 0, ok.stderr);
});

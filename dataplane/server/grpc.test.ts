import { after, before, beforeEach, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import {
  decodeKeyRequest,
  decodeReadRequest,
  decodeWriteRequest,
  encodeDetailsOk,
  encodeError,
  encodeWriteOk,
  Expect,
  Limits,
  Op,
  readEvent,
  Reader,
  writeBatchHeader,
  writeEvent,
  Writer,
  type WireBatchHeader,
  type WireEvent,
} from '../../client/wire.ts';
import { ErrorCode } from '../../client/errors.ts';
import { U64_MAX } from '../../client/key.ts';
import type { Dispatcher, DispatchResult } from './dispatch.ts';
import { buildMessageSchema, checkMessage, GRPC_STATUS_BY_CODE, PROTO_LOADER_OPTIONS, PROTO_PATH, startGrpcServer, type GrpcServerHandle } from './grpc.ts';
import { CONNECTION_REQUESTS_IN_FLIGHT_MAX } from '../constants.ts';
import { waitUntil } from '../../test/e2e/lib/wait.ts';

// ---------------------------------------------------------------------------------------------
// A fake Dispatcher: records every call and answers with whatever the test installs.

interface Call {
  op: number;
  body: Uint8Array;
}

class FakeDispatcher implements Dispatcher {
  calls: Call[] = [];
  answer: (op: number, body: Uint8Array) => DispatchResult = () => ({ op: Op.Error, body: encodeError(9100, 'no answer installed') });
  async dispatch(op: number, body: Uint8Array): Promise<DispatchResult> {
    this.calls.push({ op, body: body.slice() });
    return this.answer(op, body);
  }
}

/** The read response body (the server side encodes it in the shard worker; mirrored here). */
function encodeReadOk(nextVersion: bigint, batches: (WireBatchHeader & { events: (WireEvent & { version: bigint })[] })[]): Uint8Array {
  const w = new Writer();
  w.u64(nextVersion);
  w.u32(batches.length);
  for (const b of batches) {
    writeBatchHeader(w, { ...b, eventCount: b.events.length });
    for (const e of b.events) {
      w.u64(e.version);
      writeEvent(w, e);
    }
  }
  return w.finish();
}

function batch(fromVersion: bigint, count: number, seq: bigint, type = 'Happened'): WireBatchHeader & { events: (WireEvent & { version: bigint })[] } {
  const events = [];
  for (let i = 0; i < count; i++) {
    events.push({ version: fromVersion + BigInt(i), type, data: new TextEncoder().encode(`e${fromVersion + BigInt(i)}`) });
  }
  return { fromVersion, toVersion: fromVersion + BigInt(count - 1), shard: 3, seq, clientId: 77n, serverTimestampMs: 1_700_000_000_123, eventCount: count, events };
}

function eventsOf(body: Uint8Array, count: number): WireEvent[] {
  const r = new Reader(body);
  const out = [];
  for (let i = 0; i < count; i++) out.push(readEvent(r, `e${i}`));
  return out;
}

// ---------------------------------------------------------------------------------------------
// Client plumbing

type Callback = (err: grpc.ServiceError | null, res?: unknown) => void;
type StubClient = grpc.Client & Record<string, (req: unknown, cb: Callback) => void> & { ReadAll(req: unknown): grpc.ClientReadableStream<unknown> };

const fake = new FakeDispatcher();
let server: GrpcServerHandle;
let client: StubClient;
let raw: grpc.Client;

function unary(method: string, req: unknown): Promise<Record<string, unknown>> {
  return new Promise((resolve, reject) => {
    client[method]!(req, (err, res) => (err ? reject(err) : resolve(res as Record<string, unknown>)));
  });
}

function unaryError(method: string, req: unknown): Promise<grpc.ServiceError> {
  return unary(method, req).then(
    () => assert.fail(`${method} succeeded; an error was expected`),
    (err: grpc.ServiceError) => err,
  );
}

/** Sends already-encoded protobuf bytes (to test what a stub would never produce). */
function rawCall(method: string, bytes: Uint8Array): Promise<grpc.ServiceError> {
  return new Promise((resolve, reject) => {
    raw.makeUnaryRequest(
      `/celer.v1.EventStore/${method}`,
      (b: Buffer) => b,
      (b: Buffer) => b,
      Buffer.from(bytes),
      (err, res) => (err ? resolve(err) : reject(new Error(`expected an error; got ${res?.length} bytes`))),
    );
  });
}

function readAllMessages(req: unknown): Promise<{ messages: Record<string, unknown>[]; error?: grpc.ServiceError }> {
  return new Promise((resolve) => {
    const messages: Record<string, unknown>[] = [];
    const stream = client.ReadAll(req);
    stream.on('data', (m: Record<string, unknown>) => messages.push(m));
    stream.on('error', (error: grpc.ServiceError) => resolve({ messages, error }));
    stream.on('end', () => resolve({ messages }));
  });
}

function celerCode(err: grpc.ServiceError): number {
  const v = err.metadata.get('celer-code')[0];
  return Number(v);
}

function celerDetail(err: grpc.ServiceError): Record<string, unknown> {
  const v = err.metadata.get('celer-detail')[0];
  assert.equal(typeof v, 'string');
  return JSON.parse(v as string) as Record<string, unknown>;
}

let definition: protoLoader.PackageDefinition;

function encode(typeName: string, value: unknown): Buffer {
  // Encodes with the serializer of the method that takes this request type.
  const svc = definition['celer.v1.EventStore'] as Record<string, { requestType: { type: { name: string } }; requestSerialize: (v: unknown) => Buffer }>;
  const m = Object.values(svc).find((x) => x.requestType.type.name === typeName);
  assert.ok(m, `a method takes ${typeName}`);
  return m.requestSerialize(value);
}

function varint(n: number): number[] {
  const out = [];
  while (n >= 0x80) {
    out.push((n & 0x7f) | 0x80);
    n = Math.floor(n / 128);
  }
  out.push(n);
  return out;
}

const okKey = { org: '1', type: '2', id: '3' };
const okEvent = { type: 'Created', data: Buffer.from('{}') };

before(async () => {
  server = await startGrpcServer(fake, '127.0.0.1:0');
  definition = await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS);
  const pkg = grpc.loadPackageDefinition(definition) as unknown as { celer: { v1: { EventStore: grpc.ServiceClientConstructor } } };
  client = new pkg.celer.v1.EventStore(server.address, grpc.credentials.createInsecure()) as unknown as StubClient;
  raw = new grpc.Client(server.address, grpc.credentials.createInsecure());
});

after(async () => {
  client.close();
  raw.close();
  await server.close();
});

beforeEach(() => {
  fake.calls = [];
});

// ---------------------------------------------------------------------------------------------

describe('round trips', () => {
  test('Append turns the request into a wire write and returns the versions and position', async () => {
    fake.answer = () => ({ op: Op.WriteOk, body: encodeWriteOk({ shard: 5, firstSeq: 41n, ranges: [{ fromVersion: 8n, toVersion: 9n }] }) });
    const uuid = '550e8400-e29b-41d4-a716-446655440000';
    const res = await unary('Append', {
      key: { org: '340282366920938463463374607431768211455', type: '2', id: uuid },
      events: [
        { type: 'Created', data: Buffer.from('a'), metadata: Buffer.from('m'), schemaVersion: { major: 2, minor: 1 } },
        { type: 'Sealed', data: Buffer.alloc(0), iv: Buffer.alloc(12, 7), metadata: Buffer.alloc(0) },
      ],
      expectedVersion: { exact: '7' },
      clientId: uuid,
      clientSeq: U64_MAX.toString(),
    });
    assert.deepEqual(res, { fromVersion: '8', toVersion: '9', position: { shard: 5, seq: '41' } });

    assert.equal(fake.calls.length, 1);
    assert.equal(fake.calls[0]!.op, Op.Write);
    const w = decodeWriteRequest(fake.calls[0]!.body);
    assert.equal(w.clientId, 0x550e8400e29b41d4a716446655440000n);
    assert.equal(w.writes.length, 1);
    const a = w.writes[0]!;
    assert.deepEqual(a.key, { org: (1n << 128n) - 1n, type: 2n, id: 0x550e8400e29b41d4a716446655440000n });
    assert.equal(a.expectMode, Expect.Exact);
    assert.equal(a.expectVersion, 7n);
    assert.equal(a.clientSeq, U64_MAX);
    const [e0, e1] = eventsOf(a.events, a.eventCount);
    assert.equal(e0!.type, 'Created');
    assert.deepEqual([...e0!.data], [...Buffer.from('a')]);
    assert.deepEqual([...e0!.metadata!], [...Buffer.from('m')]);
    assert.equal(e0!.schemaMajor, 2);
    assert.equal(e0!.schemaMinor, 1);
    assert.equal(e0!.iv, undefined);
    assert.equal(e1!.type, 'Sealed');
    assert.equal(e1!.data.length, 0);
    assert.equal(e1!.metadata?.length, 0, 'present-but-empty metadata stays present');
    assert.deepEqual([...e1!.iv!], new Array(12).fill(7));
    assert.equal(e1!.schemaMajor, undefined);
  });

  test('Write sends every aggregate write with its own guard and gives each result its own position', async () => {
    fake.answer = () => ({
      op: Op.WriteOk,
      body: encodeWriteOk({ shard: 2, firstSeq: 100n, ranges: [{ fromVersion: 1n, toVersion: 1n }, { fromVersion: 4n, toVersion: 5n }, { fromVersion: 10n, toVersion: 10n }, { fromVersion: 2n, toVersion: 2n }] }),
    });
    const res = await unary('Write', {
      clientId: '9',
      writes: [
        { key: { org: '1', type: '1', id: '1' }, events: [okEvent], expectedVersion: { noStream: {} } },
        { key: { org: '1', type: '1', id: '2' }, events: [okEvent, okEvent], expectedVersion: { streamExists: {} }, clientSeq: '3' },
        { key: { org: '1', type: '1', id: '3' }, events: [okEvent], expectedVersion: { any: {} } },
        { key: { org: '1', type: '1', id: '4' }, events: [okEvent] },
      ],
    });
    assert.deepEqual(res, {
      results: [
        { fromVersion: '1', toVersion: '1', position: { shard: 2, seq: '100' } },
        { fromVersion: '4', toVersion: '5', position: { shard: 2, seq: '101' } },
        { fromVersion: '10', toVersion: '10', position: { shard: 2, seq: '102' } },
        { fromVersion: '2', toVersion: '2', position: { shard: 2, seq: '103' } },
      ],
    });
    const w = decodeWriteRequest(fake.calls[0]!.body);
    assert.equal(w.clientId, 9n);
    assert.deepEqual(
      w.writes.map((x) => [x.key.id, x.expectMode, x.clientSeq, x.eventCount]),
      [
        [1n, Expect.NoStream, 0n, 1],
        [2n, Expect.StreamExists, 3n, 2],
        [3n, Expect.Any, 0n, 1],
        [4n, Expect.Any, 0n, 1],
      ],
    );
  });

  test('an exact expected version of 0 is kept apart from no guard', async () => {
    fake.answer = () => ({ op: Op.WriteOk, body: encodeWriteOk({ shard: 0, firstSeq: 1n, ranges: [{ fromVersion: 1n, toVersion: 1n }] }) });
    await unary('Append', { key: okKey, events: [okEvent], expectedVersion: { exact: '0' } });
    const a = decodeWriteRequest(fake.calls[0]!.body).writes[0]!;
    assert.equal(a.expectMode, Expect.Exact);
    assert.equal(a.expectVersion, 0n);
  });

  test('Read passes range, filter and page size and returns batches with every event field', async () => {
    const b1 = batch(3n, 2, 900n);
    b1.events[0]!.metadata = new Uint8Array(0);
    b1.events[1]!.metadata = Buffer.from('meta');
    b1.events[1]!.schemaMajor = 4;
    b1.events[1]!.schemaMinor = 0;
    b1.events[1]!.iv = new Uint8Array(12).fill(1);
    fake.answer = () => ({ op: Op.ReadOk, body: encodeReadOk(5n, [b1]) });
    const res = await unary('Read', { key: okKey, from: '3', to: '10', eventTypes: ['Happened', 'Other'], maxBytes: 4096 });

    const r = decodeReadRequest(fake.calls[0]!.body);
    assert.equal(fake.calls[0]!.op, Op.Read);
    assert.deepEqual(r, { key: { org: 1n, type: 2n, id: 3n }, from: 3n, to: 10n, maxBytes: 4096, eventTypes: ['Happened', 'Other'] });

    assert.equal(res.nextVersion, '5');
    const batches = res.batches as Record<string, unknown>[];
    assert.equal(batches.length, 1);
    const got = batches[0]!;
    assert.equal(got.fromVersion, '3');
    assert.equal(got.toVersion, '4');
    assert.deepEqual(got.position, { shard: 3, seq: '900' });
    assert.equal(got.clientId, '77');
    assert.equal(got.serverTimestampMs, '1700000000123');
    const [e0, e1] = got.events as Record<string, unknown>[];
    assert.equal(e0!.version, '3');
    assert.equal(e0!.type, 'Happened');
    assert.equal(Buffer.from(e0!.data as Uint8Array).toString(), 'e3');
    assert.equal((e0!.metadata as Uint8Array).length, 0, 'empty metadata is present');
    assert.equal(e0!.iv, undefined);
    assert.equal(e0!.schemaVersion, undefined);
    assert.equal(e1!.version, '4');
    assert.equal(Buffer.from(e1!.metadata as Uint8Array).toString(), 'meta');
    assert.deepEqual(e1!.schemaVersion, { major: 4, minor: 0 });
    assert.deepEqual([...(e1!.iv as Uint8Array)], new Array(12).fill(1));
  });

  test('Read of a complete page reports nextVersion 0', async () => {
    fake.answer = () => ({ op: Op.ReadOk, body: encodeReadOk(0n, [batch(1n, 1, 1n)]) });
    const res = await unary('Read', { key: okKey });
    assert.equal(res.nextVersion, '0');
    assert.equal(decodeReadRequest(fake.calls[0]!.body).from, 1n, 'an unset from reads from version 1');
  });

  test('ReadAll follows pages on the server and streams one message per non-empty page', async () => {
    // Pages: [1..2] next 3, [] next 5 (filtered out), [5] complete.
    fake.answer = (_op, body) => {
      const from = decodeReadRequest(body).from;
      if (from === 1n) return { op: Op.ReadOk, body: encodeReadOk(3n, [batch(1n, 1, 10n), batch(2n, 1, 11n)]) };
      if (from === 3n) return { op: Op.ReadOk, body: encodeReadOk(5n, []) };
      if (from === 5n) return { op: Op.ReadOk, body: encodeReadOk(0n, [batch(5n, 1, 20n)]) };
      return { op: Op.Error, body: encodeError(9100, `unexpected from ${from}`) };
    };
    const { messages, error } = await readAllMessages({ key: okKey, to: '9', eventTypes: ['Happened'] });
    assert.equal(error, undefined);
    assert.deepEqual(
      messages.map((m) => (m.batches as Record<string, unknown>[]).map((b) => b.fromVersion)),
      [['1', '2'], ['5']],
    );
    assert.deepEqual(
      fake.calls.map((c) => decodeReadRequest(c.body)).map((r) => [r.from, r.to, r.eventTypes]),
      [
        [1n, 9n, ['Happened']],
        [3n, 9n, ['Happened']],
        [5n, 9n, ['Happened']],
      ],
    );
  });

  test('ReadAll ends with the Celer error when a later page fails, after the pages before it', async () => {
    fake.answer = (_op, body) =>
      decodeReadRequest(body).from === 1n
        ? { op: Op.ReadOk, body: encodeReadOk(2n, [batch(1n, 1, 10n)]) }
        : { op: Op.Error, body: encodeError(1000, 'versions below 4 were trimmed', { minVersion: '4' }) };
    const { messages, error } = await readAllMessages({ key: okKey });
    assert.equal(messages.length, 1);
    assert.ok(error);
    assert.equal(error.code, grpc.status.OUT_OF_RANGE);
    assert.equal(celerCode(error), 1000);
    assert.deepEqual(celerDetail(error), { minVersion: '4' });
  });

  test('ReadAll stops with an internal error when the dispatcher does not advance', async () => {
    fake.answer = () => ({ op: Op.ReadOk, body: encodeReadOk(1n, []) });
    const { error } = await readAllMessages({ key: okKey });
    assert.equal(error?.code, grpc.status.INTERNAL);
    assert.equal(fake.calls.length, 1);
  });

  test('Details returns the aggregate state', async () => {
    fake.answer = () => ({
      op: Op.DetailsOk,
      body: encodeDetailsOk({ version: 12n, minVersion: 3n, shard: 1, lastSeq: 555n, lastClientId: 1n << 100n, lastServerTimestampMs: 1234, deleted: true }),
    });
    const res = await unary('Details', { key: { org: '0', type: '0', id: '18446744073709551616' } });
    assert.deepEqual(decodeKeyRequest(fake.calls[0]!.body), { org: 0n, type: 0n, id: 1n << 64n });
    assert.equal(fake.calls[0]!.op, Op.Details);
    assert.deepEqual(res, {
      version: '12',
      minVersion: '3',
      lastPosition: { shard: 1, seq: '555' },
      lastClientId: (1n << 100n).toString(),
      lastServerTimestampMs: '1234',
      deleted: true,
    });
  });
});

describe('error mapping', () => {
  const expected: [number, grpc.status][] = [
    [1000, grpc.status.OUT_OF_RANGE],
    [1001, grpc.status.NOT_FOUND],
    [2002, grpc.status.ALREADY_EXISTS],
    [2003, grpc.status.FAILED_PRECONDITION],
    [2011, grpc.status.UNAVAILABLE],
    [2007, grpc.status.UNAVAILABLE],
    [2008, grpc.status.RESOURCE_EXHAUSTED],
    [2012, grpc.status.RESOURCE_EXHAUSTED],
    [2013, grpc.status.ABORTED],
    [2022, grpc.status.INVALID_ARGUMENT],
    [9001, grpc.status.INVALID_ARGUMENT],
    [9100, grpc.status.INVALID_ARGUMENT],
    [9200, grpc.status.UNAVAILABLE],
  ];

  test('every Celer error code has a gRPC status, and the table names no other code', () => {
    const codes = Object.values(ErrorCode).map(Number).sort();
    assert.deepEqual(Object.keys(GRPC_STATUS_BY_CODE).map(Number).sort(), codes);
    assert.deepEqual(expected.map(([c]) => c).sort(), codes);
  });

  for (const [code, status] of expected) {
    test(`Celer error ${code} becomes gRPC status ${grpc.status[status]} with celer-code and celer-detail`, async () => {
      const detail = { currentVersion: '41', leader: '10.0.0.2:7000' };
      fake.answer = () => ({ op: Op.Error, body: encodeError(code, `failure ${code}`, detail) });
      const err = await unaryError('Append', { key: okKey, events: [okEvent] });
      assert.equal(err.code, status);
      assert.equal(err.details, `failure ${code}`);
      assert.equal(celerCode(err), code);
      assert.deepEqual(celerDetail(err), detail);
    });
  }

  test('a code the table does not know becomes UNKNOWN and still carries celer-code', async () => {
    fake.answer = () => ({ op: Op.Error, body: encodeError(4242, 'new kind of failure') });
    const err = await unaryError('Details', { key: okKey });
    assert.equal(err.code, grpc.status.UNKNOWN);
    assert.equal(celerCode(err), 4242);
    assert.deepEqual(celerDetail(err), {});
  });

  test('non-ASCII text in the detail survives as escaped JSON', async () => {
    const detail = { validator: 'champ «prix» manquant — ligne 3\nsuite' };
    fake.answer = () => ({ op: Op.Error, body: encodeError(2022, 'schéma refusé', detail) });
    const err = await unaryError('Append', { key: okKey, events: [okEvent] });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(err.details, 'schéma refusé');
    const rawDetail = err.metadata.get('celer-detail')[0] as string;
    assert.match(rawDetail, /^[\x20-\x7e]*$/);
    assert.deepEqual(JSON.parse(rawDetail), detail);
  });
});

describe('bad requests', () => {
  async function expectBadRequest(method: string, req: unknown, message: RegExp): Promise<void> {
    fake.answer = () => assert.fail('the dispatcher must not be called for a bad request');
    const err = await unaryError(method, req);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(celerCode(err), 9100);
    assert.match(err.details, message);
    assert.equal(fake.calls.length, 0);
  }

  test('a key part that is neither decimal nor UUID is INVALID_ARGUMENT 9100 naming the part', async () => {
    await expectBadRequest('Append', { key: { org: '1', type: 'orders', id: '3' }, events: [okEvent] }, /key\.type must be a decimal number or a UUID/);
  });

  test('a key part above 2^128 - 1 is refused', async () => {
    await expectBadRequest('Details', { key: { org: '340282366920938463463374607431768211456', type: '1', id: '1' } }, /key\.org must fit in an unsigned 128-bit integer/);
  });

  test('a missing key and an empty key part are refused', async () => {
    await expectBadRequest('Read', {}, /key is required/);
    await expectBadRequest('Read', { key: { org: '1', id: '1' } }, /key\.type/);
  });

  test('a write key in a multi-aggregate write is named by its index', async () => {
    await expectBadRequest('Write', { writes: [{ key: okKey, events: [okEvent] }, { key: { org: '-1', type: '1', id: '1' }, events: [okEvent] }] }, /writes\[1\]\.key\.org/);
  });

  test('a bad client id is refused', async () => {
    await expectBadRequest('Append', { key: okKey, events: [okEvent], clientId: 'writer-1' }, /clientId/);
  });

  test('events that break the event rules are refused with the rule', async () => {
    await expectBadRequest('Append', { key: okKey, events: [] }, /events is empty/);
    await expectBadRequest('Append', { key: okKey, events: [{ data: Buffer.from('x') }] }, /events\[0\]\.type must be 1\.\.255 UTF-8 bytes; got 0/);
    await expectBadRequest('Append', { key: okKey, events: [okEvent, { type: 'x'.repeat(256) }] }, /events\[1\]\.type must be 1\.\.255/);
    await expectBadRequest('Append', { key: okKey, events: [{ type: 'x', iv: Buffer.alloc(11) }] }, /events\[0\]\.iv must be .*12 bytes/);
    await expectBadRequest('Append', { key: okKey, events: [{ type: 'x', data: Buffer.alloc(1024 * 1024), metadata: Buffer.alloc(1) }] }, /limit is 1048576/);
    await expectBadRequest('Write', { writes: [] }, /writes is empty/);
  });

  test('read arguments outside the limits are refused', async () => {
    await expectBadRequest('Read', { key: okKey, from: '5', to: '4' }, /to \(4\) is below from \(5\)/);
    await expectBadRequest('Read', { key: okKey, eventTypes: Array.from({ length: 65 }, (_, i) => `t${i}`) }, /at most 64/);
    await expectBadRequest('Read', { key: okKey, eventTypes: [''] }, /eventTypes\[0\] must be 1\.\.255/);
  });

  test('a request above the 16 MiB message limit is refused by the transport without reaching the dispatcher', async () => {
    fake.answer = () => assert.fail('the dispatcher must not be called');
    const big = Buffer.alloc(Limits.frameBytesMax + 1);
    const err = await unaryError('Append', { key: okKey, events: [{ type: 'x', data: big }] });
    assert.equal(err.code, grpc.status.RESOURCE_EXHAUSTED);
    assert.equal(fake.calls.length, 0);
  });

  test('a ReadAll with a bad key ends with INVALID_ARGUMENT 9100', async () => {
    const { messages, error } = await readAllMessages({ key: { org: 'x', type: '1', id: '1' } });
    assert.equal(messages.length, 0);
    assert.equal(error?.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(celerCode(error!), 9100);
    assert.equal(fake.calls.length, 0);
  });
});

describe('unknown fields', () => {
  async function expectRejected(method: string, bytes: Uint8Array, message: RegExp): Promise<void> {
    fake.answer = () => assert.fail('the dispatcher must not be called for a rejected message');
    const err = await rawCall(method, bytes);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(celerCode(err), 9100);
    assert.match(err.details, message);
    assert.equal(fake.calls.length, 0);
  }

  test('a well-formed request sent as raw bytes is accepted (the baseline for the cases below)', async () => {
    fake.answer = () => ({ op: Op.DetailsOk, body: encodeDetailsOk({ version: 1n, minVersion: 1n, shard: 0, lastSeq: 1n, lastClientId: 0n, lastServerTimestampMs: 1, deleted: false }) });
    const ok = encode('DetailsRequest', { key: okKey });
    const res = await new Promise<Buffer>((resolve, reject) => {
      raw.makeUnaryRequest('/celer.v1.EventStore/Details', (b: Buffer) => b, (b: Buffer) => b, ok, (err, r) => (err ? reject(err) : resolve(r!)));
    });
    assert.ok(res.length > 0);
    assert.equal(fake.calls.length, 1);
  });

  test('an unknown top-level field is INVALID_ARGUMENT 9100 naming its number', async () => {
    const ok = encode('AppendRequest', { key: okKey, events: [okEvent] });
    await expectRejected('Append', Buffer.concat([ok, Buffer.from([...varint((99 << 3) | 0), 1])]), /AppendRequest has an unknown field number 99/);
  });

  test('an unknown field inside a nested message is refused with its path', async () => {
    // key { org: "1", <field 4 varint 1> }
    const key = [0x0a, 0x01, 0x31, 0x20, 0x01];
    await expectRejected('Details', Buffer.from([0x0a, key.length, ...key]), /^key has an unknown field number 4/);
    // events[0] { type: "x", <field 9, empty bytes> }
    const inner = encode('AppendRequest', { events: [{ type: 'x' }] }).subarray(2);
    const extended = Buffer.concat([inner, Buffer.from([...varint((9 << 3) | 2), 0])]);
    await expectRejected('Append', Buffer.from([0x12, extended.length, ...extended]), /events\[0\] has an unknown field number 9/);
  });

  test('an unknown field in a ReadAll request ends the stream with 9100', async () => {
    const ok = encode('ReadRequest', { key: okKey });
    const bytes = Buffer.concat([ok, Buffer.from([...varint((6 << 3) | 0), 1])]);
    const err = await new Promise<grpc.ServiceError>((resolve, reject) => {
      const s = raw.makeServerStreamRequest('/celer.v1.EventStore/ReadAll', (b: Buffer) => b, (b: Buffer) => b, bytes);
      s.on('data', () => reject(new Error('no data expected')));
      s.on('error', resolve);
      s.on('end', () => reject(new Error('expected an error')));
    });
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(celerCode(err), 9100);
    assert.match(err.details, /unknown field number 6/);
  });

  test('a field with the wrong wire type is refused', async () => {
    // clientSeq (5, uint64) sent length-delimited.
    await expectRejected('Append', Buffer.from([(5 << 3) | 2, 1, 0]), /clientSeq has wire type length-delimited/);
  });

  test('a truncated message and invalid UTF-8 in a string are refused', async () => {
    await expectRejected('Details', Buffer.from([0x0a, 0x10, 0x0a]), /runs past the end/);
    await expectRejected('Details', Buffer.from([0x0a, 0x03, 0x0a, 0x01, 0xff]), /key\.org is not valid UTF-8/);
  });
});

describe('checkMessage', () => {
  test('accepts every message the stubs encode and knows the fields of every type', async () => {
    const def = await protoLoader.load(PROTO_PATH, PROTO_LOADER_OPTIONS);
    const schema = buildMessageSchema(def);
    assert.ok(schema.get('celer.v1.AppendRequest')?.fields.has(5));
    assert.equal(schema.get('celer.v1.EventData')?.fields.get(4)?.message, 'celer.v1.SchemaVersion');
    assert.equal(schema.get('celer.v1.ExpectedVersion')?.fields.get(1)?.message, 'google.protobuf.Empty');
    const bytes = encode('WriteRequest', {
      clientId: '1',
      writes: [{ key: okKey, events: [{ type: 'x', data: Buffer.from('d'), metadata: Buffer.alloc(0), schemaVersion: { major: 1, minor: 2 }, iv: Buffer.alloc(12) }], expectedVersion: { noStream: {} }, clientSeq: '5' }],
    });
    assert.doesNotThrow(() => checkMessage(schema, 'celer.v1.WriteRequest', bytes));
    assert.throws(() => checkMessage(schema, 'celer.v1.WriteRequest', Buffer.from([0x0a, 0x80])), /clientId length: truncated varint/);
    assert.throws(() => checkMessage(schema, 'celer.v1.WriteRequest', Buffer.from([0x0b])), /unknown field number 1|wire type/);
  });
});

describe('calls in flight per connection', () => {
  test('one connection has at most CONNECTION_REQUESTS_IN_FLIGHT_MAX calls at the dispatcher; the client queues the rest and every call completes', async () => {
    let holding: (() => void)[] = [];
    let maxHeld = 0;
    let seen = 0;
    const holder: Dispatcher = {
      dispatch: () =>
        new Promise<DispatchResult>((resolve) => {
          seen++;
          holding.push(() => resolve({ op: Op.DetailsOk, body: encodeDetailsOk({ version: 1n, minVersion: 1n, shard: 0, lastSeq: 1n, lastClientId: 0n, lastServerTimestampMs: 0, deleted: false }) }));
          maxHeld = Math.max(maxHeld, holding.length);
        }),
    };
    const releaseAll = (): void => {
      const h = holding;
      holding = [];
      for (const f of h) f();
    };
    const s = await startGrpcServer(holder, '127.0.0.1:0', { closeGraceMs: 100 });
    const pkg = grpc.loadPackageDefinition(definition) as unknown as { celer: { v1: { EventStore: grpc.ServiceClientConstructor } } };
    const c = new pkg.celer.v1.EventStore(s.address, grpc.credentials.createInsecure()) as unknown as StubClient;
    try {
      const total = CONNECTION_REQUESTS_IN_FLIGHT_MAX + 200;
      let done = 0;
      let failed = 0;
      const calls = Array.from(
        { length: total },
        () =>
          new Promise<void>((resolve) =>
            c.Details!({ key: okKey }, (err) => {
              if (err) failed++;
              done++;
              resolve();
            }),
          ),
      );
      // Release in waves: each time the server has dispatched all it may (the bound, or the rest).
      while (seen < total) {
        await waitUntil(`a full wave of calls at the dispatcher (seen ${seen}, holding ${holding.length}, done ${done})`, () => holding.length >= CONNECTION_REQUESTS_IN_FLIGHT_MAX || seen === total);
        releaseAll();
      }
      await Promise.all(calls);
      assert.equal(failed, 0, 'no call was refused');
      assert.equal(maxHeld, CONNECTION_REQUESTS_IN_FLIGHT_MAX, 'calls at the dispatcher reached the bound and never passed it');
    } finally {
      releaseAll();
      c.close();
      await s.close();
    }
  });
});

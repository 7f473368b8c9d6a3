// gRPC front end, the strict message check: raw protobuf bytes with unknown fields, wrong wire
// types, truncation or invalid UTF-8 are refused as INVALID_ARGUMENT 9100 (unary calls and ReadAll),
// and checkMessage accepts every message the stubs encode. Fixture: grpc-test-fixtures.ts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import * as protoLoader from '@grpc/proto-loader';
import { encodeDetailsOk, Op } from '../../client/wire.ts';
import { buildMessageSchema, checkMessage, PROTO_LOADER_OPTIONS, PROTO_PATH } from './grpc.ts';
import { celerCode, encode, fake, okEvent, okKey, raw, rawCall, useGrpcServer, varint } from './grpc-test-fixtures.ts';

useGrpcServer();

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

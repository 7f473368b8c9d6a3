// gRPC RegisterSchema and ListSchemas: the request becomes the wire request the dispatcher gets, the
// answer comes back field by field, bad input is 9100 naming the field, 2022 keeps its detail.
// Fixture: grpc-test-fixtures.ts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { decodeListSchemasRequest, decodeRegisterSchemaRequest, encodeError, encodeListSchemasOk, encodeRegisterSchemaOk, Op } from '../../client/wire.ts';
import { celerCode, celerDetail, fake, unary, unaryError, useGrpcServer } from './grpc-test-fixtures.ts';

useGrpcServer();

const UUID = '550e8400-e29b-41d4-a716-446655440000';
const schema = { org: '1', type: UUID, eventType: 'Deposited', version: { major: 1, minor: 2 }, format: 'avro', schema: '"string"' };

describe('schemas', () => {
  test('RegisterSchema sends the schema and answers registered', async () => {
    fake.answer = () => ({ op: Op.RegisterSchemaOk, body: encodeRegisterSchemaOk(true) });
    assert.deepEqual(await unary('RegisterSchema', schema), { registered: true });
    assert.equal(fake.calls.length, 1);
    assert.equal(fake.calls[0]!.op, Op.RegisterSchema);
    assert.deepEqual(decodeRegisterSchemaRequest(fake.calls[0]!.body), {
      org: 1n,
      type: 0x550e8400e29b41d4a716446655440000n,
      eventType: 'Deposited',
      major: 1,
      minor: 2,
      format: 'avro',
      schema: '"string"',
    });
    fake.answer = () => ({ op: Op.RegisterSchemaOk, body: encodeRegisterSchemaOk(false) });
    assert.deepEqual(await unary('RegisterSchema', schema), { registered: false });
  });

  test('ListSchemas passes the org and optional type, and returns every schema', async () => {
    const s = { org: 1n, type: 2n, eventType: 'E', major: 3, minor: 0, format: 'json' as const, schema: '{}' };
    fake.answer = () => ({ op: Op.ListSchemasOk, body: encodeListSchemasOk([s, { ...s, minor: 1 }]) });
    const res = await unary('ListSchemas', { org: '1', type: '2' });
    assert.deepEqual(res, {
      schemas: [
        { org: '1', type: '2', eventType: 'E', version: { major: 3, minor: 0 }, format: 'json', schema: '{}' },
        { org: '1', type: '2', eventType: 'E', version: { major: 3, minor: 1 }, format: 'json', schema: '{}' },
      ],
    });
    assert.deepEqual(decodeListSchemasRequest(fake.calls[0]!.body), { org: 1n, type: 2n });
    await unary('ListSchemas', { org: '1' });
    assert.deepEqual(decodeListSchemasRequest(fake.calls[1]!.body), { org: 1n });
  });

  test('bad input is INVALID_ARGUMENT / 9100 naming the field, and never reaches the dispatcher', async () => {
    const cases: [object, RegExp][] = [
      [{ ...schema, org: 'x' }, /org must be a decimal number or a UUID/],
      [{ ...schema, eventType: '' }, /event_type must be 1\.\.255 UTF-8 bytes/],
      [{ ...schema, version: undefined }, /version is required/],
      [{ ...schema, format: 'xml' }, /format must be one of json, avro, protobuf; got "xml"/],
      [{ ...schema, schema: '' }, /schema \(the schema text\) is required/],
    ];
    for (const [req, re] of cases) {
      const err = await unaryError('RegisterSchema', req);
      assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
      assert.equal(celerCode(err), 9100);
      assert.match(err.details, re);
    }
    assert.equal(fake.calls.length, 0);
  });

  test('a refusal (2022) keeps its reason in celer-detail', async () => {
    fake.answer = () => ({ op: Op.Error, body: encodeError(2022, 'not backward compatible with the registered 1.1: x', { reason: 'incompatible', against: '1.1', validator: 'x' }) });
    const err = await unaryError('RegisterSchema', schema);
    assert.equal(err.code, grpc.status.INVALID_ARGUMENT);
    assert.equal(celerCode(err), 2022);
    assert.deepEqual(celerDetail(err), { reason: 'incompatible', against: '1.1', validator: 'x' });
  });
});

// gRPC front end, error mapping: every Celer error code becomes its gRPC status, with celer-code and
// celer-detail metadata (escaped JSON); an unknown code becomes UNKNOWN. Fixture:
// grpc-test-fixtures.ts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { encodeError, Op } from '../../client/wire.ts';
import { ErrorCode } from '../../client/errors.ts';
import { GRPC_STATUS_BY_CODE } from './grpc.ts';
import { celerCode, celerDetail, fake, okEvent, okKey, unaryError, useGrpcServer } from './grpc-test-fixtures.ts';

useGrpcServer();

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

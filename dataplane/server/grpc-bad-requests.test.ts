// gRPC front end, bad requests: keys, client ids, events and read arguments that break the rules
// are refused as INVALID_ARGUMENT 9100 naming what is wrong, and an oversized message by the
// transport, all without reaching the dispatcher. Fixture: grpc-test-fixtures.ts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { Limits } from '../../client/wire.ts';
import { celerCode, fake, okEvent, okKey, readAllMessages, unaryError, useGrpcServer } from './grpc-test-fixtures.ts';

useGrpcServer();

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

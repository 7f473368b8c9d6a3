// gRPC front end, round trips: each method (Append, Write, Read, ReadAll, Details) turns its
// request into the wire request the dispatcher gets, and the dispatcher's answer into the response,
// field by field; ReadAll follows pages on the server. Fixture: grpc-test-fixtures.ts.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import * as grpc from '@grpc/grpc-js';
import { decodeDeleteRequest, decodeKeyRequest, decodeReadRequest, decodeTrimRequest, decodeWriteRequest, encodeControlOk, encodeDetailsOk, encodeError, encodeWriteOk, Expect, Op } from '../../client/wire.ts';
import { U64_MAX } from '../../client/key.ts';
import { batch, celerCode, celerDetail, encodeReadOk, eventsOf, fake, okEvent, okKey, readAllMessages, unary, useGrpcServer } from './grpc-test-fixtures.ts';

useGrpcServer();

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

  test('Delete and TrimStart turn into the native delete/trim bodies and answer with the tombstone', async () => {
    fake.answer = (op) => ({ op: op === Op.Delete ? Op.DeleteOk : Op.TrimOk, body: encodeControlOk({ shard: 2, seq: 77n, version: 9n, minVersion: 10n, unchanged: false }) });
    const res = await unary('Delete', { key: okKey, expectedVersion: '9', allowRecreate: true, clientId: '5' });
    assert.deepEqual(res, { position: { shard: 2, seq: '77' }, version: '9', minVersion: '10', unchanged: false });
    assert.equal(fake.calls[0]!.op, Op.Delete);
    const d = decodeDeleteRequest(fake.calls[0]!.body);
    assert.deepEqual([d.clientId, d.expectMode, d.expectVersion, d.allowRecreate], [5n, Expect.Exact, 9n, true]);
    await unary('Delete', { key: okKey });
    const any = decodeDeleteRequest(fake.calls[1]!.body);
    assert.deepEqual([any.expectMode, any.allowRecreate], [Expect.Any, false]);
    await unary('TrimStart', { key: okKey, keepFromVersion: '4' });
    assert.equal(fake.calls[2]!.op, Op.Trim);
    assert.equal(decodeTrimRequest(fake.calls[2]!.body).keepFromVersion, 4n);
    await assert.rejects(unary('TrimStart', { key: okKey, keepFromVersion: '0' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    await assert.rejects(unary('Delete', { key: okKey, expectedVersion: '0' }), (e: grpc.ServiceError) => e.code === grpc.status.INVALID_ARGUMENT);
    assert.equal(fake.calls.length, 3, 'refused requests never reach the node');
  });
});

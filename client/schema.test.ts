// registerSchema and listSchemas against the fake server: what goes on the wire, what comes back,
// the input checks made before sending, and 2022 as SchemaValidationError.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { FakeServer } from './fake-server.ts';
import { BadRequestError, SchemaValidationError, connect } from './index.ts';
import { decodeListSchemasRequest, decodeRegisterSchemaRequest, encodeListSchemasOk, encodeRegisterSchemaOk, Op, type WireSchema } from './wire.ts';

const UUID = '550e8400-e29b-41d4-a716-446655440000';

test('registerSchema sends the schema and reports whether it was registered now; listSchemas decodes the list', async (t) => {
  const seen: WireSchema[] = [];
  const server = await FakeServer.start((frame, conn) => {
    if (frame.op === Op.Ping) return conn.reply(frame, Op.Pong);
    if (frame.op === Op.RegisterSchema) {
      const s = decodeRegisterSchemaRequest(frame.body);
      if (s.schema.includes('"string"')) return conn.error(frame, 2022, 'not backward compatible', { reason: 'incompatible', against: '1.0', validator: '/a: type changed' });
      seen.push(s);
      return conn.reply(frame, Op.RegisterSchemaOk, encodeRegisterSchemaOk(seen.length === 1));
    }
    if (frame.op === Op.ListSchemas) {
      const q = decodeListSchemasRequest(frame.body);
      return conn.reply(frame, Op.ListSchemasOk, encodeListSchemasOk(seen.filter((s) => s.org === q.org && (q.type === undefined || s.type === q.type))));
    }
    conn.error(frame, 9100, 'unexpected');
  });
  const client = await connect(server.address);
  t.after(async () => {
    await client.close();
    await server.close();
  });
  const input = { org: 1, type: UUID, eventType: 'Deposited', version: { major: 1, minor: 0 }, format: 'json' as const, schema: { type: 'object', properties: { a: { type: 'number' } } } };
  assert.deepEqual(await client.registerSchema(input), { registered: true });
  assert.deepEqual(await client.registerSchema(input), { registered: false });
  assert.deepEqual(seen[0], {
    org: 1n,
    type: 0x550e8400e29b41d4a716446655440000n,
    eventType: 'Deposited',
    major: 1,
    minor: 0,
    format: 'json',
    schema: '{"type":"object","properties":{"a":{"type":"number"}}}',
  });
  const list = await client.listSchemas({ org: 1, type: UUID });
  assert.equal(list.length, 2);
  assert.deepEqual(list[0], { org: 1n, type: 0x550e8400e29b41d4a716446655440000n, eventType: 'Deposited', version: { major: 1, minor: 0 }, format: 'json', schema: seen[0]!.schema });
  assert.deepEqual(await client.listSchemas({ org: 2 }), []);

  const err = await client.registerSchema({ ...input, version: { major: 1, minor: 1 }, schema: { type: 'object', properties: { a: { type: 'string' } } } }).catch((e: unknown) => e);
  assert.ok(err instanceof SchemaValidationError);
  assert.equal(err.code, 2022);
  assert.equal(err.validator, '/a: type changed');
  assert.equal(err.detail.reason, 'incompatible');
});

test('registerSchema checks its input before sending', async (t) => {
  const server = await FakeServer.start((frame, conn) => (frame.op === Op.Ping ? conn.reply(frame, Op.Pong) : conn.error(frame, 9100, 'should not be sent')));
  const client = await connect(server.address);
  t.after(async () => {
    await client.close();
    await server.close();
  });
  const ok = { org: 1, type: 2, eventType: 'E', version: { major: 1, minor: 0 }, format: 'avro' as const, schema: '"string"' };
  const cases: [object, RegExp][] = [
    [{ ...ok, org: -1 }, /org must be/],
    [{ ...ok, eventType: '' }, /eventType must be a string of 1\.\.255/],
    [{ ...ok, version: { major: 1.5, minor: 0 } }, /version\.major must be an integer/],
    [{ ...ok, format: 'xml' }, /format must be one of json, avro, protobuf/],
    [{ ...ok, schema: { type: 'string' } }, /schema must be the schema's text/],
    [{ ...ok, schema: 'x'.repeat(64 * 1024 + 1) }, /the schema is 65537 bytes; the limit is 65536/],
  ];
  for (const [input, re] of cases) {
    await assert.rejects(client.registerSchema(input as typeof ok), (e: unknown) => e instanceof BadRequestError && re.test(e.message));
  }
  assert.equal(server.received.filter((f) => f.op !== Op.Ping).length, 0);
});

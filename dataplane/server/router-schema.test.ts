// Schemas through the real router and a real shard worker (SPEC §5): a write with one valid and one
// invalid event is refused with 2022 and nothing of it lands; registrations are events of the
// reserved org, which users can neither write nor read; the registry is read back after a restart,
// and writes that wait for that read keep their order.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { U128_MAX } from '../../client/key.ts';
import {
  decodeError,
  decodeListSchemasOk,
  decodeReadShardOk,
  decodeRegisterSchemaOk,
  encodeKeyRequest,
  encodeListSchemasRequest,
  encodeReadRequest,
  encodeReadShardRequest,
  encodeRegisterSchemaRequest,
  encodeWriteRequest,
  Expect,
  FeedFilter,
  Op,
  type ExpectMode,
  type WireEvent,
  type WireSchema,
} from '../../client/wire.ts';
import { openDataMeta } from '../storage/meta.ts';
import { Router, type RouterConfig } from './router.ts';

let dir: string;
let router: Router;
const te = new TextEncoder();

function config(): RouterConfig {
  return { dataDir: dir, numShards: 1, routing: 'id', workers: 1, segmentBytes: 1024 * 1024, memoryBudgetBytes: 8 * 1024 * 1024, unsafeNoDirectIo: false, forceSyncIo: false, log: () => {} };
}

before(async () => {
  dir = await mkdtemp(join(tmpdir(), 'celer-router-schema-'));
  openDataMeta(dir, { numShards: 1, routing: 'id' }, { numShards: 1, routing: 'id' });
  router = await Router.start(config());
});

after(async () => {
  await router?.close();
  await rm(dir, { recursive: true, force: true });
});

const SCHEMA: WireSchema = {
  org: 1n,
  type: 2n,
  eventType: 'Deposited',
  major: 1,
  minor: 0,
  format: 'json',
  schema: JSON.stringify({ type: 'object', properties: { amount: { type: 'number' } }, required: ['amount'] }),
};

const deposited = (amount: unknown): WireEvent => ({ type: 'Deposited', data: te.encode(JSON.stringify({ amount })), schemaMajor: 1, schemaMinor: 0 });

function writeBody(id: bigint, events: WireEvent[], expectMode: ExpectMode = Expect.Any, expectVersion = 0n, org = 1n): Uint8Array {
  return encodeWriteRequest({ clientId: 0n, writes: [{ key: { org, type: 2n, id }, expectMode, expectVersion, clientSeq: 0n, events }] });
}

function readBody(id: bigint, org = 1n): Uint8Array {
  return encodeReadRequest({ key: { org, type: 2n, id }, from: 1n, to: 0n, maxBytes: 0, eventTypes: [] });
}

test('registering through the router: registered, then a no-op; listed', async () => {
  const first = await router.dispatch(Op.RegisterSchema, encodeRegisterSchemaRequest(SCHEMA));
  assert.equal(first.op, Op.RegisterSchemaOk, first.op === Op.Error ? decodeError(first.body).message : '');
  assert.deepEqual(decodeRegisterSchemaOk(first.body), { registered: true });
  assert.deepEqual(decodeRegisterSchemaOk((await router.dispatch(Op.RegisterSchema, encodeRegisterSchemaRequest(SCHEMA))).body), { registered: false });
  const list = await router.dispatch(Op.ListSchemas, encodeListSchemasRequest({ org: 1n }));
  assert.deepEqual(decodeListSchemasOk(list.body), [SCHEMA]);
});

test('a write with one valid and one invalid event gets 2022 with the validator’s message, and nothing of it lands', async () => {
  const res = await router.dispatch(Op.Write, writeBody(10n, [deposited(5), deposited('five')], Expect.NoStream));
  // Nothing landed (checked first, so a write that was let through fails here, by what it stored).
  const read = await router.dispatch(Op.Read, readBody(10n));
  assert.equal(read.op, Op.Error, `nothing of the refused write may land, but a read of 1/2/10 found ${read.op === Op.ReadOk ? 'its events' : `op ${read.op}`}`);
  assert.equal(decodeError(read.body).code, 1001, 'the aggregate was never created');
  assert.equal(res.op, Op.Error);
  const e = decodeError(res.body);
  assert.equal(e.code, 2022);
  assert.match(e.message, /^writes\[0\]\.events\[1\] \(event type "Deposited", schema 1\.0, json\) does not match its registered schema: data\/amount must be number/);
  assert.equal(e.detail.validator, 'data/amount must be number');
  // A multi-aggregate write: the valid aggregate does not land either.
  const multi = encodeWriteRequest({
    clientId: 0n,
    writes: [
      { key: { org: 1n, type: 2n, id: 11n }, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [deposited(1)] },
      { key: { org: 1n, type: 2n, id: 12n }, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [deposited(null)] },
    ],
  });
  const m = decodeError((await router.dispatch(Op.Write, multi)).body);
  assert.equal(m.code, 2022);
  assert.match(m.message, /^writes\[1\]\.events\[0\]/);
  assert.equal(decodeError((await router.dispatch(Op.Read, readBody(11n))).body).code, 1001);
  // The valid event alone lands.
  assert.equal((await router.dispatch(Op.Write, writeBody(10n, [deposited(5)], Expect.NoStream))).op, Op.WriteOk);
});

test('the reserved org: user writes, reads, details and feed filters naming it get 9100; unfiltered feeds leave its batches out', async () => {
  const reserved = [
    router.dispatch(Op.Write, writeBody(1n, [{ type: 'X', data: new Uint8Array() }], Expect.Any, 0n, U128_MAX)),
    router.dispatch(Op.Read, readBody(1n, U128_MAX)),
    router.dispatch(Op.Details, encodeKeyRequest({ org: U128_MAX, type: U128_MAX, id: 1n })),
    router.dispatch(Op.ReadShard, encodeReadShardRequest({ shard: 0, from: 1n, maxBytes: 0, waitMs: 0, filter: FeedFilter.Org, key: { org: U128_MAX, type: 0n, id: 0n }, headersOnly: false })),
    router.dispatch(Op.ListSchemas, encodeListSchemasRequest({ org: U128_MAX })),
    router.dispatch(Op.RegisterSchema, encodeRegisterSchemaRequest({ ...SCHEMA, org: U128_MAX })),
  ];
  for (const r of await Promise.all(reserved)) {
    const e = decodeError(r.body);
    assert.equal(e.code, 9100);
    assert.match(e.message, /ffffffff-ffff-ffff-ffff-ffffffffffff\), the org Celer reserves for its own aggregates \(the schema registry\); use another org/);
  }
  const feed = decodeReadShardOk((await router.dispatch(Op.ReadShard, encodeReadShardRequest({ shard: 0, from: 1n, maxBytes: 0, waitMs: 0, filter: FeedFilter.None, key: { org: 0n, type: 0n, id: 0n }, headersOnly: false }))).body);
  assert.ok(feed.batches.length >= 1, 'the user batch is there');
  assert.ok(feed.batches.every((b) => b.key.org !== U128_MAX), 'no registry batch in an unfiltered feed');
  assert.ok(feed.next > BigInt(feed.batches.length), 'the registry’s seqs are passed over, not hidden from next');
});

test('after a restart the registry is read from the log; writes dispatched meanwhile keep their order', async () => {
  await router.close();
  router = await Router.start(config());
  assert.equal(router.schemas.complete, false);
  // Dispatched back to back: the first waits for the registry read; the second (no schema, guarded on
  // the first's version) must not overtake it.
  const first = router.dispatch(Op.Write, writeBody(20n, [deposited(1)], Expect.NoStream));
  const second = router.dispatch(Op.Write, writeBody(20n, [{ type: 'Noted', data: new Uint8Array() }], Expect.Exact, 1n));
  const invalid = router.dispatch(Op.Write, writeBody(20n, [deposited('x')], Expect.Exact, 2n));
  const [a, b, c] = await Promise.all([first, second, invalid]);
  assert.equal(a.op, Op.WriteOk);
  assert.equal(b.op, Op.WriteOk, b.op === Op.Error ? decodeError(b.body).message : '');
  assert.equal(decodeError(c.body).code, 2022, 'the registration survived the restart');
  assert.equal(router.schemas.complete, true);
});

// The registry against an in-memory log of its aggregate (the router and shards are tested in
// dataplane/server/router.test.ts and test/e2e/standalone-schema.test.ts): immutability,
// minor-version compatibility, the check of writes, the cache across "failovers" (another registry
// on the same log, a new epoch), expected-version races and unknown outcomes, the bounds.
import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { ErrorCode } from '../../client/errors.ts';
import {
  decodeError,
  decodeListSchemasOk,
  decodeReadRequest,
  decodeRegisterSchemaOk,
  decodeWriteRequest,
  encodeError,
  encodeWriteOk,
  encodeWriteRequest,
  Expect,
  Op,
  readEvent,
  Reader,
  writeBatchHeader,
  writeEvent,
  Writer,
  type WireEvent,
  type WireSchema,
} from '../../client/wire.ts';
import { SCHEMAS_MAX } from '../constants.ts';
import { SchemaRegistry, type RegistryIo } from './registry.ts';
import { SCHEMA_REGISTRY_KEY } from './system.ts';

interface Answer {
  op: number;
  body: Uint8Array;
}

/** The registry aggregate in memory, answering reads and exact-version appends as a shard would. */
class MemoryLog {
  events: WireEvent[] = [];
  /**
   * Events a read sees (null: all). Those above it are durable but not committed yet: the tail a
   * new leader adopted, which it commits after its write gate opened.
   */
  committed: number | null = null;
  reads = 0;
  /** Waits of untilCommitted: resolved by commitAll(), or answered at once when `commitNever`. */
  private commitWaits: (() => void)[] = [];
  commitNever = false;
  waitsAsked: number[] = [];

  /** The adopted tail commits: reads see every event, and untilCommitted's waiters go on. */
  commitAll(): void {
    this.committed = null;
    for (const w of this.commitWaits.splice(0)) w();
  }

  private untilCommitted(ms: number): Promise<string | null> {
    this.waitsAsked.push(ms);
    if (this.committed === null || this.committed >= this.events.length) return Promise.resolve(null);
    if (this.commitNever) return Promise.resolve(`events up to ${this.events.length} are durable, ${this.committed} committed`);
    return new Promise((resolve) => this.commitWaits.push(() => resolve(null)));
  }

  /** Runs before an append is judged (a racing registration of another node lands there). */
  beforeAppend: (() => void) | undefined;
  /** Answers the next append with this error instead of storing it. */
  failNextAppend: number | undefined;

  io(epoch: () => number = () => 0, logs: string[] = []): RegistryIo {
    return { dispatch: (op, body) => Promise.resolve(this.dispatch(op, body)), untilCommitted: (ms) => this.untilCommitted(ms), epoch, log: (m) => logs.push(m) };
  }

  private dispatch(op: number, body: Uint8Array): Answer {
    if (op === Op.Read) {
      this.reads++;
      const q = decodeReadRequest(body);
      assert.deepEqual(q.key, SCHEMA_REGISTRY_KEY);
      const visible = this.events.slice(0, this.committed ?? this.events.length);
      if (visible.length === 0) return { op: Op.Error, body: encodeError(ErrorCode.AggregateNotFound, 'not found') };
      const w = new Writer();
      const from = Number(q.from);
      const page = visible.slice(from - 1);
      w.u64(0n);
      w.u32(page.length);
      page.forEach((e, i) => {
        const v = BigInt(from + i);
        writeBatchHeader(w, { fromVersion: v, toVersion: v, shard: 0, seq: v, clientId: 0n, serverTimestampMs: 0, eventCount: 1 });
        w.u64(v);
        writeEvent(w, e);
      });
      return { op: Op.ReadOk, body: w.finish() };
    }
    assert.equal(op, Op.Write);
    this.beforeAppend?.();
    this.beforeAppend = undefined;
    if (this.failNextAppend !== undefined) {
      const code = this.failNextAppend;
      this.failNextAppend = undefined;
      return { op: Op.Error, body: encodeError(code, 'the commit step failed') };
    }
    const req = decodeWriteRequest(body);
    const w = req.writes[0]!;
    assert.deepEqual(w.key, SCHEMA_REGISTRY_KEY);
    assert.equal(w.expectMode, Expect.Exact);
    if (w.expectVersion !== BigInt(this.events.length)) {
      return { op: Op.Error, body: encodeError(ErrorCode.WrongExpectedVersion, 'wrong expected version', { currentVersion: String(this.events.length) }) };
    }
    this.events.push(readEvent(new Reader(w.events), 'e'));
    const v = BigInt(this.events.length);
    return { op: Op.WriteOk, body: encodeWriteOk({ shard: 0, firstSeq: v, ranges: [{ fromVersion: v, toVersion: v }] }) };
  }
}

const JSON_V1 = JSON.stringify({ type: 'object', properties: { amount: { type: 'number' } }, required: ['amount'] });
const JSON_V1_1 = JSON.stringify({ type: 'object', properties: { amount: { type: 'number' }, note: { type: 'string' } }, required: ['amount'] });
const JSON_BREAKING = JSON.stringify({ type: 'object', properties: { amount: { type: 'string' } }, required: ['amount'] });

function schema(over: Partial<WireSchema> = {}): WireSchema {
  return { org: 1n, type: 2n, eventType: 'Deposited', major: 1, minor: 0, format: 'json', schema: JSON_V1, ...over };
}

async function register(r: SchemaRegistry, s: WireSchema): Promise<{ registered: boolean } | { code: number; message: string; detail: Record<string, unknown> }> {
  const a = await r.register(s);
  if (a.op === Op.RegisterSchemaOk) return decodeRegisterSchemaOk(a.body);
  assert.equal(a.op, Op.Error);
  return decodeError(a.body);
}

const te = new TextEncoder();

function write(events: WireEvent[], key = { org: 1n, type: 2n, id: 9n }) {
  return decodeWriteRequest(encodeWriteRequest({ clientId: 0n, writes: [{ key, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events }] }));
}

const deposited = (data: unknown, minor = 0, extra: Partial<WireEvent> = {}): WireEvent => ({ type: 'Deposited', data: te.encode(JSON.stringify(data)), schemaMajor: 1, schemaMinor: minor, ...extra });

describe('registration', () => {
  test('registered schemas are immutable: the same text again is a no-op, another text is refused with the reason', async () => {
    const log = new MemoryLog();
    const r = new SchemaRegistry(log.io());
    assert.deepEqual(await register(r, schema()), { registered: true });
    assert.deepEqual(await register(r, schema()), { registered: false });
    assert.equal(log.events.length, 1, 'the no-op wrote nothing');
    const e = await register(r, schema({ schema: JSON_V1_1 }));
    assert.ok('code' in e);
    assert.equal(e.code, ErrorCode.SchemaValidation);
    assert.equal(e.detail.reason, 'immutable');
    assert.match(e.message, /schema 1\.0 of event type "Deposited" \(org 1, type 2\) is already registered with a different text; registered schemas are immutable: register the change as a new version \(1\.1 if it only adds, 2\.0 if it breaks\)/);
    const f = await register(r, schema({ format: 'avro', schema: '"string"' }));
    assert.ok('code' in f && /another format \(json\)/.test(f.message));
  });

  test('a schema that does not compile is 9100 with the compiler’s message', async () => {
    const r = new SchemaRegistry(new MemoryLog().io());
    const e = await register(r, schema({ schema: '{"type":"objekt"}' }));
    assert.ok('code' in e);
    assert.equal(e.code, ErrorCode.BadRequest);
    assert.match(e.message, /^schema 1\.0 of event type "Deposited" \(org 1, type 2\): the JSON Schema does not compile/);
  });

  test('a new minor must be backward compatible with the minor below it (and the one above it)', async () => {
    const r = new SchemaRegistry(new MemoryLog().io());
    await register(r, schema());
    const bad = await register(r, schema({ minor: 1, schema: JSON_BREAKING }));
    assert.ok('code' in bad);
    assert.equal(bad.code, ErrorCode.SchemaValidation);
    assert.equal(bad.detail.reason, 'incompatible');
    assert.equal(bad.detail.against, '1.0');
    assert.match(bad.message, /is not backward compatible with the registered 1\.0: \/amount: type changed from "number" to "string"\. A minor version may only add/);
    assert.deepEqual(await register(r, schema({ minor: 1, schema: JSON_V1_1 })), { registered: true });
    // A new major may break.
    assert.deepEqual(await register(r, schema({ major: 2, schema: JSON_BREAKING })), { registered: true });
    // Filling a gap below a registered minor: the one above must still read it.
    await register(r, schema({ major: 3, minor: 2, schema: JSON_V1 }));
    const gap = await register(r, schema({ major: 3, minor: 1, schema: JSON_V1_1 }));
    assert.ok('code' in gap && gap.detail.against === '3.2', JSON.stringify(gap));
    // Other event types, types and orgs are independent.
    assert.deepEqual(await register(r, schema({ eventType: 'Withdrawn', minor: 1, schema: JSON_BREAKING })), { registered: true });
    assert.deepEqual(await register(r, schema({ type: 3n, minor: 1, schema: JSON_BREAKING })), { registered: true });
  });

  test('list returns an org’s schemas (optionally one type) in order, from the log', async () => {
    const log = new MemoryLog();
    const r = new SchemaRegistry(log.io());
    await register(r, schema({ type: 5n }));
    await register(r, schema({ minor: 1, schema: JSON_V1_1 }));
    await register(r, schema());
    await register(r, schema({ org: 7n }));
    const other = new SchemaRegistry(log.io());
    const all = decodeListSchemasOk((await other.list({ org: 1n })).body);
    assert.deepEqual(all.map((s) => `${s.type}/${s.eventType}/${s.major}.${s.minor}`), ['2/Deposited/1.0', '2/Deposited/1.1', '5/Deposited/1.0']);
    assert.equal(all[1]!.schema, JSON_V1_1);
    assert.deepEqual(decodeListSchemasOk((await other.list({ org: 1n, type: 5n })).body).length, 1);
    assert.deepEqual(decodeListSchemasOk((await other.list({ org: 99n })).body), []);
  });
});

describe('checking writes', () => {
  test('until the log is read the answer is "refresh"; then valid events pass and the first invalid one is named', async () => {
    const log = new MemoryLog();
    await register(new SchemaRegistry(log.io()), schema());
    const r = new SchemaRegistry(log.io());
    const req = write([deposited({ amount: 1 }), deposited({ amount: 'x' })]);
    assert.equal(r.checkWrite(req), 'refresh');
    assert.equal(await r.refresh(), null);
    const v = r.checkWrite(req);
    assert.ok(v !== null && v !== 'refresh');
    assert.equal(v.code, ErrorCode.SchemaValidation);
    assert.equal(v.message, 'writes[0].events[1] (event type "Deposited", schema 1.0, json) does not match its registered schema: data/amount must be number; nothing of this write was stored');
    assert.deepEqual(v.detail, { validator: 'data/amount must be number', write: 0, event: 1, eventType: 'Deposited', schemaVersion: '1.0', format: 'json' });
    assert.equal(r.checkWrite(write([deposited({ amount: 1 })])), null);
  });

  test('skipped: events without schemaVersion, encrypted events (iv), unregistered versions, other orgs and types', async () => {
    const log = new MemoryLog();
    const r = new SchemaRegistry(log.io());
    await register(r, schema());
    assert.ok(r.complete);
    const junk = { type: 'Deposited', data: te.encode('not json') };
    assert.equal(r.checkWrite(write([junk])), null);
    assert.equal(r.checkWrite(write([deposited('x', 0, { iv: new Uint8Array(12) })])), null);
    assert.equal(r.checkWrite(write([deposited('x', 5)])), null);
    assert.equal(r.checkWrite(write([deposited('x')], { org: 2n, type: 2n, id: 1n })), null);
    assert.equal(r.checkWrite(write([deposited('x')], { org: 1n, type: 3n, id: 1n })), null);
    assert.equal(log.reads, 1, 'no read of the log per write once it is complete');
  });

  test('a new epoch (failover) makes the cache read the log again before it decides: another node’s registration is seen', async () => {
    const log = new MemoryLog();
    let epoch = 1;
    const a = new SchemaRegistry(log.io(() => epoch));
    await a.refresh();
    assert.equal(a.checkWrite(write([deposited('x')])), null, 'nothing registered yet');
    // The other node leads at epoch 2 and registers.
    await register(new SchemaRegistry(log.io(() => 2)), schema());
    epoch = 3;
    assert.equal(a.checkWrite(write([deposited('x')])), 'refresh');
    await a.refresh();
    const v = a.checkWrite(write([deposited('x')]));
    assert.ok(v !== null && v !== 'refresh' && v.code === ErrorCode.SchemaValidation);
  });

  test('after a failover the cache waits for the adopted tail to commit before it calls itself complete: a registration in that tail binds', async () => {
    const log = new MemoryLog();
    // The old leader registered at epoch 1; this node holds the registration durable, but it
    // learnt of its commit too late: it adopts it as its tail when it leads at epoch 2.
    await register(new SchemaRegistry(log.io(() => 1)), schema());
    log.committed = 0;
    log.waitsAsked = [];
    const r = new SchemaRegistry(log.io(() => 2));
    const bad = write([deposited({ amount: 'x' })]);
    assert.equal(r.checkWrite(bad), 'refresh');
    const refreshed = r.refresh();
    // Give the read every chance to finish before the tail commits (as it would without the wait).
    for (let i = 0; i < 10; i++) await new Promise((resolve) => setImmediate(resolve));
    assert.equal(r.checkWrite(bad), 'refresh', 'not complete while the adopted tail is not committed (null: the write would be let through unchecked)');
    log.commitAll();
    assert.equal(await refreshed, null);
    const v = r.checkWrite(bad);
    assert.ok(v !== null && v !== 'refresh' && v.code === ErrorCode.SchemaValidation, `refused against the registration of the adopted tail; got ${JSON.stringify(v)}`);
    assert.equal(log.waitsAsked.length, 1, 'one wait, bounded (SCHEMA_REGISTRY_COMMIT_WAIT_MS)');
    assert.ok(log.waitsAsked[0]! > 0 && Number.isFinite(log.waitsAsked[0]!));
  });

  test('an adopted tail not committed within SCHEMA_REGISTRY_COMMIT_WAIT_MS is 2012, and the cache stays incomplete', async () => {
    const log = new MemoryLog();
    await register(new SchemaRegistry(log.io(() => 1)), schema());
    log.committed = 0;
    log.commitNever = true;
    const r = new SchemaRegistry(log.io(() => 2));
    const failed = await r.refresh();
    assert.ok(failed !== null && failed.code === ErrorCode.ServerBusy, JSON.stringify(failed));
    assert.match(failed.message, /^the schema registry cannot be read now: events up to 1 are durable, 0 committed \(not committed within SCHEMA_REGISTRY_COMMIT_WAIT_MS \d+ ms\); retry shortly$/);
    assert.equal(r.checkWrite(write([deposited({ amount: 'x' })])), 'refresh');
    const e = await register(r, schema());
    assert.ok('code' in e && e.code === ErrorCode.ServerBusy, 'a registration cannot decide against it either');
    log.commitAll();
    assert.equal(await r.refresh(), null);
    assert.ok(r.complete);
    assert.deepEqual(await register(r, schema()), { registered: false });
  });

  test('a registration that lost an expected-version race reads the winner and decides again', async () => {
    const log = new MemoryLog();
    const a = new SchemaRegistry(log.io());
    const b = new SchemaRegistry(log.io());
    await a.refresh();
    // Just before a's append, b's registration of the same version (another text) lands.
    log.beforeAppend = () => {
      log.events.push({ type: 'SchemaRegistered', data: te.encode(JSON.stringify({ org: '1', type: '2', eventType: 'Deposited', major: 1, minor: 0, format: 'json', schema: JSON_V1_1 })) });
    };
    const e = await register(a, schema());
    assert.ok('code' in e && e.detail.reason === 'immutable', JSON.stringify(e));
    assert.equal(log.events.length, 1);
    assert.deepEqual(await register(b, schema({ schema: JSON_V1_1 })), { registered: false });
  });

  test('an append with an unknown outcome (2007) is passed on, and the cache reads the log before the next check', async () => {
    const log = new MemoryLog();
    const r = new SchemaRegistry(log.io());
    await r.refresh();
    log.failNextAppend = ErrorCode.NotAcknowledged;
    const e = await register(r, schema());
    assert.ok('code' in e && e.code === ErrorCode.NotAcknowledged);
    assert.match(e.message, /was not registered: the commit step failed/);
    assert.equal(r.checkWrite(write([deposited('x')])), 'refresh');
  });

  test('events of the log that are not registrations are skipped with a log line, not fatal', async () => {
    const log = new MemoryLog();
    log.events.push({ type: 'SchemaRegistered', data: te.encode('{') }, { type: 'SomethingNew', data: new Uint8Array() });
    const logs: string[] = [];
    const r = new SchemaRegistry(log.io(() => 0, logs));
    assert.deepEqual(await register(r, schema()), { registered: true });
    assert.equal(log.events.length, 3);
    assert.equal(logs.length, 2, logs.join('\n'));
  });
});

test(`beyond SCHEMAS_MAX (${SCHEMAS_MAX}) a registration is 9100 naming the limit`, async () => {
  const r = new SchemaRegistry(new MemoryLog().io());
  for (let i = 0; i < SCHEMAS_MAX; i++) assert.deepEqual(await register(r, schema({ eventType: `E${i}`, format: 'avro', schema: '"string"' })), { registered: true });
  const e = await register(r, schema({ eventType: 'OneMore', format: 'avro', schema: '"string"' }));
  assert.ok('code' in e && e.code === ErrorCode.BadRequest);
  assert.match(e.message, /SCHEMAS_MAX 1000/);
  assert.equal(r.size, SCHEMAS_MAX);
});

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { encodeRead, encodeWrite } from './encode.ts';
import { FakeServer, MemoryStore } from './fake-server.ts';
import { BadRequestError, Limits, connect, type AggregateKey, type EventInput, type ExpectedVersion } from './index.ts';
import { Expect, FRAME_HEADER_BYTES, Op, Reader, Writer, decodeReadRequest, decodeWriteRequest, readEvent, utf8Length, writeEvent } from './wire.ts';

const te = new TextEncoder();
const ok: EventInput = { type: 'Opened', data: te.encode('{}') };
const key = { org: 1, type: 2, id: 3 };

function isBadRequest(pattern: RegExp): (e: unknown) => boolean {
  return (e) => {
    assert.ok(e instanceof BadRequestError, `expected BadRequestError, got ${String(e)}`);
    assert.equal(e.code, 9100);
    assert.match(e.message, pattern);
    return true;
  };
}

test('bad input is refused with BadRequestError (9100) naming the field, before anything is sent', async (t) => {
  const server = await FakeServer.start(new MemoryStore().handler);
  const c = await connect(server.address);
  t.after(async () => {
    await c.close();
    await server.close();
  });
  const bigData = new Uint8Array(Limits.eventBytesMax + 1);
  const cases: [string, () => Promise<unknown>, RegExp][] = [
    ['negative key part', () => c.append({ org: -1, type: 2, id: 3 }, [ok]), /key\.org must be a non-negative safe integer/],
    ['fractional key part', () => c.append({ org: 1, type: 2.5, id: 3 }, [ok]), /key\.type must be/],
    ['unsafe number key part', () => c.append({ org: 1, type: 2, id: 2 ** 53 }, [ok]), /key\.id must be/],
    ['text key part', () => c.append({ org: 'acme', type: 2, id: 3 }, [ok]), /key\.org must be a decimal number or a UUID/],
    ['key part above 2^128', () => c.read({ org: 1n << 128n, type: 2, id: 3 }), /key\.org must fit in an unsigned 128-bit integer/],
    ['missing key', () => c.details(undefined as unknown as AggregateKey), /key must be an object/],
    ['key in a multi-write', () => c.write({ writes: [{ key, events: [ok] }, { key: { org: 1, type: -2, id: 3 }, events: [ok] }] }), /writes\[1\]\.key\.type must be/],
    ['oversize event', () => c.append(key, [{ type: 'Big', data: bigData }]), /events\[0\] is 1048577 bytes .*limit is 1048576/],
    ['oversize data + metadata', () => c.append(key, [ok, { type: 'Big', data: new Uint8Array(Limits.eventBytesMax), metadata: new Uint8Array(1) }]), /events\[1\] is 1048577 bytes/],
    ['empty event type', () => c.append(key, [{ type: '', data: new Uint8Array(0) }]), /events\[0\]\.type must be 1\.\.255 UTF-8 bytes; got 0/],
    ['event type over 255 bytes', () => c.append(key, [{ type: 'é'.repeat(128), data: new Uint8Array(0) }]), /got 256/],
    ['data not bytes', () => c.append(key, [{ type: 'A', data: '{}' as unknown as Uint8Array }]), /events\[0\]\.data must be a Uint8Array/],
    ['bad iv', () => c.append(key, [{ ...ok, iv: new Uint8Array(11) }]), /iv must be a Uint8Array of 12 bytes/],
    ['no events', () => c.append(key, []), /has 0 events; a write appends 1\.\.10000/],
    ['no writes', () => c.write({ writes: [] }), /a write touches 1\.\.1000 aggregates; got 0/],
    ['negative expectedVersion', () => c.append(key, [ok], { expectedVersion: -1 }), /expectedVersion must be a non-negative integer/],
    ['fractional expectedVersion', () => c.append(key, [ok], { expectedVersion: 1.5 }), /expectedVersion must be a non-negative integer/],
    ['unknown expectedVersion word', () => c.append(key, [ok], { expectedVersion: 'latest' as ExpectedVersion }), /expectedVersion must be 'any', 'no_stream', 'stream_exists' or an integer version >= 0; got "latest"/],
    ['expectedVersion above u64', () => c.append(key, [ok], { expectedVersion: 1n << 64n }), /expectedVersion must be 0\.\.2\^64-1/],
    ['clientSeq without clientId', () => c.append(key, [ok], { clientSeq: 1 }), /clientSeq is set but no clientId is/],
    ['negative clientSeq', () => c.append(key, [ok], { clientId: 1, clientSeq: -1n }), /clientSeq must be 0\.\.2\^64-1/],
    ['bad clientId', () => c.append(key, [ok], { clientId: 'me' }), /clientId must be a decimal number or a UUID/],
    ['empty read range', () => c.read(key, { from: 5, to: 4 }), /read range is empty/],
    ['bad maxBytes', () => c.read(key, { maxBytes: 0 }), /maxBytes must be a positive integer/],
    ['empty event type filter', () => c.read(key, { eventTypes: [''] }), /eventTypes\[0\] must be a string of 1\.\.255/],
  ];
  for (const [what, call, pattern] of cases) await assert.rejects(call(), isBadRequest(pattern), what);
  assert.equal(server.received.length, 0, 'no bad request may reach the server');
});

test('a write frame is built in one buffer of exactly its size and decodes to what was given', () => {
  const events: EventInput[] = [
    // Large enough (over half of Buffer.poolSize, 64 KiB on Node 24) that the frame gets its own ArrayBuffer.
    { type: 'Ünïcödé', data: te.encode('x'.repeat(6000)), metadata: te.encode('m'), schemaVersion: { major: 3, minor: 4 }, iv: new Uint8Array(12).fill(1) },
    { type: 'Plain', data: new Uint8Array(0) },
  ];
  const guards: [ExpectedVersion | undefined, number, bigint][] = [
    [undefined, Expect.Any, 0n],
    ['any', Expect.Any, 0n],
    ['no_stream', Expect.NoStream, 0n],
    ['stream_exists', Expect.StreamExists, 0n],
    [0, Expect.Exact, 0n],
    [17, Expect.Exact, 17n],
    [(1n << 64n) - 1n, Expect.Exact, (1n << 64n) - 1n],
  ];
  const { frame, count } = encodeWrite(
    42n,
    guards.map(([expectedVersion], i) => ({ key: { org: 1, type: 2, id: i }, events, expectedVersion, clientSeq: BigInt(i) })),
  );
  assert.equal(count, guards.length);
  assert.ok(Buffer.isBuffer(frame), 'a frame that outgrew its estimate is copied into a plain Uint8Array');
  assert.equal(frame.buffer.byteLength, frame.length, 'the size estimate must be exact');
  assert.equal(frame[8], Op.Write);
  assert.equal(new DataView(frame.buffer).getUint32(0, true), frame.length - 4);

  const req = decodeWriteRequest(frame.subarray(FRAME_HEADER_BYTES));
  assert.equal(req.clientId, 42n);
  req.writes.forEach((w, i) => {
    assert.equal(w.key.id, BigInt(i));
    assert.equal(w.expectMode, guards[i]![1]);
    assert.equal(w.expectVersion, guards[i]![2]);
    assert.equal(w.clientSeq, BigInt(i));
    const r = new Reader(w.events);
    const first = readEvent(r, 'e0');
    assert.equal(first.type, 'Ünïcödé');
    assert.deepEqual([first.schemaMajor, first.schemaMinor], [3, 4]);
    assert.equal(readEvent(r, 'e1').type, 'Plain');
  });
});

test('a read frame carries the range, the page bound (capped) and the type filter', () => {
  const frame = encodeRead(key, { from: 3, to: 9, maxBytes: Limits.readPageBytesMax * 2, eventTypes: ['A', 'Bé'] });
  const req = decodeReadRequest(frame.subarray(FRAME_HEADER_BYTES));
  assert.deepEqual(req, { key: { org: 1n, type: 2n, id: 3n }, from: 3n, to: 9n, maxBytes: Limits.readPageBytesMax, eventTypes: ['A', 'Bé'] });
  const open = decodeReadRequest(encodeRead(key).subarray(FRAME_HEADER_BYTES));
  assert.deepEqual([open.from, open.to, open.maxBytes], [1n, 0n, Limits.readPageBytesDefault]);
});

test('a write larger than a frame may carry is refused before it is encoded', () => {
  const big: EventInput = { type: 'Big', data: new Uint8Array(Limits.eventBytesMax) };
  assert.throws(() => encodeWrite(1n, [{ key, events: Array.from({ length: 17 }, () => big) }]), isBadRequest(/a request may be at most 16777216 bytes: split it/));
});

test('UUID key parts and clientIds are accepted and sent as 128-bit values', () => {
  const uuid = '0192f3c4-7d1e-7a00-8000-00000000002a';
  const { frame } = encodeWrite(BigInt('0x0192f3c47d1e7a00800000000000002a'), [{ key: { org: uuid, type: 1n, id: 0 }, events: [ok] }]);
  const req = decodeWriteRequest(frame.subarray(FRAME_HEADER_BYTES));
  assert.equal(req.writes[0]?.key.org, BigInt('0x0192f3c47d1e7a00800000000000002a'));
  assert.equal(req.clientId, req.writes[0]?.key.org);
});

test('event types are written as the same UTF-8 bytes TextEncoder produces, surrogates and all', () => {
  const pieces = ['a', 'Z', 'é', 'ß', '€', '中', '😀', '\ud800', '\udc00', 'x\ud83dy', '\u07ff', '\u0800', '\uffff'];
  let seed = 12345;
  const rand = (): number => ((seed = (Math.imul(seed, 1103515245) + 12345) >>> 0) / 2 ** 32);
  for (let i = 0; i < 2000; i++) {
    let type = '';
    for (let j = 0; j < 1 + Math.floor(rand() * 8); j++) type += pieces[Math.floor(rand() * pieces.length)];
    const want = te.encode(type);
    assert.equal(utf8Length(type), want.length, JSON.stringify(type));
    const w = new Writer(0, Buffer.allocUnsafe(0));
    writeEvent(w, { type, data: new Uint8Array(0) });
    const out = w.finish();
    assert.equal(out[1], want.length, JSON.stringify(type));
    assert.deepEqual(Uint8Array.from(out.subarray(2, 2 + want.length)), want, JSON.stringify(type));
  }
});

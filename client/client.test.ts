import assert from 'node:assert/strict';
import * as net from 'node:net';
import { test } from 'node:test';
import { FakeServer, MemoryStore, pongOnly, until, type FakeConnection } from './fake-server.ts';
import {
  AggregateNotFoundError,
  AlreadyAppliedError,
  BadRequestError,
  CelerError,
  ConnectFailedError,
  ConnectionError,
  CrossShardWriteError,
  DuplicateInFlightError,
  NotLeaderError,
  ReadBelowTrimmedError,
  RequestQueueFullError,
  SchemaValidationError,
  ServerBusyError,
  ShardUnavailableError,
  TimeoutError,
  WrongExpectedVersionError,
  connect,
  type CelerClient,
  type EventInput,
} from './index.ts';
import { Op, decodeKeyRequest, decodeReadRequest, encodeDetailsOk, type Frame } from './wire.ts';

const te = new TextEncoder();
const event = (type: string, text = type): EventInput => ({ type, data: te.encode(text) });
const key = (id: number) => ({ org: 1, type: 2, id });

async function setup(t: { after: (fn: () => Promise<void>) => void }, handler = new MemoryStore().handler, options = {}): Promise<{ server: FakeServer; client: CelerClient }> {
  const server = await FakeServer.start(handler);
  const client = await connect(server.address, options);
  t.after(async () => {
    await client.close();
    await server.close();
  });
  return { server, client };
}

function detailsOk(version: bigint): Uint8Array {
  return encodeDetailsOk({ version, minVersion: 1n, shard: 0, lastSeq: 1n, lastClientId: 0n, lastServerTimestampMs: 0, deleted: false });
}

test('many concurrent requests share one connection and each gets its own answer, even when answered out of order', async (t) => {
  const n = 300;
  const held: [Frame, FakeConnection][] = [];
  const { server, client } = await setup(
    t,
    (frame, conn) => {
      if (frame.op === Op.Ping) return conn.reply(frame, Op.Pong);
      held.push([frame, conn]);
      if (held.length < n) return;
      // Answer in a scrambled order: odd positions backwards, then even ones forwards.
      const order = [...held.filter((_, i) => i % 2 === 1).reverse(), ...held.filter((_, i) => i % 2 === 0)];
      for (const [f, c] of order) c.reply(f, Op.DetailsOk, detailsOk(decodeKeyRequest(f.body).id));
    },
    { connectionsPerNode: 1 },
  );
  const results = await Promise.all(Array.from({ length: n }, (_, i) => client.details(key(i))));
  results.forEach((d, i) => assert.equal(d.version, BigInt(i)));
  assert.equal(server.accepted, 1);
});

test('requests issued in the same tick leave in a single socket write', async (t) => {
  const { server, client } = await setup(t, pongOnly, { connectionsPerNode: 1 });
  await client.ping();
  const write = t.mock.method(net.Socket.prototype, 'write');
  await Promise.all(Array.from({ length: 100 }, () => client.ping()));
  const clientWrites = write.mock.calls.filter((c) => !server.sockets.has(c.this as net.Socket)).length;
  assert.equal(clientWrites, 1);
});

test('requests for one aggregate always travel on the same connection', async (t) => {
  const byKey = new Map<bigint, Set<net.Socket>>();
  const { server, client } = await setup(
    t,
    (frame, conn) => {
      const id = decodeKeyRequest(frame.body).id;
      const seen = byKey.get(id) ?? new Set();
      seen.add(conn.socket);
      byKey.set(id, seen);
      conn.reply(frame, Op.DetailsOk, detailsOk(id));
    },
    { connectionsPerNode: 4 },
  );
  // Rounds of different sizes, so a rotation over the connections would move keys between them.
  for (const n of [40, 37, 23, 40]) await Promise.all(Array.from({ length: n }, (_, i) => client.details(key(i))));
  for (const [id, sockets] of byKey) assert.equal(sockets.size, 1, `aggregate ${id} used ${sockets.size} connections`);
  assert.ok(server.accepted > 1, 'the keys should spread over more than one connection');
});

test('append, read and details round-trip events with every optional field', async (t) => {
  const { client } = await setup(t);
  const iv = new Uint8Array(12).fill(7);
  const full: EventInput = { type: 'Deposited', data: te.encode('{"amount":5}'), metadata: te.encode('{"by":"me"}'), schemaVersion: { major: 2, minor: 1 }, iv };
  const first = await client.append(key(1), [event('Opened'), full], { expectedVersion: 'no_stream', clientId: 9, clientSeq: 1 });
  assert.deepEqual(first, { fromVersion: 1n, toVersion: 2n, position: { shard: 0, seq: 1n } });
  const second = await client.append(key(1), [event('Closed')], { expectedVersion: 2 });
  assert.equal(second.toVersion, 3n);

  const page = await client.read(key(1));
  assert.equal(page.nextVersion, undefined);
  assert.equal(page.batches.length, 2);
  const [b0, b1] = page.batches;
  assert.equal(b0?.clientId, 9n);
  assert.equal(b1?.clientId, 0n);
  assert.deepEqual(b0?.events[1], { version: 2n, type: 'Deposited', data: full.data, metadata: full.metadata, schemaVersion: { major: 2, minor: 1 }, iv });

  const d = await client.details(key(1));
  assert.equal(d.version, 3n);
  assert.equal(d.deleted, false);
  assert.deepEqual(d.lastPosition, { shard: 0, seq: 2n });
});

test('a multi-aggregate write returns one result per aggregate with consecutive positions', async (t) => {
  const { client } = await setup(t);
  await client.append(key(1), [event('A')]);
  const r = await client.write({ clientId: 5, writes: [{ key: key(1), events: [event('B'), event('C')], expectedVersion: 1, clientSeq: 1 }, { key: key(2), events: [event('D')] }] });
  assert.deepEqual(r.results, [
    { fromVersion: 2n, toVersion: 3n, position: { shard: 0, seq: 2n } },
    { fromVersion: 1n, toVersion: 1n, position: { shard: 0, seq: 3n } },
  ]);
});

test('readAll follows nextVersion from page to page and yields every batch once, in order', async (t) => {
  const store = new MemoryStore(2);
  const { server, client } = await setup(t, store.handler);
  for (const size of [2, 1, 1, 3, 1]) await client.append(key(1), Array.from({ length: size }, (_, i) => event(`E${i}`)));

  const all = [];
  for await (const b of client.readAll(key(1))) all.push(b.fromVersion);
  assert.deepEqual(all, [1n, 3n, 4n, 5n, 8n]);
  const froms = server.received.filter((f) => f.op === Op.Read).map((f) => decodeReadRequest(f.body).from);
  assert.deepEqual(froms, [1n, 4n, 8n]);

  const ranged = [];
  for await (const b of client.readAll(key(1), { from: 4, to: 7 })) ranged.push([b.fromVersion, b.toVersion]);
  assert.deepEqual(ranged, [
    [4n, 4n],
    [5n, 7n],
  ]);
});

test('readAll stops with an error when the server hands back a page that does not move forward', async (t) => {
  const { client } = await setup(t, (frame, conn) => {
    const body = new Uint8Array(12);
    new DataView(body.buffer).setBigUint64(0, 1n); // nextVersion 1, no batches: the same page again
    conn.reply(frame, Op.ReadOk, body);
  });
  const drain = async (): Promise<void> => {
    for await (const _ of client.readAll(key(1))) void _;
  };
  await assert.rejects(drain(), /nextVersion 1 for a page that started at 0/);
});

test('every server error code is thrown as its typed class, with its detail', async (t) => {
  const cases: [number, new (...a: never[]) => CelerError, Record<string, unknown>][] = [
    [1000, ReadBelowTrimmedError, { minVersion: '5' }],
    [1001, AggregateNotFoundError, {}],
    [2002, AlreadyAppliedError, { lastClientSeq: '3' }],
    [2003, WrongExpectedVersionError, { currentVersion: '7' }],
    [2011, NotLeaderError, {}],
    [2012, ServerBusyError, {}],
    [2013, DuplicateInFlightError, {}],
    [2022, SchemaValidationError, { validator: 'amount must be a number' }],
    [9001, CrossShardWriteError, { numShards: 4 }],
    [9100, BadRequestError, {}],
    [9200, ShardUnavailableError, {}],
    [4242, CelerError, {}],
  ];
  let next = 0;
  // failoverTimeoutMs 0: 2011 and 2012 are thrown after one try instead of waited out.
  const { client } = await setup(
    t,
    (frame, conn) => {
      const [code, , detail] = cases[next++]!;
      conn.error(frame, code, `failure ${code}`, detail);
    },
    { failoverTimeoutMs: 0 },
  );
  for (const [code, Cls, detail] of cases) {
    const err = await client.details(key(1)).then(
      () => assert.fail('expected an error'),
      (e: unknown) => e,
    );
    assert.ok(err instanceof Cls, `code ${code} should be a ${Cls.name}`);
    assert.ok(err instanceof CelerError && err instanceof Error);
    assert.equal(err.code, code);
    assert.equal(err.message, `failure ${code}`);
    assert.deepEqual(err.detail, detail);
  }
});

test('WrongExpectedVersionError carries the current version, whether the server sends it as text or number', async (t) => {
  const versions: unknown[] = ['12345678901234567890', 42];
  const { client } = await setup(t, (frame, conn) => conn.error(frame, 2003, 'guard failed', { currentVersion: versions.shift() }));
  const big = await client.append(key(1), [event('A')], { expectedVersion: 1 }).catch((e: unknown) => e);
  assert.ok(big instanceof WrongExpectedVersionError);
  assert.equal(big.currentVersion, 12345678901234567890n);
  const small = await client.append(key(1), [event('A')], { expectedVersion: 1 }).catch((e: unknown) => e);
  assert.ok(small instanceof WrongExpectedVersionError);
  assert.equal(small.currentVersion, 42n);
});

test('a lost connection fails every request in flight on it with ConnectionError, and the next request reconnects', async (t) => {
  const store = new MemoryStore();
  let writes = 0;
  const { server, client } = await setup(
    t,
    (frame, conn) => {
      if (frame.op === Op.Write && ++writes <= 3) {
        if (writes === 3) conn.drop();
        return; // no answer: the first two are in flight when the connection dies
      }
      store.handler(frame, conn);
    },
    { connectionsPerNode: 1 },
  );
  const results = await Promise.allSettled([1, 2, 3].map((i) => client.append(key(i), [event('A')])));
  for (const r of results) {
    assert.equal(r.status, 'rejected');
    assert.ok(r.reason instanceof ConnectionError, String(r.reason));
    assert.ok(!(r.reason instanceof ConnectFailedError), 'the requests were sent: their outcome is unknown');
    assert.match((r.reason as Error).message, /may or may not have been applied/);
  }
  const ok = await client.append(key(4), [event('A')]);
  assert.equal(ok.toVersion, 1n);
  assert.equal(server.accepted, 2);
});

test('a request without an answer fails with TimeoutError and leaves the connection usable', async (t) => {
  const held: [Frame, FakeConnection][] = [];
  const { server, client } = await setup(
    t,
    (frame, conn) => {
      if (frame.op === Op.Ping) return conn.reply(frame, Op.Pong);
      held.push([frame, conn]);
    },
    // Long enough that the ping after it is never late, even on a loaded machine.
    { connectionsPerNode: 1, requestTimeoutMs: 250 },
  );
  await assert.rejects(client.append(key(1), [event('A')]), (e: unknown) => e instanceof TimeoutError && /may or may not have been applied/.test(e.message));
  // The answer arrives after all; the client drops it and carries on.
  const [late, conn] = held[0]!;
  conn.error(late, 2003, 'late');
  await client.ping();
  assert.equal(server.accepted, 1);
});

test('no more than maxInFlightPerConnection requests are on the wire at once; the rest wait their turn', async (t) => {
  let outstanding = 0;
  let maxOutstanding = 0;
  const { client } = await setup(
    t,
    (frame, conn) => {
      outstanding++;
      maxOutstanding = Math.max(maxOutstanding, outstanding);
      setImmediate(() => {
        outstanding--;
        conn.reply(frame, Op.Pong);
      });
    },
    { connectionsPerNode: 1, maxInFlightPerConnection: 2 },
  );
  await Promise.all(Array.from({ length: 20 }, () => client.ping()));
  assert.equal(maxOutstanding, 2);
});

test('a request beyond the wait queue bound fails at once with RequestQueueFullError', async (t) => {
  const held: [Frame, FakeConnection][] = [];
  const { server, client } = await setup(
    t,
    (frame, conn) => {
      held.push([frame, conn]);
    },
    { connectionsPerNode: 1, maxInFlightPerConnection: 1, maxQueuedPerConnection: 1 },
  );
  const first = client.ping();
  const second = client.ping();
  await assert.rejects(client.ping(), RequestQueueFullError);
  await until(() => held.length === 1, 'the first ping');
  const [f1, c1] = held[0]!;
  c1.reply(f1, Op.Pong);
  await first;
  await until(() => held.length === 2, 'the second ping');
  const [f2, c2] = held[1]!;
  c2.reply(f2, Op.Pong);
  await second;
  assert.equal(server.count(Op.Ping), 2);
});

test('close fails outstanding requests and later calls', async (t) => {
  const { client } = await setup(t, () => {});
  const pending = client.ping();
  await client.close();
  await assert.rejects(pending, ConnectionError);
  await assert.rejects(client.ping(), ConnectionError);
});

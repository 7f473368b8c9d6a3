import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FakeServer, MemoryStore, deadAddress, pongOnly, until, type FrameHandler } from './fake-server.ts';
import {
  ConnectFailedError,
  ConnectionError,
  DEFAULTS,
  NotAcknowledgedError,
  NotLeaderError,
  ServerBusyError,
  TimeoutError,
  connect,
  type CelerClient,
  type ClientOptions,
} from './index.ts';
import { keySlot } from './pool.ts';
import { Op, encodeControlOk } from './wire.ts';

const te = new TextEncoder();
const events = [{ type: 'Opened', data: te.encode('{}') }];
const key = { org: 1, type: 2, id: 3 };

/** Answers every write with "not leader", naming `leader()` when it returns an address. */
function follower(leader: () => string | undefined): FrameHandler {
  return (frame, conn) => {
    if (frame.op === Op.Ping) return conn.reply(frame, Op.Pong);
    const l = leader();
    conn.error(frame, 2011, 'this node is a follower', l === undefined ? {} : { leader: l });
  };
}

async function servers(t: { after: (fn: () => Promise<void>) => void }, ...handlers: FrameHandler[]): Promise<FakeServer[]> {
  const out = await Promise.all(handlers.map((h) => FakeServer.start(h)));
  t.after(async () => {
    for (const s of out) await s.close();
  });
  return out;
}

async function client(t: { after: (fn: () => Promise<void>) => void }, seeds: string | string[], options: ClientOptions = {}): Promise<CelerClient> {
  const c = await connect(seeds, options);
  t.after(() => c.close());
  return c;
}

test('"not leader" naming the leader moves the client there, and later requests go straight to it', async (t) => {
  const store = new MemoryStore();
  const [b] = await servers(t, store.handler);
  const [a] = await servers(t, follower(() => b!.address));
  const c = await client(t, a!.address);

  assert.equal((await c.append(key, events)).toVersion, 1n);
  assert.equal(c.leader, b!.address);
  assert.equal((await c.append(key, events)).toVersion, 2n);
  assert.equal(a!.count(Op.Write), 1);
  assert.equal(b!.count(Op.Write), 2);
});

test('"not leader" without an address walks on to the next seed', async (t) => {
  const store = new MemoryStore();
  const [a, b] = await servers(t, follower(() => undefined), store.handler);
  const c = await client(t, [a!.address, b!.address]);

  assert.equal((await c.append(key, events)).toVersion, 1n);
  assert.equal(c.leader, b!.address);
  assert.equal(a!.count(Op.Write), 1);
});

test('when no node will lead, the client gives up with NotLeaderError after maxLeaderRetries more tries', async (t) => {
  const [a, b] = await servers(t, follower(() => undefined), follower(() => undefined));
  const c = await client(t, [a!.address, b!.address], { maxLeaderRetries: 3 });

  await assert.rejects(c.append(key, events), NotLeaderError);
  assert.equal(a!.count(Op.Write) + b!.count(Op.Write), 4);
});

test('two nodes naming each other do not bounce a request for ever: after one redirect per round it waits, and gives up at failoverTimeoutMs', async (t) => {
  let aAddress = '';
  let bAddress = '';
  const [a, b] = await servers(
    t,
    follower(() => bAddress),
    follower(() => aAddress),
  );
  aAddress = a!.address;
  bAddress = b!.address;
  const c = await client(t, a!.address, { failoverTimeoutMs: 300 });

  const started = performance.now();
  await assert.rejects(c.append(key, events), NotLeaderError);
  const elapsed = performance.now() - started;
  const writes = a!.count(Op.Write) + b!.count(Op.Write);
  assert.ok(elapsed >= 250, `gave up after ${elapsed} ms, before failoverTimeoutMs`);
  assert.ok(elapsed < 5_000, `took ${elapsed} ms`);
  // Rounds of at most 2 tries, with a wait of ≥ 12 ms between them.
  assert.ok(writes >= 4 && writes <= 50, `${writes} tries`);
});

test('connect skips an unreachable seed and fails only when none can be reached', async (t) => {
  const dead = await deadAddress();
  const [live] = await servers(t, pongOnly);
  const c = await client(t, [dead, live!.address]);
  assert.equal(c.leader, live!.address);
  await c.ping();

  await assert.rejects(connect([dead, await deadAddress()]), (e: unknown) => e instanceof ConnectFailedError && /no seed address could be reached/.test(e.message));
});

test('a request that cannot connect moves on to the next seed; nothing had been sent', async (t) => {
  const store = new MemoryStore();
  const [a, b] = await servers(t, store.handler, store.handler);
  const c = await client(t, [a!.address, b!.address]);
  await a!.close();
  await until(() => c.stats()[0]?.connections === 0, 'the client to see its connection close');

  assert.equal((await c.append(key, events)).toVersion, 1n);
  assert.equal(c.leader, b!.address);
});

test('after a failed connect the circuit breaker fails requests to that node at once, without dialling', async (t) => {
  const [s] = await servers(t, pongOnly);
  const port = s!.port;
  const c = await client(t, s!.address, { circuitBreakerOpenMs: 600_000, failoverTimeoutMs: 0 });
  await s!.close();
  await until(() => c.stats()[0]?.connections === 0, 'the client to see its connection close');

  await assert.rejects(c.ping(), (e: unknown) => e instanceof ConnectFailedError && /cannot connect/.test(e.message));
  // Even with the node back, the open breaker keeps the client away from it.
  const back = await FakeServer.start(pongOnly, port);
  t.after(() => back.close());
  await assert.rejects(c.ping(), (e: unknown) => e instanceof ConnectFailedError && /circuit breaker/.test(e.message));
  assert.equal(back.accepted, 0);
  assert.equal(c.stats()[0]?.breaker, 'open');
});

test('once the breaker closes again, the next request re-dials the node', async (t) => {
  const [s] = await servers(t, pongOnly);
  const port = s!.port;
  const c = await client(t, s!.address, { circuitBreakerOpenMs: 0, failoverTimeoutMs: 0 });
  await s!.close();
  await until(() => c.stats()[0]?.connections === 0, 'the client to see its connection close');
  await assert.rejects(c.ping(), ConnectFailedError);

  const back = await FakeServer.start(pongOnly, port);
  t.after(() => back.close());
  await c.ping();
  assert.equal(back.accepted, 1);
});

test('keySlot spreads keys over every slot and always maps a key to the same one', () => {
  const frame = new Uint8Array(9 + 48);
  const counts = [0, 0, 0, 0];
  for (let id = 0; id < 4000; id++) {
    new DataView(frame.buffer).setUint32(9 + 44, id);
    const slot = keySlot(frame, 9, 4);
    assert.equal(keySlot(frame, 9, 4), slot);
    counts[slot]!++;
  }
  for (const n of counts) assert.ok(n > 800 && n < 1200, `uneven spread: ${counts.join(', ')}`);
});

/** Waits until the client has no live connection to `address` (it saw the node go away). */
async function disconnected(c: CelerClient, address: string): Promise<void> {
  await until(() => (c.stats().find((n) => n.address === address)?.connections ?? 0) === 0, `the client to see ${address} go away`);
}

test('a write issued during an election succeeds without an error: the old leader refuses, the other node says "not leader" without an address, then leads', async (t) => {
  const store = new MemoryStore();
  let bLeads = false;
  const [a, b] = await servers(t, store.handler, (frame, conn) => (bLeads ? store.handler(frame, conn) : conn.error(frame, 2011, 'no leader: election in progress')));
  const aAddress = a!.address;
  const c = await client(t, [aAddress, b!.address]);
  assert.equal((await c.append(key, events)).toVersion, 1n);
  assert.equal(c.leader, aAddress);

  await a!.close(); // the old leader's process dies: its port refuses connections
  await disconnected(c, aAddress);
  const electionMs = 1_200;
  const timer = setTimeout(() => (bLeads = true), electionMs);
  t.after(() => clearTimeout(timer));
  const started = performance.now();
  const r = await c.append(key, events);
  const elapsed = performance.now() - started;

  assert.equal(r.toVersion, 2n);
  assert.equal(c.leader, b!.address);
  assert.ok(elapsed >= electionMs - 100, `succeeded after ${elapsed} ms, before the election ended`);
  assert.ok(elapsed < DEFAULTS.failoverTimeoutMs, `took ${elapsed} ms`);
  // Backoff between rounds: a handful of tries over the election, not a busy loop.
  const bWrites = b!.count(Op.Write);
  assert.ok(bWrites >= 3 && bWrites <= 40, `${bWrites} tries at the new leader`);
  assert.equal(store.aggregates.size, 1);
  assert.equal([...store.aggregates.values()][0]!.batches.length, 2, 'the write landed once');
});

test('once "not leader" names the new leader the client goes straight there, for this request and the next', async (t) => {
  const store = new MemoryStore();
  let phase: 'a-leads' | 'election' | 'b-leads' = 'a-leads';
  let bAddress = '';
  const [a, b] = await servers(
    t,
    (frame, conn) => (phase === 'a-leads' ? store.handler(frame, conn) : conn.error(frame, 2011, 'not leader', phase === 'b-leads' ? { leader: bAddress } : {})),
    (frame, conn) => (phase === 'b-leads' ? store.handler(frame, conn) : conn.error(frame, 2011, 'not leader', phase === 'a-leads' ? { leader: a!.address } : {})),
  );
  bAddress = b!.address;
  const c = await client(t, [a!.address, b!.address]);
  await c.append(key, events);

  // The old leader stays up and says "not leader" without an address while the election runs.
  phase = 'election';
  const timer = setTimeout(() => (phase = 'b-leads'), 400);
  t.after(() => clearTimeout(timer));
  assert.equal((await c.append(key, events)).toVersion, 2n);
  assert.equal(c.leader, b!.address);

  const [aWrites, bWrites] = [a!.count(Op.Write), b!.count(Op.Write)];
  assert.equal((await c.append(key, events)).toVersion, 3n);
  assert.equal(a!.count(Op.Write), aWrites, 'the next write went straight to the new leader');
  assert.equal(b!.count(Op.Write), bWrites + 1);
});

test('a plain write whose outcome is unknown is never resent: a lost connection, 2007 and a timeout are thrown', async (t) => {
  const store = new MemoryStore();
  let mode: 'drop' | '2007' | 'silent' = 'drop';
  const [a, b] = await servers(
    t,
    (frame, conn) => {
      if (frame.op !== Op.Write) return store.handler(frame, conn);
      if (mode === 'drop') return conn.drop();
      if (mode === '2007') return conn.error(frame, 2007, 'not acknowledged: the leader was fenced');
    },
    store.handler,
  );
  const c = await client(t, [a!.address, b!.address], { requestTimeoutMs: 300 });

  await assert.rejects(c.append(key, events), (e: unknown) => e instanceof ConnectionError && !(e instanceof ConnectFailedError));
  mode = '2007';
  await assert.rejects(c.append(key, events), NotAcknowledgedError);
  mode = 'silent';
  await assert.rejects(c.append(key, events), TimeoutError);

  assert.equal(a!.count(Op.Write), 3, 'each write was sent once');
  assert.equal(b!.count(Op.Write), 0, 'and never to the other node');
  assert.equal(store.aggregates.size, 0);
});

test('a delete whose outcome is unknown is not resent either (the aggregate may be recreated meanwhile); a trim is, as repeating it changes nothing', async (t) => {
  const [a, b] = await servers(
    t,
    (frame, conn) => (frame.op === Op.Delete || frame.op === Op.Trim ? conn.drop() : undefined),
    (frame, conn) => (frame.op === Op.Trim ? conn.reply(frame, Op.TrimOk, encodeControlOk({ shard: 0, seq: 2n, version: 3n, minVersion: 2n, unchanged: true })) : conn.error(frame, 2011, 'follower', {})),
  );
  const c = await client(t, [a!.address, b!.address], { requestTimeoutMs: 300 });
  await assert.rejects(c.delete(key), (e: unknown) => e instanceof ConnectionError && !(e instanceof ConnectFailedError));
  assert.equal(a!.count(Op.Delete) + b!.count(Op.Delete), 1, 'the delete was sent once');
  const t2 = await c.trimStart(key, 2);
  assert.equal(t2.unchanged, true);
  assert.equal(a!.count(Op.Trim), 1);
  assert.equal(b!.count(Op.Trim), 1, 'the trim was resent to the other node');
});

test('a read whose connection is lost is retried on the other node, and a follower answering it does not become the leader', async (t) => {
  const store = new MemoryStore();
  let dropReads = false;
  const [a, b] = await servers(
    t,
    (frame, conn) => (dropReads && frame.op === Op.Read ? conn.drop() : store.handler(frame, conn)),
    (frame, conn) => (frame.op === Op.Write ? conn.error(frame, 2011, 'follower', {}) : store.handler(frame, conn)),
  );
  const c = await client(t, [a!.address, b!.address]);
  await c.append(key, events);
  dropReads = true;

  const page = await c.read(key);
  assert.equal(page.batches.length, 1);
  assert.equal(a!.count(Op.Read), 1);
  assert.equal(b!.count(Op.Read), 1);
  assert.equal(c.leader, a!.address);
  assert.equal((await c.append(key, events)).toVersion, 2n);
  assert.equal(b!.count(Op.Write), 0);
});

test('2012 busy is retried on the same node after a backoff', async (t) => {
  const store = new MemoryStore();
  let busy = 2;
  const [a, b] = await servers(t, (frame, conn) => (frame.op === Op.Write && busy-- > 0 ? conn.error(frame, 2012, 'busy') : store.handler(frame, conn)), store.handler);
  const c = await client(t, [a!.address, b!.address]);

  assert.equal((await c.append(key, events)).toVersion, 1n);
  assert.equal(a!.count(Op.Write), 3);
  assert.equal(b!.count(Op.Write), 0);
});

test('a node that stays busy: ServerBusyError once failoverTimeoutMs is spent', async (t) => {
  const [a] = await servers(t, (frame, conn) => conn.error(frame, 2012, 'busy'));
  const c = await client(t, a!.address, { failoverTimeoutMs: 200 });
  await assert.rejects(c.append(key, events), ServerBusyError);
  assert.ok(a!.count(Op.Write) <= 30, `${a!.count(Op.Write)} tries`);
});

test('when no node ever leads, the write fails with the last NotLeaderError after about failoverTimeoutMs', async (t) => {
  const [a, b] = await servers(t, follower(() => undefined), follower(() => undefined));
  const c = await client(t, [a!.address, b!.address], { failoverTimeoutMs: 300 });

  const started = performance.now();
  await assert.rejects(c.append(key, events), NotLeaderError);
  const elapsed = performance.now() - started;
  assert.ok(elapsed >= 250 && elapsed < 5_000, `gave up after ${elapsed} ms`);
  const writes = a!.count(Op.Write) + b!.count(Op.Write);
  assert.ok(writes >= 4 && writes <= 50, `${writes} tries`);
});

test('a single node that restarts: the write waits for it (circuit breaker included) and lands', async (t) => {
  const store = new MemoryStore();
  const [s] = await servers(t, store.handler);
  const [port, address] = [s!.port, s!.address];
  const c = await client(t, address, { circuitBreakerOpenMs: 300 });
  await s!.close();
  await disconnected(c, address);

  let back: FakeServer | undefined;
  const timer = setTimeout(() => void FakeServer.start(store.handler, port).then((x) => (back = x)), 500);
  t.after(async () => {
    clearTimeout(timer);
    await back?.close();
  });
  assert.equal((await c.append(key, events)).toVersion, 1n);
  assert.equal(back?.count(Op.Write), 1);
});

test('close() ends a request that is waiting out a failover, at once, with ConnectionError', async (t) => {
  const [a, b] = await servers(t, follower(() => undefined), follower(() => undefined));
  const c = await client(t, [a!.address, b!.address], { failoverTimeoutMs: 60_000, failoverBackoffInitialMs: 10_000, failoverBackoffMaxMs: 10_000 });
  const pending = c.append(key, events);
  await until(() => a!.count(Op.Write) + b!.count(Op.Write) >= 2, 'both nodes to be asked');
  const started = performance.now();
  await c.close();
  await assert.rejects(pending, ConnectionError);
  assert.ok(performance.now() - started < 2_000);
});

test('a write that times out on a hung leader is not resent, and the next write tries the other node first', async (t) => {
  const store = new MemoryStore();
  // a: takes connections and pings, never answers a write (a paused process).
  const [a] = await servers(t, (frame, conn) => {
    if (frame.op === Op.Ping) conn.reply(frame, Op.Pong);
  });
  const [b] = await servers(t, store.handler);
  const c = await client(t, [a!.address, b!.address], { requestTimeoutMs: 300 });
  await assert.rejects(c.append(key, events), TimeoutError);
  assert.equal(a!.count(Op.Write), 1, 'the timed-out write went to a once and was not resent');
  assert.equal(b!.count(Op.Write), 0);
  assert.equal((await c.append(key, events)).toVersion, 1n, 'the next write lands on b');
  assert.equal(c.leader, b!.address);
  assert.equal(a!.count(Op.Write), 1);
});

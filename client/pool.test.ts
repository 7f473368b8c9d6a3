import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FakeServer, MemoryStore, deadAddress, pongOnly, until, type FrameHandler } from './fake-server.ts';
import { ConnectFailedError, NotLeaderError, connect, type CelerClient, type ClientOptions } from './index.ts';
import { keySlot } from './pool.ts';
import { Op } from './wire.ts';

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

test('a redirect is followed once: two nodes naming each other do not bounce a request for ever', async (t) => {
  let aAddress = '';
  let bAddress = '';
  const [a, b] = await servers(
    t,
    follower(() => bAddress),
    follower(() => aAddress),
  );
  aAddress = a!.address;
  bAddress = b!.address;
  const c = await client(t, a!.address, { maxLeaderRetries: 0 });

  await assert.rejects(c.append(key, events), NotLeaderError);
  assert.equal(a!.count(Op.Write) + b!.count(Op.Write), 2);
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
  const c = await client(t, s!.address, { circuitBreakerOpenMs: 600_000 });
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
  const c = await client(t, s!.address, { circuitBreakerOpenMs: 0 });
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

import assert from 'node:assert/strict';
import { test } from 'node:test';
import { FakeServer, MemoryStore, type FakeConnection, type FrameHandler } from './fake-server.ts';
import {
  AlreadyAppliedError,
  BadRequestError,
  ConnectionError,
  DuplicateInFlightError,
  EXACTLY_ONCE_DEFAULTS,
  NotAcknowledgedError,
  NotLeaderError,
  ServerBusyError,
  TimeoutError,
  WrongExpectedVersionError,
  appendExactlyOnce,
  backoffDelayMs,
  connect,
  writeExactlyOnce,
  type AggregateKey,
  type Batch,
  type ExactlyOnceTarget,
  type ReadOptions,
  type ReadPage,
  type WriteInput,
  type WriteResult,
} from './index.ts';
import { Op } from './wire.ts';

const te = new TextEncoder();
const events = [{ type: 'Deposited', data: te.encode('{"amount":5}') }];
const key = { org: 1, type: 2, id: 3 };
const ME = 77n;
const result: WriteResult = { results: [{ fromVersion: 4n, toVersion: 4n, position: { shard: 0, seq: 9n } }] };

type Step = WriteResult | Error;

/** A scripted client: each write takes the next step; reads answer from `batchAfterGuard`. */
class Script implements ExactlyOnceTarget {
  readonly defaultClientId: bigint | undefined = undefined;
  readonly writes: WriteInput[] = [];
  readonly reads: ReadOptions[] = [];
  readonly delays: number[] = [];
  private readonly steps: Step[];
  batchAfterGuard: Batch | undefined;

  constructor(steps: Step[]) {
    this.steps = steps;
  }
  async write(input: WriteInput): Promise<WriteResult> {
    this.writes.push(structuredClone(input));
    const step = this.steps.shift();
    if (step === undefined) throw new Error('the script ran out of steps');
    if (step instanceof Error) throw step;
    return step;
  }
  async read(_key: AggregateKey, opts: ReadOptions = {}): Promise<ReadPage> {
    this.reads.push(opts);
    return { batches: this.batchAfterGuard === undefined ? [] : [this.batchAfterGuard] };
  }
  readonly sleep = async (ms: number): Promise<void> => {
    this.delays.push(ms);
  };
}

const timeout = (): TimeoutError => new TimeoutError('no answer');
const lost = (): ConnectionError => new ConnectionError('connection reset');
const applied = (): AlreadyAppliedError => new AlreadyAppliedError(2002, 'already applied');
const inFlight = (): DuplicateInFlightError => new DuplicateInFlightError(2013, 'in flight');
const conflict = (): WrongExpectedVersionError => new WrongExpectedVersionError(2003, 'guard failed', { currentVersion: '4' });
const busy = (): ServerBusyError => new ServerBusyError(2012, 'busy');
const batchBy = (clientId: bigint): Batch => ({ fromVersion: 4n, toVersion: 4n, position: { shard: 0, seq: 9n }, clientId, serverTimestampMs: 0, events: [] });

function run(s: Script, expectedVersion?: number | 'no_stream', maxAttempts?: number) {
  return appendExactlyOnce(s, key, events, { clientId: ME, clientSeq: 12, expectedVersion, maxAttempts, sleep: s.sleep });
}

test('a timeout followed by 2002 means the first attempt landed: done, marked alreadyApplied', async () => {
  const s = new Script([timeout(), applied()]);
  assert.deepEqual(await run(s), { alreadyApplied: true, attempts: 2 });
});

test('every attempt resends the same clientId and clientSeq', async () => {
  const s = new Script([timeout(), lost(), inFlight(), busy(), result]);
  await run(s);
  assert.equal(s.writes.length, 5);
  for (const w of s.writes) {
    assert.equal(w.clientId, ME);
    assert.equal(w.writes[0]?.clientSeq, 12);
  }
});

test('2007 (not acknowledged), 2011 and a lost connection are retried with the same clientSeq; a later 2002 means done', async () => {
  const s = new Script([new NotAcknowledgedError(2007, 'fenced'), new NotLeaderError(2011, 'election'), lost(), applied()]);
  assert.deepEqual(await run(s), { alreadyApplied: true, attempts: 4 });
  for (const w of s.writes) assert.equal(w.writes[0]?.clientSeq, 12);
});

test('2007 leaves the outcome open: a conditional retry that then gets 2003 checks whose batch follows the guard', async () => {
  const s = new Script([new NotAcknowledgedError(2007, 'replication failed'), conflict()]);
  s.batchAfterGuard = batchBy(ME);
  assert.deepEqual(await run(s, 3), { alreadyApplied: true, attempts: 2 });
});

test('2013 (the first copy is still in flight) is retried after a backoff, and the later success returned', async () => {
  const s = new Script([inFlight(), result]);
  const r = await run(s);
  assert.deepEqual(r, { ...result.results[0]!, alreadyApplied: false, attempts: 2 });
  assert.equal(s.delays.length, 1);
});

test('2012 (server busy) is retried with growing delays', async () => {
  const s = new Script([busy(), busy(), busy(), result]);
  const r = await run(s);
  assert.equal(r.attempts, 4);
  assert.equal(s.delays.length, 3);
  assert.ok(s.delays[0]! < s.delays[2]!, `delays should grow: ${s.delays.join(', ')}`);
});

test('2003 on a first attempt is a real conflict: thrown at once, nothing re-read', async () => {
  const s = new Script([conflict(), result]);
  await assert.rejects(run(s, 3), WrongExpectedVersionError);
  assert.equal(s.writes.length, 1);
  assert.equal(s.reads.length, 0);
});

test('2003 after a lost answer is checked: our own batch right after the guard means the write landed', async () => {
  const s = new Script([timeout(), conflict()]);
  s.batchAfterGuard = batchBy(ME);
  assert.deepEqual(await run(s, 3), { alreadyApplied: true, attempts: 2 });
  assert.deepEqual(s.reads, [{ from: 4n, to: 4n }]);
});

test("2003 after a lost answer with another writer's batch after the guard is a real conflict", async () => {
  const s = new Script([timeout(), conflict()]);
  s.batchAfterGuard = batchBy(ME + 1n);
  await assert.rejects(run(s, 3), WrongExpectedVersionError);
});

test('2003 after a 2013 with nothing committed after the guard yet is asked again until it resolves', async () => {
  const s = new Script([inFlight(), conflict(), conflict()]);
  const r = run(s, 'no_stream');
  // The third answer: by then our first copy is committed and readable.
  const original = s.read.bind(s);
  let reads = 0;
  s.read = async (k, o) => {
    if (++reads === 2) s.batchAfterGuard = { ...batchBy(ME), fromVersion: 1n };
    return original(k, o);
  };
  assert.deepEqual(await r, { alreadyApplied: true, attempts: 3 });
  assert.deepEqual(
    s.reads.map((o) => o.from),
    [1n, 1n],
  );
});

test('attempts are bounded: the last error is thrown once maxAttempts are spent', async () => {
  const s = new Script(Array.from({ length: 20 }, timeout));
  await assert.rejects(run(s, undefined, 5), TimeoutError);
  assert.equal(s.writes.length, 5);
  assert.equal(s.delays.length, 4);
});

test('the default bound stops a write that never gets an answer', async () => {
  const s = new Script(Array.from({ length: 100 }, timeout));
  await assert.rejects(run(s), TimeoutError);
  assert.equal(s.writes.length, EXACTLY_ONCE_DEFAULTS.maxAttempts);
  for (const d of s.delays) assert.ok(d <= EXACTLY_ONCE_DEFAULTS.maxMs, `delay ${d} is above the ceiling`);
});

test('errors that no retry can fix are thrown on the first attempt', async () => {
  const s = new Script([new BadRequestError(9100, 'bad'), result]);
  await assert.rejects(run(s), BadRequestError);
  assert.equal(s.writes.length, 1);
});

test('an exactly-once write without a clientId or with clientSeq 0 is refused', async () => {
  const s = new Script([result]);
  await assert.rejects(appendExactlyOnce(s, key, events, { clientSeq: 1 }), (e: unknown) => e instanceof BadRequestError && /need a clientId/.test(e.message));
  await assert.rejects(appendExactlyOnce(s, key, events, { clientId: ME, clientSeq: 0 }), (e: unknown) => e instanceof BadRequestError && /clientSeq must be >= 1/.test(e.message));
  await assert.rejects(writeExactlyOnce(s, { clientId: ME, writes: [{ key, events }] }), /clientSeq must be >= 1/);
  assert.equal(s.writes.length, 0);
});

test('backoff delays grow by the multiplier, stop at the ceiling and keep at least half their value', () => {
  const b = { initialMs: 10, maxMs: 100, multiplier: 2 };
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((a) => backoffDelayMs(a, b, () => 0.999_999)),
    [10, 20, 40, 80, 100, 100].map((d) => d / 2 + (d / 2) * 0.999_999),
  );
  assert.deepEqual(
    [1, 2, 3, 4, 5, 6].map((a) => backoffDelayMs(a, b, () => 0)),
    [5, 10, 20, 40, 50, 50],
  );
});

test('against a server that loses an acknowledgement, the retried conditional append lands exactly once', async (t) => {
  const store = new MemoryStore();
  const server = await FakeServer.start(store.handler);
  const client = await connect(server.address, { clientId: ME });
  t.after(async () => {
    await client.close();
    await server.close();
  });
  await client.append(key, events);
  let lostOne = false;
  store.loseAnswer = () => (lostOne ? false : (lostOne = true));

  const r = await client.appendExactlyOnce(key, events, { clientSeq: 1, expectedVersion: 1, backoff: { initialMs: 1 } });
  assert.equal(r.alreadyApplied, true);
  const page = await client.read(key);
  assert.deepEqual(
    page.batches.map((b) => [b.fromVersion, b.clientId]),
    [
      [1n, ME],
      [2n, ME],
    ],
  );
  assert.equal(server.count(Op.Write), 3);
});

test('against a server, an unconditional retry after a lost acknowledgement gets 2002 and stops', async (t) => {
  const store = new MemoryStore();
  let lostOne = false;
  store.loseAnswer = () => (lostOne ? false : (lostOne = true));
  const server = await FakeServer.start(store.handler);
  const client = await connect(server.address);
  t.after(async () => {
    await client.close();
    await server.close();
  });
  const r = await client.writeExactlyOnce({ clientId: ME, writes: [{ key, events, clientSeq: 5 }] }, { backoff: { initialMs: 1 } });
  assert.deepEqual(r, { alreadyApplied: true, attempts: 2 });
  assert.equal((await client.details(key)).version, 1n);
});

/** A connection whose answers go nowhere: the store applies the write, the client hears nothing. */
const deaf = (conn: FakeConnection): FakeConnection => ({ socket: conn.socket, reply: () => {}, error: () => {}, drop: () => {} });

for (const death of ['dies mid-write without an answer', 'answers 2007 (fenced) and then says "not leader"'] as const) {
  test(`across a failover the write lands once: the old leader ${death}, the new leader later answers 2002`, async (t) => {
    // One MemoryStore stands for the replicated log: what the old leader wrote, the new one has.
    const store = new MemoryStore();
    let phase: 'a-leads' | 'election' | 'b-leads' = 'a-leads';
    let bAddress = '';
    let electionTimer: NodeJS.Timeout | undefined;
    const startElection = (): void => {
      phase = 'election';
      electionTimer = setTimeout(() => (phase = 'b-leads'), 800);
    };
    const a = await FakeServer.start((frame, conn) => {
      if (phase !== 'a-leads') return conn.error(frame, 2011, 'not leader', phase === 'b-leads' ? { leader: bAddress } : {});
      if (frame.op !== Op.Write) return store.handler(frame, conn);
      store.handler(frame, deaf(conn)); // applied (and replicated) …
      startElection();
      if (death === 'dies mid-write without an answer') {
        conn.drop(); // … and the process dies before it answers
        void a.close();
      } else {
        conn.error(frame, 2007, 'not acknowledged: the lease was lost mid-write');
      }
    });
    const bHandler: FrameHandler = (frame, conn) =>
      phase === 'b-leads' || frame.op !== Op.Write ? store.handler(frame, conn) : conn.error(frame, 2011, 'not leader', phase === 'a-leads' ? { leader: a.address } : {});
    const b = await FakeServer.start(bHandler);
    bAddress = b.address;
    const client = await connect([a.address, b.address], { clientId: ME });
    t.after(async () => {
      clearTimeout(electionTimer);
      await client.close();
      await a.close();
      await b.close();
    });

    const outcomes: unknown[] = [];
    await client.appendExactlyOnce(key, events, { clientSeq: 1 }).then(
      (r) => outcomes.push(r),
      (e: unknown) => outcomes.push(e),
    );

    assert.equal(outcomes.length, 1);
    const r = outcomes[0] as { alreadyApplied?: boolean; attempts?: number };
    assert.equal(r.alreadyApplied, true, `expected success (2002), got ${String(outcomes[0])}`);
    assert.equal(r.attempts, 2, 'the pool rode out the election inside the second attempt');
    assert.equal(client.leader, bAddress);
    // The dead node got the write once; the fenced one keeps answering "not leader" to retries.
    if (death === 'dies mid-write without an answer') assert.equal(a.count(Op.Write), 1);
    const page = await client.read(key);
    assert.deepEqual(
      page.batches.map((x) => [x.fromVersion, x.clientId]),
      [[1n, ME]],
      'one batch: the write was not duplicated',
    );
  });
}

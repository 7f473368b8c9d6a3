// The write/read contract (SPEC §3–§4, §6) against a real `celer serve --standalone` process.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { readFile } from 'node:fs/promises';
import {
  AlreadyAppliedError,
  CrossShardWriteError,
  connect,
  DuplicateInFlightError,
  WrongExpectedVersionError,
  AggregateNotFoundError,
  BadRequestError,
  type CelerClient,
} from '@celer/client';
import { decodeError, encodeFrame, encodeWriteRequest, Expect, Op, Writer } from '../../client/wire.ts';
import { removeDir, runCeler, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';
import { openRaw } from './lib/raw-connection.ts';
import { waitUntil } from './lib/wait.ts';

const te = new TextEncoder();
const ev = (type: string, text = type) => ({ type, data: te.encode(text) });
let node: CelerProcess;
let dir: string;
let client: CelerClient;

before(async () => {
  dir = await tempDir('celer-e2e-sem-');
  node = await startCeler(dir, ['--shards', '4', '--routing', 'id']);
  client = await connect(node.native, { clientId: 1 });
});

after(async () => {
  await client?.close();
  await node?.stop();
  await removeDir(dir);
});

test('of N concurrent writers with the same expected version exactly one wins; the others get 2003 with the current version', async () => {
  const key = { org: 1, type: 1, id: 100 };
  await client.append(key, [ev('Opened')]);
  const writers = await Promise.all(Array.from({ length: 8 }, (_, i) => connect(node.native, { clientId: 10 + i })));
  try {
    const results = await Promise.allSettled(writers.map((c) => c.append(key, [ev('Deposited')], { expectedVersion: 1 })));
    const won = results.filter((r) => r.status === 'fulfilled');
    assert.equal(won.length, 1);
    for (const r of results) {
      if (r.status === 'rejected') {
        assert.ok(r.reason instanceof WrongExpectedVersionError, String(r.reason));
        assert.equal(r.reason.code, 2003);
        assert.equal(r.reason.currentVersion, 2n);
      }
    }
  } finally {
    await Promise.all(writers.map((c) => c.close()));
  }
});

test('of N concurrent creators with no_stream exactly one wins', async () => {
  const key = { org: 1, type: 1, id: 204 };
  const results = await Promise.allSettled(Array.from({ length: 16 }, (_, i) => client.append(key, [ev('Created', String(i))], { expectedVersion: 'no_stream' })));
  assert.equal(results.filter((r) => r.status === 'fulfilled').length, 1);
  assert.ok(results.every((r) => r.status === 'fulfilled' || r.reason instanceof WrongExpectedVersionError));
  assert.equal((await client.details(key)).version, 1n);
});

test('a multi-aggregate write is all-or-nothing when one guard fails', async () => {
  const from = { org: 2, type: 1, id: 8 }; // shard 0 of 4
  const to = { org: 2, type: 1, id: 12 }; // shard 0 of 4
  await client.append(from, [ev('Opened')]);
  await assert.rejects(
    client.write({ writes: [{ key: from, events: [ev('Withdrawn')], expectedVersion: 1 }, { key: to, events: [ev('Deposited')], expectedVersion: 3 }] }),
    WrongExpectedVersionError,
  );
  assert.equal((await client.details(from)).version, 1n);
  await assert.rejects(client.details(to), AggregateNotFoundError);
  const ok = await client.write({ writes: [{ key: from, events: [ev('Withdrawn')], expectedVersion: 1 }, { key: to, events: [ev('Deposited')], expectedVersion: 'no_stream' }] });
  assert.deepEqual(ok.results.map((r) => [r.fromVersion, r.toVersion]), [[2n, 2n], [1n, 1n]]);
  assert.equal(ok.results[1]!.position.seq, ok.results[0]!.position.seq + 1n);
});

test('a multi-aggregate write that spans shards gets 9001 and nothing is written', async () => {
  const a = { org: 3, type: 1, id: 1 }; // shard 1
  const b = { org: 3, type: 1, id: 2 }; // shard 2
  const e = await client.write({ writes: [{ key: a, events: [ev('X')] }, { key: b, events: [ev('Y')] }] }).catch((x: unknown) => x);
  assert.ok(e instanceof CrossShardWriteError, String(e));
  assert.equal(e.code, 9001);
  assert.match(e.message, /shards 1, 2/);
  await assert.rejects(client.details(a), AggregateNotFoundError);
  await assert.rejects(client.details(b), AggregateNotFoundError);
});

/** The process's scheduler state from /proc (R running, S sleeping, T stopped, ...). */
async function procState(pid: number): Promise<string> {
  const stat = await readFile(`/proc/${pid}/stat`, 'utf8');
  return stat.slice(stat.lastIndexOf(')') + 2, stat.lastIndexOf(')') + 3);
}

test('a write retried after a timeout lands once: the retry gets 2002', async () => {
  const key = { org: 4, type: 1, id: 1 };
  const impatient = await connect(node.native, { clientId: 77, requestTimeoutMs: 300 });
  const pid = node.proc.pid!;
  try {
    // Freeze the server so the first attempt's answer cannot arrive in time. A signal is
    // delivered asynchronously: send the write only once the kernel reports the process stopped.
    node.proc.kill('SIGSTOP');
    await waitUntil('the server to be stopped', async () => (await procState(pid)) === 'T');
    const first = impatient.append(key, [ev('Paid')], { clientSeq: 1 });
    await assert.rejects(first, (e: Error) => e.name === 'TimeoutError');
    node.proc.kill('SIGCONT');
    // Retry until the server has made up its mind about the first attempt: while that attempt is
    // still being written the retry gets 2013 (or times out if the server has not resumed yet).
    const retry = await waitUntil('an answer to the retry other than 2013 or a timeout', async () => {
      const r = await impatient.append(key, [ev('Paid')], { clientSeq: 1 }).catch((e: unknown) => e);
      return r instanceof DuplicateInFlightError || (r instanceof Error && r.name === 'TimeoutError') ? null : r;
    });
    assert.ok(retry instanceof AlreadyAppliedError, `expected 2002, got ${String(retry)}`);
    const page = await client.read(key);
    assert.equal(page.batches.length, 1, 'the event landed exactly once');
  } finally {
    node.proc.kill('SIGCONT');
    await impatient.close();
  }
});

test('a retry after another writer moved the aggregate gets 2003, not 2002', async () => {
  const key = { org: 4, type: 1, id: 2 };
  await client.append(key, [ev('Opened')], { clientId: 5, clientSeq: 1 });
  await client.append(key, [ev('Charged')], { clientId: 5, clientSeq: 2, expectedVersion: 1 });
  await client.append(key, [ev('Refunded')], { clientId: 6 });
  await assert.rejects(client.append(key, [ev('Charged')], { clientId: 5, clientSeq: 2, expectedVersion: 1 }), WrongExpectedVersionError);
  await assert.rejects(client.append(key, [ev('Charged')], { clientId: 5, clientSeq: 2 }), AlreadyAppliedError);
});

test('the exactly-once helper treats 2002 as done', async () => {
  const key = { org: 4, type: 1, id: 3 };
  const r1 = await client.appendExactlyOnce(key, [ev('Shipped')], { clientId: 9, clientSeq: 1 });
  const r2 = await client.appendExactlyOnce(key, [ev('Shipped')], { clientId: 9, clientSeq: 1 });
  assert.equal(r1.alreadyApplied, false);
  assert.equal(r2.alreadyApplied, true);
  assert.equal((await client.details(key)).version, 1n);
});

test('reads see acknowledged writes at once, in order, paged by bytes', async () => {
  const key = { org: 5, type: 1, id: 1 };
  for (let i = 1; i <= 40; i++) await client.append(key, [ev(i % 2 ? 'Odd' : 'Even', `payload-${i}-${'x'.repeat(200)}`)]);
  const page = await client.read(key, { maxBytes: 2000 });
  assert.ok(page.nextVersion !== undefined && page.batches.length < 40);
  const versions: bigint[] = [];
  for await (const b of client.readAll(key, { maxBytes: 2000 })) versions.push(...b.events.map((e) => e.version));
  assert.deepEqual(versions, Array.from({ length: 40 }, (_, i) => BigInt(i + 1)));
  const evens: bigint[] = [];
  for await (const b of client.readAll(key, { from: 10, to: 20, eventTypes: ['Even'] })) evens.push(...b.events.map((e) => e.version));
  assert.deepEqual(evens, [10n, 12n, 14n, 16n, 18n, 20n]);
  await assert.rejects(client.read({ org: 5, type: 1, id: 999 }), AggregateNotFoundError);
});

test('bad input gets 9100 with a useful message and the node keeps serving other clients', async () => {
  const key = { org: 6n, type: 1n, id: 1n };
  const good = (events: { type: string; data: Uint8Array }[]) => encodeWriteRequest({ clientId: 1n, writes: [{ key, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events }] });
  // An event with an unknown field bit set.
  const unknownField = good([ev('T')]);
  unknownField.set([0x80], 16 + 2 + 48 + 1 + 8 + 8 + 4);
  // An oversize event (2 MiB payload).
  const oversize = good([{ type: 'Big', data: new Uint8Array(2 * 1024 * 1024) }]);
  // A truncated key.
  const shortKey = new Writer();
  shortKey.u128(1n);
  shortKey.u16(1);
  shortKey.bytes(new Uint8Array(20));
  const r = await openRaw(node.native);
  try {
    for (const f of [encodeFrame(1, Op.Write, unknownField), encodeFrame(2, Op.Write, oversize), encodeFrame(3, Op.Write, shortKey.finish()), encodeFrame(4, 77, new Uint8Array(0))]) r.write(f);
    await waitUntil('answers to the four bad requests', () => r.frames.length >= 4 || r.closed);
    // The same connection still works: a ping sent after them is answered on it.
    r.write(encodeFrame(5, Op.Ping, new Uint8Array(0)));
    await waitUntil('the pong on the same connection', () => r.frames.some((f) => f.correlationId === 5) || r.closed);
    assert.equal(r.closed, false, 'a well-framed bad request does not cost the connection');
    assert.equal(r.frames.find((f) => f.correlationId === 5)?.op, Op.Pong);
  } finally {
    r.destroy();
  }
  const byId = new Map(r.frames.filter((f) => f.op === Op.Error).map((f) => [f.correlationId, decodeError(f.body)]));
  assert.equal(byId.get(1)?.code, 9100);
  assert.match(byId.get(1)!.message, /unknown fields/);
  assert.equal(byId.get(2)?.code, 9100);
  assert.match(byId.get(2)!.message, /limit/);
  assert.equal(byId.get(3)?.code, 9100);
  assert.match(byId.get(3)!.message, /key/);
  assert.equal(byId.get(4)?.code, 9100);
  assert.match(byId.get(4)!.message, /unknown operation 77/);
  // A frame whose length prefix is hostile: the server says why and closes that connection only.
  const hostile = new Uint8Array(9);
  new DataView(hostile.buffer).setUint32(0, 0xffff_fff0, true);
  const h = await openRaw(node.native);
  h.write(hostile);
  await waitUntil('the server to close the connection', () => h.closed);
  assert.equal(h.frames.length, 1, 'one error frame before the close');
  assert.equal(decodeError(h.frames[0]!.body).code, 9100);
  assert.match(decodeError(h.frames[0]!.body).message, /exceeds/);
  // Client-side validation: an invalid key part never reaches the server.
  await assert.rejects(client.append({ org: -1, type: 1, id: 1 }, [ev('T')]), (e: Error) => e instanceof BadRequestError || e.name === 'KeyError');
  // The node still serves.
  assert.equal((await client.append({ org: 6, type: 1, id: 2 }, [ev('StillHere')])).toVersion, 1n);
});

test('restarting with a different shard count or routing rule is refused with a clear message', async () => {
  const d = await tempDir('celer-e2e-meta-');
  try {
    const n = await startCeler(d, ['--shards', '2', '--routing', 'org']);
    await n.stop();
    const r = await runCeler(['serve', '--standalone', '--data-dir', d, '--shards', '3', '--listen', '127.0.0.1:0']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /created with --shards 2 --routing org/);
    assert.match(r.stderr, /--shards 3/);
    const r2 = await runCeler(['serve', '--standalone', '--data-dir', d, '--routing', 'id', '--listen', '127.0.0.1:0']);
    assert.equal(r2.code, 1);
    assert.match(r2.stderr, /--routing id \(the data has org\)/);
  } finally {
    await removeDir(d);
  }
});

test('a data directory where O_DIRECT is not honoured is refused unless --unsafe-no-direct-io is given', async () => {
  const d = `/dev/shm/celer-e2e-${process.pid}`; // tmpfs: open(O_DIRECT) fails with EINVAL
  try {
    const r = await runCeler(['serve', '--standalone', '--data-dir', d, '--listen', '127.0.0.1:0']);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /O_DIRECT/);
    assert.match(r.stderr, /--unsafe-no-direct-io/);
    const n = await startCeler(d, ['--unsafe-no-direct-io']);
    try {
      const c = await connect(n.native, { clientId: 1 });
      assert.equal((await c.append({ org: 1, type: 1, id: 1 }, [ev('Buffered')])).toVersion, 1n);
      await c.close();
      assert.match(n.stderr(), /buffered/i);
    } finally {
      await n.stop();
    }
  } finally {
    await removeDir(d);
  }
});

test('a node whose address is taken says so and exits instead of hanging', async () => {
  const d = await tempDir('celer-e2e-port-');
  try {
    const r = await runCeler(['serve', '--standalone', '--data-dir', d, '--listen', node.native]);
    assert.equal(r.code, 1);
    assert.match(r.stderr, /cannot listen for the native protocol: .*EADDRINUSE/);
  } finally {
    await removeDir(d);
  }
});

// review5: client subscribe(key) (client/feed.ts subscribeKey) against a real shard: the feed and
// reads are served by Shard.handle, errors come back as the client's typed errors.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { errorFromCode } from '../../client/errors.ts';
import { subscribeKey, type FeedSend } from '../../client/feed.ts';
import type { Batch } from '../../client/types.ts';
import { decodeError, decodeReadOk, encodeDeleteRequest, encodeReadRequest, encodeWriteRequest, Expect, Op } from '../../client/wire.ts';
import { initHashing } from '../storage/checksum.ts';
import { systemClock } from '../storage/disk.ts';
import { openFileIo, type FileIo } from '../storage/io.ts';
import { RealDisk } from '../storage/real-disk.ts';
import { Shard } from './shard.ts';

await initHashing();
const te = new TextEncoder();
const NODE_ID = Uint8Array.from({ length: 16 }, (_, i) => i + 1);

async function withShard<T>(fn: (s: Shard) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'celer-r5s-'));
  let io: FileIo | null = null;
  let s: Shard | null = null;
  try {
    io = await openFileIo({ dir, log: () => {} });
    s = await Shard.open({ disk: new RealDisk(io), clock: systemClock, nodeId: NODE_ID, dir: join(dir, 'shard-000'), shard: 0, numShards: 1, routing: 2, segmentBytes: 1024 * 1024, memoryBudgetBytes: 16 * 1024 * 1024, log: () => {} });
    return await fn(s);
  } finally {
    await s?.close().catch(() => {});
    io?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const K = { org: 1n, type: 2n, id: 3n };
const write = (s: Shard, type: string) =>
  s.handle(Op.Write, encodeWriteRequest({ clientId: 7n, writes: [{ key: K, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [{ type, data: te.encode(type) }] }] }));

/** What the pool does: a server error frame becomes the typed client error. */
function sender(s: Shard): FeedSend {
  return async (frame) => {
    const r = await s.handle(frame[8]!, frame.subarray(9));
    if (r.op === Op.Error) {
      const e = decodeError(r.body);
      throw errorFromCode(e.code, e.message, e.detail);
    }
    return { correlationId: 0, op: r.op, body: r.body };
  };
}

/** Client.readAll over the shard (pages until nextVersion 0). */
function readAllOf(s: Shard) {
  return async function* (_k: unknown, from: bigint): AsyncGenerator<Batch> {
    for (;;) {
      const r = await s.handle(Op.Read, encodeReadRequest({ key: K, from, to: 0n, maxBytes: 0, eventTypes: [] }));
      if (r.op === Op.Error) {
        const e = decodeError(r.body);
        throw errorFromCode(e.code, e.message, e.detail);
      }
      const page = decodeReadOk(r.body);
      for (const b of page.batches) yield { ...b, position: { shard: b.shard, seq: b.seq }, events: b.events } as unknown as Batch;
      if (page.nextVersion === 0n) return;
      from = page.nextVersion;
    }
  };
}

// A subscriber asking for version 1 of an aggregate deleted with allowRecreate: versions 1..2 are
// gone (a read from 1 after the recreate is 1000, SPEC §4 "from below trimmed history → 1000").
// subscribeKey takes the 1001 of the history read as "nothing written yet", keeps next = 1, and
// the recreated batch (from version 3) then trips its gap check: a WireError claiming the feed
// skipped versions, which no retry can cure, instead of the 1000 a read gives.
test('review5: subscribe(key, { from: 1 }) on a deleted-recreatable aggregate that is recreated fails with 1000, not a "feed skipped" WireError', async () => {
  await withShard(async (s) => {
    await write(s, 'a');
    await write(s, 'b');
    assert.equal((await s.handle(Op.Delete, encodeDeleteRequest({ clientId: 7n, key: K, expectMode: Expect.Any, expectVersion: 0n, allowRecreate: true }))).op, Op.DeleteOk);
    const sub = subscribeKey(sender(s), readAllOf(s), K, { from: 1, pollWaitMs: 200 });
    const first = sub.next();
    await new Promise((r) => setTimeout(r, 50));
    assert.equal((await write(s, 'c')).op, Op.WriteOk, 'the recreate');
    let outcome: string;
    try {
      const got = await first;
      outcome = `delivered ${JSON.stringify(got.value, (_k, v: unknown) => (typeof v === 'bigint' ? v.toString() : v))}`;
    } catch (e) {
      outcome = `${(e as Error).name} ${(e as { code?: unknown }).code ?? ''}: ${(e as Error).message}`;
    } finally {
      await sub.return(undefined);
    }
    assert.match(outcome, /^\w+ 1000:/, outcome);
  });
});

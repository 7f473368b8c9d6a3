// review5: delete/trim edge cases on a real shard (standalone, real disk).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeError, encodeDeleteRequest, encodeWriteRequest, Expect, Op } from '../../client/wire.ts';
import { initHashing } from '../storage/checksum.ts';
import { systemClock } from '../storage/disk.ts';
import { openFileIo, type FileIo } from '../storage/io.ts';
import { RealDisk } from '../storage/real-disk.ts';
import { Shard, type ShardResult } from './shard.ts';

await initHashing();
const te = new TextEncoder();
const NODE_ID = Uint8Array.from({ length: 16 }, (_, i) => i + 1);

async function withShard<T>(fn: (open: () => Promise<Shard>) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'celer-r5-'));
  let io: FileIo | null = null;
  const shards: Shard[] = [];
  try {
    io = await openFileIo({ dir, log: () => {} });
    const disk = new RealDisk(io);
    return await fn(async () => {
      const s = await Shard.open({ disk, clock: systemClock, nodeId: NODE_ID, dir: join(dir, 'shard-000'), shard: 0, numShards: 1, routing: 2, segmentBytes: 1024 * 1024, memoryBudgetBytes: 16 * 1024 * 1024, log: () => {} });
      shards.push(s);
      return s;
    });
  } finally {
    for (const s of shards) await s.close().catch(() => {});
    io?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const key = (id: number) => ({ org: 1n, type: 2n, id: BigInt(id) });
const write = (s: Shard, id: number, seq: number, type = 'e') =>
  s.handle(Op.Write, encodeWriteRequest({ clientId: 7n, writes: [{ key: key(id), expectMode: Expect.Any, expectVersion: 0n, clientSeq: BigInt(seq), events: [{ type, data: te.encode(type) }] }] }));
const del = (s: Shard, id: number, allowRecreate = false) => s.handle(Op.Delete, encodeDeleteRequest({ clientId: 7n, key: key(id), expectMode: Expect.Any, expectVersion: 0n, allowRecreate }));
function code(r: ShardResult): number {
  assert.equal(r.op, Op.Error, 'expected an error response');
  return decodeError(r.body).code;
}

// README "Delete and trim": "the aggregate's exactly-once floors stay, so a retried write that had
// landed is still 2002 after either"; SPEC §3: the floor survives delete. A writer retrying after a
// 2007 (outcome unknown) must learn its write landed; 1001 tells it nothing about that.
test('review5: a retried write that landed before a delete without allowRecreate is 2002, not 1001', async () => {
  await withShard(async (open) => {
    let s = await open();
    assert.equal((await write(s, 1, 1)).op, Op.WriteOk);
    assert.equal((await write(s, 1, 2)).op, Op.WriteOk);
    assert.equal((await del(s, 1)).op, Op.DeleteOk);
    assert.equal(code(await write(s, 1, 2)), 2002, 'the retry of clientSeq 2 landed: already applied');
    // A new clientSeq is refused as deleted.
    assert.equal(code(await write(s, 1, 3)), 1001);
    await s.close();
    s = await open();
    assert.equal(code(await write(s, 1, 2)), 2002, 'after a reopen too');
  });
});

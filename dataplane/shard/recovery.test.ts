// Recovery edge cases found in review: crashes around segment rotation, torn tails sealed over,
// a state evicted while a write waits, and a commit landing while a page is being read.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeError, decodeReadOk, decodeWriteOk, encodeReadRequest, encodeWriteRequest, Expect, Op, type ExpectMode } from '../../client/wire.ts';
import { initHashing } from '../storage/checksum.ts';
import { openFileIo, type FileIo } from '../storage/io.ts';
import { decodeSegmentHeader } from '../storage/segment.ts';
import { Shard, type ShardResult } from './shard.ts';

await initHashing();

const key = (id: number) => ({ org: 1n, type: 2n, id: BigInt(id) });
const write = (id: number, size = 10, expect: ExpectMode = Expect.Any) =>
  encodeWriteRequest({ clientId: 7n, writes: [{ key: key(id), expectMode: expect, expectVersion: 0n, clientSeq: 0n, events: [{ type: 'e', data: new Uint8Array(size) }] }] });
const readReq = (id: number, from = 1n) => encodeReadRequest({ key: key(id), from, to: 0n, maxBytes: 0, eventTypes: [] });
const versions = (r: ShardResult): bigint[] => decodeReadOk(r.body).batches.map((b) => b.fromVersion);
const fromVersion = (r: ShardResult): bigint => {
  assert.equal(r.op, Op.WriteOk, r.op === Op.Error ? decodeError(r.body).message : 'not ok');
  return decodeWriteOk(r.body).ranges[0]!.fromVersion;
};

async function withDir(fn: (io: FileIo, shardDir: string, open: (budget?: number) => Promise<Shard>) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'celer-recovery-'));
  const io = await openFileIo({ dir, log: () => {} });
  const sd = join(dir, 'shard-000');
  const opened: Shard[] = [];
  try {
    await fn(io, sd, async (budget = 1 << 20) => {
      const s = await Shard.open({ io, dir: sd, shard: 0, numShards: 1, routing: 2, segmentBytes: 64 * 1024, memoryBudgetBytes: budget, log: () => {} });
      opened.push(s);
      return s;
    });
  } finally {
    for (const s of opened) await s.close().catch(() => {});
    io.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test('a crash after sealing a segment but before the next one got its header loses no index entries', async () => {
  await withDir(async (_io, sd, openShard) => {
    let s = await openShard(1);
    for (let i = 0; (await readdir(sd)).filter((f) => f.endsWith('.seg')).length < 2; i++) fromVersion(await s.handle(Op.Write, write(100 + i, 10_000)));
    await s.close();
    // Segment 2 exists (zero-filled) but its header was never written.
    const fh = await open(join(sd, '0000000002.seg'), 'r+');
    const size = (await fh.stat()).size;
    await fh.write(new Uint8Array(size), 0, size, 0);
    await fh.close();
    s = await openShard(1); // a tiny budget: states are evicted at once and reloaded from the log
    assert.equal(s.state, 'serving');
    assert.equal(fromVersion(await s.handle(Op.Write, write(1, 10, Expect.NoStream))), 1n);
    for (let j = 0; j < 40; j++) await s.handle(Op.Read, readReq(5000 + j));
    assert.deepEqual(versions(await s.handle(Op.Read, readReq(1))), [1n]);
    const again = await s.handle(Op.Write, write(1, 10, Expect.NoStream));
    assert.equal(decodeError(again.body).code, 2003, 'the aggregate is found again, so no_stream fails');
    await s.close();
    s = await openShard(1);
    assert.deepEqual(versions(await s.handle(Op.Read, readReq(1))), [1n]);
  });
});

test('an empty or short new segment left by a crash during preallocation is removed, not called corrupt', async () => {
  for (const size of [0, 2048]) {
    await withDir(async (_io, sd, openShard) => {
      let s = await openShard();
      fromVersion(await s.handle(Op.Write, write(1)));
      await s.close();
      await writeFile(join(sd, '0000000002.seg'), new Uint8Array(size));
      s = await openShard();
      assert.equal(s.state, 'serving', s.reason);
      assert.deepEqual(versions(await s.handle(Op.Read, readReq(1))), [1n]);
    });
  }
});

test('a torn tail that rotation later seals over does not make the sealed segment look corrupt', async () => {
  await withDir(async (_io, sd, openShard) => {
    let s = await openShard();
    for (let i = 0; i < 5; i++) fromVersion(await s.handle(Op.Write, write(1, 10_000)));
    await s.close();
    const seg = join(sd, '0000000001.seg');
    const fh = await open(seg, 'r+');
    const hb = new Uint8Array(4096);
    await fh.read(hb, 0, 4096, 0);
    const h = decodeSegmentHeader(hb);
    assert.ok(h.ok);
    const garbage = Uint8Array.from({ length: 9000 }, (_, i) => (i * 31 + 7) & 0xff);
    await fh.write(garbage, 0, garbage.length, h.header.committedEnd);
    await fh.close();
    s = await openShard();
    assert.equal(s.state, 'serving');
    fromVersion(await s.handle(Op.Write, write(1, 20_000))); // does not fit: seals segment 1
    await s.close();
    s = await openShard();
    assert.equal(s.state, 'serving', s.reason);
    assert.equal(versions(await s.handle(Op.Read, readReq(1))).length, 6);
  });
});

test('a state evicted while a write waits for cold loads never gives two writes the same version', async () => {
  await withDir(async (_io, _sd, openShard) => {
    for (let d = 0; d < 20; d++) {
      const s = await openShard(1); // 16 state entries at most
      const base = 1000 * (d + 1);
      await s.handle(Op.Write, write(base));
      for (let i = 0; i < 16; i++) await s.handle(Op.Write, write(base + 100 + i));
      await s.handle(Op.Read, readReq(base));
      const load: Promise<unknown>[] = [];
      for (let i = 0; i < 15; i++) load.push(s.handle(Op.Write, write(base + 100 + i))); // pinned while in flight
      for (let j = 0; j < 40; j++) {
        load.push(s.handle(Op.Read, readReq(base + 500 + j)));
        await Promise.resolve();
      }
      for (let k = 0; k < d; k++) await Promise.resolve();
      const a = s.handle(Op.Write, write(base));
      for (let k = 0; k < 3; k++) await Promise.resolve();
      const b = s.handle(Op.Write, write(base));
      const [ra, rb] = await Promise.all([a, b]);
      await Promise.all(load);
      const got = [fromVersion(ra), fromVersion(rb)].sort();
      assert.deepEqual(got, [2n, 3n], `round ${d}`);
      assert.deepEqual(versions(await s.handle(Op.Read, readReq(base))), [1n, 2n, 3n]);
      await s.close();
    }
  });
});

test('a commit that lands while a page is being read is returned by a later page', async () => {
  await withDir(async (_io, _sd, openShard) => {
    const s = await openShard(64 * 1024); // small caches: pages read records from disk (awaits)
    for (let i = 0; i < 20; i++) fromVersion(await s.handle(Op.Write, write(1, 200)));
    for (let i = 0; i < 30; i++) await s.handle(Op.Write, write(2 + i, 4000)); // push aggregate 1 out of the caches
    const seen: bigint[] = [];
    let from = 1n;
    let late: Promise<ShardResult> | null = null;
    for (;;) {
      const page = s.handle(Op.Read, encodeReadRequest({ key: key(1), from, to: 0n, maxBytes: 600, eventTypes: [] }));
      late ??= s.handle(Op.Write, write(1, 200)); // commits while the first page is being built
      const p = decodeReadOk((await page).body);
      seen.push(...p.batches.flatMap((b) => b.events.map((e) => e.version)));
      if (p.nextVersion === 0n) break;
      from = p.nextVersion;
    }
    await late;
    const tail = decodeReadOk((await s.handle(Op.Read, readReq(1, from))).body).batches.flatMap((b) => b.events.map((e) => e.version));
    const all = [...new Set([...seen, ...tail])];
    assert.deepEqual(all, Array.from({ length: 21 }, (_, i) => BigInt(i + 1)));
    assert.equal(seen.length, new Set(seen).size, 'no version twice');
  });
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, rm, stat } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeDetailsOk, decodeError, decodeReadOk, decodeWriteOk, encodeKeyRequest, encodeReadRequest, encodeWriteRequest, Expect, Op, type ExpectMode } from '../../client/wire.ts';
import { initHashing } from '../storage/checksum.ts';
import { openFileIo, type FileIo } from '../storage/io.ts';
import { Shard, type ShardResult } from './shard.ts';

await initHashing();
const te = new TextEncoder();

async function withShard<T>(fn: (open: (o?: { segmentBytes?: number; memoryBudgetBytes?: number }) => Promise<Shard>, dir: string) => Promise<T>): Promise<T> {
  const dir = await mkdtemp(join(tmpdir(), 'celer-shard-'));
  let io: FileIo | null = null;
  const shards: Shard[] = [];
  try {
    io = await openFileIo({ dir, log: () => {} });
    const theIo = io;
    return await fn(async (o = {}) => {
      const s = await Shard.open({
        io: theIo,
        dir: join(dir, 'shard-000'),
        shard: 0,
        numShards: 1,
        routing: 2,
        segmentBytes: o.segmentBytes ?? 1024 * 1024,
        memoryBudgetBytes: o.memoryBudgetBytes ?? 16 * 1024 * 1024,
        log: () => {},
      });
      shards.push(s);
      return s;
    }, dir);
  } finally {
    for (const s of shards) await s.close().catch(() => {});
    io?.close();
    await rm(dir, { recursive: true, force: true });
  }
}

const key = (id: number) => ({ org: 1n, type: 2n, id: BigInt(id) });

function writeBody(writes: { id: number; expect?: ExpectMode; version?: number; seq?: number; events?: string[] }[], clientId = 7n): Uint8Array {
  return encodeWriteRequest({
    clientId,
    writes: writes.map((w) => ({
      key: key(w.id),
      expectMode: w.expect ?? Expect.Any,
      expectVersion: BigInt(w.version ?? 0),
      clientSeq: BigInt(w.seq ?? 0),
      events: (w.events ?? ['e']).map((t) => ({ type: t, data: te.encode(`${t}-data`) })),
    })),
  });
}

function code(r: ShardResult): number {
  assert.equal(r.op, Op.Error, 'expected an error response');
  return decodeError(r.body).code;
}

async function read(s: Shard, id: number, from = 1, opts: { to?: number; maxBytes?: number; types?: string[] } = {}) {
  const r = await s.handle(Op.Read, encodeReadRequest({ key: key(id), from: BigInt(from), to: BigInt(opts.to ?? 0), maxBytes: opts.maxBytes ?? 0, eventTypes: opts.types ?? [] }));
  if (r.op === Op.Error) return { error: decodeError(r.body) };
  return decodeReadOk(r.body);
}

test('appends get consecutive versions and positions and read back in order', async () => {
  await withShard(async (openShard) => {
    const s = await openShard();
    const a = decodeWriteOk((await s.handle(Op.Write, writeBody([{ id: 1, events: ['a', 'b'] }]))).body);
    const b = decodeWriteOk((await s.handle(Op.Write, writeBody([{ id: 1, events: ['c'] }]))).body);
    assert.deepEqual(a.ranges, [{ fromVersion: 1n, toVersion: 2n }]);
    assert.deepEqual(b.ranges, [{ fromVersion: 3n, toVersion: 3n }]);
    assert.equal(b.firstSeq, a.firstSeq + 1n);
    const page = await read(s, 1);
    assert.ok('batches' in page);
    assert.deepEqual(page.batches.flatMap((x) => x.events.map((e) => [Number(e.version), e.type])), [[1, 'a'], [2, 'b'], [3, 'c']]);
    assert.equal(page.nextVersion, 0n);
  });
});

test('a stale expected version gets 2003 with the current version and writes nothing', async () => {
  await withShard(async (openShard) => {
    const s = await openShard();
    await s.handle(Op.Write, writeBody([{ id: 1 }]));
    const r = await s.handle(Op.Write, writeBody([{ id: 1, expect: Expect.Exact, version: 0 }]));
    const e = decodeError(r.body);
    assert.equal(e.code, 2003);
    assert.equal(e.detail.currentVersion, '1');
    assert.equal(code(await s.handle(Op.Write, writeBody([{ id: 1, expect: Expect.NoStream }]))), 2003);
    assert.equal(code(await s.handle(Op.Write, writeBody([{ id: 2, expect: Expect.StreamExists }]))), 2003);
    const d = decodeDetailsOk((await s.handle(Op.Details, encodeKeyRequest(key(1)))).body);
    assert.equal(d.version, 1n);
  });
});

test('of N concurrent writers with the same expected version exactly one wins', async () => {
  await withShard(async (openShard) => {
    const s = await openShard();
    await s.handle(Op.Write, writeBody([{ id: 1 }]));
    const results = await Promise.all(Array.from({ length: 20 }, (_, i) => s.handle(Op.Write, writeBody([{ id: 1, expect: Expect.Exact, version: 1 }], BigInt(100 + i)))));
    assert.equal(results.filter((r) => r.op === Op.WriteOk).length, 1);
    for (const r of results.filter((r) => r.op !== Op.WriteOk)) {
      const e = decodeError(r.body);
      assert.equal(e.code, 2003);
      assert.equal(e.detail.currentVersion, '2');
    }
    const creators = await Promise.all(Array.from({ length: 20 }, () => s.handle(Op.Write, writeBody([{ id: 9, expect: Expect.NoStream }]))));
    assert.equal(creators.filter((r) => r.op === Op.WriteOk).length, 1);
  });
});

test('a multi-aggregate write lands all or nothing when one guard fails', async () => {
  await withShard(async (openShard) => {
    const s = await openShard();
    await s.handle(Op.Write, writeBody([{ id: 2 }]));
    const bad = await s.handle(Op.Write, writeBody([{ id: 1, expect: Expect.NoStream }, { id: 2, expect: Expect.Exact, version: 5 }]));
    assert.equal(code(bad), 2003);
    const missing = await read(s, 1);
    assert.ok('error' in missing && missing.error.code === 1001);
    const good = decodeWriteOk((await s.handle(Op.Write, writeBody([{ id: 1, expect: Expect.NoStream }, { id: 2, expect: Expect.Exact, version: 1 }]))).body);
    assert.deepEqual(good.ranges, [{ fromVersion: 1n, toVersion: 1n }, { fromVersion: 2n, toVersion: 2n }]);
  });
});

test('a retried write lands once: 2002 after commit, 2003 when another writer moved the aggregate first', async () => {
  await withShard(async (openShard) => {
    const s = await openShard();
    const first = await s.handle(Op.Write, writeBody([{ id: 1, seq: 1 }], 42n));
    assert.equal(first.op, Op.WriteOk);
    const retry = await s.handle(Op.Write, writeBody([{ id: 1, seq: 1 }], 42n));
    assert.equal(code(retry), 2002);
    // Conditional write, then a concurrent writer moves the aggregate, then the retry: guard first.
    assert.equal((await s.handle(Op.Write, writeBody([{ id: 1, seq: 2, expect: Expect.Exact, version: 1 }], 42n))).op, Op.WriteOk);
    assert.equal((await s.handle(Op.Write, writeBody([{ id: 1 }], 99n))).op, Op.WriteOk);
    assert.equal(code(await s.handle(Op.Write, writeBody([{ id: 1, seq: 2, expect: Expect.Exact, version: 1 }], 42n))), 2003);
    // A duplicate sent while the original is still in flight gets 2013.
    const [a, b] = await Promise.all([s.handle(Op.Write, writeBody([{ id: 3, seq: 5 }], 42n)), s.handle(Op.Write, writeBody([{ id: 3, seq: 5 }], 42n))]);
    assert.equal(a.op, Op.WriteOk);
    assert.equal(code(b), 2013);
    // clientSeq 0 never deduplicates.
    assert.equal((await s.handle(Op.Write, writeBody([{ id: 1, seq: 0 }], 42n))).op, Op.WriteOk);
    assert.equal((await s.handle(Op.Write, writeBody([{ id: 1, seq: 0 }], 42n))).op, Op.WriteOk);
  });
});

test('state, floors and data survive a restart and segment rotation', async () => {
  await withShard(async (openShard) => {
    let s = await openShard({ segmentBytes: 64 * 1024 });
    for (let i = 1; i <= 400; i++) {
      const r = await s.handle(Op.Write, writeBody([{ id: i % 20, seq: i, events: ['x'.repeat(100)] }], 5n));
      assert.equal(r.op, Op.WriteOk);
    }
    await s.close();
    s = await openShard({ segmentBytes: 64 * 1024, memoryBudgetBytes: 4096 });
    for (let id = 0; id < 20; id++) {
      const d = decodeDetailsOk((await s.handle(Op.Details, encodeKeyRequest(key(id)))).body);
      assert.equal(d.version, 20n);
      const page = await read(s, id);
      assert.ok('batches' in page);
      assert.equal(page.batches.length, 20);
    }
    assert.equal(code(await s.handle(Op.Write, writeBody([{ id: 0, seq: 380 }], 5n))), 2002);
    assert.equal((await s.handle(Op.Write, writeBody([{ id: 0, seq: 401 }], 5n))).op, Op.WriteOk);
  });
});

test('reads page by bytes, filter by type and range', async () => {
  await withShard(async (openShard) => {
    const s = await openShard();
    for (let i = 0; i < 50; i++) await s.handle(Op.Write, writeBody([{ id: 1, events: [i % 2 ? 'odd' : 'even'] }]));
    const p1 = await read(s, 1, 1, { maxBytes: 500 });
    assert.ok('batches' in p1);
    assert.ok(p1.nextVersion > 1n && p1.batches.length < 50);
    const all: bigint[] = [];
    let from = 1n;
    for (;;) {
      const p = await read(s, 1, Number(from), { maxBytes: 500 });
      assert.ok('batches' in p);
      all.push(...p.batches.flatMap((b) => b.events.map((e) => e.version)));
      if (p.nextVersion === 0n) break;
      from = p.nextVersion;
    }
    assert.deepEqual(all, Array.from({ length: 50 }, (_, i) => BigInt(i + 1)));
    const odd = await read(s, 1, 10, { to: 20, types: ['odd'] });
    assert.ok('batches' in odd);
    assert.deepEqual(odd.batches.map((b) => Number(b.fromVersion)), [10, 12, 14, 16, 18, 20]);
  });
});

test('a torn tail is discarded on reopen and a flipped byte in committed data stops the shard', async () => {
  await withShard(async (openShard, dir) => {
    let s = await openShard();
    for (let i = 0; i < 30; i++) await s.handle(Op.Write, writeBody([{ id: 1 }]));
    await s.close();
    const sdir = join(dir, 'shard-000');
    const seg = join(sdir, (await readdir(sdir))[0]!);
    // Garbage after the last record: a torn group commit.
    const s1 = await stat(seg);
    assert.ok(s1.size > 0);
    s = await openShard();
    const end = await s.handle(Op.Details, encodeKeyRequest(key(1)));
    assert.equal(decodeDetailsOk(end.body).version, 30n);
    await s.close();
    const fh = await open(seg, 'r+');
    const probe = Buffer.alloc(8192);
    await fh.read(probe, 0, 8192, 4096);
    const used = probe.findLastIndex((b) => b !== 0) + 1;
    await fh.write(Buffer.from('torn-garbage-torn-garbage'), 0, 25, 4096 + used);
    await fh.close();
    s = await openShard();
    assert.equal(s.state, 'serving');
    assert.equal(decodeDetailsOk((await s.handle(Op.Details, encodeKeyRequest(key(1)))).body).version, 30n);
    assert.equal((await s.handle(Op.Write, writeBody([{ id: 1 }]))).op, Op.WriteOk);
    await s.close();
    // Flip one byte inside the first record (committed data).
    const fh2 = await open(seg, 'r+');
    const b = Buffer.alloc(1);
    await fh2.read(b, 0, 1, 4096 + 100);
    b[0]! ^= 0xff;
    await fh2.write(b, 0, 1, 4096 + 100);
    await fh2.close();
    s = await openShard();
    assert.equal(s.state, 'corrupt');
    assert.match(s.reason ?? '', /checksum mismatch/);
    assert.equal(code(await s.handle(Op.Details, encodeKeyRequest(key(1)))), 9200);
  });
});

test('paging continues correctly when writes land between pages', async () => {
  await withShard(async (openShard) => {
    const s = await openShard();
    for (let i = 0; i < 30; i++) await s.handle(Op.Write, writeBody([{ id: 4, events: ['a'] }]));
    const seen: bigint[] = [];
    let from = 1n;
    let pages = 0;
    for (;;) {
      const p = await read(s, 4, Number(from), { maxBytes: 300 });
      assert.ok('batches' in p);
      seen.push(...p.batches.flatMap((b) => b.events.map((e) => e.version)));
      pages++;
      if (pages === 2) for (let i = 0; i < 5; i++) await s.handle(Op.Write, writeBody([{ id: 4, events: ['b'] }]));
      if (p.nextVersion === 0n) break;
      from = p.nextVersion;
    }
    assert.ok(pages > 3);
    assert.deepEqual(seen, Array.from({ length: 35 }, (_, i) => BigInt(i + 1)));
  });
});

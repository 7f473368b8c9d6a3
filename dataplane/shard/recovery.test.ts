// Recovery edge cases found in review: crashes around segment rotation, torn tails sealed over,
// a state evicted while a write waits for a cold load, and a commit landing while a page is being
// read. The two races are driven through a Disk wrapper whose reads and flushes the test holds and
// releases, so each run takes the racy interleaving on purpose (no counting of microtask turns).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, readdir, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeDetailsOk, decodeError, decodeReadOk, decodeReadShardOk, decodeWriteOk, encodeKeyRequest, encodeReadRequest, encodeReadShardRequest, encodeWriteRequest, Expect, FeedFilter, Op, type ExpectMode } from '../../client/wire.ts';
import { ForwardingDisk } from '../../test/lib/forwarding-disk.ts';
import { nodeFs, verifyShard } from '../cli/verify.ts';
import { SEGMENT_HEADER_BYTES } from '../constants.ts';
import { initHashing } from '../storage/checksum.ts';
import { systemClock, type AlignedWrite, type DiskError, type SegmentFile } from '../storage/disk.ts';
import { openFileIo } from '../storage/io.ts';
import { RealDisk } from '../storage/real-disk.ts';
import { decodeSegmentHeader } from '../storage/segment.ts';
import { Shard, type ShardResult } from './shard.ts';

await initHashing();

const NODE_ID = Uint8Array.from({ length: 16 }, (_, i) => 0xa0 + i);
const SEGMENT_BYTES = 64 * 1024;

/** A promise the test settles. */
function deferred(): { promise: Promise<void>; resolve: () => void } {
  let resolve!: () => void;
  const promise = new Promise<void>((r) => (resolve = r));
  return { promise, resolve };
}

/** Waits (one event-loop turn at a time) until `cond` holds; fails after `turns`. */
async function until(cond: () => boolean, what: string, turns = 10_000): Promise<void> {
  for (let i = 0; i < turns; i++) {
    if (cond()) return;
    await new Promise<void>((r) => setImmediate(r));
  }
  assert.fail(`timed out waiting until ${what}`);
}

interface HeldOp {
  path: string;
  offset: number;
  release: () => void;
}

/**
 * The real disk with hooks: while `holdReads` (or `holdFlushes`) is set, every segment read (or
 * writeAndSync) waits in `heldReads` (`heldFlushes`) until the test releases it; `failRename` can
 * make a rename fail with EIO.
 */
class HookDisk extends ForwardingDisk {
  /** Segment reads so far. */
  reads = 0;
  holdReads = false;
  holdFlushes = false;
  readonly heldReads: HeldOp[] = [];
  readonly heldFlushes: HeldOp[] = [];
  failRename: ((from: string, to: string) => boolean) | null = null;

  override async openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile> {
    const f = await this.inner.openSegment(path, opts);
    const hold = async (on: boolean, list: HeldOp[], offset: number): Promise<void> => {
      if (!on) return;
      const d = deferred();
      list.push({ path, offset, release: d.resolve });
      await d.promise;
    };
    return {
      path: f.path,
      sizeBytes: f.sizeBytes,
      read: async (offset: number, length: number) => {
        this.reads++;
        await hold(this.holdReads, this.heldReads, offset);
        return f.read(offset, length);
      },
      writeAndSync: async (writes: readonly AlignedWrite[]) => {
        await hold(this.holdFlushes, this.heldFlushes, writes[0]?.offset ?? 0);
        return f.writeAndSync(writes);
      },
      close: () => f.close(),
    };
  }
  /** Releases every held read and stops holding new ones. */
  releaseReads(): void {
    this.holdReads = false;
    for (const h of this.heldReads.splice(0)) h.release();
  }
  releaseFlushes(): void {
    this.holdFlushes = false;
    for (const h of this.heldFlushes.splice(0)) h.release();
  }
  override async rename(from: string, to: string): Promise<void> {
    if (this.failRename?.(from, to)) {
      const e: DiskError = new Error(`EIO: rename '${from}' (injected by the test)`);
      e.code = 'EIO';
      throw e;
    }
    return this.inner.rename(from, to);
  }
}

const key = (id: number) => ({ org: 1n, type: 2n, id: BigInt(id) });
const write = (id: number, size = 10, expect: ExpectMode = Expect.Any) =>
  encodeWriteRequest({ clientId: 7n, writes: [{ key: key(id), expectMode: expect, expectVersion: 0n, clientSeq: 0n, events: [{ type: 'e', data: new Uint8Array(size) }] }] });
const writeMany = (ids: number[]) =>
  encodeWriteRequest({ clientId: 7n, writes: ids.map((id) => ({ key: key(id), expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [{ type: 'e', data: new Uint8Array(10) }] })) });
const readReq = (id: number, from = 1n) => encodeReadRequest({ key: key(id), from, to: 0n, maxBytes: 0, eventTypes: [] });
const versions = (r: ShardResult): bigint[] => {
  assert.equal(r.op, Op.ReadOk, r.op === Op.Error ? decodeError(r.body).message : 'not ok');
  return decodeReadOk(r.body).batches.map((b) => b.fromVersion);
};
const ranges = (r: ShardResult): bigint[] => {
  assert.equal(r.op, Op.WriteOk, r.op === Op.Error ? decodeError(r.body).message : 'not ok');
  return decodeWriteOk(r.body).ranges.map((x) => x.fromVersion);
};
const fromVersion = (r: ShardResult): bigint => ranges(r)[0]!;
const errCode = (r: ShardResult): number => {
  assert.equal(r.op, Op.Error, 'expected an error');
  return decodeError(r.body).code;
};

interface Env {
  sd: string;
  disk: HookDisk;
  logs: string[];
  openShard: (budget?: number) => Promise<Shard>;
}

async function withDir(fn: (env: Env) => Promise<void>): Promise<void> {
  const dir = await mkdtemp(join(tmpdir(), 'celer-recovery-'));
  const io = await openFileIo({ dir, log: () => {} });
  const disk = new HookDisk(new RealDisk(io));
  const sd = join(dir, 'shard-000');
  const opened: Shard[] = [];
  const logs: string[] = [];
  try {
    await fn({
      sd,
      disk,
      logs,
      openShard: async (budget = 1 << 20) => {
        const s = await Shard.open({ disk, clock: systemClock, nodeId: NODE_ID, dir: sd, shard: 0, numShards: 1, routing: 2, segmentBytes: SEGMENT_BYTES, memoryBudgetBytes: budget, log: (m) => logs.push(m) });
        opened.push(s);
        return s;
      },
    });
  } finally {
    disk.releaseReads();
    disk.releaseFlushes();
    for (const s of opened) await s.close().catch(() => {});
    io.close();
    await rm(dir, { recursive: true, force: true });
  }
}

test('a crash after sealing a segment but before the next one is renamed into place loses no index entries', async () => {
  await withDir(async ({ sd, disk, openShard }) => {
    let s = await openShard(1); // a tiny budget: states are evicted at once and reloaded from the log
    // Rotation seals segment 1 (sidecar, footer), gives the spare its header, then renames
    // 0000000002.seg.new into place: that rename fails, as if the power went just before it.
    disk.failRename = (from) => from.endsWith('0000000002.seg.new');
    const landed: number[] = [];
    let failedId = -1;
    for (let i = 0; failedId < 0; i++) {
      const r = await s.handle(Op.Write, write(100 + i, 10_000));
      if (r.op === Op.WriteOk) landed.push(100 + i);
      else {
        assert.equal(errCode(r), 2008, 'the write that needed the next segment is not acknowledged');
        failedId = 100 + i;
      }
      assert.ok(i < 20, 'the segment never filled');
    }
    await s.close();
    disk.failRename = null;
    const names = await readdir(sd);
    assert.ok(names.includes('0000000002.seg.new') && !names.includes('0000000002.seg'), names.join(' '));
    assert.ok(names.includes('0000000001.idx'), 'segment 1 was sealed with its sidecar');
    s = await openShard(1);
    assert.equal(s.state, 'serving', s.reason);
    assert.equal(fromVersion(await s.handle(Op.Write, write(1, 10, Expect.NoStream))), 1n);
    for (let j = 0; j < 40; j++) await s.handle(Op.Read, readReq(5000 + j));
    assert.deepEqual(versions(await s.handle(Op.Read, readReq(1))), [1n]);
    for (const id of landed) {
      assert.deepEqual(versions(await s.handle(Op.Read, readReq(id))), [1n], `aggregate ${id} is found through segment 1's index`);
      assert.equal(errCode(await s.handle(Op.Write, write(id, 10, Expect.NoStream))), 2003);
    }
    assert.equal(errCode(await s.handle(Op.Details, encodeKeyRequest(key(failedId)))), 1001, 'the unacknowledged write never landed');
    assert.equal(errCode(await s.handle(Op.Write, write(1, 10, Expect.NoStream))), 2003, 'the aggregate is found again, so no_stream fails');
    await s.close();
    s = await openShard(1);
    assert.deepEqual(versions(await s.handle(Op.Read, readReq(1))), [1n]);
    await s.close();
    const report = await verifyShard(nodeFs, sd, 0, 1, 2);
    assert.equal(report.problem, null);
    assert.equal(report.lastSeq, landed.length + 1);
  });
});

test('an empty, short or unfinished spare segment left by a crash during preallocation is removed, not called corrupt', async () => {
  for (const size of [0, 2048, SEGMENT_BYTES]) {
    await withDir(async ({ sd, openShard }) => {
      let s = await openShard();
      fromVersion(await s.handle(Op.Write, write(1)));
      await s.close();
      await rm(join(sd, '0000000002.seg.new'), { force: true });
      await writeFile(join(sd, '0000000002.seg.new'), new Uint8Array(size));
      await writeFile(join(sd, '0000000001.idx.tmp'), new Uint8Array(100)); // a sidecar write cut short
      s = await openShard();
      assert.equal(s.state, 'serving', s.reason);
      assert.ok(!(await readdir(sd)).includes('0000000001.idx.tmp'));
      assert.deepEqual(versions(await s.handle(Op.Read, readReq(1))), [1n]);
      // The spare is made again at full size, and rotation into it works.
      for (let i = 0; i < 8; i++) fromVersion(await s.handle(Op.Write, write(10 + i, 10_000)));
      assert.equal((await stat(join(sd, '0000000002.seg'))).size, SEGMENT_BYTES);
      assert.deepEqual(versions(await s.handle(Op.Read, readReq(1))), [1n]);
    });
  }
});

test('a torn tail that rotation later seals over does not make the sealed segment look corrupt', async () => {
  await withDir(async ({ sd, openShard }) => {
    let s = await openShard();
    for (let i = 0; i < 5; i++) fromVersion(await s.handle(Op.Write, write(1, 10_000)));
    await s.close();
    const seg = join(sd, '0000000001.seg');
    const fh = await open(seg, 'r+');
    const hb = new Uint8Array(SEGMENT_HEADER_BYTES);
    await fh.read(hb, 0, SEGMENT_HEADER_BYTES, 0);
    const h = decodeSegmentHeader(hb);
    assert.ok(h.ok);
    // Garbage after the last durable record, inside the data area (a torn group commit).
    const garbage = Uint8Array.from({ length: 4000 }, (_, i) => (i * 31 + 7) & 0xff);
    await fh.write(garbage, 0, garbage.length, h.header.durableEnd);
    await fh.close();
    s = await openShard();
    assert.equal(s.state, 'serving', s.reason);
    fromVersion(await s.handle(Op.Write, write(1, 20_000))); // does not fit: seals segment 1
    await s.close();
    s = await openShard();
    assert.equal(s.state, 'serving', s.reason);
    assert.equal(versions(await s.handle(Op.Read, readReq(1))).length, 6);
    await s.close();
    const report = await verifyShard(nodeFs, sd, 0, 1, 2);
    assert.equal(report.problem, null);
    assert.equal(report.segments, 2);
  });
});

// Mended: this used to fire writes and reads and then wait a varying number of microtask turns,
// hoping one round would evict a state at the right moment. Now the test holds the disk read of
// write A's second aggregate, evicts A's first aggregate's state meanwhile, lets write B of that
// aggregate load a new state and land, and only then releases A. A must see B's version: with
// states taken from before the await, both writes would get version 2.
test('a state evicted while a write waits for another aggregate\'s cold load is reloaded, so two writes never get the same version', async () => {
  for (const bDurable of [true, false]) {
    await withDir(async ({ disk, openShard }) => {
      const s = await openShard(1); // 16 state entries at most
      fromVersion(await s.handle(Op.Write, write(1)));
      fromVersion(await s.handle(Op.Write, write(2)));
      for (let i = 0; i < 16; i++) fromVersion(await s.handle(Op.Write, write(100 + i))); // evicts 1 and 2
      assert.equal(decodeDetailsOk((await s.handle(Op.Details, encodeKeyRequest(key(1)))).body).version, 1n); // 1 is cached again
      // Write A, of aggregates 1 (cached) and 2 (cold): its load of 2 is held.
      disk.holdReads = true;
      const a = s.handle(Op.Write, writeMany([1, 2]));
      await until(() => disk.heldReads.length === 1, 'write A reads aggregate 2 from disk');
      const aLoad = disk.heldReads.shift()!;
      // Sixteen other aggregates come into the cache (absent keys: no disk read): 1 is evicted.
      for (let i = 0; i < 16; i++) assert.equal(errCode(await s.handle(Op.Details, encodeKeyRequest(key(300 + i)))), 1001);
      // Write B of aggregate 1 must load it from disk again: the proof that A's state was evicted.
      if (!bDurable) disk.holdFlushes = true;
      const before = s.placedSeq;
      const b = s.handle(Op.Write, write(1));
      await until(() => disk.heldReads.length === 1, 'write B reloads aggregate 1 from disk');
      disk.releaseReads();
      let bResult: ShardResult | null = null;
      if (bDurable) bResult = await b;
      else await until(() => disk.heldFlushes.length > 0 && s.placedSeq === before + 1, 'write B is placed and its flush held');
      aLoad.release();
      if (!bDurable) {
        await until(() => s.placedSeq === before + 3, 'write A is placed behind B');
        disk.releaseFlushes();
        bResult = await b;
      }
      const aResult = await a;
      assert.deepEqual(ranges(bResult!), [2n]);
      assert.deepEqual(ranges(aResult), [3n, 2n], 'A wrote version 3 of aggregate 1 (after B) and version 2 of aggregate 2');
      assert.deepEqual(versions(await s.handle(Op.Read, readReq(1))), [1n, 2n, 3n]);
      assert.deepEqual(versions(await s.handle(Op.Read, readReq(2))), [1n, 2n]);
    });
  }
});

// Mended: this used to start a write right after starting a read and hope that it committed while
// the page was being built. Now the page's first disk read is held until the write is acknowledged.
test('a commit that lands while a page is being read is returned by a later page', async () => {
  await withDir(async ({ disk, openShard }) => {
    const s = await openShard(64 * 1024); // small caches: pages read records from disk (awaits)
    for (let i = 0; i < 20; i++) fromVersion(await s.handle(Op.Write, write(1, 200)));
    for (let i = 0; i < 30; i++) await s.handle(Op.Write, write(2 + i, 4000)); // push aggregate 1's records out of the cache
    disk.holdReads = true;
    let firstDone = false;
    const first = s.handle(Op.Read, encodeReadRequest({ key: key(1), from: 1n, to: 0n, maxBytes: 600, eventTypes: [] })).finally(() => (firstDone = true));
    await until(() => disk.heldReads.length === 1, 'the first page reads a record from disk');
    assert.equal(fromVersion(await s.handle(Op.Write, write(1, 200))), 21n); // commits while the page waits
    assert.equal(firstDone, false, 'the write was acknowledged while the first page was still being built');
    disk.releaseReads();
    let p = decodeReadOk((await first).body);
    const pages = [p.batches.flatMap((b) => b.events.map((e) => e.version))];
    assert.ok(!pages[0]!.includes(21n), 'the first page does not claim the later commit');
    while (p.nextVersion !== 0n) {
      p = decodeReadOk((await s.handle(Op.Read, encodeReadRequest({ key: key(1), from: p.nextVersion, to: 0n, maxBytes: 600, eventTypes: [] }))).body);
      pages.push(p.batches.flatMap((b) => b.events.map((e) => e.version)));
    }
    assert.ok(pages.length > 2);
    assert.deepEqual(pages.flat(), Array.from({ length: 21 }, (_, i) => BigInt(i + 1)), 'every version once, in order, the late one in a later page');
  });
});

// The shard feed at the live tail is served from the feed tail (memory): a subscriber keeping up
// costs the disk nothing, so it cannot take fdatasync time from writers. One behind the feed tail
// reads the log in chunks and gets the same batches.
test('feed pages at the live tail read nothing from disk; a reader behind the feed tail gets the same batches from the log', async () => {
  await withDir(async ({ disk, openShard }) => {
    const s = await openShard(1 << 20); // feed tail 100 KiB
    const feed = async (from: bigint) =>
      decodeReadShardOk((await s.handle(Op.ReadShard, encodeReadShardRequest({ shard: 0, from, maxBytes: 64 * 1024, waitMs: 0, filter: FeedFilter.None, key: { org: 0n, type: 0n, id: 0n }, headersOnly: false }))).body);
    const readAll = async (from: bigint) => {
      const seqs: bigint[] = [];
      for (;;) {
        const p = await feed(from);
        seqs.push(...p.batches.map((b) => b.seq));
        if (p.next > p.committedSeq) return seqs;
        from = p.next;
      }
    };
    // A live subscriber: each page right after the writes it covers.
    let from = 1n;
    const live: bigint[] = [];
    const before = disk.reads;
    for (let i = 0; i < 200; i++) {
      await s.handle(Op.Write, write(1 + (i % 7), 100));
      const p = await feed(from);
      live.push(...p.batches.map((b) => b.seq));
      from = p.next;
    }
    assert.equal(disk.reads - before, 0, 'no segment read for pages at the tail');
    assert.deepEqual(live, Array.from({ length: 200 }, (_, i) => BigInt(i + 1)));
    // Push the start out of the feed tail (~2 MiB more), then read everything from seq 1.
    for (let i = 0; i < 500; i++) await s.handle(Op.Write, write(100 + (i % 13), 4000));
    const cold = disk.reads;
    const all = await readAll(1n);
    assert.deepEqual(all, Array.from({ length: 700 }, (_, i) => BigInt(i + 1)), 'every batch once, in order, across the log and the feed tail');
    const coldReads = disk.reads - cold;
    assert.ok(coldReads > 0, 'the old part came from the log');
    assert.ok(coldReads < 200, `the log was read in chunks, not a read per record (${coldReads} reads for 700 records)`);
  });
});

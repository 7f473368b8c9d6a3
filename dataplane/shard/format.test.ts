// Storage format 2 on the real disk: directories and segments of an older format are refused
// (never read as if they were format 2, never modified); a segment's size is its own, so changing
// the segment size affects new segments only; and the chain hash covers only a record's logical
// content, so the same records hash the same wherever they lie.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdir, mkdtemp, readdir, readFile, rm, stat, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeError, decodeReadOk, encodeReadRequest, encodeWriteRequest, Expect, Op } from '../../client/wire.ts';
import { nodeFs, verifyDataDir, verifyShard } from '../cli/verify.ts';
import { SEGMENT_HEADER_BYTES } from '../constants.ts';
import { crc32c, initHashing } from '../storage/checksum.ts';
import { systemClock, type Clock } from '../storage/disk.ts';
import { openFileIo, type FileIo } from '../storage/io.ts';
import { ConfigError, META_FILE, openDataMeta } from '../storage/meta.ts';
import { RealDisk } from '../storage/real-disk.ts';
import { decodeSegmentFooter, SEGMENT_FOOTER_BYTES, type SegmentFooter } from '../storage/segment.ts';
import { Shard, type ShardResult } from './shard.ts';
import { shardDir } from './worker.ts';

await initHashing();

const NODE_ID = new Uint8Array(16).fill(0x42);
const KIB = 1024;

interface Env {
  dataDir: string;
  sd: string;
  openShard: (segmentBytes: number, o?: { clock?: Clock; dir?: string }) => Promise<Shard>;
}

async function withData(fn: (env: Env) => Promise<void>): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'celer-format-'));
  openDataMeta(dataDir, { numShards: 1, routing: 'id' }, { numShards: 1, routing: 'id' });
  let io: FileIo | null = null;
  const opened: Shard[] = [];
  try {
    io = await openFileIo({ dir: dataDir, log: () => {} });
    const disk = new RealDisk(io);
    const sd = shardDir(dataDir, 0);
    await fn({
      dataDir,
      sd,
      openShard: async (segmentBytes, o = {}) => {
        const s = await Shard.open({ disk, clock: o.clock ?? systemClock, nodeId: NODE_ID, dir: o.dir ?? sd, shard: 0, numShards: 1, routing: 2, segmentBytes, memoryBudgetBytes: 1 << 20, log: () => {} });
        opened.push(s);
        return s;
      },
    });
  } finally {
    for (const s of opened) await s.close().catch(() => {});
    io?.close();
    await rm(dataDir, { recursive: true, force: true });
  }
}

const key = (id: number) => ({ org: 5n, type: 6n, id: BigInt(id) });
const write = (id: number, size: number, clientSeq = id) =>
  encodeWriteRequest({ clientId: 11n, writes: [{ key: key(id), expectMode: Expect.Any, expectVersion: 0n, clientSeq: BigInt(clientSeq), events: [{ type: 'e', data: new Uint8Array(size).fill(id & 0xff) }] }] });

function ok(r: ShardResult): void {
  assert.ok(r.op !== Op.Error, r.op === Op.Error ? decodeError(r.body).message : '');
}
async function readAll(s: Shard, id: number): Promise<{ version: bigint; bytes: number; first: number | undefined }[]> {
  const r = await s.handle(Op.Read, encodeReadRequest({ key: key(id), from: 1n, to: 0n, maxBytes: 0, eventTypes: [] }));
  ok(r);
  return decodeReadOk(r.body).batches.flatMap((b) => b.events.map((e) => ({ version: e.version, bytes: e.data.length, first: e.data[0] })));
}

async function segmentSizes(sd: string): Promise<number[]> {
  const names = (await readdir(sd)).filter((n) => n.endsWith('.seg')).sort();
  return Promise.all(names.map(async (n) => (await stat(join(sd, n))).size));
}

async function footerOf(path: string): Promise<SegmentFooter> {
  const bytes = new Uint8Array(await readFile(path));
  const f = decodeSegmentFooter(bytes.subarray(bytes.length - SEGMENT_FOOTER_BYTES));
  assert.ok(f.ok, `${path} is sealed`);
  return f.footer;
}

/** A segment header in the layout of storage format 1 (the format before this one), with its CRC. */
function formatOneHeader(o: { shard: number; numShards: number; routing: number; index: number; sizeBytes: number }): Uint8Array {
  const block = new Uint8Array(SEGMENT_HEADER_BYTES);
  const v = new DataView(block.buffer);
  v.setUint32(4, 0x43454c52); // "CELR"
  v.setUint16(8, 1); // format 1
  v.setUint16(10, o.routing);
  v.setUint32(12, o.shard);
  v.setUint32(16, o.numShards);
  v.setUint32(20, o.index);
  v.setBigUint64(24, 1n); // first seq
  // 32..64: previous hash, zeros for the first segment
  v.setBigUint64(64, BigInt(SEGMENT_HEADER_BYTES)); // committed end
  v.setBigUint64(72, 0n); // committed seq
  v.setUint32(80, o.sizeBytes);
  v.setUint32(0, crc32c(block.subarray(4, 84)));
  return block;
}

// Guards the old-format defect: format-1 data was the only format there was, so a directory or a
// segment from before the format change would have been read as if it were current. Now both are
// refused with a message that says what they are and what to do, and nothing is modified.
test('a data directory whose celer.json says format 1 is refused as an older storage format', async () => {
  const dataDir = await mkdtemp(join(tmpdir(), 'celer-format-'));
  try {
    const meta = { format: 1, numShards: 1, routing: 'id', nodeId: '0a0b0c0d-0e0f-4000-8000-000000000001', createdAt: '2026-01-01T00:00:00.000Z' };
    await writeFile(join(dataDir, META_FILE), JSON.stringify(meta));
    assert.throws(
      () => openDataMeta(dataDir, {}, { numShards: 1, routing: 'id' }),
      (e: Error) => e instanceof ConfigError && /older/.test(e.message) && /storage format 1/.test(e.message) && /format 2/.test(e.message),
    );
    assert.deepEqual(JSON.parse(await readFile(join(dataDir, META_FILE), 'utf8')), meta, 'celer.json is left as it was');
    await assert.rejects(verifyDataDir(dataDir, () => {}), /storage format 1/);
    // A newer format is refused too, asking for an upgrade instead.
    await writeFile(join(dataDir, META_FILE), JSON.stringify({ ...meta, format: 3 }));
    assert.throws(() => openDataMeta(dataDir, {}, { numShards: 1, routing: 'id' }), (e: Error) => e instanceof ConfigError && /newer/.test(e.message));
  } finally {
    await rm(dataDir, { recursive: true, force: true });
  }
});

test('a segment whose header says format 1 makes the shard corrupt with a message about the older storage format, and is left untouched', async () => {
  await withData(async ({ sd, openShard }) => {
    await mkdir(sd, { recursive: true });
    const seg = join(sd, '0000000001.seg');
    const bytes = new Uint8Array(64 * KIB);
    bytes.set(formatOneHeader({ shard: 0, numShards: 1, routing: 2, index: 1, sizeBytes: bytes.length }));
    await writeFile(seg, bytes);
    const s = await openShard(64 * KIB);
    assert.equal(s.state, 'corrupt');
    assert.match(s.reason ?? '', /older storage format/);
    const r = await s.handle(Op.Read, encodeReadRequest({ key: key(1), from: 1n, to: 0n, maxBytes: 0, eventTypes: [] }));
    assert.equal(decodeError(r.body).code, 9200);
    await s.close();
    assert.deepEqual(new Uint8Array(await readFile(seg)), bytes, 'the old segment is not modified');
    assert.deepEqual((await readdir(sd)).sort(), ['0000000001.seg'], 'no segment of the new format was made beside it');
    const report = await verifyShard(nodeFs, sd, 0, 1, 2);
    assert.match(report.problem ?? '', /format 1/);
  });
});

// Guards the segment-size defect: the old engine placed records by the configured segment size,
// not the size of the segment it was filling, so data written with one --segment-mb and reopened
// with a larger one got writes past the end of the existing file (failed writes), and with a
// smaller one left space unused. A segment's size is in its header now and only new segments get
// the new size.
test('changing the segment size on existing data: old segments keep their size, new ones get the new one, everything stays readable', async () => {
  for (const [a, b] of [
    [128 * KIB, 64 * KIB],
    [64 * KIB, 256 * KIB],
  ] as const) {
    await withData(async ({ dataDir, sd, openShard }) => {
      const big = 10_000; // records of ~10 KiB: 5 per 64 KiB segment, 12 per 128 KiB, 24 per 256 KiB
      const perA = a === 64 * KIB ? 5 : 12;
      let s = await openShard(a);
      let id = 1;
      for (; id <= perA + 2; id++) ok(await s.handle(Op.Write, write(id, big))); // segment 1 sealed, segment 2 active with 2
      await s.close();
      s = await openShard(b);
      assert.equal(s.state, 'serving', s.reason);
      const firstNew = id;
      for (; id < firstNew + 40; id++) ok(await s.handle(Op.Write, write(id, big))); // fills segment 2 at its own size, then rotates
      await s.close();
      const sizes = await segmentSizes(sd);
      assert.ok(sizes.length >= 4, `${a}→${b}: ${sizes.join(',')}`);
      assert.deepEqual(sizes.slice(0, 2), [a, a], `${a}→${b}: the existing segments keep their size`);
      assert.ok(sizes.slice(2).every((x) => x === b), `${a}→${b}: new segments get the new size: ${sizes.join(',')}`);
      // Segment 2 was filled to its own end, not to the configured size's.
      const f2 = await footerOf(join(sd, '0000000002.seg'));
      assert.equal(f2.lastSeq - f2.firstSeq + 1, perA, `${a}→${b}: segment 2 holds as many records as segment 1`);
      const report = await verifyDataDir(dataDir, () => {});
      assert.equal(report.ok, true, report.shards[0]!.problem ?? '');
      assert.equal(report.shards[0]!.lastSeq, id - 1);
      for (const size of [a, b]) {
        s = await openShard(size);
        assert.equal(s.state, 'serving', s.reason);
        for (let i = 1; i < id; i++) assert.deepEqual(await readAll(s, i), [{ version: 1n, bytes: big, first: i & 0xff }], `${a}→${b}, reopened at ${size}: aggregate ${i}`);
        await s.close();
      }
    });
  }
});

// Guards the location-in-the-hash defect: the old record hash covered the whole stored record,
// including where it lay (its vouched end, its links to the aggregate's previous batch by segment
// and offset), so two copies of the same history laid out differently had different chains. The
// chain hash now covers only logical content (seqs, prevSeq links, epoch, node, events).
test('two logs holding the same records in differently sized segments have the same chain tip', async () => {
  await withData(async ({ dataDir, openShard }) => {
    const fixed: Clock = { ...systemClock, nowMs: () => 1_700_000_000_000 };
    const dirs = [join(dataDir, 'small'), join(dataDir, 'large')];
    const shards = [await openShard(64 * KIB, { clock: fixed, dir: dirs[0]! }), await openShard(256 * KIB, { clock: fixed, dir: dirs[1]! })];
    for (let i = 0; i < 30; i++) {
      for (const s of shards) ok(await s.handle(Op.Write, write(1 + (i % 4), 3_000 + i, i + 1)));
    }
    for (const s of shards) await s.close();
    const [small, large] = await Promise.all(dirs.map((d) => verifyShard(nodeFs, d, 0, 1, 2)));
    assert.equal(small!.problem, null);
    assert.equal(large!.problem, null);
    assert.ok(small!.segments > large!.segments, `the records lie in different places (${small!.segments} vs ${large!.segments} segments)`);
    assert.equal(small!.lastSeq, 30);
    assert.equal(small!.tip, large!.tip);
  });
});

// ShardLog on the real disk: reads by position across sealed segments (readFrom, locate), chain
// hashes that do not depend on where records lie, and a truncation interrupted part-way.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, readdir, readFile, rm, writeFile } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { nodeFs, verifyShard } from '../cli/verify.ts';
import { hex, initHashing } from './checksum.ts';
import { systemClock, type Disk, type DiskError } from './disk.ts';
import { openFileIo, type FileIo } from './io.ts';
import { RealDisk } from './real-disk.ts';
import { batchesOf, encodeRecord, recordHash, recordSize, type BatchInput } from './record.ts';
import { sidecarPath } from './segment-index.ts';
import { segmentPath } from './segment.ts';
import { ShardLog, type ShardLogOptions } from './shard-log.ts';

await initHashing();

const NODE_ID = new Uint8Array(16).fill(9);
const KIB = 1024;

function key(i: number): Uint8Array {
  const k = new Uint8Array(48);
  new DataView(k.buffer).setUint32(44, i);
  return k;
}

/** A batch of one event of `size` data bytes (disk encoding: flags, type "A", length, data). */
function batch(i: number, size: number, prevSeq = 0): BatchInput {
  const events = new Uint8Array(2 + 1 + 4 + size);
  events[1] = 1;
  events[2] = 65;
  new DataView(events.buffer).setUint32(3, size);
  events.fill(i & 0xff, 7);
  return { key: key(i), fromVersion: 1, clientSeq: 0n, eventCount: 1, prevSeq, eventsBytes: events.length, writeEvents: (dst, at) => dst.set(events, at) };
}

/** Appends one record of `batches` and makes it durable. Timestamps are fixed: same input, same record. */
async function append(log: ShardLog, batches: BatchInput[]): Promise<void> {
  const place = log.reserve(recordSize(batches));
  const bytes = encodeRecord({ shard: 0, firstSeq: place.firstSeq, epoch: 3, nodeId: NODE_ID, vouchedEnd: place.vouchedEnd, timestampMs: 1_000, prevHash: place.prevHash, clientId: 5n, batches });
  log.commitPlacement(bytes, batches.map((b) => b.key), batches.length);
  await log.flush();
}

/** The real disk; `failRemove` can make a remove fail with EIO. */
class FailingDisk extends RealDisk {
  failRemove: ((path: string) => boolean) | null = null;
  override async remove(path: string): Promise<void> {
    if (this.failRemove?.(path)) {
      const e: DiskError = new Error(`EIO: remove '${path}' (injected by the test)`);
      e.code = 'EIO';
      throw e;
    }
    return super.remove(path);
  }
}

async function withLogs(fn: (o: { disk: FailingDisk; opts: (name: string, segmentBytes: number) => ShardLogOptions; logs: string[] }) => Promise<void>): Promise<void> {
  const root = await mkdtemp(join(tmpdir(), 'celer-shardlog-'));
  let io: FileIo | null = null;
  try {
    io = await openFileIo({ dir: root, log: () => {} });
    const disk = new FailingDisk(io);
    const logs: string[] = [];
    const opts = (name: string, segmentBytes: number): ShardLogOptions => ({ disk: disk as Disk, clock: systemClock, dir: join(root, name), shard: 0, numShards: 1, routing: 2, segmentBytes, log: (m) => logs.push(m), ackAtDurable: false });
    await fn({ disk, opts, logs });
  } finally {
    io?.close();
    await rm(root, { recursive: true, force: true });
  }
}

/** 40 records: mostly one batch of ~5 KB, every 7th a record of three batches. Seqs 1..52. */
async function fill(log: ShardLog): Promise<void> {
  for (let i = 0; i < 40; i++) {
    if (i % 7 === 3) await append(log, [batch(1000 + i, 100), batch(2000 + i, 200), batch(3000 + i, 300)]);
    else await append(log, [batch(i, 5_000 + i)]);
  }
}

const seqsOf = (rs: { bytes: Uint8Array; header: Parameters<typeof batchesOf>[1] }[]) => rs.flatMap((r) => [...batchesOf(r.bytes, r.header)].map((b) => b.seq));
const range = (a: number, b: number) => Array.from({ length: b - a + 1 }, (_, i) => a + i);

// Guards the reads-by-position defect: the old log could only find an aggregate's newest record
// (by key); a follower or uploader that must read the log from a seq onwards had no way to.
test('readFrom returns the records from a seq in order across sealed segments, up to toSeq and about maxBytes', async () => {
  await withLogs(async ({ opts, logs }) => {
    const o = opts('a', 64 * KIB);
    let log = await ShardLog.open(o);
    await fill(log);
    assert.equal(log.durableSeq, 52);
    assert.ok(log.segmentCount >= 4, `${log.segmentCount} segments`);
    const check = async (l: ShardLog, when: string): Promise<void> => {
      const all = await l.readFrom(1, 52, 1 << 30);
      assert.deepEqual(seqsOf(all), range(1, 52), `${when}: every seq once, in order`);
      assert.ok(new Set(all.map((r) => r.segment)).size >= 4, `${when}: across the segments`);
      for (const r of all) {
        const again = await l.readRecord(r.segment, r.offset);
        assert.deepEqual(again.bytes, r.bytes, `${when}: the record at its location`);
      }
      assert.deepEqual(seqsOf(await l.readFrom(14, 30, 1 << 30)), range(13, 30), `${when}: from the record holding seq 14 (seqs 13..15) up to toSeq`);
      assert.deepEqual(seqsOf(await l.readFrom(44, 52, 1)), [44], `${when}: at least one record`);
      assert.deepEqual(seqsOf(await l.readFrom(33, 52, 1)), [31, 32, 33], `${when}: one record, the one holding seq 33`);
      assert.deepEqual(seqsOf(await l.readFrom(1, 52, 12_000)), [1, 2, 3], `${when}: stops once maxBytes is reached`);
      assert.deepEqual(await l.readFrom(53, 100, 1 << 30), [], `${when}: nothing beyond durable`);
      const at = await l.locate(45);
      assert.ok(at !== null && at.firstSeq <= 45);
      assert.deepEqual(seqsOf([await l.readRecord(at.segment, at.offset)]).includes(45), true);
    };
    await check(log, 'while written');
    await log.close();
    log = await ShardLog.open(o); // sealed segments now answer from their sidecars
    await check(log, 'after a restart');
    await log.close();
    // Sidecars are derived data: one missing or not matching its footer is rebuilt at open; one
    // whose seq page fails its CRC later is scanned past.
    await rm(sidecarPath(segmentPath(o.dir, 1)));
    await writeFile(sidecarPath(segmentPath(o.dir, 2)), new Uint8Array(8192 * 40).fill(0xee));
    const idx3 = sidecarPath(segmentPath(o.dir, 3));
    const bytes = new Uint8Array(await readFile(idx3));
    bytes[bytes.length - 100]! ^= 0xff; // inside the last page: the seq index
    await writeFile(idx3, bytes);
    log = await ShardLog.open(o);
    await check(log, 'with sidecars rebuilt or damaged');
    for (const what of ['rebuilding the index of segment 1', 'rebuilding the index of segment 2', 'scanning segment 3 instead']) {
      assert.ok(logs.some((m) => m.includes(what)), `${what}: ${logs.join(' | ')}`);
    }
    await log.close();
  });
});

// Guards the location-in-the-hash defect (see format.test.ts for the shard-level version): the
// same records, laid out in different segments at different offsets (so with different vouched
// ends), have the same chain hashes.
test('the chain hash covers logical content only: the same records in differently sized segments hash the same', async () => {
  await withLogs(async ({ opts }) => {
    const a = await ShardLog.open(opts('a', 64 * KIB));
    const b = await ShardLog.open(opts('b', 192 * KIB));
    await fill(a);
    await fill(b);
    assert.ok(a.segmentCount > b.segmentCount);
    assert.equal(hex(a.tipHash), hex(b.tipHash));
    const ra = await a.readFrom(1, 52, 1 << 30);
    const rb = await b.readFrom(1, 52, 1 << 30);
    assert.equal(ra.length, rb.length);
    let differentBytes = 0;
    for (let i = 0; i < ra.length; i++) {
      assert.equal(hex(recordHash(ra[i]!.bytes, ra[i]!.header.length)), hex(recordHash(rb[i]!.bytes, rb[i]!.header.length)), `record ${i}`);
      if (hex(ra[i]!.bytes) !== hex(rb[i]!.bytes)) differentBytes++;
    }
    assert.ok(differentBytes > 0, 'some records differ in their local part (where they lie) and still hash the same');
    await a.close();
    await b.close();
    const [va, vb] = await Promise.all([verifyShard(nodeFs, opts('a', 0).dir, 0, 1, 2), verifyShard(nodeFs, opts('b', 0).dir, 0, 1, 2)]);
    assert.equal(va.problem, null);
    assert.equal(va.tip, vb.tip);
  });
});

// A truncation removes later segments one by one: a crash part-way leaves any subset of them
// (with the removal order of the first format-2 engine, a gap). The cut marked in the header
// decides; recovery finishes the job instead of calling the gap corruption.
test('a truncation interrupted while removing later segments is finished at the next open', async () => {
  await withLogs(async ({ disk, opts }) => {
    const o = opts('a', 64 * KIB);
    let log = await ShardLog.open(o);
    await fill(log);
    assert.ok(log.segmentCount >= 4);
    log.setAcked(5);
    await log.syncHeader();
    const cut = 6; // inside segment 1
    disk.failRemove = (p) => p.endsWith('.seg'); // the power goes before the first segment is removed
    await assert.rejects(log.truncateAfter(cut), /EIO/);
    disk.failRemove = null;
    await log.close();
    const names = (await readdir(o.dir)).filter((n) => n.endsWith('.seg')).sort();
    assert.ok(names.length >= 4, 'the later segments are all still there');
    // As if segment 2 had been removed first and the crash came before the rest: a gap.
    await rm(segmentPath(o.dir, 2));
    await rm(sidecarPath(segmentPath(o.dir, 2)), { force: true });
    const before = await verifyShard(nodeFs, o.dir, 0, 1, 2);
    assert.equal(before.problem, null, 'verify sees an interrupted truncation, not damage');
    log = await ShardLog.open(o);
    assert.equal(log.durableSeq, cut);
    assert.deepEqual((await readdir(o.dir)).filter((n) => n.endsWith('.seg')), ['0000000001.seg']);
    assert.deepEqual(seqsOf(await log.readFrom(1, 100, 1 << 30)), range(1, cut));
    await append(log, [batch(77, 10)]);
    assert.equal(log.durableSeq, cut + 1);
    await log.close();
    const after = await verifyShard(nodeFs, o.dir, 0, 1, 2);
    assert.equal(after.problem, null);
    assert.equal(after.tornTail, null);
    assert.equal(after.lastSeq, cut + 1);
  });
});

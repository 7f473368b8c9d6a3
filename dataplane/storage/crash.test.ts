// Crash safety at any byte: a log cut (or overwritten with garbage) at any offset after its
// durable end recovers to exactly the records that lie wholly before the cut; a cut before the
// durable end, at or below the ack barrier, or before a record that vouches for it, is reported
// as corruption, never silently shortened.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, open, readdir, rm, type FileHandle } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { SEGMENT_HEADER_BYTES } from '../constants.ts';
import { initHashing } from './checksum.ts';
import { systemClock } from './disk.ts';
import { openFileIo } from './io.ts';
import { RealDisk } from './real-disk.ts';
import { encodeRecord, recordSize, type BatchInput } from './record.ts';
import { decodeSegmentHeader, encodeSegmentHeader, type SegmentHeader } from './segment.ts';
import { CorruptionError, ShardLog, type ShardLogOptions } from './shard-log.ts';

await initHashing();

const NODE_ID = new Uint8Array(16).fill(3);

function key(i: number): Uint8Array {
  const k = new Uint8Array(48);
  k[47] = i;
  return k;
}

/** One batch of one event (type "A", 2 data bytes) in the disk encoding: 221-byte records, coprime with the cut step. */
function batch(i: number): BatchInput {
  const events = new Uint8Array([0, 1, 65, 0, 0, 0, 2, i % 7, 0]);
  return { key: key(i), fromVersion: 1, clientSeq: 0n, eventCount: 1, prevSeq: 0, eventsBytes: events.length, writeEvents: (dst, at) => dst.set(events, at) };
}

/** Appends one single-batch record and makes it durable; returns the offset just past it. */
async function append(log: ShardLog, i: number): Promise<number> {
  const b = batch(i);
  const place = log.reserve(recordSize([b]));
  const bytes = encodeRecord({ shard: 0, firstSeq: place.firstSeq, epoch: 0, nodeId: NODE_ID, vouchedEnd: place.vouchedEnd, timestampMs: 1, prevHash: place.prevHash, clientId: 1n, batches: [b] });
  log.commitPlacement(bytes, [b.key], 1);
  await log.flush();
  return place.offset + bytes.length;
}

async function readHeader(fh: FileHandle): Promise<SegmentHeader> {
  const head = new Uint8Array(SEGMENT_HEADER_BYTES);
  await fh.read(head, 0, SEGMENT_HEADER_BYTES, 0);
  const h = decodeSegmentHeader(head);
  assert.ok(h.ok, 'the segment header parses');
  return h.header;
}

async function writeHeader(fh: FileHandle, h: SegmentHeader): Promise<void> {
  const head = new Uint8Array(SEGMENT_HEADER_BYTES);
  encodeSegmentHeader(head, h);
  await fh.write(head, 0, SEGMENT_HEADER_BYTES, 0);
}

test('a torn tail at any byte after the durable end recovers to the records wholly before it; damage the log vouches for is refused', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'celer-crash-'));
  const io = await openFileIo({ dir, log: () => {} });
  const disk = new RealDisk(io);
  try {
    const src = join(dir, 'src');
    const opts: ShardLogOptions = { disk, clock: systemClock, dir: src, shard: 0, numShards: 1, routing: 2, segmentBytes: 64 * 1024, log: () => {}, ackAtDurable: true };
    const log = await ShardLog.open(opts);
    const ends: number[] = [];
    for (let i = 0; i < 12; i++) ends.push(await append(log, i));
    await log.syncHeader(); // the header now says every record is durable
    await log.close();
    const segName = (await readdir(src)).find((f) => f.endsWith('.seg'))!;
    const durableAt = ends[5]!; // pretend the header was last written after the 6th record
    const lastEnd = ends[ends.length - 1]!;
    /** A copy of the segment in `d` whose header says only the first 6 records are durable (and acknowledged). */
    const copyWithLaggingHeader = async (d: string, ackedSeq = 6): Promise<FileHandle> => {
      await rm(d, { recursive: true, force: true });
      await mkdir(d);
      await copyFile(join(src, segName), join(d, segName));
      const fh = await open(join(d, segName), 'r+');
      const h = await readHeader(fh);
      assert.equal(h.durableEnd, lastEnd);
      await writeHeader(fh, { ...h, durableEnd: durableAt, durableSeq: 6, ackedSeq });
      return fh;
    };
    let cases = 0;
    // Cuts from the durable end to past the last record, by zeros or by garbage. Every record is
    // the same length and the step is 5, coprime with it: over five records the cuts fall at
    // every offset inside a record.
    const recordBytes = ends[1]! - ends[0]!;
    assert.notEqual(recordBytes % 5, 0);
    for (let cut = durableAt; cut <= lastEnd + 8; cut += 5) {
      for (const fill of ['zeros', 'garbage'] as const) {
        const d = join(dir, `c${cut}-${fill}`);
        const fh = await copyWithLaggingHeader(d);
        const tail = new Uint8Array(lastEnd + 64 - cut);
        if (fill === 'garbage') for (let i = 0; i < tail.length; i++) tail[i] = (i * 37 + cut) & 0xff;
        await fh.write(tail, 0, tail.length, cut);
        await fh.close();
        const reopened = await ShardLog.open({ ...opts, dir: d });
        const expected = ends.filter((e) => e <= cut).length;
        assert.equal(reopened.durableSeq, expected, `cut at ${cut} (${fill}): expected ${expected} records`);
        await reopened.close();
        // What recovery discarded was zeroed: the next start finds a clean end at the same place
        // (checked on a sample of the cases; each open makes a spare segment).
        if (cases % 16 === 0) {
          const again = await ShardLog.open({ ...opts, dir: d });
          assert.equal(again.durableSeq, expected);
          await again.close();
        }
        await rm(d, { recursive: true, force: true });
        cases++;
      }
    }
    assert.ok(cases > 200);
    // Damage to a record after the header's durable end that a later record vouches for (it was
    // placed after the damaged one was durable) is corruption too, not a torn tail.
    const v = join(dir, 'vouched');
    const vh = await copyWithLaggingHeader(v);
    const payloadByte = ends[8]! - 6; // inside record 9's event payload, before its trailer
    const b = new Uint8Array(1);
    await vh.read(b, 0, 1, payloadByte);
    b[0]! ^= 0x40;
    await vh.write(b, 0, 1, payloadByte);
    await vh.close();
    await assert.rejects(ShardLog.open({ ...opts, dir: v }), (e: Error) => e instanceof CorruptionError && /vouches/.test(e.message));
    // A cut after the durable end but at or below the ack barrier (the header said seqs up to 11
    // were acknowledged) is corruption: acknowledged records are never discarded.
    const a = join(dir, 'acked');
    const ah = await copyWithLaggingHeader(a, 11);
    await ah.write(new Uint8Array(lastEnd - ends[8]!), 0, lastEnd - ends[8]!, ends[8]!);
    await ah.close();
    await assert.rejects(ShardLog.open({ ...opts, dir: a, ackAtDurable: false }), (e: Error) => e instanceof CorruptionError && /ack barrier/.test(e.message));
    // A cut inside the durable region is corruption.
    const d = join(dir, 'durable-cut');
    await mkdir(d);
    await copyFile(join(src, segName), join(d, segName));
    const fh = await open(join(d, segName), 'r+');
    await fh.write(new Uint8Array(16), 0, 16, ends[1]! + 10);
    await fh.close();
    await assert.rejects(ShardLog.open({ ...opts, dir: d }), CorruptionError);
  } finally {
    io.close();
    await rm(dir, { recursive: true, force: true });
  }
});

// Crash safety at any byte: a log cut (or overwritten with garbage) at any offset after its
// committed end recovers to exactly the records that lie wholly before the cut; a cut before the
// committed end is reported as corruption, never silently shortened.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { copyFile, mkdir, mkdtemp, open, readdir, rm } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Writer } from '../../client/wire.ts';
import { SEGMENT_HEADER_BYTES } from '../constants.ts';
import { initHashing } from './checksum.ts';
import { openFileIo } from './io.ts';
import { encodeRecord } from './record.ts';
import { decodeSegmentHeader, encodeSegmentHeader } from './segment.ts';
import { CorruptionError, ShardLog } from './shard-log.ts';

await initHashing();

function key(i: number): Uint8Array {
  const k = new Uint8Array(48);
  k[47] = i;
  return k;
}

test('a torn tail at any byte after the committed end recovers to the records wholly before it', async () => {
  const dir = await mkdtemp(join(tmpdir(), 'celer-crash-'));
  const io = await openFileIo({ dir, log: () => {} });
  try {
    const src = join(dir, 'src');
    const opts = { io, dir: src, shard: 0, numShards: 1, routing: 2, segmentBytes: 256 * 1024, log: () => {} };
    const log = await ShardLog.open(opts);
    const ends: number[] = [];
    for (let i = 0; i < 12; i++) {
      const batches = [{ key: key(i), fromVersion: 1, clientSeq: 0n, eventCount: 1, prev: null, events: new Uint8Array([0, 1, 65, 0, 0, 0, i % 7]) }];
      const w = new Writer(256);
      const place = log.reserve(80 + 84 + 7 + 4);
      const bytes = encodeRecord(w, { firstSeq: place.firstSeq, vouchedEnd: place.vouchedEnd, timestampMs: 1, prevHash: place.prevHash, clientId: 1n, batches }).slice();
      log.commitPlacement(bytes, [batches[0]!.key], 1);
      await log.flush();
      ends.push(place.offset + bytes.length);
    }
    await log.syncHeader(); // the header now says every record is committed
    await log.close();
    const segName = (await readdir(src)).find((f) => f.endsWith('.seg'))!;
    const committedAt = ends[3]!; // pretend the header was last written after the 4th record
    const lastEnd = ends[ends.length - 1]!;
    /** A copy of the segment in `d` whose header says only the first 4 records are committed. */
    const copyWithLaggingHeader = async (d: string) => {
      await rm(d, { recursive: true, force: true });
      await mkdir(d);
      await copyFile(join(src, segName), join(d, segName));
      const fh = await open(join(d, segName), 'r+');
      const head = new Uint8Array(SEGMENT_HEADER_BYTES);
      await fh.read(head, 0, SEGMENT_HEADER_BYTES, 0);
      const h = decodeSegmentHeader(head);
      assert.ok(h.ok);
      encodeSegmentHeader(head, { ...h.header, committedEnd: committedAt, committedSeq: 4 });
      await fh.write(head, 0, SEGMENT_HEADER_BYTES, 0);
      return fh;
    };
    let cases = 0;
    // Every byte from the committed end to past the last record, cut by zeros or by garbage.
    for (let cut = committedAt; cut <= lastEnd + 8; cut += 3) {
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
        cases++;
      }
    }
    assert.ok(cases > 100);
    // Damage to a record after the header's committed end that a later record vouches for (it was
    // placed after the damaged one was durable) is corruption too, not a torn tail.
    const v = join(dir, 'vouched');
    const vh = await copyWithLaggingHeader(v);
    const payloadByte = ends[6]! - 6; // inside record 8's event payload, before its trailer
    const b = new Uint8Array(1);
    await vh.read(b, 0, 1, payloadByte);
    b[0]! ^= 0x40;
    await vh.write(b, 0, 1, payloadByte);
    await vh.close();
    await assert.rejects(ShardLog.open({ ...opts, dir: v }), (e: Error) => e instanceof CorruptionError && /vouches/.test(e.message));
    // A cut inside the committed region is corruption.
    const d = join(dir, 'committed-cut');
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

// Damage to durable data, on the real disk: what the shard refuses at startup, what it trusts (a
// sealed segment's footer) and what only `celer verify` checks (every record, sealed ones too).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtemp, open, rm, stat, truncate } from 'node:fs/promises';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { decodeDetailsOk, decodeError, decodeReadOk, encodeKeyRequest, encodeReadRequest, encodeWriteRequest, Expect, Op } from '../../client/wire.ts';
import { ForwardingDisk } from '../../test/lib/forwarding-disk.ts';
import { verifyDataDir } from '../cli/verify.ts';
import { SEGMENT_HEADER_BYTES } from '../constants.ts';
import { initHashing } from '../storage/checksum.ts';
import { systemClock, type SegmentFile } from '../storage/disk.ts';
import { openFileIo, type FileIo } from '../storage/io.ts';
import { openDataMeta } from '../storage/meta.ts';
import { RealDisk } from '../storage/real-disk.ts';
import { recordSize } from '../storage/record.ts';
import { decodeSegmentFooter, SEGMENT_FOOTER_BYTES, segmentPath } from '../storage/segment.ts';
import { Shard, type ShardResult } from './shard.ts';
import { shardDir } from './worker.ts';

await initHashing();

const NODE_ID = new Uint8Array(16).fill(0x5a);
const SEGMENT_BYTES = 64 * 1024;
/** Events of this size fill a 64 KiB segment with five records. */
const BIG = 10_000;
/** One write of one BIG event: record header, batch header, the event (flags, type "e", length, data). */
const RECORD_BYTES = recordSize([{ eventsBytes: 2 + 1 + 4 + BIG }]);

/** The real disk, recording every segment read (path, offset, length) while `recording`. */
class CountingDisk extends ForwardingDisk {
  readonly reads: { path: string; offset: number; length: number }[] = [];
  override async openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile> {
    const f = await this.inner.openSegment(path, opts);
    return {
      path: f.path,
      sizeBytes: f.sizeBytes,
      read: (offset, length) => {
        this.reads.push({ path, offset, length });
        return f.read(offset, length);
      },
      writeAndSync: (w) => f.writeAndSync(w),
      close: () => f.close(),
    };
  }
}

interface Env {
  dataDir: string;
  sd: string;
  disk: CountingDisk;
  openShard: () => Promise<Shard>;
}

async function withData(fn: (env: Env) => Promise<void>): Promise<void> {
  const dataDir = await mkdtemp(join(tmpdir(), 'celer-damage-'));
  openDataMeta(dataDir, { numShards: 1, routing: 'id' }, { numShards: 1, routing: 'id' });
  let io: FileIo | null = null;
  const opened: Shard[] = [];
  try {
    io = await openFileIo({ dir: dataDir, log: () => {} });
    const disk = new CountingDisk(new RealDisk(io));
    const sd = shardDir(dataDir, 0);
    await fn({
      dataDir,
      sd,
      disk,
      openShard: async () => {
        const s = await Shard.open({ disk, clock: systemClock, nodeId: NODE_ID, dir: sd, shard: 0, numShards: 1, routing: 2, segmentBytes: SEGMENT_BYTES, memoryBudgetBytes: 1 << 20, log: () => {} });
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

const key = (id: number) => ({ org: 9n, type: 8n, id: BigInt(id) });
const write = (id: number, size: number) =>
  encodeWriteRequest({ clientId: 3n, writes: [{ key: key(id), expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [{ type: 'e', data: new Uint8Array(size).fill(id & 0xff) }] }] });

function ok(r: ShardResult): void {
  assert.ok(r.op !== Op.Error, r.op === Op.Error ? decodeError(r.body).message : '');
}
function code(r: ShardResult): number {
  assert.equal(r.op, Op.Error, 'expected an error response');
  return decodeError(r.body).code;
}
async function readVersions(s: Shard, id: number): Promise<bigint[]> {
  const r = await s.handle(Op.Read, encodeReadRequest({ key: key(id), from: 1n, to: 0n, maxBytes: 0, eventTypes: [] }));
  ok(r);
  return decodeReadOk(r.body).batches.map((b) => b.fromVersion);
}

/** Writes `n` acknowledged writes of BIG bytes, aggregate i for the i-th; returns nothing. */
async function fill(s: Shard, from: number, n: number): Promise<void> {
  for (let i = from; i < from + n; i++) ok(await s.handle(Op.Write, write(i, BIG)));
}

/** Overwrites [offset, offset + length) of a file with zeros. */
async function zero(path: string, offset: number, length: number): Promise<void> {
  const fh = await open(path, 'r+');
  try {
    await fh.write(new Uint8Array(length), 0, length, offset);
  } finally {
    await fh.close();
  }
}

async function footerOf(path: string): Promise<{ recordsEnd: number; lastSeq: number }> {
  const size = (await stat(path)).size;
  const fh = await open(path, 'r');
  try {
    const b = new Uint8Array(SEGMENT_FOOTER_BYTES);
    await fh.read(b, 0, b.length, size - SEGMENT_FOOTER_BYTES);
    const f = decodeSegmentFooter(b);
    assert.ok(f.ok, `${path} has a footer`);
    return f.footer;
  } finally {
    await fh.close();
  }
}

// Guards the wiped-last-segment defect: the old engine took a last segment that was all zeros for
// one "created but never written" by a crash during rotation, deleted it and served on without
// its acknowledged writes, and verify called it a note. A .seg file always has a header now (a new
// segment is renamed into place only after its header is durable), so a wiped one is damage.
test('a last segment holding acknowledged writes and wiped with zeros is refused by the shard and by verify', async () => {
  for (const how of ['zeros', 'empty'] as const) {
    await withData(async ({ dataDir, sd, openShard }) => {
      let s = await openShard();
      await fill(s, 1, 7); // five in segment 1 (sealed), two in segment 2 (active)
      await s.close();
      const last = segmentPath(sd, 2);
      if (how === 'zeros') await zero(last, 0, SEGMENT_BYTES);
      else await truncate(last, 0);
      s = await openShard();
      assert.equal(s.state, 'corrupt', `${how}: ${s.reason}`);
      assert.match(s.reason ?? '', /segment 2/);
      assert.equal(code(await s.handle(Op.Details, encodeKeyRequest(key(1)))), 9200);
      assert.equal(code(await s.handle(Op.Write, write(50, 10))), 9200);
      const report = await verifyDataDir(dataDir, () => {});
      assert.equal(report.ok, false, `${how}: verify must report the wiped segment`);
      assert.match(report.shards[0]!.problem ?? '', /0000000002\.seg/);
    });
  }
});

// The footer lets startup trust a sealed segment without reading its records (see the next test);
// verify reads them all, so a sealed segment whose records were zeroed under an intact footer is
// caught there. Startup may serve, but never returns the lost records as data.
test('a sealed segment whose records were zeroed under an intact footer fails verify, and reading them stops the shard', async () => {
  await withData(async ({ dataDir, sd, openShard }) => {
    let s = await openShard();
    await fill(s, 1, 12); // segments 1 and 2 sealed, 3 active
    await s.close();
    const seg1 = segmentPath(sd, 1);
    const f = await footerOf(seg1);
    await zero(seg1, SEGMENT_HEADER_BYTES, f.recordsEnd - SEGMENT_HEADER_BYTES);
    const report = await verifyDataDir(dataDir, () => {});
    assert.equal(report.ok, false);
    assert.match(report.shards[0]!.problem ?? '', /0000000001\.seg offset 4096/);
    s = await openShard();
    assert.equal(s.state, 'serving', s.reason); // the footer vouches; verify is the check of every record
    assert.deepEqual(await readVersions(s, 8), [1n], 'records of intact segments are served');
    assert.equal(code(await s.handle(Op.Details, encodeKeyRequest(key(2)))), 9200, 'a zeroed record is never served as data');
    assert.equal(s.state, 'corrupt');
  });
});

// Guards the startup-reads-everything defect: the old engine re-read and re-hashed every record of
// every segment at startup (minutes for a large shard). Now a sealed segment's footer vouches for
// it and startup reads only its header and footer; checking each record is verify's job. The
// damaged payload byte proves it: a scan would have refused the shard.
test('startup does not re-read sealed records: a bad payload byte in a sealed segment is served past and reported by verify', async () => {
  await withData(async ({ dataDir, sd, disk, openShard }) => {
    let s = await openShard();
    await fill(s, 1, 17); // segments 1, 2, 3 sealed; 4 active
    await s.close();
    const seg2 = segmentPath(sd, 2);
    // Aggregate 7's record is the second of segment 2: flip a byte in the middle of its event data.
    const fh = await open(seg2, 'r+');
    const second = SEGMENT_HEADER_BYTES + RECORD_BYTES;
    const at = second + Math.floor(RECORD_BYTES / 2);
    const b = new Uint8Array(1);
    await fh.read(b, 0, 1, at);
    assert.equal(b[0], 7, 'the byte is inside aggregate 7\'s event data');
    b[0] = 0x77;
    await fh.write(b, 0, 1, at);
    await fh.close();
    disk.reads.length = 0;
    s = await openShard();
    assert.equal(s.state, 'serving', s.reason);
    for (const r of disk.reads) {
      const sealed = [1, 2, 3].some((i) => r.path === segmentPath(sd, i));
      if (!sealed) continue;
      const inHeader = r.offset + r.length <= SEGMENT_HEADER_BYTES;
      const inFooter = r.offset >= SEGMENT_BYTES - SEGMENT_FOOTER_BYTES;
      assert.ok(inHeader || inFooter, `startup read ${r.length} bytes at ${r.offset} of sealed ${r.path}`);
    }
    // It serves: reads of intact sealed and active records, and new writes.
    assert.deepEqual(await readVersions(s, 3), [1n]);
    assert.deepEqual(await readVersions(s, 16), [1n]);
    ok(await s.handle(Op.Write, write(16, 10)));
    assert.equal(decodeDetailsOk((await s.handle(Op.Details, encodeKeyRequest(key(16)))).body).version, 2n);
    await s.close();
    const report = await verifyDataDir(dataDir, () => {});
    assert.equal(report.ok, false);
    assert.match(report.shards[0]!.problem ?? '', new RegExp(`0000000002\\.seg offset ${second} .*checksum mismatch`));
  });
});

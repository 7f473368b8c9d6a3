// The simulated disk keeps exactly the durability contract of dataplane/storage/disk.ts: what was
// synced survives every crash, what was not survives sometimes, sector by sector, and the same
// seed always leaves the same disk.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { DataDirLockedError, errorCode } from '../../dataplane/storage/disk.ts';
import { prng } from '../lib/prng.ts';
import { CRASH_STYLES, SECTOR_BYTES, SimDisk, SimDiskCrashedError, type CrashOptions, type SimOp } from './sim-disk.ts';

const SEG = '/data/shard-000/0000000001.seg';
const DIR = '/data/shard-000';
const SEEDS = 200;

function block(fill: number, bytes = 4096): Uint8Array {
  return new Uint8Array(bytes).fill(fill);
}

async function rejectsWith(p: Promise<unknown>, code: string): Promise<void> {
  await assert.rejects(p, (e) => errorCode(e) === code);
}

/** Resolves true if `p` settles within a few event-loop turns, false if it is still pending. */
async function settles(p: Promise<unknown>): Promise<boolean> {
  let done = false;
  p.then(
    () => (done = true),
    () => (done = true),
  );
  for (let i = 0; i < 20; i++) await new Promise<void>((r) => setImmediate(r));
  return done;
}

/** A disk with one 64 KiB segment whose first 8 KiB hold 0x11 (synced). */
async function diskWithSegment(): Promise<{ disk: SimDisk; seg: Awaited<ReturnType<SimDisk['openSegment']>> }> {
  const disk = new SimDisk();
  await disk.mkdirp(DIR);
  const seg = await disk.openSegment(SEG, { create: true, sizeBytes: 64 * 1024 });
  await seg.writeAndSync([{ offset: 0, buf: block(0x11, 8192) }]);
  return { disk, seg };
}

/** Starts a writeAndSync of 0x22 over [8192, 16384) and cuts the power between its write and fsync. */
async function crashBetweenWriteAndFsync(seed: number, opts: CrashOptions = {}): Promise<SimDisk> {
  const { disk, seg } = await diskWithSegment();
  let after: SimDisk | null = null;
  disk.onOp = (op) => {
    if (op.kind === 'fsync') after = disk.crash(prng(seed), opts);
  };
  void seg.writeAndSync([{ offset: 8192, buf: block(0x22, 8192) }]);
  while (after === null) await new Promise<void>((r) => setImmediate(r));
  return after;
}

test('synced data survives every crash, in every style', async () => {
  for (let seed = 0; seed < SEEDS; seed++) {
    const after = await crashBetweenWriteAndFsync(seed);
    const bytes = after.peek(SEG);
    assert.ok(bytes !== null, `seed ${seed}: the created segment's name was synced`);
    assert.equal(bytes.length, 64 * 1024, `seed ${seed}: the zero fill was synced`);
    assert.ok(bytes.subarray(0, 8192).every((b) => b === 0x11), `seed ${seed}: synced bytes changed`);
    assert.ok(bytes.subarray(16384).every((b) => b === 0), `seed ${seed}: bytes nobody wrote changed`);
  }
});

test('unsynced data survives sometimes, each 512-byte sector wholly old or wholly new', async () => {
  let allNew = 0;
  let allOld = 0;
  let torn = 0;
  const styles = new Set<string>();
  for (let seed = 0; seed < SEEDS; seed++) {
    const after = await crashBetweenWriteAndFsync(seed);
    styles.add(after.lastCrash!.style);
    const bytes = after.peek(SEG)!.subarray(8192, 16384);
    let fresh = 0;
    for (let s = 0; s < bytes.length; s += SECTOR_BYTES) {
      const sector = bytes.subarray(s, s + SECTOR_BYTES);
      const v = sector[0];
      assert.ok(v === 0 || v === 0x22, `seed ${seed}: sector ${s} holds ${v}`);
      assert.ok(sector.every((b) => b === v), `seed ${seed}: sector at ${8192 + s} is a mix of old and new`);
      if (v === 0x22) fresh++;
    }
    if (fresh === 16) allNew++;
    else if (fresh === 0) allOld++;
    else torn++;
  }
  assert.deepEqual([...styles].sort(), [...CRASH_STYLES].sort());
  assert.ok(allNew > 0 && allOld > 0 && torn > 0, `kept ${allNew}, lost ${allOld}, torn ${torn}`);
});

test('tearInsideSectors (beyond the contract) can leave a sector part new, part old', async () => {
  let mixed = 0;
  for (let seed = 0; seed < SEEDS && mixed === 0; seed++) {
    const after = await crashBetweenWriteAndFsync(seed, { style: 'scatter', tearInsideSectors: true });
    const bytes = after.peek(SEG)!.subarray(8192, 16384);
    for (let s = 0; s < bytes.length; s += SECTOR_BYTES) {
      const sector = bytes.subarray(s, s + SECTOR_BYTES);
      if (sector.some((b) => b === 0x22) && sector.some((b) => b === 0)) mixed++;
    }
  }
  assert.ok(mixed > 0);
});

test('a crash replays exactly for a seed, and differs across seeds', async () => {
  const images = new Map<string, number>();
  for (let seed = 0; seed < 40; seed++) {
    const a = await crashBetweenWriteAndFsync(seed);
    const b = await crashBetweenWriteAndFsync(seed);
    assert.deepEqual(a.peek(SEG), b.peek(SEG), `seed ${seed}`);
    assert.deepEqual(a.lastCrash, b.lastCrash);
    const key = Buffer.from(a.peek(SEG)!.subarray(8192, 16384)).toString('base64');
    images.set(key, (images.get(key) ?? 0) + 1);
  }
  assert.ok(images.size > 3, `only ${images.size} different outcomes in 40 seeds`);
});

test('a dead disk crashed again with an equal rng gives an equal disk', async () => {
  const { disk, seg } = await diskWithSegment();
  let twice: [SimDisk, SimDisk] | null = null;
  disk.onOp = (op) => {
    if (op.kind === 'fsync') twice = [disk.crash(prng(7), { style: 'scatter' }), disk.crash(prng(7), { style: 'scatter' })];
  };
  void seg.writeAndSync([{ offset: 8192, buf: block(0x22, 8192) }]);
  while (twice === null) await new Promise<void>((r) => setImmediate(r));
  const [a, b] = twice as [SimDisk, SimDisk];
  assert.deepEqual(a.peek(SEG), b.peek(SEG));
  assert.deepEqual(a.lastCrash, b.lastCrash);
  assert.ok(a.lastCrash!.sectorsKept + a.lastCrash!.sectorsLost === 16);
});

test('a crash before writeAndSync resolves loses nothing that was synced before it, and its write only after the write step', async () => {
  // Cut at every step of a write + fsync: before the write step nothing of it can survive.
  for (let seed = 0; seed < 50; seed++) {
    const { disk, seg } = await diskWithSegment();
    let after: SimDisk | null = null;
    disk.onOp = (op) => {
      if (op.kind === 'write') after = disk.crash(prng(seed), { style: 'keep-all' });
    };
    void seg.writeAndSync([{ offset: 8192, buf: block(0x44) }]);
    while (after === null) await new Promise<void>((r) => setImmediate(r));
    assert.ok((after as SimDisk).peek(SEG)!.subarray(8192, 12288).every((b) => b === 0));
  }
});

test('the old disk never completes an operation after the crash, so a zombie cannot write into the new image', async () => {
  const { disk, seg } = await diskWithSegment();
  const after = disk.crash(prng(1));
  assert.equal(await settles(seg.writeAndSync([{ offset: 8192, buf: block(0x55) }])), false);
  assert.equal(await settles(seg.read(0, 10)), false);
  assert.equal(await settles(disk.writeFileDurable('/data/celer.json', block(1, 10))), false);
  assert.equal(await settles(disk.list('/data')), false);
  assert.ok(after.peek(SEG)!.subarray(8192, 12288).every((b) => b === 0));
  assert.equal(after.peek('/data/celer.json'), null);

  const refusing = new SimDisk({ afterCrash: 'refuse' });
  await refusing.mkdirp(DIR);
  refusing.crash(prng(1));
  await assert.rejects(refusing.list(DIR), SimDiskCrashedError);
});

test('writes in flight across the crash are cut at the step they reached', async () => {
  // Two concurrent writeAndSyncs; the power goes at a seeded step; neither resolves afterwards.
  for (let seed = 0; seed < 50; seed++) {
    const { disk, seg } = await diskWithSegment();
    const cutAt = disk.steps + 1 + (seed % 4);
    let after: SimDisk | null = null;
    disk.atStep(cutAt, () => (after = disk.crash(prng(seed))));
    let acked = 0;
    const a = seg.writeAndSync([{ offset: 8192, buf: block(0x66) }]).then(() => acked++);
    const b = seg.writeAndSync([{ offset: 12288, buf: block(0x77) }]).then(() => acked++);
    for (let i = 0; i < 30 && after === null; i++) await new Promise<void>((r) => setImmediate(r));
    if (after === null) {
      await Promise.all([a, b]);
      continue;
    }
    const img = (after as SimDisk).peek(SEG)!;
    // Whatever was acknowledged before the cut is there in full.
    if (acked === 2) {
      assert.ok(img.subarray(8192, 12288).every((x) => x === 0x66));
      assert.ok(img.subarray(12288, 16384).every((x) => x === 0x77));
    }
  }
});

test('created, renamed and removed names need syncDir to survive', async () => {
  const survived = { created: new Set<boolean>(), renamed: new Set<boolean>(), removed: new Set<boolean>() };
  for (let seed = 0; seed < SEEDS; seed++) {
    const disk = new SimDisk();
    await disk.mkdirp(DIR);
    await disk.writeFileDurable(`${DIR}/a`, block(1, 100));
    await disk.writeFileDurable(`${DIR}/gone`, block(2, 100));
    const other = await disk.openSegment(`${DIR}/0000000002.seg`, { create: true, sizeBytes: 8192 });
    await other.close();
    // Unsynced directory changes:
    await disk.rename(`${DIR}/a`, `${DIR}/b`);
    await disk.remove(`${DIR}/gone`);
    const after = disk.crash(prng(seed));
    const names = after.names(DIR);
    assert.ok(names.includes('0000000002.seg'), `seed ${seed}: a created segment's name is synced`);
    assert.ok(names.includes('a') !== names.includes('b'), `seed ${seed}: a rename is atomic (${names.join(',')})`);
    assert.deepEqual(after.peek(`${DIR}/${names.includes('a') ? 'a' : 'b'}`), block(1, 100));
    // Order: the remove came after the rename, so it cannot survive without it.
    if (!names.includes('gone')) assert.ok(names.includes('b'), `seed ${seed}: the remove survived, the rename before it did not`);
    survived.renamed.add(names.includes('b'));
    survived.removed.add(!names.includes('gone'));
  }
  assert.deepEqual([...survived.renamed].sort(), [false, true]);
  assert.deepEqual([...survived.removed].sort(), [false, true]);

  for (let seed = 0; seed < 50; seed++) {
    const disk = new SimDisk();
    await disk.mkdirp(DIR);
    await disk.writeFileDurable(`${DIR}/a`, block(1, 100));
    await disk.rename(`${DIR}/a`, `${DIR}/b`);
    await disk.syncDir(DIR);
    assert.deepEqual(disk.crash(prng(seed)).names(DIR), ['b']);
  }
});

test('writeFileDurable leaves the old file or the new one at every crash point, never a mix', async () => {
  const outcomes = new Set<string>();
  for (let cut = 1; cut <= 6; cut++) {
    for (let seed = 0; seed < 30; seed++) {
      const disk = new SimDisk();
      await disk.mkdirp(DIR);
      await disk.writeFileDurable(`${DIR}/celer.json`, block(0xaa, 5000));
      let after: SimDisk | null = null;
      disk.atStep(disk.steps + cut, () => (after = disk.crash(prng(seed))));
      const done = disk.writeFileDurable(`${DIR}/celer.json`, block(0xbb, 6000)).then(() => true);
      for (let i = 0; i < 30 && after === null; i++) await new Promise<void>((r) => setImmediate(r));
      const resolved = after === null && (await done);
      const d: SimDisk = after ?? disk.crash(prng(seed));
      const bytes = d.peek(`${DIR}/celer.json`);
      const isOld = bytes !== null && bytes.length === 5000 && bytes.every((b) => b === 0xaa);
      const isNew = bytes !== null && bytes.length === 6000 && bytes.every((b) => b === 0xbb);
      assert.ok(isOld || isNew, `cut ${cut} seed ${seed}: celer.json is neither the old nor the new file`);
      if (resolved) assert.ok(isNew, `cut ${cut} seed ${seed}: resolved, so the new file is durable`);
      outcomes.add(isOld ? 'old' : 'new');
    }
  }
  assert.deepEqual([...outcomes].sort(), ['new', 'old']);
});

test('a crash during mkdirp leaves a prefix of the directories', async () => {
  for (let cut = 1; cut <= 6; cut++) {
    const disk = new SimDisk();
    let after: SimDisk | null = null;
    disk.atStep(cut, () => (after = disk.crash(prng(cut), { style: 'lose-all' })));
    const done = disk.mkdirp('/a/b/c');
    for (let i = 0; i < 30 && after === null; i++) await new Promise<void>((r) => setImmediate(r));
    if (after === null) {
      await done;
      assert.deepEqual(disk.crash(prng(0), { style: 'lose-all' }).names('/a/b'), ['c']);
      continue;
    }
    const d = after as SimDisk;
    if (d.names('/a/b').length > 0) assert.deepEqual(d.names('/a'), ['b']);
    if (d.names('/a').length > 0) assert.deepEqual(d.names('/'), ['a']);
  }
});

test('a full disk refuses growth with ENOSPC but overwrites inside a preallocated segment', async () => {
  const disk = new SimDisk({ capacityBytes: 96 * 1024 });
  await disk.mkdirp(DIR);
  const seg = await disk.openSegment(SEG, { create: true, sizeBytes: 64 * 1024 });
  assert.equal(disk.usedBytes, 64 * 1024);
  await rejectsWith(disk.openSegment(`${DIR}/0000000002.seg`, { create: true, sizeBytes: 64 * 1024 }), 'ENOSPC');
  await rejectsWith(disk.writeFileDurable(`${DIR}/big.idx`, block(1, 40 * 1024)), 'ENOSPC');
  // The failed create left an empty file, as an interrupted zero fill would.
  assert.equal(disk.peek(`${DIR}/0000000002.seg`)?.length, 0);
  await disk.writeFileDurable(`${DIR}/small.idx`, block(1, 100));
  disk.capacityBytes = disk.usedBytes; // completely full now
  await seg.writeAndSync([{ offset: 60 * 1024, buf: block(9) }]);
  assert.deepEqual(disk.peek(SEG)!.subarray(60 * 1024), block(9));
  await rejectsWith(disk.writeFileDurable(`${DIR}/small2.idx`, block(1, 100)), 'ENOSPC');
  // Removing a file frees its blocks.
  await disk.remove(`${DIR}/small.idx`);
  await disk.writeFileDurable(`${DIR}/small2.idx`, block(1, 100));
  // Extending an existing shorter segment needs space for the growth only.
  disk.capacityBytes = Infinity;
  await disk.remove(`${DIR}/0000000002.seg`);
  disk.capacityBytes = disk.usedBytes + 8192;
  const s2 = await disk.openSegment(`${DIR}/0000000003.seg`, { create: true, sizeBytes: 8192 });
  assert.equal(s2.sizeBytes, 8192);
});

test('EIO: failed reads, writes and fsyncs reject with code EIO; data before a failed fsync is not trusted', async () => {
  const { disk, seg } = await diskWithSegment();
  const failOnce = (kind: SimOp['kind']) => {
    disk.onOp = (op) => {
      if (op.kind !== kind) return undefined;
      disk.onOp = null;
      return 'EIO';
    };
  };
  failOnce('read');
  await rejectsWith(seg.read(0, 100), 'EIO');
  assert.equal((await seg.read(0, 100)).length, 100);
  failOnce('write');
  await rejectsWith(seg.writeAndSync([{ offset: 8192, buf: block(0x21) }]), 'EIO');
  assert.ok(disk.peek(SEG)!.subarray(8192, 12288).every((b) => b === 0), 'a failed write step wrote nothing');
  failOnce('readFile');
  await rejectsWith(disk.readFile(SEG), 'EIO');

  let lost = 0;
  for (let seed = 0; seed < 20; seed++) {
    const d = new SimDisk({ seed });
    await d.mkdirp(DIR);
    const s = await d.openSegment(SEG, { create: true, sizeBytes: 64 * 1024 });
    d.onOp = (op) => (op.kind === 'fsync' ? 'EIO' : undefined);
    await rejectsWith(s.writeAndSync([{ offset: 8192, buf: block(0x31, 8192) }]), 'EIO');
    d.onOp = null;
    // Reads still return the new bytes (the page cache), and a later good fsync does not make
    // them durable again ("fsyncgate").
    assert.ok(d.peek(SEG)!.subarray(8192, 16384).every((b) => b === 0x31));
    await s.writeAndSync([{ offset: 32768, buf: block(0x32) }]);
    const after = d.crash(prng(seed), { style: 'lose-all' });
    const img = after.peek(SEG)!;
    assert.ok(img.subarray(32768, 36864).every((b) => b === 0x32));
    if (img.subarray(8192, 16384).some((b) => b !== 0x31)) lost++;
  }
  assert.ok(lost > 0, 'a failed fsync sometimes loses data that reads still return');
});

test('writes must be 4096-aligned and inside the segment', async () => {
  const { seg } = await diskWithSegment();
  await assert.rejects(seg.writeAndSync([{ offset: 100, buf: block(1) }]), RangeError);
  await assert.rejects(seg.writeAndSync([{ offset: 0, buf: block(1, 100) }]), RangeError);
  await assert.rejects(seg.writeAndSync([{ offset: 64 * 1024, buf: block(1) }]), RangeError);
  assert.deepEqual(await seg.read(8190, 4), new Uint8Array([0x11, 0x11, 0, 0]));
  assert.equal((await seg.read(64 * 1024 - 2, 10)).length, 2, 'short at the end of the file');
  await seg.close();
  await assert.rejects(seg.read(0, 1), /closed/);
});

test('openSegment without create refuses a missing file; list and readFile of missing things are empty', async () => {
  const disk = new SimDisk();
  await rejectsWith(disk.openSegment(SEG, { create: false, sizeBytes: 0 }), 'ENOENT');
  await rejectsWith(disk.openSegment(SEG, { create: true, sizeBytes: 4096 }), 'ENOENT'); // no directory
  assert.deepEqual(await disk.list(DIR), []);
  await disk.mkdirp(DIR);
  assert.equal(await disk.readFile(`${DIR}/celer.json`), null);
  await rejectsWith(disk.readRange(`${DIR}/x.idx`, 0, 10), 'ENOENT');
  await disk.writeFileDurable(`${DIR}/x.idx`, new Uint8Array([1, 2, 3, 4, 5]));
  assert.deepEqual(await disk.readRange(`${DIR}/x.idx`, 3, 10), new Uint8Array([4, 5]));
  assert.deepEqual((await disk.list(DIR)).sort(), ['x.idx']);
});

test('lock is exclusive within a disk until released, and a crash releases it', async () => {
  const disk = new SimDisk();
  await disk.mkdirp('/data');
  const l = await disk.lock('/data/celer.lock');
  await assert.rejects(disk.lock('/data/celer.lock'), DataDirLockedError);
  await l.release();
  const again = await disk.lock('/data/celer.lock');
  const after = disk.crash(prng(3));
  void again;
  await after.mkdirp('/data');
  await after.lock('/data/celer.lock');
});

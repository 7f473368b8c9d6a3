import { test, type TestContext } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, readdirSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { Worker } from 'node:worker_threads';
import { IO_ALIGN_BYTES, openFileIo, PREALLOC_CHUNK_BYTES, type FileIo, type IoKind } from './io.ts';
import { IO_URING_SQ_ENTRIES } from './io-uring.ts';

// Tests write real files with O_DIRECT, so the scratch directory must be on a disk-backed
// filesystem; CELER_TEST_DISK_DIR overrides the OS temp dir where that is tmpfs.
const SCRATCH_ROOT = process.env['CELER_TEST_DISK_DIR'] ?? tmpdir();
// tmpfs on every Linux with glibc's POSIX shared memory; the probe must refuse it.
const TMPFS_ROOT = '/dev/shm';

const IO_TS_URL = new URL('./io.ts', import.meta.url).href;
const IO_NATIVE_TS_URL = new URL('./io-native.ts', import.meta.url).href;
const KINDS: readonly IoKind[] = ['io_uring', 'sync'];
const MiB = 1 << 20;

function scratch(t: TestContext, root = SCRATCH_ROOT): string {
  const dir = mkdtempSync(join(root, 'celer-io-test-'));
  t.after(() => rmSync(dir, { recursive: true, force: true }));
  return dir;
}

/** Opens the requested kind; skips only when the kernel itself refuses io_uring (seccomp). */
async function openKind(t: TestContext, kind: IoKind, dir: string, extra: { unsafeNoDirectIo?: boolean } = {}): Promise<FileIo | undefined> {
  const logs: string[] = [];
  const io = await openFileIo({ dir, forceSync: kind === 'sync', log: (m) => logs.push(m), ...extra });
  t.after(() => io.close());
  if (kind === 'io_uring' && io.kind !== 'io_uring') {
    if (logs.some((l) => /EPERM|ENOSYS/.test(l))) {
      t.skip(`the kernel refuses io_uring here: ${logs.join('; ')}`);
      return undefined;
    }
    assert.fail(`expected io_uring, got ${io.kind}; log: ${logs.join('; ')}`);
  }
  assert.equal(io.kind, kind);
  return io;
}

function patterned(io: FileIo, size: number, seed: number): Uint8Array {
  const buf = io.allocAligned(size);
  for (let i = 0; i < buf.length; i++) buf[i] = (i * 31 + seed * 7 + (i >> 12)) & 0xff;
  return buf;
}

for (const kind of KINDS) {
  test(`${kind}: data written and synced at several offsets reads back unchanged`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    assert.equal(io.direct, true);
    assert.deepEqual(readdirSync(dir).filter((n) => n.startsWith('.celer-io-probe')), [], 'the probe file is removed');
    const seg = await io.openSegment(join(dir, 'seg'), { create: true, sizeBytes: 2 * MiB });
    const offsets = [0, 3 * IO_ALIGN_BYTES, 64 * 1024, 2 * MiB - 2 * IO_ALIGN_BYTES];
    for (const [i, offset] of offsets.entries()) {
      await seg.writeAndSync([{ offset, buf: patterned(io, 2 * IO_ALIGN_BYTES, i + 1) }]);
    }
    for (const [i, offset] of offsets.entries()) {
      assert.deepEqual(await seg.read(offset, 2 * IO_ALIGN_BYTES), patterned(io, 2 * IO_ALIGN_BYTES, i + 1), `offset ${offset}`);
    }
    await seg.close();
  });

  test(`${kind}: one writeAndSync with several buffers writes all of them`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const seg = await io.openSegment(join(dir, 'seg'), { create: true, sizeBytes: MiB });
    const writes = [
      { offset: 0, buf: patterned(io, IO_ALIGN_BYTES, 1) },
      { offset: 5 * IO_ALIGN_BYTES, buf: patterned(io, 3 * IO_ALIGN_BYTES, 2) },
      { offset: 2 * IO_ALIGN_BYTES, buf: patterned(io, IO_ALIGN_BYTES, 3) },
    ];
    await seg.writeAndSync(writes);
    for (const w of writes) assert.deepEqual(await seg.read(w.offset, w.buf.length), w.buf);
    // Blocks between the writes are still the preallocated zeros.
    assert.deepEqual(await seg.read(IO_ALIGN_BYTES, IO_ALIGN_BYTES), new Uint8Array(IO_ALIGN_BYTES));
    await seg.close();
  });

  test(`${kind}: a writeAndSync with more buffers than the submission queue holds completes`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const count = IO_URING_SQ_ENTRIES + 44;
    const seg = await io.openSegment(join(dir, 'seg'), { create: true, sizeBytes: count * IO_ALIGN_BYTES });
    const writes = Array.from({ length: count }, (_, i) => ({ offset: i * IO_ALIGN_BYTES, buf: patterned(io, IO_ALIGN_BYTES, i) }));
    await seg.writeAndSync(writes);
    const all = await seg.read(0, count * IO_ALIGN_BYTES);
    for (const [i, w] of writes.entries()) {
      assert.deepEqual(all.subarray(i * IO_ALIGN_BYTES, (i + 1) * IO_ALIGN_BYTES), w.buf, `block ${i}`);
    }
    await seg.close();
  });

  test(`${kind}: reads of unaligned ranges return exactly the requested bytes`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const size = 4 * IO_ALIGN_BYTES;
    const seg = await io.openSegment(join(dir, 'seg'), { create: true, sizeBytes: size });
    const data = patterned(io, size, 9);
    await seg.writeAndSync([{ offset: 0, buf: data }]);
    const ranges: Array<[number, number]> = [
      [1, 10],
      [IO_ALIGN_BYTES - 1, 2],
      [5000, 7000],
      [100, size - 200],
      [IO_ALIGN_BYTES, 1],
    ];
    for (const [offset, length] of ranges) {
      assert.deepEqual(await seg.read(offset, length), data.subarray(offset, offset + length), `read(${offset}, ${length})`);
    }
    assert.equal((await seg.read(10, 0)).length, 0);
    // A range running past the end of the file returns what exists.
    assert.deepEqual(await seg.read(size - 10, 100), data.subarray(size - 10));
    assert.equal((await seg.read(size, 10)).length, 0);
    assert.equal((await seg.read(size + 5000, 10)).length, 0);
    await seg.close();
  });

  test(`${kind}: a new segment is preallocated with written zeros`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    // Not a multiple of the zero-fill chunk, so the last partial chunk is exercised too.
    const size = 3 * PREALLOC_CHUNK_BYTES + 2 * IO_ALIGN_BYTES;
    const path = join(dir, 'seg');
    const seg = await io.openSegment(path, { create: true, sizeBytes: size });
    assert.equal(seg.sizeBytes, size);
    const st = statSync(path);
    assert.equal(st.size, size);
    // Written, not sparse: every block is allocated.
    assert.ok(st.blocks * 512 >= size, `allocated ${st.blocks * 512} of ${size} bytes`);
    const all = await seg.read(0, size);
    assert.equal(all.length, size);
    assert.equal(all.findIndex((b) => b !== 0), -1);
    await seg.close();
  });

  test(`${kind}: synced data survives closing and reopening, and reopening never truncates`, async (t) => {
    const dir = scratch(t);
    const path = join(dir, 'seg');
    const size = 256 * 1024;
    {
      const io = await openKind(t, kind, dir);
      if (!io) return;
      const seg = await io.openSegment(path, { create: true, sizeBytes: size });
      await seg.writeAndSync([{ offset: 8 * IO_ALIGN_BYTES, buf: patterned(io, 2 * IO_ALIGN_BYTES, 5) }]);
      await seg.close();
      io.close();
    }
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const existing = await io.openSegment(path, { create: false, sizeBytes: size });
    assert.equal(existing.sizeBytes, size);
    assert.deepEqual(await existing.read(8 * IO_ALIGN_BYTES, 2 * IO_ALIGN_BYTES), patterned(io, 2 * IO_ALIGN_BYTES, 5));
    await existing.close();
    const again = await io.openSegment(path, { create: true, sizeBytes: size });
    assert.deepEqual(await again.read(8 * IO_ALIGN_BYTES, 2 * IO_ALIGN_BYTES), patterned(io, 2 * IO_ALIGN_BYTES, 5));
    await again.close();
    await assert.rejects(io.openSegment(join(dir, 'missing'), { create: false, sizeBytes: size }), { code: 'ENOENT' });
  });

  test(`${kind}: concurrent writeAndSync calls both complete`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const seg = await io.openSegment(join(dir, 'seg'), { create: true, sizeBytes: MiB });
    const a = patterned(io, 4 * IO_ALIGN_BYTES, 1);
    const b = patterned(io, 4 * IO_ALIGN_BYTES, 2);
    await Promise.all([
      seg.writeAndSync([{ offset: 0, buf: a }]),
      seg.writeAndSync([{ offset: 64 * IO_ALIGN_BYTES, buf: b }]),
    ]);
    assert.deepEqual(await seg.read(0, a.length), a);
    assert.deepEqual(await seg.read(64 * IO_ALIGN_BYTES, b.length), b);
    await seg.close();
  });

  test(`${kind}: closing a segment waits for its in-flight writes`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const path = join(dir, 'seg');
    const seg = await io.openSegment(path, { create: true, sizeBytes: MiB });
    const data = patterned(io, 16 * IO_ALIGN_BYTES, 3);
    const write = seg.writeAndSync([{ offset: 0, buf: data }]);
    await seg.close();
    await write;
    await assert.rejects(seg.read(0, 1), /closed/);
    const reopened = await io.openSegment(path, { create: false, sizeBytes: MiB });
    assert.deepEqual(await reopened.read(0, data.length), data);
    await reopened.close();
  });

  test(`${kind}: misaligned writes are refused, by the layer or with the kernel's EINVAL`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const seg = await io.openSegment(join(dir, 'seg'), { create: true, sizeBytes: MiB });
    await assert.rejects(seg.writeAndSync([{ offset: 100, buf: io.allocAligned(IO_ALIGN_BYTES) }]), RangeError);
    await assert.rejects(seg.writeAndSync([{ offset: 0, buf: io.allocAligned(IO_ALIGN_BYTES).subarray(0, 100) }]), RangeError);
    await assert.rejects(seg.writeAndSync([{ offset: MiB, buf: io.allocAligned(IO_ALIGN_BYTES) }]), RangeError);
    // Memory one byte off alignment is only detectable by the kernel: the error must carry errno.
    const misaligned = io.allocAligned(2 * IO_ALIGN_BYTES).subarray(1, 1 + IO_ALIGN_BYTES);
    await assert.rejects(seg.writeAndSync([{ offset: 0, buf: misaligned }]), (err: unknown) => {
      assert.ok(err instanceof Error);
      assert.equal((err as NodeJS.ErrnoException).code, 'EINVAL');
      assert.equal((err as NodeJS.ErrnoException).errno, -22);
      return true;
    });
    // The segment is still usable afterwards.
    const ok = patterned(io, IO_ALIGN_BYTES, 4);
    await seg.writeAndSync([{ offset: 0, buf: ok }]);
    assert.deepEqual(await seg.read(0, ok.length), ok);
    await seg.close();
  });

  test(`${kind}: a writeAndSync whose later write fails rejects with that write's errno`, async (t) => {
    const dir = scratch(t);
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const seg = await io.openSegment(join(dir, 'seg'), { create: true, sizeBytes: 2 * MiB });
    const misaligned = io.allocAligned(2 * IO_ALIGN_BYTES).subarray(1, 1 + IO_ALIGN_BYTES);
    const writes = [
      { offset: 0, buf: patterned(io, IO_ALIGN_BYTES, 1) },
      { offset: IO_ALIGN_BYTES, buf: misaligned },
      { offset: 2 * IO_ALIGN_BYTES, buf: patterned(io, IO_ALIGN_BYTES, 2) },
    ];
    // io_uring cancels the rest of the chain (the third write and the fsync) with ECANCELED; the
    // caller must see the cause, not the cancellation.
    await assert.rejects(seg.writeAndSync(writes), { code: 'EINVAL', errno: -22 });
    // Longer than the ring: the writes go unlinked and the fsync only after all of them succeeded.
    const count = IO_URING_SQ_ENTRIES + 44;
    const many = Array.from({ length: count }, (_, i) => ({ offset: i * IO_ALIGN_BYTES, buf: i === 100 ? misaligned : patterned(io, IO_ALIGN_BYTES, i) }));
    await assert.rejects(seg.writeAndSync(many), { code: 'EINVAL', errno: -22 });
    // And the segment still takes writes afterwards.
    const ok = patterned(io, IO_ALIGN_BYTES, 3);
    await seg.writeAndSync([{ offset: 0, buf: ok }]);
    assert.deepEqual(await seg.read(0, ok.length), ok);
    await seg.close();
  });

  test(`${kind}: unsafeNoDirectIo accepts a tmpfs directory with buffered I/O and a warning`, async (t) => {
    if (statSafe(TMPFS_ROOT) === undefined) return t.skip(`${TMPFS_ROOT} does not exist here`);
    const dir = scratch(t, TMPFS_ROOT);
    const logs: string[] = [];
    const io = await openFileIo({ dir, unsafeNoDirectIo: true, forceSync: kind === 'sync', log: (m) => logs.push(m) });
    t.after(() => io.close());
    assert.equal(io.direct, false);
    assert.equal(io.kind, kind === 'sync' || logs.some((l) => /io_uring unavailable/.test(l)) ? 'sync' : 'io_uring');
    assert.ok(logs.some((l) => /O_DIRECT/.test(l) && /--unsafe-no-direct-io/.test(l)), logs.join('\n'));
    const seg = await io.openSegment(join(dir, 'seg'), { create: true, sizeBytes: 64 * 1024 });
    const data = patterned(io, IO_ALIGN_BYTES, 6);
    await seg.writeAndSync([{ offset: IO_ALIGN_BYTES, buf: data }]);
    assert.deepEqual(await seg.read(IO_ALIGN_BYTES + 3, 100), data.subarray(3, 103));
    await seg.close();
  });
}

function statSafe(path: string): ReturnType<typeof statSync> | undefined {
  try {
    return statSync(path);
  } catch {
    return undefined;
  }
}

test('a data directory on tmpfs is refused with a message pointing at --unsafe-no-direct-io', async (t) => {
  if (statSafe(TMPFS_ROOT) === undefined) return t.skip(`${TMPFS_ROOT} does not exist here`);
  const dir = scratch(t, TMPFS_ROOT);
  await assert.rejects(openFileIo({ dir, log: () => {} }), (err: unknown) => {
    assert.ok(err instanceof Error);
    assert.match(err.message, /O_DIRECT/);
    assert.match(err.message, /tmpfs/);
    assert.match(err.message, /--unsafe-no-direct-io/);
    return true;
  });
  assert.deepEqual(readdirSync(dir), [], 'the probe file is removed after a refusal');
});

test('CELER_IO=sync selects the synchronous implementation when forceSync is not given', async (t) => {
  const dir = scratch(t);
  const before = process.env['CELER_IO'];
  process.env['CELER_IO'] = 'sync';
  t.after(() => {
    if (before === undefined) delete process.env['CELER_IO'];
    else process.env['CELER_IO'] = before;
  });
  const io = await openFileIo({ dir, log: () => {} });
  t.after(() => io.close());
  assert.equal(io.kind, 'sync');
});

test('an io_uring writeAndSync leaves the event loop free, unlike the sync fallback', async (t) => {
  const dir = scratch(t);
  for (const kind of KINDS) {
    const io = await openKind(t, kind, dir);
    if (!io) return;
    const seg = await io.openSegment(join(dir, `seg-${kind}`), { create: true, sizeBytes: MiB });
    const writes = Array.from({ length: 64 }, (_, i) => ({ offset: i * IO_ALIGN_BYTES, buf: patterned(io, IO_ALIGN_BYTES, i) }));
    let immediateRan = false;
    const pending = seg.writeAndSync(writes);
    setImmediate(() => {
      immediateRan = true;
    });
    await pending;
    // io_uring completes on a later loop turn (after the check phase that runs the immediate);
    // the sync fallback has finished before writeAndSync even returns.
    assert.equal(immediateRan, kind === 'io_uring', kind);
    await seg.close();
  }
});

test('io_uring: a read issued while a writeAndSync is in flight completes before that fdatasync', async (t) => {
  const dir = scratch(t);
  const io = await openKind(t, 'io_uring', dir);
  if (!io) return;
  // 32 MiB per flush, so the flush takes many device requests however fast the disk: a read that
  // had to wait for it (the old IOSQE_IO_DRAIN) could never settle first. As 4 writes (linked to
  // the fsync) and as 32 (more than a chain takes: the fsync follows once all of them completed).
  const bigBytes = 32 * MiB;
  const big = await io.openSegment(join(dir, 'big'), { create: true, sizeBytes: bigBytes });
  const small = await io.openSegment(join(dir, 'small'), { create: true, sizeBytes: 64 * 1024 });
  const expected = patterned(io, IO_ALIGN_BYTES, 7);
  await small.writeAndSync([{ offset: 0, buf: expected }]);
  for (const chunkBytes of [8 * MiB, MiB]) {
    const chunk = patterned(io, chunkBytes, 8);
    const writes = Array.from({ length: bigBytes / chunkBytes }, (_, i) => ({ offset: i * chunkBytes, buf: chunk }));
    // Completion order, not time: both promises settle from the same ring, in completion order.
    // Behind a drain the read could never settle first; without one it nearly always does, but a
    // loaded machine (CI runs two suites at once) can delay one submission: one round of five
    // with the read first is the property, not every round.
    const orders: string[] = [];
    for (let round = 0; round < 5; round++) {
      const order: string[] = [];
      const flushed = big.writeAndSync(writes).then(() => order.push('fsync'));
      const read = small.read(0, IO_ALIGN_BYTES).then((got) => {
        order.push('read');
        return got;
      });
      const [, got] = await Promise.all([flushed, read]);
      assert.deepEqual(got, expected);
      orders.push(order.join(' then '));
    }
    assert.ok(orders.includes('read then fsync'), `${writes.length} writes: the read never settled before the flush (${orders.join('; ')})`);
    assert.deepEqual(await big.read(bigBytes - IO_ALIGN_BYTES, IO_ALIGN_BYTES), chunk.subarray(chunk.length - IO_ALIGN_BYTES));
  }
  await big.close();
  await small.close();
});

test('io_uring: a short write cancels the rest of its writeAndSync and rejects with EIO', async (t) => {
  const dir = scratch(t);
  const path = join(dir, 'seg');
  {
    const io = await openKind(t, 'io_uring', dir);
    if (!io) return;
    await (await io.openSegment(path, { create: true, sizeBytes: 64 * 1024 })).close();
  }
  // A child whose file-size limit (ulimit -f, in KiB) is 8 KiB: the kernel cuts a write that
  // crosses it short. The first write (8 KiB at 4 KiB) writes 4 KiB; the second (block 0, below
  // the limit) must then never run, nor the fsync. SIGXFSZ ignored, so nothing kills the child.
  const script = `
    const io = await import(${JSON.stringify(IO_TS_URL)});
    const fileIo = await io.openFileIo({ dir: ${JSON.stringify(dir)}, forceSync: false, log: () => {} });
    const seg = await fileIo.openSegment(${JSON.stringify(path)}, { create: false, sizeBytes: 65536 });
    const a = fileIo.allocAligned(8192).fill(1);
    const b = fileIo.allocAligned(4096).fill(2);
    const out = { kind: fileIo.kind };
    try {
      await seg.writeAndSync([{ offset: 4096, buf: a }, { offset: 0, buf: b }]);
      out.resolved = true;
    } catch (err) {
      Object.assign(out, { code: err.code, errno: err.errno, syscall: err.syscall, message: err.message });
    }
    console.log(JSON.stringify(out));
  `;
  const { stdout } = await promisify(execFile)('bash', ['-c', 'trap "" XFSZ; ulimit -f 8; exec "$@"', 'bash', process.execPath, '--input-type=module', '-e', script]);
  const out = JSON.parse(stdout) as Record<string, unknown>;
  if (out['kind'] !== 'io_uring') return t.skip(`the child fell back to ${String(out['kind'])}`);
  assert.deepEqual(out, {
    kind: 'io_uring',
    code: 'EIO',
    errno: -5,
    syscall: 'io_uring write',
    message: 'EIO: i/o error, io_uring write (short write)',
  });
  const io = await openKind(t, 'io_uring', dir);
  if (!io) return;
  const seg = await io.openSegment(path, { create: false, sizeBytes: 64 * 1024 });
  assert.deepEqual(await seg.read(0, IO_ALIGN_BYTES), new Uint8Array(IO_ALIGN_BYTES), 'the write after the short one never ran');
  await seg.close();
});

/** Runs `body` (CommonJS source) in a worker_thread with `io` bound to the io.ts module. */
function runWorker(body: string, workerData: unknown): Promise<{ messages: unknown[]; exitCode: number }> {
  const source = `
    const { parentPort, workerData } = require('node:worker_threads');
    import(${JSON.stringify(IO_TS_URL)}).then(async (io) => { ${body} }).catch((err) => {
      parentPort.postMessage({ error: String(err && err.stack || err) });
      process.exitCode = 1;
    });`;
  return new Promise((resolve, reject) => {
    const messages: unknown[] = [];
    const worker = new Worker(source, { eval: true, workerData });
    worker.on('message', (m) => messages.push(m));
    worker.on('error', reject);
    worker.on('exit', (exitCode) => resolve({ messages, exitCode }));
  });
}

test('io_uring works inside a worker_thread, on that thread’s own ring', async (t) => {
  const dir = scratch(t);
  // The main thread holds a ring too, so the worker's ring must be independent of it.
  const mainIo = await openKind(t, 'io_uring', dir);
  if (!mainIo) return;
  const { messages, exitCode } = await runWorker(
    `
      const fileIo = await io.openFileIo({ dir: workerData.dir, forceSync: false, log: (m) => parentPort.postMessage({ log: m }) });
      const seg = await fileIo.openSegment(workerData.dir + '/worker-seg', { create: true, sizeBytes: 1 << 20 });
      const buf = fileIo.allocAligned(8192);
      for (let i = 0; i < buf.length; i++) buf[i] = i & 0xff;
      await Promise.all([
        seg.writeAndSync([{ offset: 0, buf }]),
        seg.writeAndSync([{ offset: 65536, buf }]),
      ]);
      const back = await seg.read(65536 + 10, 100);
      parentPort.postMessage({ kind: fileIo.kind, back: Array.from(back) });
      await seg.close();
      fileIo.close();
    `,
    { dir },
  );
  assert.equal(exitCode, 0, JSON.stringify(messages));
  const result = messages.find((m): m is { kind: string; back: number[] } => typeof m === 'object' && m !== null && 'kind' in m);
  assert.ok(result, JSON.stringify(messages));
  assert.equal(result.kind, 'io_uring', JSON.stringify(messages));
  assert.deepEqual(result.back, Array.from({ length: 100 }, (_, i) => (i + 10) & 0xff));
  // The main thread's ring still works after the worker's was torn down.
  const seg = await mainIo.openSegment(join(dir, 'main-seg'), { create: true, sizeBytes: 64 * 1024 });
  await seg.writeAndSync([{ offset: 0, buf: patterned(mainIo, IO_ALIGN_BYTES, 1) }]);
  await seg.close();
});

test('workers that exit with io_uring writes and reads in flight terminate cleanly', async (t) => {
  const dir = scratch(t);
  // The read is submitted just before the worker exits, so it is usually still in the kernel when
  // the worker's environment is torn down; its buffer must outlive Node's cleanup of external
  // ArrayBuffers. Several workers, because the window depends on when the read completes.
  for (let i = 0; i < 20; i++) {
    const { messages, exitCode } = await runWorker(
      `
        const fileIo = await io.openFileIo({ dir: workerData.dir, forceSync: false, log: () => {} });
        const seg = await fileIo.openSegment(workerData.dir + '/seg' + workerData.i, { create: true, sizeBytes: 1 << 20 });
        const buf = fileIo.allocAligned(1 << 16);
        seg.writeAndSync([{ offset: 0, buf }, { offset: 1 << 16, buf }]);
        seg.read(0, 10000);
        parentPort.postMessage({ kind: fileIo.kind });
        process.exit(7);
      `,
      { dir, i },
    );
    assert.deepEqual(messages, [{ kind: 'io_uring' }]);
    assert.equal(exitCode, 7);
  }
});

test('an idle io_uring ring does not keep the process alive', { timeout: 60_000 }, async (t) => {
  const dir = scratch(t);
  // Opens a FileIo and a segment, writes, and never closes either: the child must still exit.
  const script = `
    const io = await import(${JSON.stringify(IO_TS_URL)});
    const fileIo = await io.openFileIo({ dir: ${JSON.stringify(dir)}, forceSync: false, log: () => {} });
    const seg = await fileIo.openSegment(${JSON.stringify(join(dir, 'seg'))}, { create: true, sizeBytes: 65536 });
    await seg.writeAndSync([{ offset: 0, buf: fileIo.allocAligned(4096) }]);
    console.log(fileIo.kind);
  `;
  const { stdout } = await promisify(execFile)(process.execPath, ['--input-type=module', '-e', script]);
  assert.equal(stdout.trim(), 'io_uring');
});

test('io_uring setup failures surface as Errors carrying errno, code and syscall', async () => {
  // A fresh worker has no ring yet, so ringAcquire really calls io_uring_queue_init, and an entry
  // count above the kernel's IORING_MAX_ENTRIES (32768) makes it fail with EINVAL.
  const source = `
    const { parentPort } = require('node:worker_threads');
    import(${JSON.stringify(IO_NATIVE_TS_URL)}).then(({ loadNativeIo }) => {
      const loaded = loadNativeIo();
      if (!loaded.ok) throw loaded.error;
      try { loaded.native.ringAcquire(1 << 20); parentPort.postMessage({ threw: false }); }
      catch (err) { parentPort.postMessage({ threw: true, message: err.message, code: err.code, errno: err.errno, syscall: err.syscall }); }
    });`;
  const message = await new Promise<unknown>((resolve, reject) => {
    const worker = new Worker(source, { eval: true });
    worker.once('message', resolve);
    worker.once('error', reject);
  });
  assert.deepEqual(message, {
    threw: true,
    message: 'EINVAL: invalid argument, io_uring_queue_init',
    code: 'EINVAL',
    errno: -22,
    syscall: 'io_uring_queue_init',
  });
});

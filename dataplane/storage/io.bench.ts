// Micro-benchmark of the disk I/O layer (not a test): durable 4 KiB writes per second on a
// preallocated segment, for each implementation, one write per fdatasync and 64 per fdatasync.
//
//   node dataplane/storage/io.bench.ts [--dir DIR] [--seconds N] [--file-mib N]
//
// DIR must be on the filesystem to measure (default: a fresh directory under the OS temp dir).
// "loop ticks/s" counts a 1 ms interval timer during the run: near 1000 means the event loop
// stayed free, 0 means every sync blocked it.
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { IO_ALIGN_BYTES, openFileIo, type IoKind } from './io.ts';

// Same per-case duration and batch size as the feasibility study (§3), so figures compare.
const DEFAULT_SECONDS = 3;
const GROUP_WRITES = 64;
// 256 MiB: larger than one run writes at the 1-per-fsync rate, small enough to preallocate fast;
// the batched cases wrap around it, still onto already-written blocks.
const DEFAULT_FILE_MIB = 256;
// The event-loop probe fires every millisecond (the smallest setInterval period).
const TICK_MS = 1;

const { values } = parseArgs({
  options: {
    dir: { type: 'string' },
    seconds: { type: 'string', default: String(DEFAULT_SECONDS) },
    'file-mib': { type: 'string', default: String(DEFAULT_FILE_MIB) },
  },
});
const seconds = Number(values.seconds);
const fileBytes = Number(values['file-mib']) * (1 << 20);
const ownDir = values.dir === undefined;
const dir = values.dir ?? mkdtempSync(join(tmpdir(), 'celer-io-bench-'));

interface Row {
  kind: IoKind;
  perSync: number;
  writesPerSec: number;
  syncsPerSec: number;
  ticksPerSec: number;
}

async function run(kind: IoKind, perSync: number): Promise<Row> {
  const io = await openFileIo({ dir, forceSync: kind === 'sync', log: (m) => console.error(m) });
  if (io.kind !== kind) throw new Error(`wanted ${kind}, got ${io.kind}`);
  const seg = await io.openSegment(join(dir, 'bench.seg'), { create: true, sizeBytes: fileBytes });
  const bufs = Array.from({ length: perSync }, (_, i) => io.allocAligned(IO_ALIGN_BYTES).fill(i & 0xff));
  let ticks = 0;
  const timer = setInterval(() => ticks++, TICK_MS);
  let writes = 0;
  let syncs = 0;
  let at = 0;
  const start = performance.now();
  const deadline = start + seconds * 1000;
  while (performance.now() < deadline) {
    if (at + perSync * IO_ALIGN_BYTES > fileBytes) at = 0;
    await seg.writeAndSync(bufs.map((buf, i) => ({ offset: at + i * IO_ALIGN_BYTES, buf })));
    at += perSync * IO_ALIGN_BYTES;
    writes += perSync;
    syncs++;
  }
  const elapsed = (performance.now() - start) / 1000;
  clearInterval(timer);
  await seg.close();
  io.close();
  return { kind, perSync, writesPerSec: writes / elapsed, syncsPerSec: syncs / elapsed, ticksPerSec: ticks / elapsed };
}

try {
  console.log(`dir ${dir}, ${values['file-mib']} MiB preallocated segment, ${seconds} s per case, 4 KiB writes`);
  // Preallocate once up front so no case pays for zero-filling.
  {
    const io = await openFileIo({ dir, forceSync: true, log: () => {} });
    await (await io.openSegment(join(dir, 'bench.seg'), { create: true, sizeBytes: fileBytes })).close();
    io.close();
  }
  const rows: Row[] = [];
  for (const perSync of [1, GROUP_WRITES]) {
    for (const kind of ['sync', 'io_uring'] as const) rows.push(await run(kind, perSync));
  }
  const fmt = (n: number): string => Math.round(n).toLocaleString('en-US');
  console.log('kind      writes/fsync  writes/s    fsyncs/s  loop ticks/s');
  for (const r of rows) {
    console.log(
      `${r.kind.padEnd(9)} ${String(r.perSync).padStart(12)}  ${fmt(r.writesPerSec).padStart(8)}  ${fmt(r.syncsPerSec).padStart(10)}  ${fmt(r.ticksPerSec).padStart(12)}`,
    );
  }
} finally {
  if (ownDir) rmSync(dir, { recursive: true, force: true });
}

// Startup time with sealed data next to an empty directory, same run:
//   node_modules/.bin/node hack/startup-bench.ts [--gib 2] [--dir /var/tmp/celer-startup]
// Fills DIR/full (one shard, 64 MiB segments) with about GIB GiB of records by driving the real
// engine in-process (large events, so filling takes seconds), then times `celer serve` from spawn
// to "ready" on DIR/full and on a fresh DIR/empty, three times each, and prints the medians.
// Startup checks the active segment and the footers of sealed ones; it does not re-read sealed
// records, so the two times should differ by little more than the sidecar summaries read.
import { spawn } from 'node:child_process';
import { mkdirSync, rmSync } from 'node:fs';
import { join } from 'node:path';
import { parseArgs } from 'node:util';
import { Op, encodeWriteRequest, Expect } from '../client/wire.ts';
import { initHashing } from '../dataplane/storage/checksum.ts';
import { systemClock } from '../dataplane/storage/disk.ts';
import { openFileIo } from '../dataplane/storage/io.ts';
import { openDataMeta, nodeIdBytes } from '../dataplane/storage/meta.ts';
import { RealDisk } from '../dataplane/storage/real-disk.ts';
import { Shard } from '../dataplane/shard/shard.ts';
import { shardDir } from '../dataplane/shard/worker.ts';

const { values } = parseArgs({ options: { gib: { type: 'string', default: '2' }, dir: { type: 'string', default: '/var/tmp/celer-startup' } } });
const bytesWanted = Number(values.gib) * 1024 ** 3;
const root = values.dir;
rmSync(root, { recursive: true, force: true });
const full = join(root, 'full');
const empty = join(root, 'empty');
mkdirSync(full, { recursive: true });

await initHashing();
const meta = openDataMeta(full, { numShards: 1, routing: 'id' }, { numShards: 1, routing: 'id' });
const io = await openFileIo({ dir: full, log: () => {} });
const shard = await Shard.open({
  disk: new RealDisk(io),
  clock: systemClock,
  nodeId: nodeIdBytes(meta.nodeId),
  dir: shardDir(full, 0),
  shard: 0,
  numShards: 1,
  routing: 2,
  segmentBytes: 64 * 1024 * 1024,
  memoryBudgetBytes: 64 * 1024 * 1024,
  log: (m) => console.error(m),
});
const data = new Uint8Array(256 * 1024).fill(7);
let written = 0;
let n = 0;
const t0 = performance.now();
while (written < bytesWanted) {
  const batch: Promise<unknown>[] = [];
  for (let i = 0; i < 16; i++, n++) {
    const body = encodeWriteRequest({ clientId: 1n, writes: [{ key: { org: 1n, type: 1n, id: BigInt(n) }, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, events: [{ type: 'Blob', data }] }] });
    batch.push(shard.handle(Op.Write, body));
    written += data.length;
  }
  await Promise.all(batch);
  if (n % 1024 === 0) process.stderr.write(`\rfilled ${(written / 1024 ** 3).toFixed(2)} GiB`);
}
await shard.close();
io.close();
console.error(`\rfilled ${(written / 1024 ** 3).toFixed(2)} GiB in ${((performance.now() - t0) / 1000).toFixed(1)} s (${n} writes)`);

function timeStart(dir: string): Promise<number> {
  return new Promise((resolve, reject) => {
    const t = performance.now();
    const p = spawn('bin/celer', ['serve', '--standalone', '--data-dir', dir, '--shards', '1', '--listen', '127.0.0.1:0', '--grpc', 'off'], { stdio: ['ignore', 'pipe', 'inherit'] });
    let out = '';
    p.stdout.on('data', (c: Buffer) => {
      out += c.toString();
      if (out.includes('ready')) {
        const ms = performance.now() - t;
        p.kill('SIGTERM');
        p.on('exit', () => resolve(ms));
      }
    });
    p.on('error', reject);
  });
}

const median = (a: number[]): number => [...a].sort((x, y) => x - y)[Math.floor(a.length / 2)]!;
const fullTimes: number[] = [];
const emptyTimes: number[] = [];
for (let i = 0; i < 3; i++) {
  rmSync(empty, { recursive: true, force: true });
  emptyTimes.push(await timeStart(empty));
  fullTimes.push(await timeStart(full));
}
console.log(`startup to ready, median of 3: empty directory ${median(emptyTimes).toFixed(0)} ms; ${(written / 1024 ** 3).toFixed(2)} GiB sealed ${median(fullTimes).toFixed(0)} ms (runs: empty ${emptyTimes.map((x) => x.toFixed(0)).join(', ')}; full ${fullTimes.map((x) => x.toFixed(0)).join(', ')})`);

// Durability and integrity against real processes: SIGKILL under load, torn tails, flipped bytes,
// cold reads with a small memory budget.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { open, readdir, readFile } from 'node:fs/promises';
import { join } from 'node:path';
import { connect, ShardUnavailableError, type CelerClient } from '@celer/client';
import { removeDir, runCeler, startCeler, tempDir } from './lib/celer-process.ts';

const te = new TextEncoder();

/** Concurrent writers, each on its own aggregate, for `ms`; returns the acked versions per aggregate. */
async function sustainedWrites(client: CelerClient, writers: number, org: number, stopAfterMs: number, onTick?: () => void): Promise<Map<number, number>> {
  const acked = new Map<number, number>();
  let stop = false;
  setTimeout(() => (stop = true), stopAfterMs);
  await Promise.all(
    Array.from({ length: writers }, async (_, w) => {
      const key = { org, type: 1, id: w };
      let v = 0;
      while (!stop) {
        try {
          const r = await client.append(key, [{ type: 'Tick', data: te.encode(`w${w}-v${v + 1}`) }], { expectedVersion: v });
          v = Number(r.toVersion);
          acked.set(w, v);
          onTick?.();
        } catch {
          return; // the server died: the write's outcome is unknown, stop this writer
        }
      }
    }),
  );
  return acked;
}

test('every acknowledged write survives SIGKILL under sustained concurrent writes, at several kill points', async () => {
  const dir = await tempDir('celer-e2e-kill-');
  try {
    const ackedAll = new Map<string, number>();
    const killAfterAcks = [50, 400, 1500, 3000];
    for (let round = 0; round < killAfterAcks.length; round++) {
      const node = await startCeler(dir, ['--shards', '2', '--segment-mb', '1']);
      const client = await connect(node.native, { clientId: 1, requestTimeoutMs: 5000 });
      let acks = 0;
      const target = killAfterAcks[round]!;
      let killed: Promise<unknown> | null = null;
      const acked = await sustainedWrites(client, 32, 100 + round, 60_000, () => {
        if (++acks === target) killed = node.kill('SIGKILL');
      });
      await killed;
      await client.close();
      assert.ok(acks >= target, `round ${round}: only ${acks} acks before the writers stopped`);
      for (const [w, v] of acked) ackedAll.set(`${100 + round}/${w}`, v);
      // Restart and check every acknowledged write of every round so far.
      const again = await startCeler(dir);
      const c = await connect(again.native, { clientId: 2 });
      try {
        for (const [k, v] of ackedAll) {
          const [org, id] = k.split('/').map(Number) as [number, number];
          const versions: bigint[] = [];
          for await (const b of c.readAll({ org, type: 1, id })) versions.push(...b.events.map((e) => e.version));
          assert.ok(versions.length >= v, `${k}: acked version ${v} but only ${versions.length} events after restart`);
          assert.deepEqual(versions, Array.from({ length: versions.length }, (_, i) => BigInt(i + 1)), `${k}: gap or duplicate`);
          // The node may have made a write durable whose ack never reached us; nothing beyond +1.
          assert.ok(versions.length <= v + 1, `${k}: ${versions.length} events, acked ${v}`);
        }
      } finally {
        await c.close();
        await again.stop();
      }
      const verify = await runCeler(['verify', '--data-dir', dir]);
      assert.equal(verify.code, 0, verify.stdout + verify.stderr);
    }
  } finally {
    await removeDir(dir);
  }
});

async function lastSegment(dir: string, shard: number): Promise<string> {
  const sdir = join(dir, `shard-${String(shard).padStart(3, '0')}`);
  const files = (await readdir(sdir)).filter((f) => f.endsWith('.seg')).sort();
  return join(sdir, files[files.length - 1]!);
}

/** Offset just past the last non-zero byte in the segment's data area. */
async function usedEnd(path: string): Promise<number> {
  const buf = await readFile(path);
  let end = buf.length;
  while (end > 4096 && buf[end - 1] === 0) end--;
  return end;
}

test('a torn tail recovers; a flipped byte in committed data is named by verify and the shard is not served', async () => {
  const dir = await tempDir('celer-e2e-torn-');
  try {
    const key = { org: 1, type: 1, id: 0 }; // shard 0 of 1
    let node = await startCeler(dir, ['--shards', '1']);
    let c = await connect(node.native, { clientId: 1 });
    for (let i = 0; i < 20; i++) await c.append(key, [{ type: 'E', data: te.encode(`event ${i}`) }]);
    await c.close();
    await node.stop();
    const seg = await lastSegment(dir, 0);
    // Torn tail: half a record of garbage after the last commit.
    const end = await usedEnd(seg);
    let fh = await open(seg, 'r+');
    await fh.write(Buffer.from('\x00\x00\x00\x00\x00\x00\x01\x00garbage-of-a-torn-write'), 0, 31, end);
    await fh.close();
    const v1 = await runCeler(['verify', '--data-dir', dir]);
    assert.equal(v1.code, 0, v1.stdout);
    assert.match(v1.stdout, /uncommitted tail/);
    node = await startCeler(dir);
    c = await connect(node.native, { clientId: 1 });
    assert.equal((await c.details(key)).version, 20n);
    await c.append(key, [{ type: 'E', data: te.encode('after recovery') }]);
    assert.equal((await c.details(key)).version, 21n);
    await c.close();
    await node.stop();
    // Flip one byte inside the first record.
    fh = await open(seg, 'r+');
    const b = Buffer.alloc(1);
    await fh.read(b, 0, 1, 4096 + 120);
    b[0]! ^= 0x01;
    await fh.write(b, 0, 1, 4096 + 120);
    await fh.close();
    const v2 = await runCeler(['verify', '--data-dir', dir]);
    assert.equal(v2.code, 1);
    assert.match(v2.stdout, /first bad record: .*offset 4096.*checksum mismatch/);
    node = await startCeler(dir);
    c = await connect(node.native, { clientId: 1 });
    try {
      const e = await c.details(key).catch((x: unknown) => x);
      assert.ok(e instanceof ShardUnavailableError, String(e));
      assert.match(e.message, /checksum mismatch/);
      const ready = await fetch(`http://${node.http}/readyz`);
      assert.equal(ready.status, 503);
    } finally {
      await c.close();
      await node.stop();
    }
  } finally {
    await removeDir(dir);
  }
});

test('cold reads: many more aggregates than the caches hold all read back, and memory stays bounded', async () => {
  const dir = await tempDir('celer-e2e-cold-');
  const budgetMb = 16;
  try {
    const node = await startCeler(dir, ['--shards', '2', '--memory-budget-mb', String(budgetMb)]);
    const c = await connect(node.native, { clientId: 3 });
    try {
      const aggregates = 20_000;
      const payload = (i: number) => te.encode(`aggregate ${i} ${'p'.repeat(4000)}`);
      // 20k aggregates × ~4.2 KB records ≈ 84 MB of records, ~5x the whole memory budget.
      for (let i = 0; i < aggregates; i += 500) {
        await Promise.all(Array.from({ length: 500 }, (_, j) => c.append({ org: 9, type: 9, id: i + j }, [{ type: 'Created', data: payload(i + j) }])));
      }
      const rssBefore = await rssBytes(node.proc.pid!);
      for (let i = 0; i < aggregates; i += 500) {
        const pages = await Promise.all(Array.from({ length: 500 }, (_, j) => c.read({ org: 9, type: 9, id: i + j })));
        pages.forEach((p, j) => {
          assert.equal(p.batches.length, 1);
          assert.deepEqual(p.batches[0]!.events[0]!.data, payload(i + j));
        });
      }
      const rssAfter = await rssBytes(node.proc.pid!);
      const metrics = await (await fetch(`http://${node.http}/metrics`)).text();
      const gauge = (name: string, cache: string): number => Number(new RegExp(`^${name}\\{cache="${cache}"\\} (\\S+)$`, 'm').exec(metrics)?.[1] ?? 'NaN');
      const misses = gauge('celer_cache_misses_total', 'aggregate_state');
      assert.ok(misses > 0, 'reads went down the cold path (state cache misses)');
      // The caches hold at most their share of the budget, whatever the number of aggregates...
      let cached = 0;
      for (const cache of ['aggregate_state', 'recent_records']) {
        const bytes = gauge('celer_cache_bytes', cache);
        const cap = gauge('celer_cache_capacity_bytes', cache);
        assert.ok(bytes <= cap, `${cache}: ${bytes} bytes cached, capacity ${cap}`);
        cached += cap;
      }
      assert.ok(cached <= budgetMb * 1024 * 1024, `cache capacities add up to ${cached} bytes, over the ${budgetMb} MiB budget`);
      // ...and the process stays within the runtime's fixed overhead (three V8 isolates, their
      // young generations and the GC's slack, ~600 MiB under this load) plus the budget, although
      // it wrote and read back ~5x the budget in records.
      assert.ok(rssAfter < (600 + budgetMb) * 1024 * 1024, `RSS is ${(rssAfter / 1048576).toFixed(0)} MiB (before reads ${(rssBefore / 1048576).toFixed(0)} MiB)`);
    } finally {
      await c.close();
      await node.stop();
    }
  } finally {
    await removeDir(dir);
  }
});

async function rssBytes(pid: number): Promise<number> {
  const status = await readFile(`/proc/${pid}/status`, 'utf8');
  return Number(/VmRSS:\s+(\d+) kB/.exec(status)![1]) * 1024;
}

// The power-loss checker has teeth: on a disk broken in a way that loses acknowledged writes, it
// finds a failing seed within a bounded number of seeds. Each broken disk is a SimDisk with one
// durability step removed (a ForwardingDisk over it that overrides that step), the way a real engine
// bug would remove it.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { AlignedWrite, Disk, SegmentFile } from '../../dataplane/storage/disk.ts';
import { ForwardingDisk } from '../lib/forwarding-disk.ts';
import { runPowerLoss } from './powerloss.ts';
import type { SimDisk, SimSegment } from './sim-disk.ts';

/** Seeds each breakage gets to show itself. Measured over seeds 1..100: acknowledging before the fsync fails 15 of them (first: seed 1), skipping the directory fsync 9 (first: seed 4; seeds 4, 15 and 92 lose the writes of a later segment, the others those of the first). */
const SEEDS_MAX = 60;

/** (a) Acknowledges before fdatasync returns: writeAndSync resolves after the write, the fsync follows later. */
class AckBeforeSync extends ForwardingDisk<SimDisk> {
  override async openSegment(path: string, opts: { create: boolean; sizeBytes: number }): Promise<SegmentFile> {
    const f: SimSegment = await this.inner.openSegment(path, opts);
    return {
      path: f.path,
      sizeBytes: f.sizeBytes,
      async writeAndSync(writes: readonly AlignedWrite[]): Promise<void> {
        await f.writeUnsynced(writes);
        void f.fsync().catch(() => {});
      },
      read: (offset, length) => f.read(offset, length),
      close: () => f.close(),
    };
  }
}

/** (b) Skips the directory fsync (on rotation: the rename of the spare into place is never synced). */
class NoDirSync extends ForwardingDisk<SimDisk> {
  override async syncDir(): Promise<void> {}
}

/** What the checker says when acknowledged writes are gone (lost records, or a log that ends before them). */
const LOST_ACKED = /acknowledged write \d+ .*is lost|before the acknowledged seq/;

async function firstFailingSeed(wrap: (d: SimDisk) => Disk): Promise<{ seed: number; failures: string[] } | null> {
  for (let seed = 1; seed <= SEEDS_MAX; seed++) {
    const r = await runPowerLoss({ seed, wrap, scenario: 'plain' });
    if (r.failures.length > 0) return { seed, failures: r.failures };
  }
  return null;
}

test('acknowledging before fdatasync returns loses acknowledged writes, and the checker says so', async (t) => {
  const found = await firstFailingSeed((d) => new AckBeforeSync(d));
  assert.ok(found !== null, `no failure in ${SEEDS_MAX} seeds`);
  t.diagnostic(`first failing seed ${found.seed}: ${found.failures[0]}`);
  assert.ok(found.failures.some((f) => LOST_ACKED.test(f)), found.failures.join('\n'));
});

test('skipping the directory fsync on rotation loses acknowledged writes, and the checker says so', async (t) => {
  const found = await firstFailingSeed((d) => new NoDirSync(d));
  assert.ok(found !== null, `no failure in ${SEEDS_MAX} seeds`);
  t.diagnostic(`first failing seed ${found.seed}: ${found.failures[0]}`);
  assert.ok(found.failures.some((f) => LOST_ACKED.test(f)), found.failures.join('\n'));
});

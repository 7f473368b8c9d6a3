// What a seed of the power-loss harness (powerloss.ts) chooses besides the workload: its
// scenario (the faults beside the power cut), the step the power goes at, and the rot of synced
// data after the cut.
import type { WireWriteOk } from '../../client/wire.ts';
import { decodeSegmentFooter, decodeSegmentHeader, SEGMENT_FOOTER_BYTES } from '../../dataplane/storage/segment.ts';
import { prng } from '../lib/prng.ts';
import type { SimDisk, SimOp } from './sim-disk.ts';
import { SHARD_DIR, type Issued } from './powerloss-common.ts';

/**
 * What can go wrong besides the power cut, chosen per seed: nothing; one fsync fails with EIO;
 * the disk fills up (no room for the next segment); one fsync of a segment fails with ENOSPC
 * (thin provisioning, a CoW filesystem, buffered mode: the bytes are in the file, only the flush
 * failed: the engine zeroes what the group left before it refuses it as not stored); reads fail
 * with EIO now and then (a bad sector: the request gets 9200, the shard goes on).
 */
export type Scenario = 'plain' | 'fsync-eio' | 'disk-full' | 'fsync-enospc' | 'read-eio' | 'commit-step';
export const SCENARIOS: readonly { s: Scenario; weight: number }[] = [
  { s: 'plain', weight: 8 },
  { s: 'fsync-eio', weight: 1 },
  { s: 'disk-full', weight: 1 },
  { s: 'fsync-enospc', weight: 1 },
  { s: 'read-eio', weight: 1 },
  { s: 'commit-step', weight: 2 },
];

/** The seed's scenario (one draw of `rng`, also when `forced` is given, so the rest of the run is the same). */
export function chooseScenario(rng: () => number, forced: Scenario | undefined): Scenario {
  let scenario = forced;
  if (scenario === undefined) {
    let w = rng() * SCENARIOS.reduce((n, x) => n + x.weight, 0);
    scenario = SCENARIOS.find((x) => (w -= x.weight) < 0)?.s ?? 'plain';
  } else rng();
  return scenario;
}

/** Step kinds of rotation and sidecar writing. */
export const NAME_STEPS: readonly SimOp['kind'][] = ['create', 'rename', 'syncDir', 'remove'];

/**
 * Where the power goes, from the steps of the run without a cut (`steps`; the shard's first open
 * ends at `openSteps`): any step, an fsync (mid group commit), a step of rotation or sidecar
 * writing (create, rename, directory sync), a step of the first open, or none (null: after the
 * workload, when quiet).
 */
export function chooseCrashStep(seed: number, steps: Map<number, SimOp['kind']>, openSteps: number): number | null {
  const rng = prng(seed ^ 0x0c1a5);
  const all = [...steps.keys()].filter((n) => n > openSteps);
  const opening = [...steps.keys()].filter((n) => n <= openSteps);
  const fsyncs = all.filter((n) => steps.get(n) === 'fsync');
  const names = all.filter((n) => NAME_STEPS.includes(steps.get(n)!));
  const where = rng();
  const from = where < 0.12 ? [] : where < 0.15 ? opening : where < 0.5 ? all : where < 0.8 ? fsyncs : names;
  return from.length === 0 ? null : from[Math.floor(rng() * from.length)]!;
}

/** Synced data damaged on purpose after the power cut (a bit rotting on the medium). */
export type Rot = { kind: 'log'; path: string; offset: number; seq: number; covered: boolean } | { kind: 'sidecar'; path: string; offset: number };

/**
 * In a few seeds, flips one bit of synced data: inside an acknowledged record of the log (found by
 * its unique event bytes), or anywhere in a sidecar index. A record in a sealed segment, below
 * its segment header's durable end or at or below its ack barrier must then be refused (9200),
 * never served; one in the unvouched tail after them is indistinguishable from a torn group
 * commit, and may be discarded with what follows it (segment.ts: acknowledged records newer than
 * the header are protected by their checksums only). A damaged sidecar is derived data: the shard
 * must serve exactly as before.
 */
export function rotImage(disk: SimDisk, issued: Issued[], rng: () => number): Rot | null {
  const r = rng();
  if (r >= 0.12) return null;
  const int = (n: number): number => Math.floor(rng() * n);
  if (r >= 0.07) {
    const idx = disk.names(SHARD_DIR).filter((n) => n.endsWith('.idx'));
    if (idx.length === 0) return null;
    const path = `${SHARD_DIR}/${idx[int(idx.length)]!}`;
    const size = disk.peek(path)!.length;
    if (size === 0) return null;
    const offset = int(size);
    disk.corrupt(path, offset, 1 << int(8));
    return { kind: 'sidecar', path, offset };
  }
  const acked = issued.filter((w) => w.answer !== null && 'ok' in w.answer && w.parts[0]!.events[0]!.data.length >= 24);
  if (acked.length === 0) return null;
  const w = acked[int(acked.length)]!;
  const marker = Buffer.from(w.parts[0]!.events[0]!.data.subarray(0, 24));
  for (const name of disk.names(SHARD_DIR).filter((n) => n.endsWith('.seg'))) {
    const path = `${SHARD_DIR}/${name}`;
    const bytes = disk.peek(path)!;
    const at = Buffer.from(bytes.buffer, bytes.byteOffset, bytes.length).indexOf(marker);
    if (at < 0) continue;
    const offset = at + 8 + int(16);
    disk.corrupt(path, offset, 1 << int(8));
    const seq = Number((w.answer as { ok: WireWriteOk }).ok.firstSeq);
    const h = decodeSegmentHeader(bytes.subarray(0, 4096));
    const f = decodeSegmentFooter(bytes.subarray(bytes.length - SEGMENT_FOOTER_BYTES));
    const covered = f.ok || (h.ok && (at < h.header.durableEnd || seq <= h.header.ackedSeq));
    return { kind: 'log', path, offset, seq, covered };
  }
  return null;
}

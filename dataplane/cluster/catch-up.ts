// S3 catch-up of one shard: apply the peer's fallback batches that extend the local log. Run at
// boot (a follower coming back), and by a node about to lead before it takes writes (it must hold
// everything the old leader acknowledged through S3).
//
// Choice among objects: only the peer's (a node never re-applies its own uploads); among those
// covering the next seq, the highest epoch wins (a deposed leader's late upload loses to the newer
// leader's). The shard checks the chain (applyReplicated): a batch that does not link is either
// stale (its epoch is not above the local records it would replace: dropped) or newer than the
// local speculative tail (that tail, from the first record the batch differs at and never at or
// below the ack barrier, is rewound and the batch applied; when the batch starts past the local
// end and so cannot say where the difference is, a newer batch overlapping the local log is tried
// first: catch-up.test.ts). A batch that lies wholly inside the
// local unacknowledged tail counts too: the tail may be an older leader's records at positions a
// newer leader acknowledged through S3 (sim seed 1043).
import { ReplicaRejectError } from '../shard/shard.ts';
import { equalBytes } from '../storage/checksum.ts';
import { recordHash } from '../storage/record.ts';
import { decodeFallback, FALLBACK_PREFIX, parseFallbackKey, type FallbackKey } from './fallback.ts';
import type { ObjectStore, StoredObject } from './object-store.ts';
import type { ClusterCounters, ShardPort } from './ports.ts';
import { firstSeqOf, lastSeqOf } from './replicator.ts';

/** Most objects applied or dropped in one catch-up (a bound on the loop). */
export const CATCH_UP_OBJECTS_MAX = 100_000;
/** Downloads in flight ahead of the one being applied (objects are applied one at a time, in order). */
export const CATCH_UP_PREFETCH = 8;

/**
 * The peer's fallback objects of every shard, from one listing of the fallback prefix: a
 * promotion waits for this, and one LIST (typically one page: the leader deletes what the
 * follower holds) costs the same for 1 shard or 64, where a LIST per shard, one after another,
 * cost ~50 ms each on Ceph RGW. Run it after the lease is won: anything the old leader
 * acknowledged through S3 was stored before its authority ended, so before the takeover.
 */
export async function listPeerFallback(store: ObjectStore, self: string): Promise<Map<number, FallbackKey[]>> {
  const byShard = new Map<number, FallbackKey[]>();
  for (const o of await store.list(FALLBACK_PREFIX)) {
    const k = parseFallbackKey(o.key);
    if (k === null || k.node === self) continue;
    let objs = byShard.get(k.shard);
    if (objs === undefined) byShard.set(k.shard, (objs = []));
    objs.push(k);
  }
  return byShard;
}

/** Applies `listed` (shard `s`'s objects from listPeerFallback) that extend the local log. */
export async function catchUpFromS3(s: ShardPort, listed: readonly FallbackKey[], store: ObjectStore, log: (m: string) => void, counters: ClusterCounters): Promise<number> {
  let objs = listed.filter((k) => k.shard === s.id);
  if (objs.length === 0) return 0;
  let applied = 0;
  // GETs of the objects most likely next (in seq order), started ahead and used when chosen.
  const fetched = new Map<string, Promise<StoredObject | null>>();
  const prefetch = (from: number): void => {
    const live = new Set(objs.filter((o) => o.to > from).map((o) => o.key));
    for (const k of fetched.keys()) if (!live.has(k)) fetched.delete(k);
    for (const o of objs) {
      if (fetched.size >= CATCH_UP_PREFETCH) break;
      if (o.to <= from || fetched.has(o.key)) continue;
      const p = store.get(o.key);
      p.catch(() => {}); // awaited (and its error seen) only if chosen
      fetched.set(o.key, p);
    }
  };
  objs.sort((a, b) => a.from - b.from || b.epoch - a.epoch);
  // A newer batch that starts past the local end and does not link says the local tail differs
  // from its writer's history, not where: a newer batch overlapping the local log is tried first
  // (it shows where), so acknowledged records between the barrier and that point stay.
  let preferred: FallbackKey | null = null;
  const probed = new Set<string>();
  for (let step = 0; step < CATCH_UP_OBJECTS_MAX && objs.length > 0; step++) {
    const tip = await s.tip();
    const at = tip.durableSeq;
    // At or below the ack barrier the local log is acknowledged history: nothing there is replaced.
    objs = objs.filter((o) => o.to > tip.barrierSeq);
    // Newest epoch first; within one, the lowest start (a difference is found where it begins).
    const covering = objs.filter((o) => o.from <= at + 1).sort((a, b) => b.epoch - a.epoch || a.from - b.from || b.to - a.to);
    const o: FallbackKey | undefined = preferred !== null && covering.includes(preferred) ? preferred : covering[0];
    preferred = null;
    if (o === undefined) break;
    const drop = (why: string): void => {
      log(`shard ${s.id}: S3 catch-up skips ${o.key}: ${why}`);
      objs = objs.filter((x) => x !== o);
    };
    prefetch(at);
    const got = await (fetched.get(o.key) ?? store.get(o.key));
    fetched.delete(o.key);
    if (got === null) {
      drop('it is gone');
      continue;
    }
    let records: Uint8Array[];
    try {
      records = decodeFallback(got.body, o);
    } catch (e) {
      drop((e as Error).message);
      continue;
    }
    try {
      await s.applyReplicated(records);
      applied++;
      objs = objs.filter((x) => x !== o);
    } catch (e) {
      if (!(e instanceof ReplicaRejectError)) throw e;
      await s.quiesce();
      const t = await s.tip();
      const mine = await s.recordAt(t.durableSeq);
      if (e.reason === 'diverged' && t.durableSeq > t.barrierSeq && mine !== null && o.epoch > mine.epoch) {
        // A newer leader wrote this batch where the local log differs: the local records from the
        // first difference on are not acknowledged (that leader would hold them), the ones before
        // it may be (and may be nowhere else): cut exactly there, never at or below the barrier.
        let cut = await cutBefore(s, records, t.durableSeq, t.barrierSeq);
        if (cut === 'unknown') {
          const probe: FallbackKey | undefined = objs
            .filter((x) => x !== o && x.from <= t.durableSeq && x.to > t.barrierSeq && x.epoch > mine.epoch && !probed.has(x.key))
            .sort((a, b) => b.epoch - a.epoch || a.from - b.from)[0];
          if (probe !== undefined) {
            probed.add(probe.key);
            preferred = probe;
            continue;
          }
          // Nothing in S3 shows where: from the barrier on (the old rule; acknowledged records
          // are on the writer of this batch).
          cut = t.barrierSeq;
        }
        if (cut !== null) {
          log(`shard ${s.id}: S3 batch ${o.key} (epoch ${o.epoch}) replaces the local unacknowledged tail after seq ${cut} (epoch ${mine.epoch})`);
          counters.rewoundRecords += t.durableSeq - cut;
          await s.truncateAfter(cut);
          continue;
        }
      }
      drop(`${e.reason}: ${e.message}`);
    }
  }
  const end = await s.tip();
  if (applied > 0) log(`shard ${s.id}: caught up from S3 to seq ${end.durableSeq} (${applied} batches)`);
  return applied;
}

/**
 * Where the local log must be cut for `records` (one batch) to apply: after the last local record
 * before the first one the batch differs at (a record boundary, never below `barrier`); the
 * 'unknown' when the batch only extends the log (it does not link: the difference lies before it,
 * the batch does not say where); null when the difference is at or below the barrier
 * (acknowledged history: not replaced).
 */
async function cutBefore(s: ShardPort, records: readonly Uint8Array[], at: number, barrier: number): Promise<number | null | 'unknown'> {
  let differsAt = at + 1;
  for (const r of records) {
    const first = firstSeqOf(r);
    const last = lastSeqOf(r);
    if (first > at) break;
    if (last > at) {
      differsAt = first; // it overlaps the local end: a different record there
      break;
    }
    const held = await s.recordAt(last);
    const length = new DataView(r.buffer, r.byteOffset, r.length).getUint32(4);
    if (held === null || !equalBytes(held.hash, recordHash(r, length))) {
      differsAt = first;
      break;
    }
  }
  if (differsAt > at) return 'unknown';
  if (differsAt <= barrier) return null;
  // The local record holding that seq may start earlier (other record boundaries): cut before it.
  const [holding] = await s.readDurable(differsAt, differsAt, 1);
  const start = holding === undefined ? differsAt : firstSeqOf(holding);
  return start - 1 < barrier ? null : start - 1;
}

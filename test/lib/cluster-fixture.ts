// Pieces the cluster unit tests share: an in-memory bucket with conditional writes (no faults:
// tests wrap it for those) and a ShardPort with an empty log that agrees to everything.
import { ZERO_HASH } from '../../dataplane/storage/checksum.ts';
import type { ETag, ListedObject, ObjectStore, PutResult, StoredObject } from '../../dataplane/cluster/object-store.ts';
import type { ShardPort, ShardTip } from '../../dataplane/cluster/ports.ts';

/** The bucket: conditional puts with fresh ETags, sorted listing, delete. */
export class MemoryStore implements ObjectStore {
  readonly objects = new Map<string, StoredObject>();
  private n = 0;
  get(key: string): Promise<StoredObject | null> {
    return Promise.resolve(this.objects.get(key) ?? null);
  }
  putIfAbsent(key: string, body: Uint8Array): Promise<PutResult> {
    if (this.objects.has(key)) return Promise.resolve({ ok: false, reason: 'exists' });
    const etag = `e${++this.n}`;
    this.objects.set(key, { body: body.slice(), etag });
    return Promise.resolve({ ok: true, etag });
  }
  putIfMatch(key: string, body: Uint8Array, etag: ETag): Promise<PutResult> {
    const cur = this.objects.get(key);
    if (cur === undefined || cur.etag !== etag) return Promise.resolve({ ok: false, reason: 'precondition' });
    const next = `e${++this.n}`;
    this.objects.set(key, { body: body.slice(), etag: next });
    return Promise.resolve({ ok: true, etag: next });
  }
  list(prefix: string): Promise<ListedObject[]> {
    return Promise.resolve([...this.objects.keys()].filter((k) => k.startsWith(prefix)).sort().map((k) => ({ key: k, size: this.objects.get(k)!.body.length })));
  }
  delete(key: string): Promise<void> {
    this.objects.delete(key);
    return Promise.resolve();
  }
}

/** A ShardPort with an empty log that agrees to everything (election and lease tests). */
export function stubShard(id: number): ShardPort {
  const tip: ShardTip = { placedSeq: 0, durableSeq: 0, committedSeq: 0, barrierSeq: 0, tipHash: ZERO_HASH };
  return {
    id,
    tip: () => Promise.resolve(tip),
    recordAt: (seq) => Promise.resolve(seq === 0 ? { hash: ZERO_HASH, epoch: 0 } : null),
    readDurable: () => Promise.resolve([]),
    applyReplicated: () => Promise.resolve(0),
    commitTo: () => Promise.resolve(0),
    becomeLeader: () => Promise.resolve(),
    becomeReplica: () => Promise.resolve(),
    quiesce: () => Promise.resolve(),
    truncateAfter: () => Promise.resolve(),
  };
}

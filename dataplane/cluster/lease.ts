// The S3 lease object: who leads, under which epoch. Changed only by conditional PUT — create
// with If-None-Match: *, replace with If-Match: <etag> — so two nodes racing for it cannot both
// win, and the epoch strictly increases on every change of leader (every acquisition bumps it;
// a renewal keeps it).
//
// The times in the object are informational (for people and `celer cluster status`): decisions
// use each node's own monotonic clock (timing.ts), never the other node's wall clock.
import type { ETag, ObjectStore, PutResult } from './object-store.ts';

export const LEASE_KEY = 'cluster/lease.json';

export interface LeaseRecord {
  /** Node id of the leader. */
  leader: string;
  epoch: number;
  /** The leader's client address and replication address. */
  client: string;
  replication: string;
  acquiredAtMs: number;
  renewedAtMs: number;
  ttlMs: number;
}

export interface ObservedLease {
  lease: LeaseRecord;
  etag: ETag;
}

export class LeaseFormatError extends Error {
  override name = 'LeaseFormatError';
}

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeLease(l: LeaseRecord): Uint8Array {
  return enc.encode(JSON.stringify(l, null, 2) + '\n');
}

export function decodeLease(body: Uint8Array): LeaseRecord {
  let o: Partial<LeaseRecord>;
  try {
    o = JSON.parse(dec.decode(body)) as Partial<LeaseRecord>;
  } catch (e) {
    throw new LeaseFormatError(`the lease object ${LEASE_KEY} is not JSON (${(e as Error).message})`);
  }
  if (typeof o.leader !== 'string' || !Number.isSafeInteger(o.epoch) || (o.epoch as number) < 1 || typeof o.client !== 'string' || typeof o.replication !== 'string') {
    throw new LeaseFormatError(`the lease object ${LEASE_KEY} lacks leader, epoch, client or replication`);
  }
  return {
    leader: o.leader,
    epoch: o.epoch as number,
    client: o.client,
    replication: o.replication,
    acquiredAtMs: Number(o.acquiredAtMs ?? 0),
    renewedAtMs: Number(o.renewedAtMs ?? 0),
    ttlMs: Number(o.ttlMs ?? 0),
  };
}

export class LeaseStore {
  private readonly store: ObjectStore;
  constructor(store: ObjectStore) {
    this.store = store;
  }
  async read(): Promise<ObservedLease | null> {
    const o = await this.store.get(LEASE_KEY);
    if (o === null) return null;
    return { lease: decodeLease(o.body), etag: o.etag };
  }
  create(l: LeaseRecord): Promise<PutResult> {
    return this.store.putIfAbsent(LEASE_KEY, encodeLease(l));
  }
  replace(l: LeaseRecord, etag: ETag): Promise<PutResult> {
    return this.store.putIfMatch(LEASE_KEY, encodeLease(l), etag);
  }
}

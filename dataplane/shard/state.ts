// Per-aggregate state a shard keeps in its LRU: the write-ahead view (the placed watermark:
// includes writes placed but not yet durable or committed; guards and exactly-once are checked
// against it) and the committed view (what reads and details see).

/** Where a committed batch lies on this node: segment, record offset, batch index in the record. */
export interface BatchLoc {
  segment: number;
  offset: number;
  index: number;
}

/** Most distinct writers' floors kept per aggregate; older durable ones are reloaded from the log. */
export const FLOORS_PER_AGGREGATE_MAX = 64;

export interface Floor {
  /** Highest clientSeq of this writer that landed on this aggregate. */
  seq: bigint;
  /** Position (seq) of the batch that carried it; in flight while above the committed seq. */
  atSeq: number;
}

export interface AggState {
  key: Uint8Array;
  /** Write-ahead version and the seq of the newest placed batch (0 = none). */
  version: number;
  lastSeq: number;
  /** Committed view: version, where its newest batch lies, its seq. */
  cVersion: number;
  cLoc: BatchLoc | null;
  cSeq: number;
  cClientId: bigint;
  cTimestampMs: number;
  /** Committed view: first readable version, and BATCH_DELETED | BATCH_RECREATABLE (reads, details). */
  minVersion: number;
  cFlags: number;
  /** Write-ahead view of the same (guards, deletes and trims check these). */
  pMinVersion: number;
  pFlags: number;
  /** Exactly-once floors per clientId; a missing entry means "not loaded", not "never wrote". */
  floors: Map<bigint, Floor>;
  /** Writes placed and not yet durable: the state must stay in memory until they are. */
  pending: number;
}

export function newState(key: Uint8Array): AggState {
  return {
    key,
    version: 0,
    lastSeq: 0,
    cVersion: 0,
    cLoc: null,
    cSeq: 0,
    cClientId: 0n,
    cTimestampMs: 0,
    minVersion: 1,
    cFlags: 0,
    pMinVersion: 1,
    pFlags: 0,
    floors: new Map(),
    pending: 0,
  };
}

/** Records a floor, dropping the oldest durable ones beyond the bound. */
export function setFloor(s: AggState, clientId: bigint, f: Floor, committedSeq: number): void {
  s.floors.delete(clientId);
  s.floors.set(clientId, f);
  if (s.floors.size <= FLOORS_PER_AGGREGATE_MAX) return;
  for (const [id, fl] of s.floors) {
    if (s.floors.size <= FLOORS_PER_AGGREGATE_MAX) break;
    if (fl.atSeq <= committedSeq && id !== clientId) s.floors.delete(id);
  }
}

/** LRU map key of an aggregate: its 48 key bytes as a latin1 string (cheap to build and hash). */
export function keyString(key: Uint8Array): string {
  return Buffer.from(key.buffer, key.byteOffset, 48).toString('latin1');
}

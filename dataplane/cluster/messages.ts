// Messages between the two nodes of a cluster, and their frames on the replication link.
//
// Every message carries the sender's epoch; a receiver that knows a higher epoch answers
// `stale` and acts on nothing else in it (fencing). Channels (ports.ts): heartbeats on
// `control`, replicated records on `data`, so a heartbeat never waits behind a large append.
//
// Frame: u32 frame length (after this field) | u32 JSON length | JSON header | records, each
// self-delimiting (a record's length is at its bytes 4..8, storage/record.ts). Records travel as
// the exact bytes the leader wrote, so both nodes hold the same chain hashes.

export interface Heartbeat {
  t: 'hb';
  epoch: number;
  from: string;
  /** The leader's client address (what followers name in 2011 answers). */
  client: string;
  n: number;
  wallMs: number;
  /** Per shard: the leader's committed seq (the follower makes records visible up to it). */
  committed: number[];
  /**
   * The ETag of the lease object as the leader knew it when it sent this (absent from older
   * versions): that object was written before this heartbeat left, so a follower that finds it
   * still current counts the TTL from this heartbeat, not from its own first read of it.
   */
  leaseEtag?: string;
}
export interface HeartbeatAck {
  t: 'hbAck';
  epoch: number;
  from: string;
  /** The follower's client address. */
  client: string;
  n: number;
  wallMs: number;
  /** False when the follower refuses the heartbeat (its clock is too far off). */
  ok: boolean;
  reason?: string;
}
/** The leader has written the lease over to the receiver (epoch) and stepped down. */
export interface Handover {
  t: 'handover';
  epoch: number;
  from: string;
}
export interface Probe {
  t: 'probe';
  epoch: number;
  shard: number;
  session: number;
}
export interface ProbeState {
  t: 'probeState';
  epoch: number;
  shard: number;
  session: number;
  placed: number;
  barrier: number;
}
export interface Append {
  t: 'append';
  epoch: number;
  shard: number;
  session: number;
  /** First seq of the first record, last seq of the last record. */
  first: number;
  last: number;
  committed: number;
  /** The leader's durable seq when it sent this (a follower holding more has a stale tail). */
  tip: number;
  records: Uint8Array[];
}
export interface AppendOk {
  t: 'appendOk';
  epoch: number;
  shard: number;
  session: number;
  /** The follower holds, durably, the leader's records up to here. */
  ackSeq: number;
}
export interface AppendReject {
  t: 'appendReject';
  epoch: number;
  shard: number;
  session: number;
  reason: 'gap' | 'diverged' | 'invalid' | 'busy' | 'fatal';
  /** The follower's placed seq after it handled the refusal (the leader resends from here). */
  placed: number;
  message: string;
}
export interface CommitNotify {
  t: 'commit';
  epoch: number;
  shard: number;
  committed: number;
}
/** The receiver knows a higher epoch than the sender's message carried. */
export interface Stale {
  t: 'stale';
  epoch: number;
  from: string;
}

export type ClusterMessage = Heartbeat | HeartbeatAck | Handover | Probe | ProbeState | Append | AppendOk | AppendReject | CommitNotify | Stale;

/** Largest frame a node accepts (a group commit is at most 64 MiB; the leader splits appends below this). */
export const FRAME_BYTES_MAX = 80 * 1024 * 1024;
/** Largest JSON header. */
const HEADER_BYTES_MAX = 64 * 1024;

const enc = new TextEncoder();
const dec = new TextDecoder();

export function encodeFrame(m: ClusterMessage): Uint8Array {
  const records = m.t === 'append' ? m.records : [];
  const header = enc.encode(JSON.stringify(m.t === 'append' ? { ...m, records: records.length } : m));
  let blob = 0;
  for (const r of records) blob += r.length;
  const out = new Uint8Array(8 + header.length + blob);
  const v = new DataView(out.buffer);
  v.setUint32(0, out.length - 4);
  v.setUint32(4, header.length);
  out.set(header, 8);
  let at = 8 + header.length;
  for (const r of records) {
    out.set(r, at);
    at += r.length;
  }
  return out;
}

export class FrameError extends Error {
  override name = 'FrameError';
}

/** Decodes one frame body (the bytes after the u32 frame length). */
export function decodeFrame(body: Uint8Array): ClusterMessage {
  if (body.length < 4) throw new FrameError('cluster frame shorter than its header length');
  const v = new DataView(body.buffer, body.byteOffset, body.length);
  const hl = v.getUint32(0);
  if (hl > HEADER_BYTES_MAX || 4 + hl > body.length) throw new FrameError(`cluster frame header of ${hl} bytes does not fit`);
  let m: ClusterMessage & { records?: unknown };
  try {
    m = JSON.parse(dec.decode(body.subarray(4, 4 + hl))) as ClusterMessage & { records?: unknown };
  } catch (e) {
    throw new FrameError(`cluster frame header is not JSON: ${(e as Error).message}`);
  }
  if (typeof m !== 'object' || m === null || typeof m.t !== 'string' || typeof m.epoch !== 'number') throw new FrameError('cluster frame header lacks its type or epoch');
  if (m.t !== 'append') return m;
  const count = m.records;
  if (typeof count !== 'number' || !Number.isSafeInteger(count) || count < 0) throw new FrameError('append frame with a bad record count');
  const records: Uint8Array[] = [];
  let at = 4 + hl;
  for (let i = 0; i < count; i++) {
    if (at + 8 > body.length) throw new FrameError(`append frame ends inside record ${i}`);
    const len = v.getUint32(at + 4);
    if (len < 8 || at + len > body.length) throw new FrameError(`append frame: record ${i} of ${len} bytes runs past the frame`);
    records.push(body.subarray(at, at + len));
    at += len;
  }
  if (at !== body.length) throw new FrameError('append frame has bytes after its records');
  return { ...m, records };
}

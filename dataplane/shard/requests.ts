// Decoding of requests inside a shard worker. The main thread has already validated every byte
// (client/wire.ts decoders), so these only slice: keys stay as their 48 raw bytes.
import { Limits, Reader } from '../../client/wire.ts';
import { Expect, type ExpectMode } from '../../client/wire.ts';
import { skipEvent } from '../../client/wire.ts';

export interface TrustedWrite {
  clientId: bigint;
  writes: {
    key: Uint8Array;
    expectMode: ExpectMode;
    expectVersion: bigint;
    clientSeq: bigint;
    eventCount: number;
    events: Uint8Array;
    /** A delete or a trim (no events) instead of a write. */
    control?: ControlOp;
  }[];
}

export interface ControlOp {
  op: 'delete' | 'trim';
  allowRecreate: boolean;
  /** trim: the first version to keep. */
  keepFrom: number;
}

const NO_EVENTS = new Uint8Array(0);

/** A delete (validated by decodeDeleteRequest) as a one-aggregate write without events. */
export function decodeDeleteTrusted(body: Uint8Array): TrustedWrite {
  const r = new Reader(body);
  const clientId = r.u128('clientId');
  const key = r.bytes(48, 'key');
  const expectMode = r.u8('mode') as ExpectMode;
  const expectVersion = r.u64('expected');
  const allowRecreate = (r.u8('flags') & 1) !== 0;
  return { clientId, writes: [{ key, expectMode, expectVersion, clientSeq: 0n, eventCount: 0, events: NO_EVENTS, control: { op: 'delete', allowRecreate, keepFrom: 0 } }] };
}

/** A trim (validated by decodeTrimRequest) as a one-aggregate write without events. */
export function decodeTrimTrusted(body: Uint8Array): TrustedWrite {
  const r = new Reader(body);
  const clientId = r.u128('clientId');
  const key = r.bytes(48, 'key');
  const keepFrom = r.u64('keepFromVersion');
  if (keepFrom > BigInt(Number.MAX_SAFE_INTEGER)) throw new RangeError('keepFromVersion is beyond any possible version');
  return { clientId, writes: [{ key, expectMode: Expect.Any, expectVersion: 0n, clientSeq: 0n, eventCount: 0, events: NO_EVENTS, control: { op: 'trim', allowRecreate: false, keepFrom: Number(keepFrom) } }] };
}

export function decodeWriteTrusted(body: Uint8Array): TrustedWrite {
  const r = new Reader(body);
  const clientId = r.u128('clientId');
  const n = r.u16('count');
  const writes: TrustedWrite['writes'] = [];
  for (let i = 0; i < n; i++) {
    const key = r.bytes(48, 'key');
    const expectMode = r.u8('mode') as ExpectMode;
    const expectVersion = r.u64('expected');
    const clientSeq = r.u64('clientSeq');
    const eventCount = r.u32('eventCount');
    const start = r.pos;
    for (let j = 0; j < eventCount; j++) skipEvent(r);
    writes.push({ key, expectMode, expectVersion, clientSeq, eventCount, events: body.subarray(start, r.pos) });
  }
  return { clientId, writes };
}

export interface TrustedRead {
  key: Uint8Array;
  from: bigint;
  to: bigint;
  maxBytes: number;
  eventTypes: string[];
}

export function decodeReadTrusted(body: Uint8Array): TrustedRead {
  const r = new Reader(body);
  const key = r.bytes(48, 'key');
  // 0 = from the aggregate's first readable version (after trims).
  const from = r.u64('from');
  const to = r.u64('to');
  let maxBytes = r.u32('maxBytes');
  if (maxBytes === 0) maxBytes = Limits.readPageBytesDefault;
  maxBytes = Math.min(maxBytes, Limits.readPageBytesMax);
  const n = r.u8('types');
  const eventTypes: string[] = [];
  for (let i = 0; i < n; i++) eventTypes.push(r.utf8(r.u8('len'), 'type'));
  return { key, from, to, maxBytes, eventTypes };
}

export function decodeKeyTrusted(body: Uint8Array): Uint8Array {
  return body.subarray(0, 48);
}

/** "org/type/id" in decimal, for messages. */
export function describeKey(key: Uint8Array): string {
  const r = new Reader(key, 0, 48);
  return `${r.u128('org')}/${r.u128('type')}/${r.u128('id')}`;
}

// The disk encoding of events inside a record's batch (record format 2). Defined here, apart from
// the client wire codec (client/wire.ts), so that a change to the wire protocol can never silently
// change what is on disk: the shard transcodes between the two (shard/events.ts), and
// event-codec.test.ts pins these bytes.
//
// One event (big-endian):
//   0   u8   flags: bit 0 metadata present, bit 1 schemaVersion present, bit 2 iv present
//   1   u8   type length T (1..255)
//   2   T    type, UTF-8
//   .   u32  data length D, then D bytes
//   [.  u32  metadata length M, then M bytes]     if bit 0
//   [.  u32  schema major, u32 schema minor]      if bit 1
//   [.  12B  AES-GCM iv]                          if bit 2
export const DISK_EV_METADATA = 1;
export const DISK_EV_SCHEMA = 2;
export const DISK_EV_IV = 4;
export const DISK_EV_KNOWN = DISK_EV_METADATA | DISK_EV_SCHEMA | DISK_EV_IV;
export const DISK_IV_BYTES = 12;

/** The parts of one event, as views. */
export interface DiskEventFields {
  type: Uint8Array;
  data: Uint8Array;
  metadata?: Uint8Array | undefined;
  schema?: { major: number; minor: number } | undefined;
  iv?: Uint8Array | undefined;
}

export function diskEventSize(e: DiskEventFields): number {
  let n = 2 + e.type.length + 4 + e.data.length;
  if (e.metadata !== undefined) n += 4 + e.metadata.length;
  if (e.schema !== undefined) n += 8;
  if (e.iv !== undefined) n += DISK_IV_BYTES;
  return n;
}

/** Writes one event at `dst[at..]`; returns the offset after it. */
export function writeDiskEvent(dst: Uint8Array, at: number, e: DiskEventFields): number {
  const v = new DataView(dst.buffer, dst.byteOffset, dst.byteLength);
  let flags = 0;
  if (e.metadata !== undefined) flags |= DISK_EV_METADATA;
  if (e.schema !== undefined) flags |= DISK_EV_SCHEMA;
  if (e.iv !== undefined) flags |= DISK_EV_IV;
  dst[at] = flags;
  dst[at + 1] = e.type.length;
  dst.set(e.type, at + 2);
  at += 2 + e.type.length;
  v.setUint32(at, e.data.length);
  dst.set(e.data, at + 4);
  at += 4 + e.data.length;
  if (e.metadata !== undefined) {
    v.setUint32(at, e.metadata.length);
    dst.set(e.metadata, at + 4);
    at += 4 + e.metadata.length;
  }
  if (e.schema !== undefined) {
    v.setUint32(at, e.schema.major);
    v.setUint32(at + 4, e.schema.minor);
    at += 8;
  }
  if (e.iv !== undefined) {
    if (e.iv.length !== DISK_IV_BYTES) throw new RangeError(`an iv is ${DISK_IV_BYTES} bytes; got ${e.iv.length}`);
    dst.set(e.iv, at);
    at += DISK_IV_BYTES;
  }
  return at;
}

/** Reads the event at `buf[at..]` (trusted: inside a record that passed its CRC); returns its fields and the offset after it. */
export function readDiskEvent(buf: Uint8Array, at: number): { fields: DiskEventFields; next: number } {
  const v = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  const flags = buf[at]!;
  if ((flags & ~DISK_EV_KNOWN) !== 0) throw new RangeError(`event at ${at} has unknown flags 0x${flags.toString(16)}`);
  const t = buf[at + 1]!;
  const type = buf.subarray(at + 2, at + 2 + t);
  at += 2 + t;
  const d = v.getUint32(at);
  const data = buf.subarray(at + 4, at + 4 + d);
  at += 4 + d;
  const fields: DiskEventFields = { type, data };
  if (flags & DISK_EV_METADATA) {
    const m = v.getUint32(at);
    fields.metadata = buf.subarray(at + 4, at + 4 + m);
    at += 4 + m;
  }
  if (flags & DISK_EV_SCHEMA) {
    fields.schema = { major: v.getUint32(at), minor: v.getUint32(at + 4) };
    at += 8;
  }
  if (flags & DISK_EV_IV) {
    fields.iv = buf.subarray(at, at + DISK_IV_BYTES);
    at += DISK_IV_BYTES;
  }
  if (at > buf.length) throw new RangeError('event runs past the end of its batch');
  return { fields, next: at };
}

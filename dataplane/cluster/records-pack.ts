// Records between threads: one transferred ArrayBuffer holding records back to back (each is
// self-delimiting: its length is at bytes 4..8), instead of a structured clone per record.

export function packRecords(records: readonly Uint8Array[]): ArrayBuffer {
  let n = 0;
  for (const r of records) n += r.length;
  const out = new Uint8Array(n);
  let at = 0;
  for (const r of records) {
    out.set(r, at);
    at += r.length;
  }
  return out.buffer;
}

export function unpackRecords(buf: ArrayBuffer): Uint8Array[] {
  const all = new Uint8Array(buf);
  const v = new DataView(buf);
  const out: Uint8Array[] = [];
  let at = 0;
  while (at + 8 <= all.length) {
    const len = v.getUint32(at + 4);
    if (len < 8 || at + len > all.length) throw new RangeError(`packed records: a record of ${len} bytes at ${at} runs past ${all.length}`);
    out.push(all.subarray(at, at + len));
    at += len;
  }
  if (at !== all.length) throw new RangeError(`packed records: ${all.length - at} stray bytes at the end`);
  return out;
}

/** First seq of an encoded record (header bytes 24..32). */
export function firstSeqOf(rec: Uint8Array): number {
  return Number(new DataView(rec.buffer, rec.byteOffset, rec.length).getBigUint64(24));
}

/** Last seq of an encoded record (first seq + batch count − 1; the count is at bytes 18..20). */
export function lastSeqOf(rec: Uint8Array): number {
  const v = new DataView(rec.buffer, rec.byteOffset, rec.length);
  return Number(v.getBigUint64(24)) + v.getUint16(18) - 1;
}

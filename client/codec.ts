// Byte-level primitives of the native protocol: a growable big-endian Writer, a bounds-checked
// Reader, and WireError (a malformed message; the server answers 9100 with its text).
import { U64_MAX, type NormalizedKey } from './key.ts';

/** A malformed message. The server answers 9100 with this message. */
export class WireError extends Error {
  override name = 'WireError';
}

export const te = new TextEncoder();
export const td = new TextDecoder('utf-8', { fatal: true });

// ---------------------------------------------------------------------------------------------
// Writer / Reader

export class Writer {
  buf: Uint8Array;
  view: DataView;
  pos = 0;
  /**
   * `buf`, when given, is written into instead of a fresh array: a hot path passes
   * Buffer.allocUnsafe(n), which slices a shared pool where `new Uint8Array(n)` allocates a
   * backing store (several times slower for small frames).
   */
  constructor(capacity = 256, buf: Uint8Array = new Uint8Array(capacity)) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
  }
  ensure(n: number): void {
    if (this.pos + n <= this.buf.length) return;
    // At least 64: doubling a zero capacity would never grow.
    let cap = Math.max(this.buf.length * 2, 64);
    while (cap < this.pos + n) cap *= 2;
    const next = new Uint8Array(cap);
    next.set(this.buf.subarray(0, this.pos));
    this.buf = next;
    this.view = new DataView(next.buffer);
  }
  u8(v: number): void {
    this.ensure(1);
    this.buf[this.pos++] = v;
  }
  u16(v: number): void {
    this.ensure(2);
    this.view.setUint16(this.pos, v);
    this.pos += 2;
  }
  u32(v: number): void {
    this.ensure(4);
    this.view.setUint32(this.pos, v);
    this.pos += 4;
  }
  u64(v: bigint): void {
    this.ensure(8);
    this.view.setBigUint64(this.pos, v);
    this.pos += 8;
  }
  /** A non-negative safe integer as u64. */
  u64n(v: number): void {
    this.ensure(8);
    this.view.setUint32(this.pos, Math.floor(v / 0x1_0000_0000));
    this.view.setUint32(this.pos + 4, v >>> 0);
    this.pos += 8;
  }
  u128(v: bigint): void {
    this.ensure(16);
    this.view.setBigUint64(this.pos, v >> 64n);
    this.view.setBigUint64(this.pos + 8, v & U64_MAX);
    this.pos += 16;
  }
  bytes(b: Uint8Array): void {
    this.ensure(b.length);
    this.buf.set(b, this.pos);
    this.pos += b.length;
  }
  key(k: NormalizedKey): void {
    this.u128(k.org);
    this.u128(k.type);
    this.u128(k.id);
  }
  /** Reserves a u32 to patch later; returns its offset. */
  reserveU32(): number {
    this.ensure(4);
    const at = this.pos;
    this.pos += 4;
    return at;
  }
  patchU32(at: number, v: number): void {
    this.view.setUint32(at, v);
  }
  finish(): Uint8Array {
    return this.buf.subarray(0, this.pos);
  }
}

export class Reader {
  readonly buf: Uint8Array;
  readonly view: DataView;
  pos: number;
  readonly end: number;
  constructor(buf: Uint8Array, start = 0, end = buf.length) {
    this.buf = buf;
    this.view = new DataView(buf.buffer, buf.byteOffset, buf.byteLength);
    this.pos = start;
    this.end = end;
  }
  need(n: number, what: string): void {
    if (this.pos + n > this.end) {
      throw new WireError(`truncated message: ${what} needs ${n} bytes at offset ${this.pos}, ${this.end - this.pos} left`);
    }
  }
  u8(what: string): number {
    this.need(1, what);
    return this.buf[this.pos++]!;
  }
  u16(what: string): number {
    this.need(2, what);
    const v = this.view.getUint16(this.pos);
    this.pos += 2;
    return v;
  }
  u32(what: string): number {
    this.need(4, what);
    const v = this.view.getUint32(this.pos);
    this.pos += 4;
    return v;
  }
  u64(what: string): bigint {
    this.need(8, what);
    const v = this.view.getBigUint64(this.pos);
    this.pos += 8;
    return v;
  }
  /** A u64 that must be a safe integer (lengths, timestamps). */
  u64n(what: string): number {
    this.need(8, what);
    const hi = this.view.getUint32(this.pos);
    const lo = this.view.getUint32(this.pos + 4);
    this.pos += 8;
    if (hi > 0x1f_ffff) throw new WireError(`${what} is too large`);
    return hi * 0x1_0000_0000 + lo;
  }
  u128(what: string): bigint {
    this.need(16, what);
    const hi = this.view.getBigUint64(this.pos);
    const lo = this.view.getBigUint64(this.pos + 8);
    this.pos += 16;
    return (hi << 64n) | lo;
  }
  bytes(n: number, what: string): Uint8Array {
    this.need(n, what);
    const b = this.buf.subarray(this.pos, this.pos + n);
    this.pos += n;
    return b;
  }
  key(what: string): NormalizedKey {
    return { org: this.u128(`${what}.org`), type: this.u128(`${what}.type`), id: this.u128(`${what}.id`) };
  }
  utf8(n: number, what: string): string {
    const b = this.bytes(n, what);
    try {
      return td.decode(b);
    } catch {
      throw new WireError(`${what} is not valid UTF-8`);
    }
  }
  done(what: string): void {
    if (this.pos !== this.end) throw new WireError(`${this.end - this.pos} unexpected trailing bytes after ${what}`);
  }
}

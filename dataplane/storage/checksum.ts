// CRC32C (Castagnoli) for records and headers, and BLAKE3 for the audit chain.
//
// CRC32C: records are usually 100–300 bytes; below 512 B an in-tree slicing-by-8 loop beats a
// native call (42 ns vs 92 ns at 64 B, node24-microbench §3); above it @node-rs/crc32 wins
// (4–6 GB/s, prebuilt, nothing to compile).
// BLAKE3: measured with dataplane/storage/hash.bench.ts: hash-wasm's reused hasher is the fastest
// for records up to ~2 KiB (1.0 µs at 64 B vs 1.2 µs for blake3-wasm 2.1.5 and 3.9 µs for the native
// @napi-rs/blake-hash, whose per-call cost dominates small inputs); from 4 KiB up the native one wins
// (6.4 µs vs 10.5 µs at 4 KiB, 12x at 1 MiB), so large records go there. blake3-wasm 3.x does not
// install at all (unpublished dependencies).
import { crc32c as nativeCrc32c } from '@node-rs/crc32';
import { createBLAKE3, type IHasher } from 'hash-wasm';
import { blake3 as nativeBlake3 } from '@napi-rs/blake-hash';

const TABLES: Int32Array[] = (() => {
  const t: Int32Array[] = [];
  const base = new Int32Array(256);
  for (let i = 0; i < 256; i++) {
    let c = i;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0x82f63b78 : c >>> 1;
    base[i] = c;
  }
  t.push(base);
  for (let s = 1; s < 8; s++) {
    const prev = t[s - 1]!;
    const cur = new Int32Array(256);
    for (let i = 0; i < 256; i++) cur[i] = (prev[i]! >>> 8) ^ base[prev[i]! & 0xff]!;
    t.push(cur);
  }
  return t;
})();
const [T0, T1, T2, T3, T4, T5, T6, T7] = TABLES as [Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array, Int32Array];

/** Below this many bytes the JS loop is faster than the native call. */
const NATIVE_CRC_MIN_BYTES = 512;

/** The portable loop (exported for tests that compare it with the native path). */
export function crc32cJs(buf: Uint8Array): number {
  let crc = -1;
  let i = 0;
  const n8 = buf.length - (buf.length % 8);
  for (; i < n8; i += 8) {
    const a = crc ^ (buf[i]! | (buf[i + 1]! << 8) | (buf[i + 2]! << 16) | (buf[i + 3]! << 24));
    crc =
      T7[a & 0xff]! ^ T6[(a >>> 8) & 0xff]! ^ T5[(a >>> 16) & 0xff]! ^ T4[a >>> 24]! ^
      T3[buf[i + 4]!]! ^ T2[buf[i + 5]!]! ^ T1[buf[i + 6]!]! ^ T0[buf[i + 7]!]!;
  }
  for (; i < buf.length; i++) crc = (crc >>> 8) ^ T0[(crc ^ buf[i]!) & 0xff]!;
  return (crc ^ -1) >>> 0;
}

/** CRC32C of `buf`, as an unsigned 32-bit number. */
export function crc32c(buf: Uint8Array): number {
  if (buf.length < NATIVE_CRC_MIN_BYTES) return crc32cJs(buf);
  return nativeCrc32c(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength)) >>> 0;
}

export const HASH_BYTES = 32;
export const ZERO_HASH = new Uint8Array(HASH_BYTES);

let hasher: IHasher | undefined;

/** Loads the BLAKE3 wasm module; call once per thread before blake3(). */
export async function initHashing(): Promise<void> {
  hasher ??= await createBLAKE3();
}

/** From this size up the native BLAKE3 is faster than the wasm one (see above). */
const NATIVE_BLAKE3_MIN_BYTES = 4096;

/** BLAKE3-256 of `buf` (synchronous after initHashing). */
export function blake3(buf: Uint8Array): Uint8Array {
  if (buf.length >= NATIVE_BLAKE3_MIN_BYTES) return nativeBlake3(Buffer.from(buf.buffer, buf.byteOffset, buf.byteLength));
  if (hasher === undefined) throw new Error('initHashing() was not awaited on this thread');
  hasher.init();
  hasher.update(buf);
  return hasher.digest('binary');
}

export function hex(b: Uint8Array): string {
  return Buffer.from(b.buffer, b.byteOffset, b.byteLength).toString('hex');
}

export function equalBytes(a: Uint8Array, b: Uint8Array): boolean {
  if (a.length !== b.length) return false;
  for (let i = 0; i < a.length; i++) if (a[i] !== b[i]) return false;
  return true;
}

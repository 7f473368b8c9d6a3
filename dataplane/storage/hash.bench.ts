// Compares BLAKE3 and CRC32C implementations at the sizes Celer hashes (records of ~100 B–4 KiB,
// segments of MiBs) and checks they agree. Not a test: run `node dataplane/storage/hash.bench.ts`.
// The storage engine uses whichever is fastest for records (see checksum.ts).
import { createRequire } from 'node:module';
import { crc32c as nativeCrc } from '@node-rs/crc32';
import { blake3 as hashWasmBlake3, crc32cJs, hex, initHashing } from './checksum.ts';

const require = createRequire(import.meta.url);
const blake3Wasm = require('blake3-wasm') as { hash(b: Uint8Array): Buffer };
const napi = require('@napi-rs/blake-hash') as { blake3(b: Uint8Array): Buffer };

await initHashing();
const SIZES = [64, 200, 1024, 4096, 65536, 1 << 20];
const WINDOW_MS = 400;

function rate(fn: (b: Uint8Array) => unknown, buf: Uint8Array): number {
  for (let i = 0; i < 200; i++) fn(buf); // warm up
  let n = 0;
  const t0 = performance.now();
  while (performance.now() - t0 < WINDOW_MS) {
    for (let i = 0; i < 50; i++) fn(buf);
    n += 50;
  }
  return ((performance.now() - t0) * 1e6) / n; // ns per call
}

const input = (n: number): Uint8Array => Uint8Array.from({ length: n }, (_, i) => (i * 131 + 7) & 0xff);
for (const n of [0, 64, 5000]) {
  const b = input(n);
  const ref = hex(hashWasmBlake3(b));
  if (hex(blake3Wasm.hash(b)) !== ref || hex(napi.blake3(b)) !== ref) throw new Error(`BLAKE3 implementations disagree at ${n} bytes`);
  if (crc32cJs(b) !== nativeCrc(Buffer.from(b)) >>> 0) throw new Error(`CRC32C implementations disagree at ${n} bytes`);
}

const rows: string[][] = [];
const cases: [string, (b: Uint8Array) => unknown][] = [
  ['BLAKE3 hash-wasm (reused hasher, in use)', (b) => hashWasmBlake3(b)],
  ['BLAKE3 blake3-wasm 2.1.5', (b) => blake3Wasm.hash(b)],
  ['BLAKE3 @napi-rs/blake-hash (native)', (b) => napi.blake3(b)],
  ['CRC32C JS slicing-by-8', (b) => crc32cJs(b)],
  ['CRC32C @node-rs/crc32 (native)', (b) => nativeCrc(Buffer.from(b.buffer, b.byteOffset, b.byteLength))],
];
for (const [name, fn] of cases) rows.push([name, ...SIZES.map((s) => rate(fn, input(s)).toFixed(0))]);
console.log(`ns per call (median machine noise applies; lower is better)`);
console.log(['implementation', ...SIZES.map((s) => (s >= 1024 ? `${s / 1024} KiB` : `${s} B`))].join(' | '));
for (const r of rows) console.log(r.join(' | '));

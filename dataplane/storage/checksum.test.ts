import { test } from 'node:test';
import assert from 'node:assert/strict';
import { blake3, crc32c, crc32cJs, hex, initHashing } from './checksum.ts';

test('crc32c matches the standard check value for "123456789"', () => {
  assert.equal(crc32c(new TextEncoder().encode('123456789')), 0xe3069283);
});

test('crc32c gives the same answer on the JS and native paths', () => {
  for (const n of [511, 512, 600, 4000, 65536]) {
    const buf = new Uint8Array(n);
    for (let i = 0; i < n; i++) buf[i] = (i * 31 + 7) & 0xff;
    assert.equal(crc32c(buf), crc32cJs(buf), `length ${n}`);
  }
});

test('blake3 of the empty input is the published digest', async () => {
  await initHashing();
  assert.equal(hex(blake3(new Uint8Array(0))), 'af1349b9f5f9a1a6a0404dea36dcc9499bcb25c9adc112b7cc9a93cae41f3262');
});

test('blake3 gives the same digest on the wasm and native paths', async () => {
  await initHashing();
  const big = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7 + 3) & 0xff);
  // 10 000 bytes take the native path; hash-wasm computes the reference digest.
  const { createBLAKE3 } = await import('hash-wasm');
  const h = await createBLAKE3();
  h.init();
  h.update(big);
  assert.equal(hex(blake3(big)), hex(h.digest('binary')));
});

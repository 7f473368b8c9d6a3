// A fixed-size bloom filter of aggregate keys, one per segment: "is this aggregate possibly in
// this segment?" lets a cold lookup skip segments without reading them.

/** Two independent 32-bit hashes of a byte string (FNV-1a and a murmur-style mix). */
export function hashes(key: Uint8Array): [number, number] {
  let h1 = 0x811c9dc5;
  let h2 = 0x9747b28c;
  for (let i = 0; i < key.length; i++) {
    const b = key[i]!;
    h1 = Math.imul(h1 ^ b, 0x01000193);
    h2 = Math.imul(h2 ^ b, 0x5bd1e995);
    h2 ^= h2 >>> 15;
  }
  h1 ^= h1 >>> 16;
  h1 = Math.imul(h1, 0x85ebca6b);
  h1 ^= h1 >>> 13;
  return [h1 >>> 0, (h2 >>> 0) | 1];
}

export class Bloom {
  readonly bits: Uint32Array;
  readonly nbits: number;
  readonly k: number;
  constructor(nbits: number, k: number) {
    this.nbits = Math.max(64, nbits);
    this.bits = new Uint32Array(Math.ceil(this.nbits / 32));
    this.k = k;
  }
  add(key: Uint8Array): void {
    const [a, b] = hashes(key);
    for (let i = 0; i < this.k; i++) {
      const bit = (a + Math.imul(i, b)) >>> 0;
      const j = bit % this.nbits;
      this.bits[j >>> 5]! |= 1 << (j & 31);
    }
  }
  mayContain(key: Uint8Array): boolean {
    const [a, b] = hashes(key);
    for (let i = 0; i < this.k; i++) {
      const bit = (a + Math.imul(i, b)) >>> 0;
      const j = bit % this.nbits;
      if ((this.bits[j >>> 5]! & (1 << (j & 31))) === 0) return false;
    }
    return true;
  }
  get bytes(): number {
    return this.bits.byteLength;
  }
}

/** A 52-bit hash of a key, exact in a double: the key of the per-segment indexes. */
export function hash52(key: Uint8Array): number {
  const [a, b] = hashes(key);
  return a * 0x10_0000 + (b & 0xf_ffff);
}

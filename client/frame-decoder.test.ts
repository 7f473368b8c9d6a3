// Property tests of the frame decoder and the message decoders (wire.ts), with a seeded PRNG:
// a failure names its seed; rerun one with CELER_SEED=<seed>.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import {
  FrameDecoder,
  WireError,
  decodeDetailsOk,
  decodeError,
  decodeKeyRequest,
  decodeReadOk,
  decodeReadRequest,
  decodeWriteOk,
  decodeWriteRequest,
  encodeDetailsOk,
  encodeError,
  encodeFrame,
  encodeReadRequest,
  encodeWriteOk,
  encodeWriteRequest,
  Writer,
  writeBatchHeader,
  writeEvent,
  Expect,
  type Frame,
} from './wire.ts';
import { prng } from '../test/lib/prng.ts';

const fixedSeed = process.env.CELER_SEED === undefined ? undefined : Number(process.env.CELER_SEED);
/** Seeds to run: the one asked for, or `n` fresh ones (printed on failure). */
function seeds(n: number): number[] {
  if (fixedSeed !== undefined) return [fixedSeed];
  const base = (Math.random() * 2 ** 32) >>> 0;
  return Array.from({ length: n }, (_, i) => (base + i) >>> 0);
}

function bytes(rand: () => number, n: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (rand() * 256) | 0;
  return b;
}

function int(rand: () => number, max: number): number {
  return Math.floor(rand() * (max + 1));
}

/** Cuts `stream` into random pieces: single bytes, small runs, and occasionally large spans. */
function chunk(rand: () => number, stream: Uint8Array): Uint8Array[] {
  const out: Uint8Array[] = [];
  let at = 0;
  while (at < stream.length) {
    const r = rand();
    const n = r < 0.3 ? 1 : r < 0.8 ? 1 + int(rand, 16) : 1 + int(rand, 4096);
    out.push(stream.subarray(at, Math.min(stream.length, at + n)));
    at += n;
  }
  return out;
}

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

function only(seed: number, what: string, f: () => unknown): void {
  try {
    f();
  } catch (err) {
    if (!(err instanceof WireError)) assert.fail(`seed ${seed}: ${what} threw ${String(err)} instead of a WireError`);
  }
}

test('any chunking of a byte stream yields the same frames, in order', () => {
  for (const seed of seeds(300)) {
    const rand = prng(seed);
    const frames: Frame[] = Array.from({ length: 1 + int(rand, 20) }, () => ({
      correlationId: (rand() * 2 ** 32) >>> 0,
      op: int(rand, 255),
      body: bytes(rand, rand() < 0.05 ? int(rand, 70_000) : int(rand, 300)),
    }));
    const stream = concat(frames.map((f) => encodeFrame(f.correlationId, f.op, f.body)));
    const decoder = new FrameDecoder();
    const got: Frame[] = [];
    for (const c of chunk(rand, stream)) got.push(...decoder.push(c));
    assert.equal(got.length, frames.length, `seed ${seed}`);
    got.forEach((g, i) => {
      const want = frames[i]!;
      assert.equal(g.correlationId, want.correlationId, `seed ${seed} frame ${i}`);
      assert.equal(g.op, want.op, `seed ${seed} frame ${i}`);
      assert.deepEqual(Uint8Array.from(g.body), want.body, `seed ${seed} frame ${i}`);
    });
    // Nothing is left over, so the next frame starts cleanly.
    assert.deepEqual(decoder.push(encodeFrame(1, 2, new Uint8Array([3]))).length, 1, `seed ${seed}`);
  }
});

test('random bytes fed to the frame decoder in random chunks only ever raise WireError', () => {
  for (const seed of seeds(500)) {
    const rand = prng(seed);
    // Mostly plausible lengths (small, so frames complete), sometimes garbage lengths.
    const parts: Uint8Array[] = [];
    for (let i = 0; i < 1 + int(rand, 10); i++) {
      if (rand() < 0.8) {
        const body = bytes(rand, int(rand, 64));
        const f = encodeFrame(0, 0, body);
        if (rand() < 0.3) f[int(rand, f.length - 1)] = int(rand, 255);
        parts.push(f);
      } else {
        parts.push(bytes(rand, int(rand, 32)));
      }
    }
    const decoder = new FrameDecoder(1024);
    only(seed, 'FrameDecoder.push', () => {
      for (const c of chunk(rand, concat(parts))) decoder.push(c);
    });
  }
});

function sampleBodies(rand: () => number): Uint8Array[] {
  const key = { org: BigInt(int(rand, 1e6)), type: 2n, id: 3n };
  const event = { type: 'Evt' + int(rand, 9), data: bytes(rand, int(rand, 40)), metadata: rand() < 0.5 ? bytes(rand, 3) : undefined, schemaMajor: rand() < 0.5 ? 1 : undefined, schemaMinor: 2, iv: rand() < 0.5 ? bytes(rand, 12) : undefined };
  const read = new Writer();
  read.u64(0n);
  read.u32(1);
  writeBatchHeader(read, { fromVersion: 1n, toVersion: 1n, shard: 0, seq: 1n, clientId: 9n, serverTimestampMs: 5, eventCount: 1 });
  read.u64(1n);
  writeEvent(read, event);
  return [
    encodeWriteRequest({ clientId: 1n, writes: [{ key, expectMode: Expect.Exact, expectVersion: 3n, clientSeq: 1n, events: [event, event] }] }),
    encodeReadRequest({ key, from: 1n, to: 0n, maxBytes: 0, eventTypes: ['A'] }),
    encodeWriteOk({ shard: 1, firstSeq: 2n, ranges: [{ fromVersion: 1n, toVersion: 2n }] }),
    encodeDetailsOk({ version: 1n, minVersion: 1n, shard: 0, lastSeq: 1n, lastClientId: 0n, lastServerTimestampMs: 0, deleted: false }),
    encodeError(2003, 'conflict', { currentVersion: '4' }),
    read.finish(),
  ];
}

const decoders: [string, (b: Uint8Array) => unknown][] = [
  ['decodeWriteRequest', decodeWriteRequest],
  ['decodeReadRequest', decodeReadRequest],
  ['decodeKeyRequest', decodeKeyRequest],
  ['decodeWriteOk', decodeWriteOk],
  ['decodeReadOk', decodeReadOk],
  ['decodeDetailsOk', decodeDetailsOk],
  ['decodeError', decodeError],
];

test('every message decoder, given random or corrupted bodies, returns or raises WireError and nothing else', () => {
  // 100 seeds × 7 bodies × 3 variants × 7 decoders; a thrown error costs ~50 µs (its stack).
  for (const seed of seeds(100)) {
    const rand = prng(seed);
    const bodies = [bytes(rand, int(rand, 200)), ...sampleBodies(rand)];
    for (const body of bodies) {
      // The valid body, a truncation, and a few bytes flipped.
      const truncated = body.subarray(0, int(rand, body.length));
      const flipped = Uint8Array.from(body);
      for (let i = 0; i < 1 + int(rand, 3) && flipped.length > 0; i++) flipped[int(rand, flipped.length - 1)] = int(rand, 255);
      for (const b of [body, truncated, flipped]) for (const [name, decode] of decoders) only(seed, name, () => decode(b));
    }
  }
});

test('an error body whose detail is valid JSON but not an object is refused', () => {
  for (const detail of ['null', '5', '[1]', '"x"']) {
    const w = new Writer();
    w.u16(2003);
    w.u32(0);
    const d = new TextEncoder().encode(detail);
    w.u32(d.length);
    w.bytes(d);
    assert.throws(() => decodeError(w.finish()), WireError, detail);
  }
});

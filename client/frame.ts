// Framing of the native protocol. A connection carries frames in both directions, many in flight
// (multiplexed by correlation id):
//   u32 LE bodyLength | u32 LE correlationId | u8 op | body (bodyLength - 5 bytes)
import { WireError, type Writer } from './codec.ts';
import { Limits } from './limits.ts';

export const FRAME_HEADER_BYTES = 9;

export function encodeFrame(correlationId: number, op: number, body: Uint8Array): Uint8Array {
  const out = new Uint8Array(FRAME_HEADER_BYTES + body.length);
  const v = new DataView(out.buffer);
  v.setUint32(0, body.length + 5, true);
  v.setUint32(4, correlationId, true);
  out[8] = op;
  out.set(body, FRAME_HEADER_BYTES);
  return out;
}

/**
 * A frame built in place, one buffer and no copy of the body: beginFrame on an empty Writer
 * reserves the header, the body is written after it, endFrame fills the header in.
 */
export function beginFrame(w: Writer): void {
  if (w.pos !== 0) throw new Error('beginFrame needs an empty Writer');
  w.ensure(FRAME_HEADER_BYTES);
  w.pos = FRAME_HEADER_BYTES;
}

export function endFrame(w: Writer, correlationId: number, op: number): Uint8Array {
  const frame = w.finish();
  w.view.setUint32(0, frame.length - 4, true);
  w.view.setUint32(4, correlationId, true);
  frame[8] = op;
  return frame;
}

/** Re-stamps the correlation id of an encoded frame (the same request sent on another connection). */
export function setCorrelationId(frame: Uint8Array, correlationId: number): void {
  frame[4] = correlationId & 0xff;
  frame[5] = (correlationId >>> 8) & 0xff;
  frame[6] = (correlationId >>> 16) & 0xff;
  frame[7] = (correlationId >>> 24) & 0xff;
}

export interface Frame {
  correlationId: number;
  op: number;
  body: Uint8Array;
}

/**
 * Splits a byte stream into frames. The length prefix is checked against `frameBytesMax`
 * before anything is buffered for the frame, so an oversize or hostile length costs nothing.
 */
export class FrameDecoder {
  private chunks: Uint8Array[] = [];
  private buffered = 0;
  private readonly maxBody: number;
  constructor(maxBody: number = Limits.frameBytesMax) {
    this.maxBody = maxBody;
  }

  /** Adds bytes; returns the complete frames. Throws WireError on a bad length prefix. */
  push(chunk: Uint8Array): Frame[] {
    this.chunks.push(chunk);
    this.buffered += chunk.length;
    const frames: Frame[] = [];
    while (this.buffered >= 4) {
      const head = this.peek(FRAME_HEADER_BYTES);
      const len = head.length >= 4 ? new DataView(head.buffer, head.byteOffset, head.length).getUint32(0, true) : 0;
      if (len < 5) throw new WireError(`frame length ${len} is below the 5-byte minimum (correlation id + op)`);
      if (len - 5 > this.maxBody) throw new WireError(`frame body of ${len - 5} bytes exceeds the ${this.maxBody}-byte limit`);
      if (this.buffered < 4 + len) break;
      const whole = this.take(4 + len);
      const v = new DataView(whole.buffer, whole.byteOffset, whole.length);
      frames.push({ correlationId: v.getUint32(4, true), op: whole[8]!, body: whole.subarray(FRAME_HEADER_BYTES) });
    }
    return frames;
  }

  private peek(n: number): Uint8Array {
    const first = this.chunks[0]!;
    if (first.length >= n || this.chunks.length === 1) return first.subarray(0, Math.min(n, first.length));
    return this.concat(Math.min(n, this.buffered), false);
  }

  private take(n: number): Uint8Array {
    const first = this.chunks[0]!;
    if (first.length >= n) {
      const out = first.subarray(0, n);
      if (first.length === n) this.chunks.shift();
      else this.chunks[0] = first.subarray(n);
      this.buffered -= n;
      return out;
    }
    return this.concat(n, true);
  }

  private concat(n: number, consume: boolean): Uint8Array {
    const out = new Uint8Array(n);
    let off = 0;
    let i = 0;
    while (off < n) {
      const c = this.chunks[i]!;
      const k = Math.min(c.length, n - off);
      out.set(c.subarray(0, k), off);
      off += k;
      if (consume) {
        if (k === c.length) {
          this.chunks.shift();
        } else {
          this.chunks[0] = c.subarray(k);
        }
      } else {
        i++;
      }
    }
    if (consume) this.buffered -= n;
    return out;
  }
}

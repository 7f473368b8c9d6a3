// pump (grpc-live.ts): what an iterator has ready goes out in one message, nothing in hand is
// lost when the iterator fails, and a cancelled call returns the iterator.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { EventEmitter } from 'node:events';
import type * as grpc from '@grpc/grpc-js';
import { pump } from './grpc-live.ts';

class FakeStream extends EventEmitter {
  cancelled = false;
  readonly written: unknown[] = [];
  write(m: unknown, cb: () => void): boolean {
    this.written.push(m);
    setImmediate(cb);
    return true;
  }
  cancel(): void {
    this.cancelled = true;
    this.emit('cancelled');
  }
}

/** An iterator answering `results` in order (each already settled), then waiting for ever. */
function scripted(results: (number | Error)[]): AsyncIterator<number> & { returned: number } {
  let i = 0;
  const it = {
    returned: 0,
    next(): Promise<IteratorResult<number>> {
      const r = results[i++];
      if (r === undefined) return new Promise(() => {});
      return r instanceof Error ? Promise.reject(r) : Promise.resolve({ value: r, done: false });
    },
    return(): Promise<IteratorResult<number>> {
      it.returned++;
      return Promise.resolve({ value: undefined, done: true });
    },
  };
  return it;
}

const asStream = (s: FakeStream): grpc.ServerWritableStream<unknown, unknown> => s as unknown as grpc.ServerWritableStream<unknown, unknown>;

test('pump: the batches in hand when the iterator fails are written before the error', async () => {
  const s = new FakeStream();
  const it = scripted([1, 2, 3, new Error('dropped')]);
  await assert.rejects(pump(asStream(s), it, (items) => ({ items }), 256), /dropped/);
  assert.deepEqual(s.written, [{ items: [1, 2, 3] }]);
  assert.equal(it.returned > 0, true);
});

test('pump: at most `max` items a message, in order', async () => {
  const s = new FakeStream();
  const it = scripted([1, 2, 3, 4, 5]);
  const p = pump(asStream(s), it, (items) => ({ items }), 2);
  await new Promise((r) => setTimeout(r, 50));
  assert.deepEqual(s.written, [{ items: [1, 2] }, { items: [3, 4] }, { items: [5] }]);
  s.cancel();
  await p;
  assert.ok(it.returned > 0, 'a cancelled call did not return its iterator');
});

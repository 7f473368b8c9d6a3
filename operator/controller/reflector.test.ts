import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { KubernetesObject } from '@kubernetes/client-node';
import { ManualClock } from './clock.ts';
import { RELIST_INTERVAL_MS, Reflector, type ListResult, type ListWatchSource, type WatchHandle } from './reflector.ts';

const obj = (name: string, rv: string): KubernetesObject => ({ metadata: { name, namespace: 'ns', resourceVersion: rv } });

/** A scripted apiserver: lists return the current items; each watch is recorded for the test to drive. */
class FakeSource implements ListWatchSource<KubernetesObject> {
  items: KubernetesObject[] = [];
  rv = '1';
  listFailures = 0;
  watches: { rv: string; onEvent: (t: string, o: unknown) => void; onDone: (e: unknown) => void; stopped: boolean }[] = [];

  async list(): Promise<ListResult<KubernetesObject>> {
    if (this.listFailures > 0) {
      this.listFailures -= 1;
      throw new Error('connect ECONNREFUSED');
    }
    return { items: [...this.items], resourceVersion: this.rv };
  }

  async watch(rv: string, onEvent: (t: string, o: unknown) => void, onDone: (e: unknown) => void): Promise<WatchHandle> {
    const w = { rv, onEvent, onDone, stopped: false };
    this.watches.push(w);
    return { stop: () => { w.stopped = true; } };
  }

  get last() {
    return this.watches[this.watches.length - 1]!;
  }
}

const settle = () => new Promise((r) => setImmediate(r));

function setup() {
  const clock = new ManualClock();
  const source = new FakeSource();
  const changes: string[] = [];
  const r = new Reflector({
    name: 'test', source, clock, random: () => 1,
    onChange: (o, kind) => changes.push(`${kind}:${o.metadata?.name}`),
  });
  return { clock, source, changes, r };
}

test('a reflector lists, then watches from the list resourceVersion and applies events', async () => {
  const { source, changes, r } = setup();
  source.items = [obj('a', '5')];
  source.rv = '7';
  r.start();
  await settle();
  assert.equal(r.synced, true);
  assert.equal(source.last.rv, '7');
  source.last.onEvent('ADDED', obj('b', '8'));
  source.last.onEvent('MODIFIED', obj('a', '9'));
  source.last.onEvent('DELETED', obj('b', '10'));
  assert.deepEqual(changes, ['add:a', 'add:b', 'update:a', 'delete:b']);
  assert.deepEqual(r.list().map((o) => o.metadata?.resourceVersion), ['9']);
  r.stop();
});

test('a watch closed by the server resumes from the last resourceVersion seen', async () => {
  const { source, r } = setup();
  r.start();
  await settle();
  source.last.onEvent('ADDED', obj('a', '12'));
  source.last.onEvent('BOOKMARK', { metadata: { resourceVersion: '15' } });
  source.last.onDone(null);
  await settle();
  assert.equal(source.watches.length, 2);
  assert.equal(source.last.rv, '15');
  assert.equal(r.stats.lists, 1, 'no relist for a normal close');
  r.stop();
});

test('410 Gone from the watch response relists and reports vanished objects as deleted', async () => {
  const { source, changes, r } = setup();
  source.items = [obj('a', '2'), obj('b', '3')];
  r.start();
  await settle();
  source.items = [obj('a', '4')];
  source.rv = '20';
  source.last.onDone(Object.assign(new Error('Gone'), { statusCode: 410 }));
  await settle();
  assert.equal(r.stats.gone, 1);
  assert.equal(r.stats.lists, 2);
  assert.deepEqual(changes, ['add:a', 'add:b', 'update:a', 'delete:b']);
  assert.equal(source.last.rv, '20');
  r.stop();
});

test('410 Gone as an ERROR event in the stream relists too', async () => {
  const { source, r } = setup();
  r.start();
  await settle();
  const first = source.last;
  first.onEvent('ERROR', { kind: 'Status', code: 410, reason: 'Expired' });
  await settle();
  assert.equal(first.stopped, true);
  assert.equal(r.stats.lists, 2);
  r.stop();
});

test('a dropped connection rewatches after a backoff, not at once', async () => {
  const { clock, source, r } = setup();
  r.start();
  await settle();
  source.last.onDone(new Error('read ECONNRESET'));
  await settle();
  assert.equal(source.watches.length, 1);
  clock.advance(999);
  await settle();
  assert.equal(source.watches.length, 1);
  clock.advance(1);
  await settle();
  assert.equal(source.watches.length, 2);
  r.stop();
});

test('a failing list is retried with growing backoff until it succeeds', async () => {
  const { clock, source, r } = setup();
  source.listFailures = 2;
  r.start();
  await settle();
  assert.equal(r.synced, false);
  clock.advance(1_000);
  await settle();
  assert.equal(r.synced, false);
  clock.advance(1_999);
  await settle();
  assert.equal(r.synced, false, 'the second retry waits 2 s');
  clock.advance(1);
  await settle();
  assert.equal(r.synced, true);
  assert.equal(r.stats.errors, 2);
  r.stop();
});

test('a periodic relist catches changes a hung watch never delivered', async () => {
  const { clock, source, changes, r } = setup();
  r.start();
  await settle();
  source.items = [obj('missed', '40')];
  clock.advance(RELIST_INTERVAL_MS);
  await settle();
  assert.deepEqual(changes, ['add:missed']);
  r.stop();
});

test('events from a superseded watch are ignored', async () => {
  const { source, changes, r } = setup();
  r.start();
  await settle();
  const old = source.last;
  old.onDone(Object.assign(new Error('Gone'), { statusCode: 410 }));
  await settle();
  old.onEvent('ADDED', obj('ghost', '99'));
  assert.deepEqual(changes, []);
  r.stop();
});

test('stop() ends the watch and schedules nothing more', async () => {
  const { clock, source, r } = setup();
  r.start();
  await settle();
  r.stop();
  assert.equal(source.last.stopped, true);
  assert.equal(clock.pendingTimers(), 0);
});

test('a watch that reports an ERROR and then closes is replaced only once', async () => {
  const { clock, source, r } = setup();
  r.start();
  await settle();
  const first = source.last;
  first.onEvent('ERROR', { kind: 'Status', code: 500, message: 'etcdserver: request timed out' });
  first.onDone(null);
  await settle();
  clock.advance(1_000);
  await settle();
  assert.equal(source.watches.length, 2);
  r.stop();
});

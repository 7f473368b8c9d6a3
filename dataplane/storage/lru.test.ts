import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Lru } from './lru.ts';

test('the least recently used entries are evicted first, by size', () => {
  const l = new Lru<string, number>(10);
  l.set('a', 1, 4);
  l.set('b', 2, 4);
  l.get('a');
  l.set('c', 3, 4);
  assert.equal(l.peek('b'), undefined);
  assert.equal(l.peek('a'), 1);
  assert.equal(l.usedSize, 8);
});

test('pinned entries are never evicted, and the cache may exceed capacity only by them', () => {
  const pinned = new Set(['p1', 'p2']);
  const l = new Lru<string, string>(2, (v) => pinned.has(v));
  l.set('p1', 'p1');
  l.set('p2', 'p2');
  for (let i = 0; i < 100; i++) l.set(`k${i}`, `k${i}`);
  assert.equal(l.peek('p1'), 'p1');
  assert.equal(l.peek('p2'), 'p2');
  assert.equal(l.size, 2);
  pinned.clear();
  l.set('x', 'x');
  assert.equal(l.size, 2);
  assert.equal(l.peek('x'), 'x');
});

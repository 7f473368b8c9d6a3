// Client-side encryption (SPEC §5) against a real `celer serve --standalone`: the node stores
// and serves ciphertext only, the wrapper opens it on every read path (read, readAll, readShard,
// subscribe), a ciphertext moved to another aggregate does not open, and forgetting a subject's
// key (crypto-shredding) leaves its events in the log but unreadable, while other subjects stay
// readable.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import {
  DecryptionError,
  InMemoryKeyProvider,
  KeyUnavailableError,
  connect,
  encrypting,
  formatKey,
  normalizeKey,
  type CelerClient,
  type EncryptingClient,
  type OpenedEvent,
} from '@celer/client';
import { removeDir, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';

const te = new TextEncoder();
const td = new TextDecoder();
let node: CelerProcess;
let dir: string;
let raw: CelerClient;
let keys: InMemoryKeyProvider;
let db: EncryptingClient;

before(async () => {
  dir = await tempDir('celer-e2e-crypt-');
  node = await startCeler(dir, ['--shards', '2', '--routing', 'id']);
  raw = await connect(node.native, { clientId: 11 });
  keys = new InMemoryKeyProvider();
  db = encrypting(await connect(node.native, { clientId: 12 }), keys);
});

after(async () => {
  await raw?.close();
  await db?.close();
  await node?.stop();
  await removeDir(dir);
});

const alice = { org: 90, type: 1, id: 1 };
const bob = { org: 90, type: 1, id: 2 };
const secret = (s: string) => ({ type: 'Named', data: te.encode(`{"name":"${s}","email":"${s}@example.org"}`), metadata: te.encode('{"by":"signup"}') });

test('the node stores ciphertext with an iv; the wrapper opens it on read, readAll, readShard and subscribe', async () => {
  await db.append(alice, [secret('alice'), secret('alice2')]);
  await db.write({ writes: [{ key: bob, events: [secret('bob')] }] });

  // What the server holds: ciphertext + 12-byte iv per event, metadata and type in plaintext.
  const stored = (await raw.read(alice)).batches.flatMap((b) => b.events);
  assert.equal(stored.length, 2);
  const plain = [secret('alice'), secret('alice2')];
  for (const [i, e] of stored.entries()) {
    assert.equal(e.iv?.length, 12, 'every stored event carries its iv');
    assert.ok(!td.decode(e.data).includes('alice'), 'no plaintext reaches the node');
    assert.equal(e.data.length, plain[i]!.data.length + 16, 'ciphertext = plaintext length + 16-byte tag');
    assert.equal(e.type, 'Named');
    assert.equal(td.decode(e.metadata!), '{"by":"signup"}');
  }
  assert.notDeepEqual(stored[0]!.iv, stored[1]!.iv, 'a fresh iv per event');

  const page = await db.read(alice);
  assert.deepEqual(
    page.batches.flatMap((b) => b.events.map((e) => td.decode(e.data))),
    ['{"name":"alice","email":"alice@example.org"}', '{"name":"alice2","email":"alice2@example.org"}'],
  );
  assert.equal(page.batches[0]!.events[0]!.iv, undefined, 'an opened event no longer claims to be encrypted');
  const all: string[] = [];
  for await (const b of db.readAll(bob)) all.push(...b.events.map((e) => td.decode(e.data)));
  assert.deepEqual(all, ['{"name":"bob","email":"bob@example.org"}']);

  // The shard feed (bob's id 2 routes to shard 0 with --routing id and 2 shards).
  const feed = await db.readShard(0, { org: 90 });
  assert.ok(feed.batches.some((b) => b.events.some((e) => td.decode(e.data).includes('"bob"'))));
  for await (const b of db.subscribe({ org: 90 }, {})) {
    for (const e of b.events) assert.match(td.decode(e.data), /^\{"name":/);
    if (formatKey(b.key) === formatKey(normalizeKey(alice))) break;
  }
});

test('a ciphertext copied to another aggregate does not open there (the key is in the additional data)', async () => {
  const shared = encrypting(await connect(node.native, { clientId: 13 }), keys, { subjectOf: () => 'tenant-90' });
  try {
    const a = { org: 91, type: 1, id: 5 };
    const b = { org: 91, type: 1, id: 7 };
    await shared.append(a, [secret('carol')]);
    const copied = (await raw.read(a)).batches[0]!.events[0]!;
    // Same subject key, same type, same iv and bytes, written by someone with only raw access.
    await raw.append(b, [{ type: copied.type, data: copied.data, iv: copied.iv! }]);
    assert.match(td.decode((await shared.read(a)).batches[0]!.events[0]!.data), /carol/);
    await assert.rejects(shared.read(b), (e: unknown) => e instanceof DecryptionError && /does not open/.test(e.message));
  } finally {
    await shared.close();
  }
});

test('forgetting a subject key shreds its events: they stay in the log, reads refuse or redact them, other subjects still open', async () => {
  const subject = formatKey(normalizeKey(alice));
  await db.forget(subject);

  const stillThere = (await raw.read(alice)).batches.flatMap((b) => b.events);
  assert.equal(stillThere.length, 2, 'crypto-shredding deletes nothing from the log');
  await assert.rejects(db.read(alice), (e: unknown) => e instanceof KeyUnavailableError && e.subject === subject && e.code === 'KEY_UNAVAILABLE');
  await assert.rejects(async () => {
    for await (const _ of db.subscribe(alice, {})) break;
  }, KeyUnavailableError);
  // A forgotten subject never gets a new key, so it cannot be written again readably.
  await assert.rejects(db.append(alice, [secret('again')]), KeyUnavailableError);

  const redacting = encrypting(await connect(node.native, { clientId: 14 }), keys, { onMissingKey: 'redact' });
  try {
    const events = (await redacting.read(alice)).batches.flatMap((b) => b.events);
    assert.deepEqual(events.map((e: OpenedEvent) => [e.version, e.data.length, e.redacted]), [[1n, 0, true], [2n, 0, true]]);
    assert.match(td.decode((await redacting.read(bob)).batches[0]!.events[0]!.data), /"bob"/, 'bob keeps his key');
  } finally {
    await redacting.close();
  }

  // Even with the key bytes guessed wrong (a fresh key under the same subject), nothing opens.
  const other = new InMemoryKeyProvider();
  const guessing = encrypting(await connect(node.native, { clientId: 15 }), {
    getKey: (_s, _c) => other.getKey('any', true),
    forget: () => Promise.resolve(),
  });
  try {
    await assert.rejects(guessing.read(bob), DecryptionError);
  } finally {
    await guessing.close();
  }
});

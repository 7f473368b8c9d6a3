// Cluster identity: a data directory or S3 prefix of another cluster is refused (9300), a fresh
// one adopts the id on disk and in S3, and a verified start needs no S3 request.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDataMeta } from '../storage/meta.ts';
import { MemoryStore } from '../../test/lib/cluster-fixture.ts';
import { checkDiskIdentity, checkS3Identity, IDENTITY_KEY, IdentityMismatchError, markS3Verified } from './identity.ts';

const loc = { bucket: 'b', prefix: 'p/' };

function dataDir(): string {
  const dir = mkdtempSync(join(tmpdir(), 'celer-identity-'));
  openDataMeta(dir, {}, { numShards: 1, routing: 'id' });
  return dir;
}

test('a data directory adopts the first cluster id durably once S3 agrees, and refuses another one with 9300', () => {
  const dir = dataDir();
  const idOf = () => (JSON.parse(readFileSync(join(dir, 'celer.json'), 'utf8')) as { clusterId?: string }).clusterId;
  try {
    assert.deepEqual(checkDiskIdentity(dir, 'uid-a', loc), { verifiedInS3: false });
    assert.equal(idOf(), undefined, 'not claimed before the S3 check passed');
    markS3Verified(dir, loc, 'uid-a');
    assert.equal(idOf(), 'uid-a');
    assert.equal(openDataMeta(dir, {}, { numShards: 1, routing: 'id' }).numShards, 1, 'celer.json still opens');
    assert.throws(() => checkDiskIdentity(dir, 'uid-b', loc), (e: unknown) => {
      assert.ok(e instanceof IdentityMismatchError);
      assert.equal(e.code, 9300);
      assert.match(e.message, /^error 9300: refusing to start: the data directory .* belongs to cluster uid-a, but this node was started with --cluster-id uid-b\. .*Delete the volume \(PVC\).*--cluster-id uid-a/);
      return true;
    });
    assert.throws(() => markS3Verified(dir, loc, 'uid-b'), IdentityMismatchError);
    assert.deepEqual(checkDiskIdentity(dir, 'uid-a', loc), { verifiedInS3: true });
    assert.deepEqual(checkDiskIdentity(dir, 'uid-a', { bucket: 'b', prefix: 'other/' }), { verifiedInS3: false }, 'a new prefix is checked again');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

test('the S3 identity object is created once; another cluster id is refused with 9300', async () => {
  const store = new MemoryStore();
  await checkS3Identity(store, 'uid-a', 's3://b/p/');
  assert.ok((await store.get(IDENTITY_KEY)) !== null);
  await checkS3Identity(store, 'uid-a', 's3://b/p/');
  await assert.rejects(checkS3Identity(store, 'uid-b', 's3://b/p/'), (e: unknown) => {
    assert.ok(e instanceof IdentityMismatchError);
    assert.match(e.message, /s3:\/\/b\/p\/ belongs to cluster uid-a, but this node was started with --cluster-id uid-b\. .*Use a new S3 prefix/);
    return true;
  });
});

test('two clusters racing for one fresh prefix: one wins, the other is refused', async () => {
  const store = new MemoryStore();
  const results = await Promise.allSettled([checkS3Identity(store, 'uid-a', 's3://b/p/'), checkS3Identity(store, 'uid-b', 's3://b/p/')]);
  assert.deepEqual(results.map((r) => r.status).sort(), ['fulfilled', 'rejected']);
});

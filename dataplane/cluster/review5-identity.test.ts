// review5: a start refused by the S3 identity check must not change what the data directory says.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { openDataMeta } from '../storage/meta.ts';
import { MemoryStore } from '../../test/lib/cluster-fixture.ts';
import { checkDiskIdentity, checkS3Identity, IdentityMismatchError } from './identity.ts';

const loc = { bucket: 'b', prefix: 'p/' };

// node.ts runs checkDiskIdentity (which adopts the id into celer.json at once) before
// checkS3Identity. A node on a directory without an id (a fresh volume, or data from before
// --cluster-id) started with the wrong id against a prefix of cluster uid-a is refused by S3 — whose
// message says "or start with --cluster-id uid-a to run the old cluster again" — but the refused
// start already wrote uid-b into celer.json, so that way out is then refused by the disk check.
test('review5: after a start refused by the S3 identity check, the way out its message names (--cluster-id of the prefix) starts', async () => {
  const dir = mkdtempSync(join(tmpdir(), 'celer-r5-identity-'));
  try {
    openDataMeta(dir, {}, { numShards: 1, routing: 'id' });
    const store = new MemoryStore();
    await checkS3Identity(store, 'uid-a', 's3://b/p/');
    // The mistaken start (node.ts order: disk, then S3).
    checkDiskIdentity(dir, 'uid-b', loc);
    await assert.rejects(checkS3Identity(store, 'uid-b', 's3://b/p/'), (e: unknown) => e instanceof IdentityMismatchError && /start with --cluster-id uid-a/.test(e.message));
    // The way out the message gives.
    assert.doesNotThrow(() => checkDiskIdentity(dir, 'uid-a', loc), 'the refused start must not have claimed the directory');
    await checkS3Identity(store, 'uid-a', 's3://b/p/');
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
});

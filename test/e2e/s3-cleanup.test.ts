// The operator's deletion cleanup (operator/controller/s3-cleanup.ts) against a real S3 server:
// hack/s3.sh in a temp directory. A cluster's lease, its fallback batches (more than one
// ListObjectsV2 page) and user objects under the same prefix, under its parent and under a
// sibling prefix; after deleteS3Objects(S3_LEASE_OBJECT_KEYS) only the cluster's lease and fallback objects
// are gone.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { join } from 'node:path';
import { promisify } from 'node:util';
import { S3ObjectStore } from '../../dataplane/cluster/s3-store.ts';
import { fallbackKey } from '../../dataplane/cluster/fallback.ts';
import { LEASE_KEY } from '../../dataplane/cluster/lease.ts';
import { S3_LEASE_OBJECT_KEYS } from '../../operator/api/constants.ts';
import { deleteS3Objects } from '../../operator/controller/s3-cleanup.ts';
import { FALLBACK_PREFIX } from '../../dataplane/cluster/fallback.ts';
import { IDENTITY_KEY } from '../../dataplane/cluster/identity.ts';
import { removeDir, ROOT, tempDir } from './lib/celer-process.ts';

const run = promisify(execFile);
const S3_SH = join(ROOT, 'hack/s3.sh');
/** hack/s3.sh start: a few seconds warm; a cold machine also installs the ceph packages. */
const START_TIMEOUT_MS = 600_000;
const REQUEST_TIMEOUT_MS = 10_000;
/** More than one ListObjectsV2 page (1000 keys), so the cleanup must list again. */
const FALLBACK_OBJECTS = 1050;
const PUT_CONCURRENCY = 32;

let dir = '';
const env: Record<string, string> = {};
/** Parent of the cluster prefix; each run has its own, so a reused server does not see older runs. */
const PARENT = `cleanup-${randomUUID()}/`;
const PREFIX = `${PARENT}c1/`;

before(async () => {
  dir = await tempDir('celer-s3-cleanup-');
  const { stdout } = await run('bash', [S3_SH, 'start', dir], { timeout: START_TIMEOUT_MS, maxBuffer: 16 << 20 });
  for (const m of stdout.matchAll(/^export ([A-Z0-9_]+)=(.*)$/gm)) env[m[1]!] = m[2]!;
  Object.assign(process.env, env);
});

after(async () => {
  if (dir) {
    await run('bash', [S3_SH, 'stop', dir], { timeout: 60_000 });
    await removeDir(dir);
  }
});

test('deleting a CelerCluster removes its lease and fallback objects from S3 and nothing else', async () => {
  const store = new S3ObjectStore({ bucket: env.CELER_S3_BUCKET!, prefix: '', requestTimeoutMs: REQUEST_TIMEOUT_MS });
  try {
    for (const k of [LEASE_KEY, IDENTITY_KEY, FALLBACK_PREFIX]) assert.ok(S3_LEASE_OBJECT_KEYS.includes(k), `the finalizer knows the data plane's ${k}`);
    const body = new TextEncoder().encode('x');
    const ours = [`${PREFIX}${LEASE_KEY}`, `${PREFIX}${IDENTITY_KEY}`];
    for (let i = 0; i < FALLBACK_OBJECTS; i++) ours.push(`${PREFIX}${fallbackKey(i % 4, i * 10 + 1, i * 10 + 10, 3, 'c1-0')}`);
    const sentinels = [
      `${PARENT}sentinel.txt`, // the prefix's parent
      `${PREFIX}user-data.txt`, `${PREFIX}cluster/notes.json`, // under the prefix, not the data plane's
      `${PARENT}c1x/${LEASE_KEY}`, `${PARENT}c1x/${fallbackKey(0, 1, 10, 1, 'c1x-0')}`, // a sibling prefix
    ];
    const all = [...ours, ...sentinels];
    for (let i = 0; i < all.length; i += PUT_CONCURRENCY) {
      const results = await Promise.all(all.slice(i, i + PUT_CONCURRENCY).map((k) => store.putIfAbsent(k, body)));
      assert.ok(results.every((r) => r.ok), 'every object written');
    }
    assert.equal((await store.list(PARENT)).length, all.length);

    await deleteS3Objects(
      { bucket: env.CELER_S3_BUCKET!, prefix: PREFIX, endpoint: env.AWS_ENDPOINT_URL!, region: env.AWS_REGION! },
      S3_LEASE_OBJECT_KEYS,
      { accessKeyId: env.AWS_ACCESS_KEY_ID!, secretAccessKey: env.AWS_SECRET_ACCESS_KEY! },
    );
    const left = (await store.list(PARENT)).map((o) => o.key).sort();
    assert.deepEqual(left, [...sentinels].sort());
    // Again on an empty cluster prefix: nothing to do, no error.
    await deleteS3Objects(
      { bucket: env.CELER_S3_BUCKET!, prefix: PREFIX, endpoint: env.AWS_ENDPOINT_URL!, region: env.AWS_REGION! },
      S3_LEASE_OBJECT_KEYS,
      { accessKeyId: env.AWS_ACCESS_KEY_ID!, secretAccessKey: env.AWS_SECRET_ACCESS_KEY! },
    );
    assert.deepEqual((await store.list(PARENT)).map((o) => o.key).sort(), [...sentinels].sort());
  } finally {
    store.destroy();
  }
});

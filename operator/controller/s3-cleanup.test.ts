import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { amzDate, deleteS3ClusterObjects, deleteS3Objects, objectUrl, S3_CLEANUP_MAX_LIST_PAGES, signV4 } from './s3-cleanup.ts';

test('signV4 reproduces the published get-vanilla example of the Signature Version 4 test suite', () => {
  const auth = signV4({
    method: 'GET', url: new URL('https://example.amazonaws.com/'), headers: { 'x-amz-date': '20150830T123600Z' },
    payloadSha256: 'e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855', region: 'us-east-1', service: 'service',
    credentials: { accessKeyId: 'AKIDEXAMPLE', secretAccessKey: 'wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY' }, amzDate: '20150830T123600Z',
  });
  assert.equal(auth, 'AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/aws4_request, '
    + 'SignedHeaders=host;x-amz-date, Signature=5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31');
});

test('amzDate formats a timestamp the way SigV4 wants it', () => {
  assert.equal(amzDate(Date.parse('2026-09-01T12:03:04.567Z')), '20260901T120304Z');
});

test('objectUrl is path-style under the prefix, on a custom endpoint or AWS', () => {
  assert.equal(objectUrl({ bucket: 'b', prefix: 'p/', endpoint: 'http://127.0.0.1:9000/' }, 'cluster/lease.json').href, 'http://127.0.0.1:9000/b/p/cluster/lease.json');
  assert.equal(objectUrl({ bucket: 'b', region: 'eu-west-1' }, 'k').href, 'https://s3.eu-west-1.amazonaws.com/b/k');
});

test('deleteS3Objects sends signed DELETEs, accepts a missing object and fails on a refusal', async () => {
  const seen: string[] = [];
  let code = 204;
  const server = createServer((req, res) => {
    seen.push(`${req.method} ${req.url} ${String(req.headers.authorization).startsWith('AWS4-HMAC-SHA256 Credential=AK/') ? 'signed' : 'unsigned'}`);
    res.statusCode = code;
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const endpoint = `http://127.0.0.1:${(server.address() as AddressInfo).port}`;
  try {
    await deleteS3Objects({ bucket: 'b', prefix: 'c/', endpoint }, ['cluster/lease.json'], { accessKeyId: 'AK', secretAccessKey: 'SK' });
    assert.deepEqual(seen, ['DELETE /b/c/cluster/lease.json signed']);
    code = 404;
    await deleteS3Objects({ bucket: 'b', endpoint }, ['x'], { accessKeyId: 'AK', secretAccessKey: 'SK' });
    code = 403;
    await assert.rejects(deleteS3Objects({ bucket: 'b', endpoint }, ['x'], { accessKeyId: 'AK', secretAccessKey: 'SK' }), /answered 403/);
  } finally {
    server.close();
  }
});

test('deleteS3ClusterObjects lists each sub-prefix, deletes only keys under it, and stops at S3_CLEANUP_MAX_LIST_PAGES', async () => {
  const seen: string[] = [];
  let stuck = false;
  let listed = 0;
  const server = createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    if (req.method === 'GET') {
      listed++;
      // A server that keeps answering one key (never deleted) and one outside the prefix.
      const keys = stuck || listed === 1 ? ['c/cluster/fallback/shard-000/a&amp;b.bin', 'c/other.txt'] : [];
      res.end(`<ListBucketResult>${keys.map((k) => `<Contents><Key>${k}</Key></Contents>`).join('')}<IsTruncated>false</IsTruncated></ListBucketResult>`);
      return;
    }
    res.statusCode = 204;
    res.end();
  });
  await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
  const s3 = { bucket: 'b', prefix: 'c/', endpoint: `http://127.0.0.1:${(server.address() as AddressInfo).port}` };
  const creds = { accessKeyId: 'AK', secretAccessKey: 'SK' };
  try {
    const r = await deleteS3ClusterObjects(s3, ['cluster/lease.json'], ['cluster/fallback/'], creds);
    assert.equal(r.deleted, 2);
    assert.deepEqual(seen.filter((s) => s.startsWith('DELETE')), ['DELETE /b/c/cluster/lease.json', 'DELETE /b/c/cluster/fallback/shard-000/a&b.bin']);
    assert.ok(seen.some((s) => s.startsWith('GET /b?') && s.includes('prefix=c%2Fcluster%2Ffallback%2F')));
    stuck = true;
    await assert.rejects(deleteS3ClusterObjects(s3, [], ['cluster/fallback/'], creds), /S3CleanupUnbounded/);
    assert.ok(listed >= S3_CLEANUP_MAX_LIST_PAGES);
  } finally {
    server.close();
  }
});

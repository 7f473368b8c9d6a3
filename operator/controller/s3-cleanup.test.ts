import { test } from 'node:test';
import assert from 'node:assert/strict';
import { createServer } from 'node:http';
import type { AddressInfo } from 'node:net';
import { amzDate, deleteS3Objects, objectUrl, signV4 } from './s3-cleanup.ts';

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

test('the finalizer deletes exactly the objects the data plane writes under the prefix', async () => {
  const { S3_LEASE_OBJECT_KEYS } = await import('../api/constants.ts');
  const { LEASE_KEY } = await import('../../dataplane/cluster/lease.ts');
  const { IDENTITY_KEY } = await import('../../dataplane/cluster/identity.ts');
  const { FALLBACK_PREFIX } = await import('../../dataplane/cluster/fallback.ts');
  assert.deepEqual([...S3_LEASE_OBJECT_KEYS].sort(), [LEASE_KEY, IDENTITY_KEY, FALLBACK_PREFIX].sort());
});

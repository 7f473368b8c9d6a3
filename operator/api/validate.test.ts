import { test } from 'node:test';
import assert from 'node:assert/strict';
import { describeIssues, validateSpec } from './validate.ts';
import type { CelerClusterSpec } from './types.ts';

const base: CelerClusterSpec = { version: '0.1.0', storage: { size: '10Gi' } };
const fields = (spec: CelerClusterSpec): string[] => validateSpec(spec).map((i) => i.field);

test('validateSpec accepts a minimal standalone spec', () => {
  assert.deepEqual(validateSpec(base), []);
});

test('validateSpec requires a version and a storage size', () => {
  const spec = { storage: {} } as unknown as CelerClusterSpec;
  assert.deepEqual(fields(spec).sort(), ['spec.storage.size', 'spec.version']);
});

test('validateSpec refuses a version that cannot be an image tag', () => {
  assert.deepEqual(fields({ ...base, version: 'v1/evil' }), ['spec.version']);
  assert.deepEqual(fields({ ...base, version: '' }), ['spec.version']);
});

test('validateSpec refuses a storage size that is not a quantity', () => {
  assert.deepEqual(fields({ ...base, storage: { size: 'ten gigs' } }), ['spec.storage.size']);
});

test('validateSpec refuses lease timings outside their bounds', () => {
  const issues = validateSpec({ ...base, lease: { leaseTtlMs: 100, renewDeadlineMs: 40, renewIntervalMs: 10, maxClockDriftMs: 0 } });
  const bounded = issues.filter((i) => !i.cel).map((i) => i.field).sort();
  assert.deepEqual(bounded, ['spec.lease.leaseTtlMs', 'spec.lease.renewDeadlineMs', 'spec.lease.renewIntervalMs']);
});

test('validateSpec refuses a fractional shard count and more than two replicas', () => {
  assert.deepEqual(fields({ ...base, shards: 2.5, replicas: 3 }).sort(), ['spec.replicas', 'spec.shards']);
});

test('validateSpec refuses unknown enum values that the 1.20 schema would also refuse', () => {
  const spec = { ...base, routing: 'tenant', upgradePolicy: 'yolo', deletionPolicy: 'Shred' } as unknown as CelerClusterSpec;
  assert.deepEqual(fields(spec).sort(), ['spec.deletionPolicy', 'spec.routing', 'spec.upgradePolicy']);
});

test('validateSpec refuses an s3 block without a bucket, and any tls block (the node has no TLS listener)', () => {
  const spec = { ...base, s3: {}, tls: {} } as unknown as CelerClusterSpec;
  assert.deepEqual(fields(spec).sort(), ['spec.s3.bucket', 'spec.tls']);
  const tls = validateSpec({ ...base, tls: { secretName: 'celer-tls' } });
  assert.deepEqual(tls.map((i) => i.field), ['spec.tls']);
  assert.match(tls[0]!.message, /not supported yet.*remove spec\.tls/);
});

test('validateSpec refuses more than one standalone replica: the second would be an orphan store', () => {
  const issues = validateSpec({ ...base, standalone: true, replicas: 2 });
  assert.deepEqual(issues.map((i) => [i.field, i.cel]), [['spec.replicas', true]], 'a CRD CEL rule states it too (api/cel.test.ts)');
  assert.match(issues[0]!.message, /orphan store.*set replicas: 1, or standalone: false with an s3 section/);
  // The default is standalone: two replicas without the field are refused the same way.
  assert.deepEqual(validateSpec({ ...base, replicas: 2 }).map((i) => i.message), [issues[0]!.message]);
  assert.deepEqual(validateSpec({ ...base, standalone: true, replicas: 1 }), []);
});

test('validateSpec compares the storage with the volume claims in use', () => {
  const issues = validateSpec({ ...base, storage: { size: '10Gi', storageClassName: 'fast' } }, { storage: { size: '10Gi' } });
  assert.deepEqual(issues.map((i) => i.field), ['spec.storage']);
  assert.deepEqual(validateSpec(base, { storage: { size: '10Gi' } }), []);
});

test('describeIssues names the field first and counts the issues it leaves out', () => {
  const issues = validateSpec({ storage: { size: 'x' }, version: '!', shards: 0, replicas: 9 } as CelerClusterSpec);
  assert.equal(issues.length, 4);
  const text = describeIssues(issues);
  assert.match(text, /^spec\.\w+/);
  assert.match(text, /and 1 more$/);
});

import { test } from 'node:test';
import assert from 'node:assert/strict';
import { expand, rewriteAddress, rewritePaths, translateContainer, type TranslateContext } from './podspec.ts';
import type { Pod } from './types.ts';

const pod: Pod = {
  metadata: { name: 'demo-0', namespace: 'ns1', uid: 'u-1', labels: { app: 'celer' } },
  spec: { nodeName: 'agent-node-1', containers: [] },
};

function ctx(overrides: Partial<TranslateContext> = {}): TranslateContext {
  return {
    pod,
    podIP: '127.80.1.2',
    hostIP: '127.80.0.2',
    mounts: new Map([['/var/lib/celer', '/tmp/pv/data-demo-0']]),
    executables: { celer: ['/repo/bin/celer'] },
    entrypoint: (image) => (image.startsWith('celer') ? { command: ['celer'] } : undefined),
    lookup: async (kind, name) => (kind === 'Secret' && name === 's3' ? { AWS_ACCESS_KEY_ID: 'AK' } : undefined),
    defaultCwd: '/tmp/pod',
    baseEnv: { PATH: '/usr/bin' },
    ...overrides,
  };
}

test('$(VAR) expands defined variables, keeps unknown ones and unescapes $$', () => {
  assert.equal(expand('--id=$(POD_NAME).$(MISSING) $$(POD_NAME)', { POD_NAME: 'demo-0' }), '--id=demo-0.$(MISSING) $(POD_NAME)');
});

test('addresses on the pod\'s own network namespace are rewritten to the pod IP', () => {
  assert.equal(rewriteAddress('0.0.0.0:7400', '127.9.1.2'), '127.9.1.2:7400');
  assert.equal(rewriteAddress('--http=:7401', '127.9.1.2'), '--http=127.9.1.2:7401');
  assert.equal(rewriteAddress('[::]:7401', '127.9.1.2'), '127.9.1.2:7401');
  assert.equal(rewriteAddress('http://localhost:7401/readyz', '127.9.1.2'), 'http://127.9.1.2:7401/readyz');
  assert.equal(rewriteAddress('s3.example.com:443', '127.9.1.2'), 's3.example.com:443');
  assert.equal(rewriteAddress('/var/lib/celer', '127.9.1.2'), '/var/lib/celer');
});

test('mount paths are rewritten by longest prefix, also after a flag\'s =', () => {
  const mounts = new Map([
    ['/etc/celer', '/tmp/cfg'],
    ['/etc/celer/tls', '/tmp/tls'],
  ]);
  assert.equal(rewritePaths('/etc/celer/tls/tls.crt', mounts), '/tmp/tls/tls.crt');
  assert.equal(rewritePaths('--config=/etc/celer/celer.json', mounts), '--config=/tmp/cfg/celer.json');
  assert.equal(rewritePaths('/etc/celerx', mounts), '/etc/celerx');
});

test('a Celer container becomes a local bin/celer launch on the pod IP and the claim directory', async () => {
  const launch = await translateContainer(
    {
      name: 'celer',
      image: 'celer:1.2.3',
      args: ['serve', '--standalone', '--data-dir', '/var/lib/celer', '--listen', '0.0.0.0:7400', '--http=0.0.0.0:7401', '--node-id=$(POD_NAME)'],
      env: [
        { name: 'POD_NAME', valueFrom: { fieldRef: { fieldPath: 'metadata.name' } } },
        { name: 'POD_IP', valueFrom: { fieldRef: { fieldPath: 'status.podIP' } } },
        { name: 'APP', valueFrom: { fieldRef: { fieldPath: "metadata.labels['app']" } } },
        { name: 'KEY', valueFrom: { secretKeyRef: { name: 's3', key: 'AWS_ACCESS_KEY_ID' } } },
        { name: 'DATA', value: '/var/lib/celer/x' },
      ],
    },
    ctx(),
  );
  assert.deepEqual(launch.argv, [
    '/repo/bin/celer',
    'serve',
    '--standalone',
    '--data-dir',
    '/tmp/pv/data-demo-0',
    '--listen',
    '127.80.1.2:7400',
    '--http=127.80.1.2:7401',
    '--node-id=demo-0',
  ]);
  assert.equal(launch.env.POD_NAME, 'demo-0');
  assert.equal(launch.env.POD_IP, '127.80.1.2');
  assert.equal(launch.env.APP, 'celer');
  assert.equal(launch.env.KEY, 'AK');
  assert.equal(launch.env.DATA, '/tmp/pv/data-demo-0/x');
  assert.equal(launch.env.HOSTNAME, 'demo-0');
  assert.equal(launch.cwd, '/tmp/pod');
});

test('a missing required Secret key fails the launch with the key named', async () => {
  await assert.rejects(
    translateContainer({ name: 'c', image: 'celer:1', env: [{ name: 'K', valueFrom: { secretKeyRef: { name: 'nope', key: 'k' } } }] }, ctx()),
    /key k of Secret nope not found/,
  );
});

test('an image without a known entrypoint and no command is refused', async () => {
  await assert.rejects(translateContainer({ name: 'c', image: 'busybox' }, ctx()), /no command and no known entrypoint/);
});

// review6: a JSON Schema that recurses through $ref, and an event nested deeper than the validator's
// stack, must be refused (2022), not kill the node. ajv's compiled validator recurses once per level
// of the data; `validate` in dataplane/schema/formats.ts only guards JSON.parse, so the RangeError
// escapes checkWrite, Router.route rethrows it synchronously, and the native server's socket
// handler does not catch it: the process dies on an uncaught exception.
import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { connect, SchemaValidationError, type CelerClient } from '@celer/client';
import { removeDir, startCeler, tempDir, type CelerProcess } from './lib/celer-process.ts';

let node: CelerProcess;
let dir: string;
let client: CelerClient;

before(async () => {
  dir = await tempDir('celer-e2e-review6-');
  node = await startCeler(dir);
  client = await connect(node.native, { clientId: 1 });
});

after(async () => {
  await client?.close();
  await node?.kill('SIGKILL');
  await removeDir(dir);
});

test('an event nested deeper than a recursive JSON Schema can follow is refused with 2022, and the node lives', { timeout: 60_000 }, async () => {
  const schema = { $ref: '#/definitions/n', definitions: { n: { type: 'array', items: { $ref: '#/definitions/n' } } } };
  assert.deepEqual(await client.registerSchema({ org: 5, type: 6, eventType: 'Nested', version: { major: 1, minor: 0 }, format: 'json', schema }), { registered: true });
  const depth = 200_000;
  const data = new TextEncoder().encode('['.repeat(depth) + ']'.repeat(depth));
  const res = await client.append({ org: 5, type: 6, id: 1 }, [{ type: 'Nested', data, schemaVersion: { major: 1, minor: 0 } }]).catch((e: unknown) => e);
  await new Promise((r) => setTimeout(r, 300));
  assert.ok(node.proc.exitCode === null && node.proc.signalCode === null, `the node is still running; stderr: ${node.stderr().slice(-1500)}`);
  assert.ok(res instanceof SchemaValidationError, `2022 for the too-deep event; got ${String(res)}`);
  // And it still answers.
  await client.append({ org: 5, type: 6, id: 2 }, [{ type: 'Nested', data: new TextEncoder().encode('[[]]'), schemaVersion: { major: 1, minor: 0 } }]);
});

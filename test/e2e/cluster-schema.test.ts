// Schema registrations replicate like writes (SPEC §5, §7), on a real two-node cluster with the
// real S3: after a SIGKILL of the leader that registered a schema, the new leader validates against
// it (its registry cache is read from the replicated log
// at its new epoch) and checks a new minor against it; the restarted node follows, and `celer
// verify` finds equal chains, registry records included.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AggregateNotFoundError, SchemaValidationError } from '@celer/client';
import { clusterSuite, withLogs } from './lib/cluster.ts';

const suite = clusterSuite();
const te = new TextEncoder();
const SCHEMA = { type: 'object', properties: { amount: { type: 'number' } }, required: ['amount'] };
const ORG = 9;
const TYPE = 3;

test('a registration on the leader is on the follower, and binds the next leader after a failover', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    const roles = await cl.waitForRoles();
    const client = await cl.client({ clientId: 5 });
    const follower = await cl.clientOf(roles.follower);
    try {
      // The follower reads the (empty) registry now, so its cache is complete at this epoch without
      // the schema: after the failover it must read the log again (a new epoch) to know it.
      assert.deepEqual(await follower.listSchemas({ org: ORG }), []);
      const input = { org: ORG, type: TYPE, eventType: 'Deposited', version: { major: 1, minor: 0 }, format: 'json' as const, schema: SCHEMA };
      assert.deepEqual(await client.registerSchema(input), { registered: true });
      const dep = (amount: unknown) => [{ type: 'Deposited', data: te.encode(JSON.stringify({ amount })), schemaVersion: { major: 1, minor: 0 } }];
      await client.append({ org: ORG, type: TYPE, id: 1 }, dep(1));

      await cl.kill(roles.leader, 'SIGKILL');
      const next = await cl.waitForRoles(30_000, { epochAbove: roles.epoch });
      console.log(`killed n${roles.leader}; n${next.leader} leads with epoch ${next.epoch}`);
      const refused = await client.append({ org: ORG, type: TYPE, id: 2 }, dep('two')).catch((e: unknown) => e);
      await assert.rejects(client.read({ org: ORG, type: TYPE, id: 2 }), AggregateNotFoundError, 'nothing of the refused write landed');
      assert.ok(refused instanceof SchemaValidationError, `the new leader validates against the replicated registration; got ${String(refused)}`);
      assert.match(refused.message, /data\/amount must be number/);
      await client.append({ org: ORG, type: TYPE, id: 2 }, dep(2));
      assert.deepEqual(await client.registerSchema(input), { registered: false }, 'the same text again is a no-op on the new leader');
      assert.equal((await follower.listSchemas({ org: ORG })).length, 1, 'listed by the node that was the follower');
      const breaking = await client.registerSchema({ ...input, version: { major: 1, minor: 1 }, schema: { ...SCHEMA, properties: { amount: { type: 'string' } } } }).catch((e: unknown) => e);
      assert.ok(breaking instanceof SchemaValidationError && breaking.detail.reason === 'incompatible', String(breaking));
      assert.deepEqual(await client.registerSchema({ ...input, version: { major: 1, minor: 1 }, schema: { ...SCHEMA, properties: { amount: { type: 'number' }, note: { type: 'string' } } } }), { registered: true });

      await cl.start(roles.leader);
      await cl.waitForRoles(60_000, { leader: next.leader });
      const back = await cl.clientOf(roles.leader);
      try {
        await cl.waitFor('the restarted node to list both versions', async () => (await back.listSchemas({ org: ORG, type: TYPE })).length === 2);
      } finally {
        await back.close();
      }
    } finally {
      await follower.close();
      await client.close();
    }
    await cl.waitConverged(60_000);
    const verified = await cl.stopAndVerify();
    console.log(`celer verify, both nodes equal:\n${verified.join('\n')}`);
  }),
);

// Deletes and trims replicate like writes (real two-node cluster, real S3 from hack/s3.sh): they
// are acknowledged only once the follower holds them, so after the leader is SIGKILLed the new
// leader reads the deleted aggregate as 1001 and the trimmed range as 1000, refuses a write to
// the deleted one, lets the recreatable one come back from version + 1, and still answers a
// retried write with 2002; both nodes' logs end identical (`celer verify`, same chain tips).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { AggregateNotFoundError, AlreadyAppliedError, ReadBelowTrimmedError, type CelerClient } from '@celer/client';
import { clusterSuite, withLogs } from './lib/cluster.ts';

const suite = clusterSuite({ shards: 2 });
const te = new TextEncoder();
const ev = (type: string) => ({ type, data: te.encode(type) });

test('a delete and a trim acknowledged by the leader hold on the new leader after a SIGKILL; floors too', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    const roles = await cl.waitForRoles();
    const trimmed = { org: 7, type: 1, id: 1 };
    const gone = { org: 7, type: 1, id: 2 };
    const back = { org: 7, type: 1, id: 3 };
    let c: CelerClient = await cl.client({ clientId: 9, requestTimeoutMs: 5_000, failoverTimeoutMs: 20_000 });
    try {
      for (let v = 1; v <= 3; v++) for (const k of [trimmed, gone, back]) await c.append(k, [ev(`E${v}`)], { clientSeq: v });
      await c.trimStart(trimmed, 3);
      await c.delete(gone);
      await c.delete(back, { allowRecreate: true });
      await cl.kill(roles.leader, 'SIGKILL');
      const next = await cl.waitForRoles(30_000, { epochAbove: roles.epoch });
      console.log(`killed n${roles.leader}; n${next.leader} leads at epoch ${next.epoch}`);
      await c.close();
      c = await cl.client({ clientId: 9, requestTimeoutMs: 5_000, failoverTimeoutMs: 20_000 });

      await assert.rejects(c.read(trimmed, { from: 1 }), ReadBelowTrimmedError);
      const kept: string[] = [];
      for await (const b of c.readAll(trimmed)) kept.push(...b.events.map((e) => e.type));
      assert.deepEqual(kept, ['E3']);
      await assert.rejects(c.read(gone), AggregateNotFoundError);
      await assert.rejects(c.append(gone, [ev('X')]), (e: unknown) => e instanceof AggregateNotFoundError && /without allowRecreate/.test(e.message));
      assert.deepEqual((await c.details(gone)).deleted, true);
      await assert.rejects(c.append(trimmed, [ev('E3')], { clientSeq: 3 }), AlreadyAppliedError);
      const r = await c.append(back, [ev('New')], { expectedVersion: 'no_stream', clientSeq: 4 });
      assert.deepEqual([r.fromVersion, r.toVersion], [4n, 4n]);

      await cl.start(roles.leader);
      await cl.waitConverged(60_000);
      // The restarted node follows: it serves the same committed view.
      const follower = await cl.clientOf(roles.leader);
      try {
        await assert.rejects(follower.read(gone), AggregateNotFoundError);
        const d = await follower.details(back);
        assert.deepEqual([d.version, d.minVersion, d.deleted], [4n, 4n, false]);
      } finally {
        await follower.close();
      }
    } finally {
      await c.close();
    }
    const tips = await cl.stopAndVerify();
    console.log(`both logs verify and agree:\n${tips.join('\n')}`);
  }),
);

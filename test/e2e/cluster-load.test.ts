// Heartbeats never starve under load: a saturating W1-style load (128 writers, each appending to
// its own aggregate and waiting for its ack) for 60 s against a real two-node cluster must cause
// no election, no fencing and no S3 fallback — a known failure of other stores, where load
// delays heartbeats until the follower takes over. Also counts S3 requests in steady state (the
// goal is none: heartbeats carry the lease's authority while they succeed).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterSuite, Load, sleep, withLogs, type Cluster } from './lib/cluster.ts';

const LOAD_MS = 60_000;
const suite = clusterSuite();

async function sum(cl: Cluster, name: string): Promise<number> {
  return (await cl.metric(0, name)) + (await cl.metric(1, name));
}

test('60 s of saturating load: no election, no fencing, no S3 fallback, no S3 request in steady state', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    const roles = await cl.waitForRoles();
    const load = new Load({ writers: 128, exactlyOnce: 0, org: 60 });
    await load.start(cl);
    try {
      await load.waitAcks(2000);
      const elections = await sum(cl, 'celer_elections_total');
      const fencings = await sum(cl, 'celer_fencings_total');
      const fallbacks = await sum(cl, 'celer_s3_fallback_batches_total');
      const s3 = await sum(cl, 'celer_s3_requests_total');
      const acks = load.acks;
      await sleep(LOAD_MS);
      const done = load.acks - acks;
      const d = {
        elections: (await sum(cl, 'celer_elections_total')) - elections,
        fencings: (await sum(cl, 'celer_fencings_total')) - fencings,
        fallbacks: (await sum(cl, 'celer_s3_fallback_batches_total')) - fallbacks,
        s3: (await sum(cl, 'celer_s3_requests_total')) - s3,
      };
      const after = await cl.waitForRoles();
      console.log(
        `${LOAD_MS / 1000} s of load: ${done} writes acknowledged (${((done * 1000) / LOAD_MS).toFixed(0)}/s); elections ${d.elections}, fencings ${d.fencings}, ` +
          `S3 fallback batches ${d.fallbacks}, S3 requests ${d.s3} (${((d.s3 * 60_000) / LOAD_MS).toFixed(1)}/min); epoch ${roles.epoch} → ${after.epoch}`,
      );
      assert.deepEqual(load.errors, [], `client errors under load: ${load.errorSummary()}`);
      assert.equal(d.elections, 0, 'no election under load');
      assert.equal(d.fencings, 0, 'no fencing under load');
      assert.equal(after.epoch, roles.epoch, 'the same leader throughout');
      assert.equal(after.leader, roles.leader);
      assert.equal(d.fallbacks, 0, 'no group went to S3 (the follower kept up)');
      assert.ok(done > 1000, `only ${done} writes in ${LOAD_MS} ms`);
    } finally {
      await load.stop();
    }
  }),
);

// Follower down in a real two-node cluster (real S3 from hack/s3.sh): the follower is SIGKILLed
// under load; the leader must go on acknowledging writes by shipping each group commit to S3
// (s3Fallback active, fallback batches counted in /metrics) with no error reaching a client and
// no election. The follower is restarted: it catches up (from S3, then from the leader over TCP),
// fallback ends, and both nodes converge: equal placed/durable/committed seqs per shard, the same
// batches read back from each node, every acknowledged write present once, and `celer verify`
// finds the same last seq and chain tip on both data directories.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterSuite, Load, now, readBothAndCompare, sleep, withLogs } from './lib/cluster.ts';

const suite = clusterSuite();

test('follower killed: writes go on through S3 without errors; restarted, it catches up and the nodes converge', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    const roles = await cl.waitForRoles();
    const L = roles.leader;
    const F = roles.follower;
    console.log(`leader n${L}, follower n${F}, epoch ${roles.epoch}`);
    const load = new Load({ writers: 16, exactlyOnce: 4, org: 2 });
    await load.start(cl);
    try {
      let t = now();
      await load.waitAcks(1000);
      const steadyRate = (1000 / (now() - t)) * 1000;
      const batchesBefore = await cl.metric(L, 'celer_s3_fallback_batches_total');
      const electionsBefore = await cl.metric(L, 'celer_elections_total');
      assert.equal(await cl.metric(L, 'celer_s3_fallback_active'), 0, 'no fallback while the follower is up');

      await cl.kill(F, 'SIGKILL');
      const tKill = now();
      const st = await cl.waitFor('the leader in S3 fallback', async () => {
        const s = await cl.status(L);
        return s.s3Fallback?.active ? s : null;
      });
      console.log(`follower n${F} killed; the leader reports s3Fallback active after ${(now() - tKill).toFixed(0)} ms`);
      t = now();
      await load.waitAcks(500, 60_000);
      const fallbackRate = (500 / (now() - t)) * 1000;
      const during = await cl.status(L);
      assert.equal(during.role, 'leader');
      assert.equal(during.epoch, st.epoch, 'no change of epoch while the follower is down');
      // s3Fallback.active and celer_s3_fallback_active say whether a group commit is uploading
      // right now (replicator.ts fallbackActive), so they read 0 between batches: sampled.
      let activeStatus = 0;
      let activeMetric = 0;
      const SAMPLES = 20;
      for (let k = 0; k < SAMPLES; k++) {
        if ((await cl.status(L)).s3Fallback?.active) activeStatus++;
        if ((await cl.metric(L, 'celer_s3_fallback_active')) === 1) activeMetric++;
        await sleep(50);
      }
      const batches = (await cl.metric(L, 'celer_s3_fallback_batches_total')) - batchesBefore;
      const puts = await cl.metric(L, 'celer_s3_requests_total', 'result="ok"');
      console.log(
        `in fallback: ${fallbackRate.toFixed(0)} writes/s (steady state before: ${steadyRate.toFixed(0)} writes/s); ${batches} fallback batches; ` +
          `s3Fallback.active in ${activeStatus}/${SAMPLES} status samples, celer_s3_fallback_active 1 in ${activeMetric}/${SAMPLES}; S3 requests ok so far ${puts}; ` +
          `the longest ack gap around the kill ${load.longestGap(tKill - 200, now()).toFixed(0)} ms`,
      );
      assert.ok(batches > 0, 'fallback batches counted');
      assert.ok(activeStatus > 0 && activeMetric > 0, 'fallback shows as active in /status and /metrics');
      assert.deepEqual(load.errors, [], `client errors while the follower was down: ${load.errorSummary()}`);

      const tStart = now();
      await cl.start(F);
      const tReady = now();
      const timeline = await cl.roleTimeline(F, (s) => s.role === 'follower' && s.ready);
      console.log(`follower n${F}: ready ${(tReady - tStart).toFixed(0)} ms after its start; then ${timeline}`);
      await cl.waitForRoles(60_000, { leader: L });
      await cl.waitFor('fallback to end', async () => !(await cl.status(L)).s3Fallback?.active && (await cl.status(L)).peer?.connected, 60_000);
      console.log(`follower n${F} restarted; follower again and fallback off after ${(now() - tStart).toFixed(0)} ms`);
      const catchUp = cl.nodes[F]!.log.split('\n').filter((l) => /catch|S3|behind|caught/i.test(l) && !l.startsWith('---- test'));
      console.log(`follower log on rejoin:\n  ${catchUp.slice(-10).join('\n  ')}`);
      const batchesAfter = await cl.metric(L, 'celer_s3_fallback_batches_total');
      await load.waitAcks(500);
      assert.equal(await cl.metric(L, 'celer_s3_fallback_batches_total'), batchesAfter, 'no fallback batches once the follower is back');
      const elections = (await cl.metric(L, 'celer_elections_total')) - electionsBefore;
      console.log(`elections attempted by the leader meanwhile: ${elections}; by the restarted follower: ${await cl.metric(F, 'celer_elections_total')}`);
      assert.equal(elections, 0, 'the leader attempted no election');
      assert.equal((await cl.status(L)).epoch, roles.epoch, 'the epoch never changed');
    } finally {
      await load.stop();
    }
    assert.deepEqual(load.errors, [], `client errors: ${load.errorSummary()}`);
    const seqs = await cl.waitConverged(60_000);
    console.log(`converged: per-shard committed seqs ${seqs.join(', ')}; ${load.acks} writes acknowledged`);
    const batches = await readBothAndCompare(cl, load.keys());
    const problems = load.check(batches);
    assert.deepEqual(problems, [], problems.slice(0, 20).join('\n'));
    const verified = await cl.stopAndVerify();
    console.log(`celer verify, both nodes equal:\n${verified.join('\n')}`);
  }),
);

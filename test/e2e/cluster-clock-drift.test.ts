// Clock drift beyond --max-clock-drift-ms (200 ms) in a real two-node cluster: the follower runs
// with --test-clock-offset-ms 5000, so it refuses the leader's heartbeats and records. Writes must
// still be acknowledged (the leader renews its lease in S3 and ships each group commit there),
// with no client error, and there is never a second leader: /status of both nodes, sampled all
// along, never shows two leaders, and the epoch does not change. The leader's log names the
// drift refusal and /status shows s3Fallback active. Then the follower is restarted without the
// offset: it catches up and the nodes converge with equal chains.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterSuite, Load, now, readBothAndCompare, sleep, withLogs } from './lib/cluster.ts';

const OFFSET_MS = 5_000;
const DRIFT_RUN_MS = 6_000;

const suite = clusterSuite();

test(`a follower whose clock is ${OFFSET_MS} ms off: writes go on through S3, never two leaders`, { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.start(0);
    const first = await cl.waitForRoles(30_000, { leader: 0 });
    await cl.start(1, ['--test-clock-offset-ms', String(OFFSET_MS)]);
    const timeline = await cl.roleTimeline(1, (s) => s.role === 'follower', 30_000).catch((e: Error) => `not follower: ${e.message.split('\n')[0]}`);
    console.log(`n0 leader with epoch ${first.epoch}; n1 (clock +${OFFSET_MS} ms) after its start: ${timeline}`);

    const load = new Load({ writers: 8, exactlyOnce: 2, org: 4 });
    await load.start(cl);
    let samples = 0;
    let twoLeaders = 0;
    const roleCounts = new Map<string, number>();
    let fallbackSeen = 0;
    try {
      const t = now();
      while (now() - t < DRIFT_RUN_MS) {
        const [a, b] = await Promise.all([cl.status(0), cl.status(1)]);
        samples++;
        if (a.role === 'leader' && b.role === 'leader') twoLeaders++;
        const k = `n0 ${a.role}/${a.epoch} n1 ${b.role}/${b.epoch}`;
        roleCounts.set(k, (roleCounts.get(k) ?? 0) + 1);
        if (a.s3Fallback?.active) fallbackSeen++;
        await sleep(100);
      }
      const acks = load.acks;
      const renewals = await cl.metric(0, 'celer_lease_renewals_s3_total');
      const batches = await cl.metric(0, 'celer_s3_fallback_batches_total');
      const refusals = cl.nodes[0]!.log.split('\n').filter((l) => /refused a heartbeat/.test(l));
      console.log(
        `${DRIFT_RUN_MS} ms with the drifted follower: ${acks} writes acknowledged (${((acks * 1000) / DRIFT_RUN_MS).toFixed(0)}/s); ${samples} status samples: ` +
          `${[...roleCounts].map(([k, v]) => `${v}× ${k}`).join('; ')}; s3Fallback active in ${fallbackSeen}; lease renewals in S3 ${renewals}; fallback batches ${batches}; ` +
          `leader log: ${refusals.length} heartbeat refusals, first: ${refusals[0] ?? 'none'}`,
      );
      assert.equal(twoLeaders, 0, 'two leaders at once');
      assert.ok(acks > 100, `only ${acks} writes acknowledged`);
      assert.deepEqual(load.errors, [], `client errors: ${load.errorSummary()}`);
      assert.deepEqual([...roleCounts.keys()].filter((k) => !k.startsWith(`n0 leader/${first.epoch} `)), [], 'n0 stayed leader at its epoch');
      assert.ok(fallbackSeen > 0 || refusals.length > 0, 'the drift refusal (s3Fallback active or a refused heartbeat) is visible');
      assert.ok(batches > 0, 'group commits went to S3');
    } finally {
      await load.stop();
    }
    // The follower without the offset: it catches up and the pair converges.
    await cl.kill(1, 'SIGTERM');
    const tRestart = now();
    await cl.start(1);
    const rejoin = await cl.roleTimeline(1, (s) => s.role === 'follower' && s.ready, 120_000);
    await cl.waitForRoles(60_000, { leader: 0 });
    const seqs = await cl.waitConverged(60_000);
    const caught = cl.nodes[1]!.log.split('\n').filter((l) => /caught up from S3/.test(l));
    console.log(
      `n1 restarted without the offset: ${rejoin}; converged ${(now() - tRestart).toFixed(0)} ms after the restart at per-shard committed seqs ${seqs.join(', ')}; ${caught.join('; ')}`,
    );
    const problems = load.check(await readBothAndCompare(cl, load.keys()));
    assert.deepEqual(problems, [], problems.slice(0, 20).join('\n'));
    const verified = await cl.stopAndVerify();
    console.log(`celer verify, both nodes equal:\n${verified.join('\n')}`);
  }),
);

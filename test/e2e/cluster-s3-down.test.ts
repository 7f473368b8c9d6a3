// S3 down while both nodes of a real two-node cluster are up: the radosgw of hack/s3.sh is frozen
// with SIGSTOP (requests hang rather than being refused, the harder case) for several lease TTLs
// under load. Replication to the follower carries on and heartbeats over the replication link
// carry the lease's authority, so writes must go on without any client error, without an
// election or a fencing, at the same epoch. S3 back: still fine, and the nodes converge with equal
// chains. Also prints the S3 requests per minute of steady state under load (the goal is zero).
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { Cluster, clusterSuite, Load, now, readBothAndCompare, sleep, withLogs } from './lib/cluster.ts';

/** How long S3 stays frozen: several lease TTLs (1.5 s). */
const FROZEN_MS = 8_000;
/** The steady-state window over which S3 requests are counted. */
const STEADY_MS = 5_000;

const suite = clusterSuite();

async function s3Requests(cl: Cluster): Promise<number> {
  return (await cl.metric(0, 'celer_s3_requests_total')) + (await cl.metric(1, 'celer_s3_requests_total'));
}

async function counters(cl: Cluster): Promise<string> {
  const out: string[] = [];
  for (const i of [0, 1]) {
    out.push(`n${i} elections ${await cl.metric(i, 'celer_elections_total')} fencings ${await cl.metric(i, 'celer_fencings_total')}`);
  }
  return out.join(', ');
}

test('S3 frozen with both nodes up: writes go on without errors, no election; S3 back: still fine', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    const roles = await cl.waitForRoles();
    console.log(`leader n${roles.leader}, epoch ${roles.epoch}`);
    const load = new Load({ writers: 16, exactlyOnce: 4, org: 3 });
    await load.start(cl);
    try {
      await load.waitAcks(500);
      const before = await counters(cl);
      const r0 = await s3Requests(cl);
      const a0 = load.acks;
      await sleep(STEADY_MS);
      const steady = (await s3Requests(cl)) - r0;
      console.log(`steady state under load: ${steady} S3 requests in ${STEADY_MS} ms (${((steady * 60_000) / STEADY_MS).toFixed(0)}/min) while ${load.acks - a0} writes were acknowledged`);

      await suite.s3.freeze();
      const tFreeze = now();
      const acksAtFreeze = load.acks;
      try {
        await sleep(FROZEN_MS);
        const during = load.acks - acksAtFreeze;
        const [a, b] = await Promise.all([cl.status(0), cl.status(1)]);
        console.log(
          `S3 frozen for ${FROZEN_MS} ms: ${during} writes acknowledged (${((during * 1000) / FROZEN_MS).toFixed(0)}/s); longest ack gap ${load.longestGap(tFreeze, now()).toFixed(0)} ms; ` +
            `roles n0 ${a.role}/${a.epoch} n1 ${b.role}/${b.epoch}; ${await counters(cl)}`,
        );
        assert.ok(during > 100, `only ${during} writes acknowledged while S3 was frozen`);
        assert.deepEqual(load.errors, [], `client errors while S3 was frozen: ${load.errorSummary()}`);
        assert.equal([a, b].filter((s) => s.role === 'leader').length, 1, 'one leader');
        assert.equal([a, b].find((s) => s.role === 'leader')?.epoch, roles.epoch, 'the same epoch');
        assert.equal([a, b].find((s) => s.role !== 'leader')?.role, 'follower');
        assert.equal(await counters(cl), before, 'no election and no fencing while S3 was frozen');
      } finally {
        await suite.s3.thaw();
      }
      const tThaw = now();
      await load.waitAcks(1000);
      console.log(`S3 back: 1000 more writes in ${(now() - tThaw).toFixed(0)} ms; ${await counters(cl)}`);
      assert.equal(await counters(cl), before, 'no election and no fencing after S3 came back');
      await cl.waitForRoles(10_000, { leader: roles.leader });
    } finally {
      await load.stop();
    }
    assert.deepEqual(load.errors, [], `client errors: ${load.errorSummary()}`);
    const seqs = await cl.waitConverged(60_000);
    console.log(`converged: per-shard committed seqs ${seqs.join(', ')}; ${load.acks} writes acknowledged`);
    const problems = load.check(await readBothAndCompare(cl, load.keys()));
    assert.deepEqual(problems, [], problems.slice(0, 20).join('\n'));
    const verified = await cl.stopAndVerify();
    console.log(`celer verify, both nodes equal:\n${verified.join('\n')}`);
  }),
);

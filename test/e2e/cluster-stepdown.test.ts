// Step-down of a real two-node cluster's leader (what the operator calls before restarting it in
// an upgrade): POST /admin/step-down {"handoverTtlMs": 1000} under load. The follower must lead
// quickly (printed, with a loose 10 s bound), at exactly one epoch more; writes go on through
// connect([a, b]) (the client rides the brief 2011s); the old leader follows; no acknowledged
// write is lost or doubled, and the chains are equal. Done twice, so leadership goes there and
// back. A step-down on the follower is refused with 409.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterSuite, Load, now, readBothAndCompare, withLogs } from './lib/cluster.ts';

const HANDOVER_BOUND_MS = 10_000;

const suite = clusterSuite();

test('POST /admin/step-down hands leadership to the follower quickly, epoch + 1, writes go on', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    let roles = await cl.waitForRoles();
    console.log(`leader n${roles.leader}, epoch ${roles.epoch}`);
    const refused = await cl.postStepDown(roles.follower, { handoverTtlMs: 1000 });
    console.log(`step-down on the follower: ${refused.status} ${JSON.stringify(refused.body)}`);
    assert.equal(refused.status, 409, 'a follower cannot step down');

    const load = new Load({ writers: 16, exactlyOnce: 8, org: 5 });
    await load.start(cl);
    try {
      for (let round = 1; round <= 2; round++) {
        await load.waitAcks(1000);
        const t = now();
        const r = await cl.postStepDown(roles.leader, { handoverTtlMs: 1000 });
        const tAnswer = now();
        assert.equal(r.status, 200, `step-down answered ${r.status} ${JSON.stringify(r.body)}`);
        const next = await cl.waitForRoles(30_000, { leader: roles.follower });
        const tLeader = now();
        await load.waitAcks(200);
        const resumed = load.firstAckAfter(tLeader)!;
        console.log(
          `round ${round}: n${roles.leader} stepped down (answer after ${(tAnswer - t).toFixed(0)} ms: ${JSON.stringify(r.body)}); n${next.leader} leader with epoch ${next.epoch} ` +
            `${(tLeader - t).toFixed(0)} ms after the request (as polled); longest ack gap ${load.longestGap(t - 100, resumed).toFixed(0)} ms; client errors so far: ${load.errorSummary()}`,
        );
        assert.ok(tLeader - t < HANDOVER_BOUND_MS, `the handover took ${(tLeader - t).toFixed(0)} ms`);
        assert.equal(next.epoch, roles.epoch + 1, 'the epoch increased by exactly 1');
        roles = next;
      }
      await load.waitAcks(500);
    } finally {
      await load.stop();
    }
    const exactlyOnceErrors = load.errors.filter((e) => e.writer < load.options.exactlyOnce);
    assert.deepEqual(exactlyOnceErrors, [], 'the exactly-once writers saw no error');
    // A plain write in flight at the step-down may end with an unknown outcome (2007 or a broken
    // connection); anything else reaching the client is a failure.
    const unexpected = load.errors.filter((e) => !/2007|ECONNECTION|ETIMEDOUT/.test(e.error));
    assert.deepEqual(unexpected, [], `client errors: ${load.errorSummary()}`);
    const seqs = await cl.waitConverged(60_000);
    console.log(`converged: per-shard committed seqs ${seqs.join(', ')}; ${load.acks} writes acknowledged; client errors: ${load.errorSummary()}`);
    const problems = load.check(await readBothAndCompare(cl, load.keys()));
    assert.deepEqual(problems, [], problems.slice(0, 20).join('\n'));
    const verified = await cl.stopAndVerify();
    console.log(`celer verify, both nodes equal:\n${verified.join('\n')}`);
  }),
);

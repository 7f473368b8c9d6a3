// A zombie leader in a real two-node cluster: the leader is frozen with SIGSTOP under load for
// three lease TTLs. The follower must take over (after the full TTL) at a higher epoch and take
// writes while the old leader is still frozen; then the old leader is resumed (SIGCONT) with
// writes of a client that still thinks it leads pending on its sockets. It must not get any of
// them acknowledged on its own authority: it steps down to follower at the new epoch (rewinding
// its unacknowledged tail: celer_rewound_records_total may grow), and after convergence every
// write any client saw acknowledged is on both nodes, at the version it was acknowledged with,
// none twice, with equal chains.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterSuite, Load, now, readBothAndCompare, sleep, withLogs } from './lib/cluster.ts';

const TTL_MS = 1_500;
/** Heartbeat interval (renew interval): the last heartbeat before the freeze left up to this much earlier. */
const HEARTBEAT_MS = 250;
const PAUSE_MS = 3 * TTL_MS;

const suite = clusterSuite();

test('leader frozen past its lease: the follower takes over, the resumed old leader acknowledges nothing on its own and follows', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    const roles = await cl.waitForRoles();
    const L = roles.leader;
    const F = roles.follower;
    console.log(`leader n${L}, follower n${F}, epoch ${roles.epoch}`);
    // Load A: through connect([a, b]) with a long request timeout, so its writes to the frozen
    // leader are still pending when it resumes.
    const a = new Load({ writers: 16, exactlyOnce: 4, org: 6, clientOptions: { requestTimeoutMs: 30_000, failoverTimeoutMs: 15_000 } });
    let b = new Load({ writers: 0, exactlyOnce: 0, org: 7 });
    await a.start(cl);
    try {
      await a.waitAcks(1000);
      const rewoundBefore = await cl.metric(L, 'celer_rewound_records_total');
      cl.pause(L);
      const tPause = now();
      const timeline = await cl.roleTimeline(F, (s) => s.role === 'leader' && s.ready && s.epoch > roles.epoch, 30_000);
      const tTakeover = now();
      const st = await cl.status(F);
      console.log(`n${L} frozen; n${F}: ${timeline} (epoch ${st.epoch}, ${(tTakeover - tPause).toFixed(0)} ms after the SIGSTOP as polled)`);
      // The TTL runs from the last heartbeat the follower acknowledged, which the leader sent up to
      // one heartbeat interval before the freeze: a takeover earlier than that is a broken rule.
      const earliest = TTL_MS - HEARTBEAT_MS - 100;
      assert.ok(tTakeover - tPause >= earliest, `the follower took over ${(tTakeover - tPause).toFixed(0)} ms after the freeze, before the full TTL since the last heartbeat it can have acknowledged (>= ${earliest} ms)`);
      // Load B: a new client that lists the new leader first (a frozen node still accepts TCP
      // connections, and a write that times out does not move the client's leader guess).
      b = new Load({ writers: 8, exactlyOnce: 2, org: 7, addresses: [cl.nodes[F]!.native, cl.nodes[L]!.native] });
      await b.start(cl);
      const tB = now();
      await b.waitAcks(100, 60_000);
      const bMs = now() - tB;
      const left = PAUSE_MS - (now() - tPause);
      if (left > 0) await sleep(left);
      const acksAAtResume = a.acks;
      cl.resume(L);
      const tResume = now();
      console.log(`n${L} resumed after ${(tResume - tPause).toFixed(0)} ms frozen; load B had ${b.acks} writes acknowledged by the new leader meanwhile (its first 100 took ${bMs.toFixed(0)} ms: the frozen follower's link is still open); fallback batches on n${F}: ${await cl.metric(F, 'celer_s3_fallback_batches_total')}`);
      const back = await cl.roleTimeline(L, (s) => s.role === 'follower' && s.epoch === st.epoch, 30_000);
      console.log(`old leader n${L} after SIGCONT: ${back}`);
      await cl.waitForRoles(30_000, { leader: F });
      await a.waitAcks(500, 60_000);
      await b.waitAcks(300);
      const lateA = a.writers.flatMap((w) => w.acked.filter((x) => x.issued < tPause && x.at >= tResume));
      const rewound = (await cl.metric(L, 'celer_rewound_records_total')) - rewoundBefore;
      console.log(
        `load A: ${acksAAtResume} acks before the resume; ${lateA.length} writes issued before the freeze were acknowledged after the resume (by the new leader after a redirect, or as already applied); ` +
          `errors: ${a.errorSummary()}; celer_rewound_records_total on n${L}: +${rewound}; fencings n${L} ${await cl.metric(L, 'celer_fencings_total')}`,
      );
      const [sl, sf] = await Promise.all([cl.status(L), cl.status(F)]);
      assert.equal(sl.role, 'follower');
      assert.equal(sf.role, 'leader');
      assert.ok(sl.epoch > roles.epoch, 'the old leader knows the higher epoch');
    } finally {
      await Promise.all([a.stop(), b.stop()]);
    }
    assert.deepEqual(b.errors.filter((e) => !/ETIMEDOUT|ECONNECTION|2007/.test(e.error)), [], `load B errors: ${b.errorSummary()}`);
    const seqs = await cl.waitConverged(60_000);
    console.log(`converged: per-shard committed seqs ${seqs.join(', ')}; acknowledged: A ${a.acks}, B ${b.acks}`);
    for (const l of [a, b]) {
      const problems = l.check(await readBothAndCompare(cl, l.keys()));
      assert.deepEqual(problems, [], problems.slice(0, 20).join('\n'));
    }
    const verified = await cl.stopAndVerify();
    console.log(`celer verify, both nodes equal:\n${verified.join('\n')}`);
  }),
);

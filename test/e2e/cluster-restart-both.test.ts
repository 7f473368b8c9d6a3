// Both nodes of a real two-node cluster stopped (SIGTERM) after a load and restarted together:
// exactly one leader comes up, at a higher epoch, the other follows, and every acknowledged
// write reads back, identically, from both nodes; writes go on afterwards and the data
// directories verify with equal chains. Done twice: a clean stop, then a SIGKILL of both.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import { clusterSuite, Load, now, readBothAndCompare, withLogs } from './lib/cluster.ts';

const suite = clusterSuite();

test('both nodes stopped and restarted together: one leader, data intact', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    let roles = await cl.waitForRoles();
    console.log(`leader n${roles.leader}, epoch ${roles.epoch}`);
    const loads: Load[] = [];
    for (const [round, signal] of [[1, 'SIGTERM'], [2, 'SIGKILL']] as const) {
      const load = new Load({ writers: 16, exactlyOnce: 4, org: 10 + round });
      loads.push(load);
      await load.start(cl);
      try {
        await load.waitAcks(2000);
      } finally {
        await load.stop();
      }
      assert.deepEqual(load.errors, [], `round ${round}: client errors: ${load.errorSummary()}`);
      // SIGTERM lets the nodes finish; SIGKILL right after the load also catches a follower
      // whose commit watermark trails the leader's.
      if (signal === 'SIGTERM') await cl.waitConverged(30_000);
      await Promise.all([cl.kill(0, signal), cl.kill(1, signal)]);
      const t = now();
      await cl.startBoth();
      const next = await cl.waitForRoles(60_000, { epochAbove: roles.epoch });
      console.log(`round ${round} (${signal} both): restarted; n${next.leader} leader with epoch ${next.epoch} after ${(now() - t).toFixed(0)} ms`);
      const [a, b] = await Promise.all([cl.status(0), cl.status(1)]);
      assert.equal([a, b].filter((s) => s.role === 'leader').length, 1, 'exactly one leader');
      roles = next;
      const seqs = await cl.waitConverged(60_000);
      console.log(`round ${round}: converged at per-shard committed seqs ${seqs.join(', ')}`);
      for (const l of loads) {
        const problems = l.check(await readBothAndCompare(cl, l.keys()));
        assert.deepEqual(problems, [], problems.slice(0, 20).join('\n'));
      }
    }
    // Writes go on after the restarts.
    const after = new Load({ writers: 8, exactlyOnce: 2, org: 19 });
    await after.start(cl);
    try {
      await after.waitAcks(500);
    } finally {
      await after.stop();
    }
    assert.deepEqual(after.errors, [], `client errors after the restarts: ${after.errorSummary()}`);
    await cl.waitConverged(60_000);
    for (const l of [...loads, after]) {
      const problems = l.check(await readBothAndCompare(cl, l.keys()));
      assert.deepEqual(problems, [], problems.slice(0, 20).join('\n'));
    }
    const verified = await cl.stopAndVerify();
    console.log(`celer verify, both nodes equal:\n${verified.join('\n')}`);
  }),
);

// Subscriptions on a real two-node cluster (real S3 from hack/s3.sh): an org subscription runs
// through connect([a, b]) while writers write and the leader is SIGKILLed; whatever the client
// sees during the failover, resuming from the last checkpoint it was given delivers every
// committed batch of the org exactly once, in commit order per shard. The same checkpoint then
// resumes on the follower alone (it serves committed data), and the feeds of both nodes agree.
import { test } from 'node:test';
import assert from 'node:assert/strict';
import type { CelerClient, SubscribedBatch } from '@celer/client';
import { clusterSuite, Load, sleep, withLogs } from './lib/cluster.ts';

const ORG = 1;
const suite = clusterSuite({ shards: 2 });

/** Every batch of the org in a node's feed, per shard, in position order (seq lists). */
async function feedOf(c: CelerClient, shards: number): Promise<string[]> {
  const out: string[] = [];
  for (let s = 0; s < shards; s++) {
    let from = 1n;
    for (;;) {
      const page = await c.readShard(s, { from, org: ORG });
      for (const b of page.batches) out.push(`${s}:${b.position.seq}`);
      if (page.next > page.committedSeq) break;
      from = page.next;
    }
  }
  return out;
}

test('an org subscription across a leader SIGKILL: resumed from its checkpoint it gets every committed batch exactly once; the follower serves the same feed', { timeout: 300_000 }, () =>
  withLogs(suite.c, async () => {
    const cl = suite.c;
    await cl.startBoth();
    const roles = await cl.waitForRoles();
    const load = new Load({ writers: 8, exactlyOnce: 4, org: ORG });
    await load.start(cl);
    const delivered: SubscribedBatch[] = [];
    let checkpoint: string | undefined;
    let stop = false;
    let resumes = 0;
    let current: CelerClient | undefined;
    const subscriber = (async () => {
      while (!stop) {
        const c = await cl.client({ requestTimeoutMs: 5_000, failoverTimeoutMs: 10_000 });
        current = c;
        try {
          for await (const b of c.subscribe({ org: ORG }, { ...(checkpoint === undefined ? {} : { from: checkpoint }), pollWaitMs: 300 })) {
            delivered.push(b);
            checkpoint = b.checkpoint;
            if (stop) break;
          }
        } catch (e) {
          if (stop) break;
          resumes++;
          console.log(`subscriber: ${(e as Error).name}: ${(e as Error).message.slice(0, 120)}; resuming from ${checkpoint ?? 'the start'}`);
          await sleep(200);
        } finally {
          await c.close();
        }
      }
    })();
    try {
      await load.waitAcks(300);
      await cl.kill(roles.leader, 'SIGKILL');
      const next = await cl.waitForRoles(30_000, { epochAbove: roles.epoch });
      console.log(`killed n${roles.leader}; n${next.leader} leads at epoch ${next.epoch}`);
      await load.waitAcks(300);
      await cl.start(roles.leader);
      await cl.waitForRoles(60_000, { leader: next.leader });
      await load.waitAcks(200);
    } finally {
      await load.stop();
    }
    const seqs = await cl.waitConverged(60_000);
    const leader = await cl.clientOf((await cl.waitForRoles()).leader);
    const want = await feedOf(leader, seqs.length);
    await cl.waitFor('the subscriber to reach the tail', () => delivered.length >= want.length, 30_000);
    stop = true;
    // Closing its client ends the subscriber's long poll.
    await current?.close();
    await subscriber;
    const got = delivered.map((b) => `${b.position.shard}:${b.position.seq}`);
    console.log(`subscriber: ${got.length} batches delivered, ${resumes} resumes from a checkpoint; the org has ${want.length} committed batches`);
    assert.equal(new Set(got).size, got.length, 'no batch delivered twice');
    assert.deepEqual([...got].sort(), [...want].sort(), 'every committed batch delivered');
    const last = new Map<number, bigint>();
    for (const b of delivered) {
      assert.ok(b.position.seq > (last.get(b.position.shard) ?? 0n), 'commit order per shard');
      last.set(b.position.shard, b.position.seq);
    }
    // A checkpoint from the middle resumes on the follower alone: the same batches after it.
    const mid = delivered[Math.floor(delivered.length / 2)]!;
    const follower = await cl.clientOf(1 - (await cl.waitForRoles()).leader);
    try {
      assert.deepEqual(await feedOf(follower, seqs.length), want, "the follower's feed equals the leader's");
      const rest: string[] = [];
      const expected = got.length - Math.floor(delivered.length / 2) - 1;
      const it = follower.subscribe({ org: ORG }, { from: mid.checkpoint, pollWaitMs: 100 });
      const until = Date.now() + 30_000;
      while (rest.length < expected && Date.now() < until) {
        const r = await Promise.race([it.next(), sleep(1_000).then(() => null)]);
        if (r === null) continue;
        if (r.done) break;
        rest.push(`${r.value.position.shard}:${r.value.position.seq}`);
      }
      void it.return(undefined);
      console.log(`follower: ${rest.length} of ${expected} batches after the checkpoint ${mid.checkpoint}`);
      assert.deepEqual([...rest].sort(), got.slice(Math.floor(delivered.length / 2) + 1).sort(), 'resumed on the follower: exactly the batches after the checkpoint');
    } finally {
      await follower.close();
      await leader.close();
    }
  }),
);

// The subscribers of `celer bench --subscribers N`, in their own thread: see bench-subscribers.ts.
// Posts { type: 'ready', from } once they are subscribed from the tail, then, when told
// { type: 'stop', acked }, drains, closes and posts { type: 'report', report }.
import { readlinkSync } from 'node:fs';
import { setPriority } from 'node:os';
import { parentPort, workerData } from 'node:worker_threads';
import { connect, SubscriberTooSlowError, type CelerClient } from '@celer/client';
import { encodeCheckpoint } from '../../client/feed.ts';
import { AckLog, LATENCY_SAMPLE_EVERY, monotonicMs, Reservoir, type DeliveryReport, type WorkerInput, type WorkerMessage } from './bench-subscribers.ts';

/** A seq beyond any shard's tip: readShard from it answers at once with the tip (committedSeq) and no batches. */
const BEYOND_TIP = Number.MAX_SAFE_INTEGER;
/** How often the drain checks whether every fast subscriber has every acked write. */
const DRAIN_CHECK_MS = 20;
/** How long the subscriptions get to end after their clients closed (the slow one may be asleep). */
const END_WAIT_MS = 5_000;

const input = workerData as WorkerInput;
const post = (m: WorkerMessage): void => parentPort!.postMessage(m);
const sleep = (ms: number): Promise<void> => new Promise((r) => setTimeout(r, ms));

/** Lowers this thread's priority (Linux: setpriority on the thread id from /proc/thread-self); the value set, or why not. */
function setThreadNice(nice: number): number | string {
  if (nice === 0) return 0;
  try {
    const tid = Number(readlinkSync('/proc/thread-self').split('/').pop());
    setPriority(tid, nice);
    return nice;
  } catch (e) {
    return (e as Error).message;
  }
}

async function main(): Promise<void> {
  const nice = setThreadNice(input.nice);
  const now = monotonicMs(input.clockBase);
  const ack = new AckLog(input.writers, input.ring, input.ack);
  const window = new Float64Array(input.window);
  const clients: CelerClient[] = [];
  for (let c = 0; c < Math.min(input.connections, input.subscribers); c++) clients.push(await connect(input.addresses, { connectionsPerNode: 1 }));

  // From the tail: every shard's committed seq now, before the bench's first write.
  const first = await clients[0]!.readShard(0, { from: BEYOND_TIP, org: input.org });
  const tips = [first.committedSeq];
  for (let s = 1; s < first.numShards; s++) tips.push((await clients[0]!.readShard(s, { from: BEYOND_TIP, org: input.org })).committedSeq);
  const from = encodeCheckpoint(tips);

  const slow = input.subscribers > 0;
  const delivered = new Array<number>(input.subscribers).fill(0);
  const afterAck = new Reservoir();
  const afterPlacement = new Reservoir();
  let beforeAck = 0;
  let unmatched = 0;
  const errors: string[] = [];
  let stopping = false;

  const drops = new Array<number>(input.subscribers).fill(0);
  let dropMessage: string | undefined;
  const looping = new Array<boolean>(input.subscribers).fill(true);
  const run = async (j: number): Promise<void> => {
    const client = clients[j % clients.length]!;
    let resumeFrom = from;
    try {
      for (;;) {
        try {
          for await (const b of client.subscribe({ org: input.org }, { from: resumeFrom })) {
            // The rest of a page already received comes without a request, so closing alone does not end the loop.
            if (stopping) break;
            if (slow && j === 0) {
              delivered[j]!++;
              await sleep(input.slowMs);
              continue;
            }
            if (delivered[j]!++ % LATENCY_SAMPLE_EVERY === 0) sample(b);
          }
          return;
        } catch (e) {
          // Dropped for falling behind the tail: resume from where it got to, as a consumer would.
          if (!(e instanceof SubscriberTooSlowError) || stopping || typeof e.resumeFrom !== 'string') throw e;
          drops[j]!++;
          dropMessage ??= e.message;
          resumeFrom = e.resumeFrom;
        }
      }
    } catch (e) {
      if (!stopping) errors.push(`subscriber ${j}${slow && j === 0 ? ' (slow)' : ''} failed: ${(e as Error).message}`);
    } finally {
      looping[j] = false;
    }
  };
  /** Latency of one delivery to a fast subscriber (every LATENCY_SAMPLE_EVERY-th). */
  const sample = (b: { key: { id: bigint }; toVersion: bigint; serverTimestampMs: number }): void => {
        const at = now();
        const wall = Date.now();
        const acked = ack.lookup(Number(b.key.id), Number(b.toVersion));
        if (acked === -2) {
          unmatched++;
          return;
        }
        // Not acked yet: the ack comes later, so it falls in the window iff (about) now does.
        const t = acked === -1 ? at : acked;
        if (t < window[0]! || t >= window[1]!) return;
        if (acked === -1) beforeAck++;
        afterAck.add(acked === -1 ? 0 : Math.max(0, at - acked));
        afterPlacement.add(wall - b.serverTimestampMs);
  };
  const all = delivered.map((_, j) => run(j));
  post({ type: 'ready', from });

  const { acked } = await new Promise<{ acked: number }>((resolve) => parentPort!.once('message', (m: { type: 'stop'; acked: number }) => resolve(m)));
  const slowBehindAtStop = slow ? acked - delivered[0]! : undefined;
  const fastFrom = slow ? 1 : 0;
  const stoppedAt = now();
  const caughtUp = (): boolean => delivered.every((d, j) => j < fastFrom || d >= acked);
  while (!caughtUp() && now() - stoppedAt < input.drainMs) await sleep(DRAIN_CHECK_MS);
  const drainMs = now() - stoppedAt;
  stopping = true;
  // Closing a connection does not stop the node reading the pages it was asked for (at most one per
  // shard and subscriber, each up to maxBytes), so the next run would compete with that work. Every
  // subscriber leaves its loop at its next batch and asks no more; one that has every acknowledged
  // write and is still looping is at the tail with nothing to read, one cheap waiting request per
  // shard. So the node is done with the subscribers' page reads once no more requests than that are out.
  const quietFrom = now();
  const outstanding = (): number => clients.reduce((n, c) => n + c.stats().reduce((m, st) => m + st.inFlight, 0), 0);
  const tailWaits = (): number => looping.filter((l, j) => l && delivered[j]! >= acked).length * tips.length;
  while (outstanding() > tailWaits() && now() - quietFrom < input.quietMaxMs) await sleep(DRAIN_CHECK_MS);
  const quiet = outstanding() <= tailWaits();
  const quietMs = now() - stoppedAt;
  for (const c of clients) await c.close();
  // Closing fails every request out, which ends each subscription; one that still does not end is reported.
  const ended = new Array<boolean>(all.length).fill(false);
  all.forEach((p, j) => void p.then(() => (ended[j] = true)));
  await Promise.race([Promise.all(all), sleep(END_WAIT_MS)]);
  ended.forEach((e, j) => e || errors.push(`subscriber ${j} did not end within ${END_WAIT_MS} ms of its client's close`));
  const report: DeliveryReport = {
    subscribers: input.subscribers,
    slowMs: slow ? input.slowMs : undefined,
    connections: clients.length,
    from,
    acked,
    nice,
    delivered,
    drops,
    dropMessage,
    afterAck: afterAck.summary(),
    beforeAck,
    unmatched,
    afterPlacement: afterPlacement.summary(),
    slowBehindAtStop,
    drainMs,
    quietMs,
    quiet,
    missing: delivered.filter((d, j) => j >= fastFrom && d < acked).length,
    errors,
  };
  post({ type: 'report', report });
}

main().catch((e: unknown) => post({ type: 'error', message: (e as Error).message }));

import type { SimNode } from './sim-node.ts';

// Protocol bugs the simulator found (line numbers: dataplane/cluster at commit 832b6e6) and the lead has not fixed yet, each with a signature that
// recognises it in a run, so `npm test` reports the seeds it explains (as `todo` tests in
// cluster-sim.test.ts) without failing on them, and fails on anything else. A failure counts as
// explained only when every failure of the seed is of the kinds the bug causes and the bug's
// signature was seen in the run. Remove an entry once its fix lands: its seeds must then be clean.

export interface KnownBug {
  name: string;
  /** What goes wrong, where (file:line at the time it was found), and why. */
  diagnosis: string;
  /** Failure messages this bug can cause. */
  causes: RegExp;
  /** Seeds that show it (replayed by the todo tests). */
  seeds: number[];
}

/**
 * Fixed in cc72092 ("cluster: fixes from the simulator"); their seeds stay as regression seeds
 * (cluster-sim.test.ts runs them and expects them clean). Line numbers are of 832b6e6.
 */
export const FIXED_BUGS: (KnownBug & { fixedIn: string })[] = [
  {
    name: 'promotion-wedges-adopted-tail',
    diagnosis:
      "cluster-node.ts promote() calls shard.becomeLeader(epoch) (line 360) while role is still 'promoting' (it becomes 'leader' at line 364). " +
      'becomeLeader hands the adopted durable tail (durable > committed) to the commit step at once (shard.ts becomeLeader → afterDurable), ' +
      'replicator.commit (replicator.ts:193) sees authority() false (hasAuthority needs role leader) and rejects with NotCommittedError, and the shard ' +
      'stops taking writes for good (stopWrites: "the commit step failed for seqs X..Y (this node is no longer the leader)"). The new leader then ' +
      'holds the lease and heartbeats while that shard refuses every write (2007/9200) and its tail never commits: the pair never converges.',
    causes: /^\(6\) /,
    seeds: [4, 5],
    fixedIn: 'cc72092',
  },
  {
    name: 'lost-append-never-resent-when-idle',
    diagnosis:
      'replicator.ts has no retransmission for appends lost on a link that stays connected (a blackholed or lossy link): pump() sends only while ' +
      'sentSeq < durable, and sentSeq already counts the lost frames; nothing re-probes a stream whose in-flight appends are never acknowledged. ' +
      'Commits go on through S3 fallback, but once writes stop the follower stays behind (durable and committed below the leader\'s) until the ' +
      "next write's append meets a gap refusal. The reference's 5 s reachability probe (\"drains an idle tail\") is missing. Seen: the pair " +
      'does not converge after the faults stop, and does at once after one more write.',
    causes: /^\(6\) (no convergence within|the pair converged only after)/,
    seeds: [7, 42],
    fixedIn: 'cc72092',
  },
  {
    name: 'follower-commits-its-own-divergent-tail',
    diagnosis:
      "cluster-node.ts onHeartbeat (line 535) hands the leader's committed seqs to followerCommit → shard.commitTo for every shard, without checking " +
      'that the local records up to that seq are the leader\'s. A deposed leader keeps its own speculative tail (other records at the same seqs) ' +
      "until demote() truncates it, and demote() sets role 'fenced' first (line 382) and truncates later (line 390) while onHeartbeat turns " +
      "'fenced' into 'follower' (line 532) at once: the new leader's heartbeat commits the deposed leader's unacknowledged, divergent records " +
      '(commitTo raises the ack barrier over them). Seen: the truncation that was already under way then cuts below the new barrier and the ' +
      'shard fails ("truncateAfter failed: … at or below the ack barrier … (it was acknowledged)"); without the race the divergent records stay ' +
      'committed (visible to reads, never acknowledged to a client, not the leader\'s) and replication stops with "ACKNOWLEDGED HISTORY DIFFERS".',
    causes: /^\((3|6)\) /,
    seeds: [53, 57, 65],
    fixedIn: 'cc72092',
  },
  {
    name: 'failed-promotion-stays-promoting',
    diagnosis:
      "cluster-node.ts promote(): when S3 catch-up fails while promoting (catchUp rethrows in the 'promoting' role, line 409), serial() logs the " +
      "error and the node stays in role 'promoting' for good: tick() (line 219) acts only for leader, follower and fenced, so nothing retries the " +
      'promotion, renews, heartbeats or steps back to follower. The lease it won expires; the peer (if alive) takes over and its heartbeat demotes ' +
      'the stuck node, but when the peer then fails the same way (or is down), no node ever leads again. Seen: an S3 error or outage during ' +
      "the promotion's catch-up; both nodes end in 'promoting' and no write is acknowledged after the faults stop.",
    causes: /^\(6\) /,
    seeds: [101],
    fixedIn: 'cc72092',
  },
  {
    name: 'unhandled-rejection-in-append-queue',
    diagnosis:
      'cluster-node.ts kickAppends (line 616) runs drainAppends as `void this.onShardQueue(...).finally(...)`: an error drainAppends rethrows ' +
      '(line 647: anything but a ReplicaRejectError, e.g. the CorruptionError of a truncateAfter in refuse() at line 662 that cut below the ack ' +
      'barrier) becomes an unhandled promise rejection, which terminates a real node (Node.js default), and the shard queue goes on.',
    causes: /^\((3|6)\) /,
    seeds: [],
    fixedIn: 'cc72092',
  },
];

/** Bugs found and not fixed yet. */
export const KNOWN_BUGS: KnownBug[] = [
  {
    name: 'rewind-below-the-ack-barrier',
    diagnosis:
      'Found against the uncommitted working tree on top of c3cf829 (cluster-node.ts, replicator.ts, messages.ts being edited). A follower logs ' +
      '"ACKNOWLEDGED HISTORY DIFFERS FROM THE LEADER\'S: the leader ends at seq N, records up to M were acknowledged here" (M > N: its ack barrier ' +
      "covers records the new leader does not have; the barrier is raised by commitTo from the old leader's committed seq, which the leader " +
      'sends before its own barrier is durable), then "the local tail after seq N is not the leader\'s (it ends there); rewinding it" and ' +
      'truncateAfter(N) cuts below the ack barrier: shard.ts truncateAfter does not refuse it (it truncates, then its reopen finds "zeros where ' +
      'durable records must be; seq N+1 is at or below the ack barrier M") and the shard fails for good; after a power loss the node cannot start ' +
      'again (seed 93). Seen in both-restart and mixed seeds.',
    causes: /^\((2|6)\) /,
    seeds: [48, 93, 125],
  },
];

/** Watches a run's trace for the signatures of KNOWN_BUGS. */
export class BugSignatures {
  readonly seen = new Set<string>();

  /**
   * The pair failed to converge: a leader with authority whose shard refuses writes because its
   * commit step was refused for want of authority is the promotion wedge.
   */
  stalled(nodes: readonly SimNode[]): void {
    for (const n of nodes) {
      if (n.cluster?.role === 'promoting') this.seen.add('failed-promotion-stays-promoting');
      if (n.cluster?.hasAuthority() !== true) continue;
      for (const sh of n.shards) if (/the commit step failed for seqs \d+\.\.\d+ \(this node is no longer the leader\)/.test(sh.writesRefused ?? '')) this.seen.add('promotion-wedges-adopted-tail');
    }
  }

  /** A (3) violation found while the run went on. */
  committedDivergence(v: string): void {
    const m = /holds a record of epoch (\d+) and \S+ \(committed to \d+\) a different one of epoch (\d+)/.exec(v);
    if (m !== null && Number(m[1]) < Number(m[2])) this.seen.add('follower-commits-its-own-divergent-tail');
  }

  unhandled(e: unknown): void {
    if (/drainAppends|refuse/.test(String((e as Error)?.stack ?? ''))) this.seen.add('unhandled-rejection-in-append-queue');
  }

  /** A log line of a node. */
  note(m: string): void {
    if (/truncateAfter failed: .*at or below the ack barrier|ACKNOWLEDGED HISTORY DIFFERS FROM THE LEADER|not served: .*at or below the ack barrier/.test(m)) this.seen.add('rewind-below-the-ack-barrier');
  }

  /** The pair converged after a write but not before: the idle-lag signature. */
  idleLag(): void {
    this.seen.add('lost-append-never-resent-when-idle');
  }

  /** The known bug that explains every failure, or null. */
  explain(failures: string[]): string | null {
    if (failures.length === 0) return null;
    for (const b of KNOWN_BUGS) if (this.seen.has(b.name) && failures.every((f) => b.causes.test(f))) return b.name;
    return null;
  }
}

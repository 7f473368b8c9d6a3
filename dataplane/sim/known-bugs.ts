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
  {
    name: 'rewind-below-the-ack-barrier',
    diagnosis:
      "Seeds 48, 93, 125: a follower's stale-tail cut acted on a delayed or duplicated append whose tip was old, and follower commits ran " +
      'concurrently with a truncation (the barrier rose over records being cut).',
    causes: /^\((2|6)\) /,
    seeds: [48, 93, 125],
    fixedIn: 'stale sessions ignored, commits on the shard queue, commitTo refused while truncating',
  },
  {
    name: 'writes-placed-before-replica-wait-forever',
    diagnosis: "Seed 215: a write placed while the shard led became durable after becomeReplica; it never reached the commit step, so truncateAfter refused ('writes to be stopped first') for ever.",
    causes: /^\(6\) /,
    seeds: [215],
    fixedIn: 'afterDurable fails such waiters; quiesce waits for chain and loop together',
  },
  {
    name: 'replica-keeps-commit-stop',
    diagnosis: 'Seed 184: a commit-step failure processed after becomeReplica stopped writes on the replica; the next promotion never committed its tail.',
    causes: /^\(6\) /,
    seeds: [184, 746, 799, 815],
    fixedIn: 'failures on a replica only fail waiters; becomeLeader lifts an old commit stop',
  },
  {
    name: 'step-back-rewinds-adopted-tail',
    diagnosis: "Seed 800: a failed promotion stepped back and rewound the tail it had received as a follower, which the old leader had acknowledged (write lost).",
    causes: /^\((2|6)\) /,
    seeds: [800],
    fixedIn: 'stepBack rewinds only records after adoptedEnd',
  },
  {
    name: 'verified-across-epochs',
    diagnosis: 'Seeds 570, 1217, 1339: the epoch learned from a lease read skipped the verified reset, so a heartbeat of the new epoch committed a tail of the old one.',
    causes: /^\((3|6)\) /,
    seeds: [1217, 1339],
    fixedIn: 'verified seqs carry their epoch',
  },
  {
    name: 'replica-keeps-leader-states',
    diagnosis: "Seed 324: a demoted leader kept its cached aggregate states; a kept tail committed later and reads on it missed the batch.",
    causes: /^\(3\) /,
    seeds: [324],
    fixedIn: 'becomeReplica drops cached states',
  },
  {
    name: 'floor-misses-adopted-tail',
    diagnosis: 'Seed 9182: Shard.loadFloor started at the committed batch while other writes were pending and missed a durable, uncommitted batch of a new leader\'s adopted tail: a retry was applied twice.',
    causes: /^\((2|5)\) /,
    seeds: [9182],
    fixedIn: 'loadFloor starts from the newest durable batch (findLatest)',
  },
  {
    name: 'stale-anchor-cuts-leader-records',
    diagnosis: "Seeds 5640, 5740: an anchor sent before the follower's S3 catch-up arrived after it; its old tip made the follower cut records of the leader's own epoch (committed through S3), and the pair stopped converging.",
    causes: /^\(6\) /,
    seeds: [5640, 5740],
    fixedIn: 'cutStaleTail cuts only an older epoch\'s tail, never below the verified seq',
  },
  {
    name: 'stale-tail-past-leader-end',
    diagnosis: "Seed 456: a follower holding records past the leader's end was not told (the anchor matched); it converged only after the next write.",
    causes: /^\(6\) /,
    seeds: [456],
    fixedIn: 'appends carry the leader tip; cutStaleTail',
  },
  {
    name: 'barrier-above-the-new-leaders-log',
    diagnosis:
      "Seeds 1104, 189: while the follower was down, a leader's groups went to S3 in parallel; a later group's object (1104: seq 75) landed " +
      'while an earlier one (73..74) waited for an upload slot. The replicator resolved the later group\'s promise at once (it was meant to ' +
      'commit in order); then the leader lost its authority, stepBack made the shard a replica before the earlier group\'s refusal reached ' +
      "the shard's commit chain, and a refusal in the replica role did not stop the chain: the later group committed past the hole and raised " +
      "the ack barrier over records never acknowledged. The new leader's S3 catch-up stopped at the hole (72), and the old leader refused " +
      'its appends for good ("ACKNOWLEDGED HISTORY DIFFERS").',
    causes: /^\(6\) /,
    seeds: [1104, 189],
    fixedIn: 'shard.ts: a failed commit step bumps commitRun, later links are ignored in either role; replicator.ts: an uploaded group is covered, settled only in seq order; no upload after the authority lapsed while waiting for a slot',
  },
  {
    name: 'catch-up-keeps-an-older-tail-over-acknowledged-s3-batches',
    diagnosis:
      "Seed 1043: the leader of epoch 1 lost power holding its own unacknowledged 64..65; the epoch-2 leader wrote other records at 64..65, " +
      'acknowledged them through S3 and lost power too. The old leader came back, won epoch 3 and caught up from S3, but catch-up kept only ' +
      "objects ending above its durable end (65), so it never looked at the epoch-2 batch 64..65, adopted its own epoch-1 records there and " +
      'lost an acknowledged write (and the pair never converged).',
    causes: /^\((2|6)\) /,
    seeds: [1043],
    fixedIn: 'catch-up.ts: objects above the ack barrier that overlap the local tail are checked too; a newer batch cuts the tail at its first difference, never at or below the barrier',
  },
];

/** Bugs found and not fixed yet. */
export const KNOWN_BUGS: KnownBug[] = [
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

// The follower's side of replication (the leader's is replicator.ts): each shard's queue
// (appends, S3 catch-up, probes, commits and rewinds run one after another per shard), applying
// the leader's appends in batches (one fdatasync for all queued), answering them, refusing and
// rewinding a divergent tail, and committing only records verified as the current leader's.
// Used by cluster-node.ts, on the node's main thread (or the simulator's one thread).
import { ReplicaRejectError } from '../shard/shard.ts';
import type { Append } from './messages.ts';
import type { ClusterCounters, PeerTransport, ShardPort } from './ports.ts';
import { lastSeqOf } from './replicator.ts';

export interface ReplicaSideOptions {
  shards: readonly ShardPort[];
  transport: PeerTransport;
  log: (msg: string) => void;
  counters: ClusterCounters;
  /** The node's role and epoch now. */
  role: () => string;
  epoch: () => number;
  /** Teeth for the simulator: acknowledge appends before their fdatasync. */
  ackBeforeFsync?: boolean;
}

export class ReplicaSide {
  private readonly o: ReplicaSideOptions;
  private readonly byId = new Map<number, ShardPort>();
  private readonly applyQueues = new Map<number, { pending: Append[]; running: boolean }>();
  /**
   * Per shard: the local log up to here is known to be the current leader's (an append of its,
   * or its anchor, linked to it), under that epoch. Commits from heartbeats and notices go no
   * further: records a deposed leader still holds at those seqs must never become visible or acked.
   */
  private readonly verified = new Map<number, { epoch: number; seq: number }>();
  /** Per shard: the newest stream session of the leader seen, and the highest seq it carried. */
  private readonly sessions = new Map<number, { epoch: number; session: number; maxLast: number }>();

  constructor(o: ReplicaSideOptions) {
    this.o = o;
    for (const s of o.shards) this.byId.set(s.id, s);
  }

  shard(id: number): ShardPort | undefined {
    return this.byId.get(id);
  }

  /** A new epoch, or this node leading or stepping back: nothing is verified any more. */
  forgetVerified(): void {
    this.verified.clear();
  }

  private verifiedSeq(shard: number, epoch: number): number {
    const v = this.verified.get(shard);
    return v !== undefined && v.epoch === epoch ? v.seq : 0;
  }

  private setVerified(shard: number, epoch: number, seq: number, how: 'raise' | 'lower'): void {
    const cur = this.verifiedSeq(shard, epoch);
    this.verified.set(shard, { epoch, seq: how === 'raise' ? Math.max(cur, seq) : Math.min(cur, seq) });
  }

  /** `epoch`: of the leader message that said so; only records verified under that epoch commit. */
  async commit(shard: number, committed: number, epoch: number): Promise<void> {
    const s = this.byId.get(shard);
    if (s === undefined || this.o.role() === 'leader' || this.o.role() === 'promoting') return;
    if (this.verifiedSeq(shard, epoch) <= 0) return;
    try {
      // On the shard's queue: never concurrent with a truncation of the tail.
      await this.onShardQueue(shard, async () => {
        const upTo = Math.min(committed, this.verifiedSeq(shard, epoch));
        if (upTo > 0 && this.o.role() !== 'leader' && this.o.role() !== 'promoting') await s.commitTo(upTo);
      });
    } catch (e) {
      this.o.log(`cluster: shard ${shard}: commit to ${committed} failed (${(e as Error).message})`);
    }
  }

  /** Runs `f` after everything queued for the shard's log (appends, catch-up, probes). */
  onShardQueue(shard: number, f: () => Promise<void>): Promise<void> {
    const q = this.queueOf(shard);
    const run = (q.tail ?? Promise.resolve()).then(f, f);
    q.tail = run.catch(() => {});
    return run;
  }

  private readonly shardQueues = new Map<number, { tail: Promise<void> | null }>();
  private queueOf(shard: number): { tail: Promise<void> | null } {
    let q = this.shardQueues.get(shard);
    if (q === undefined) this.shardQueues.set(shard, (q = { tail: null }));
    return q;
  }

  enqueueAppend(m: Append): void {
    let q = this.applyQueues.get(m.shard);
    if (q === undefined) this.applyQueues.set(m.shard, (q = { pending: [], running: false }));
    q.pending.push(m);
    this.kickAppends(m.shard);
  }

  private kickAppends(shard: number): void {
    const q = this.applyQueues.get(shard);
    if (q === undefined || q.running || q.pending.length === 0) return;
    q.running = true;
    this.onShardQueue(shard, () => this.drainAppends(shard))
      .catch((e: Error) => this.o.log(`cluster: shard ${shard}: applying replicated records failed: ${e.stack ?? e.message}`))
      .finally(() => {
        q.running = false;
        this.kickAppends(shard);
      });
  }

  /** Applies every queued append of a shard with one call (one fdatasync), then answers each. */
  private async drainAppends(shard: number): Promise<void> {
    const q = this.applyQueues.get(shard)!;
    const s = this.byId.get(shard);
    while (q.pending.length > 0) {
      const batch = q.pending.splice(0);
      const epoch = batch[batch.length - 1]!.epoch;
      const session = batch[batch.length - 1]!.session;
      if (s === undefined || this.o.role() === 'leader' || this.o.role() === 'promoting' || epoch < this.o.epoch()) continue;
      // Only the newest session counts (older ones were cut off by a restart of the stream and are
      // resent in it); repeats inside it keep each seq once, in order.
      const records: Uint8Array[] = [];
      let upTo = 0;
      for (const a of batch) {
        if (a.epoch !== epoch || a.session !== session) continue;
        for (const r of a.records) {
          const last = lastSeqOf(r);
          if (last <= upTo) continue;
          records.push(r);
          upTo = last;
        }
      }
      const answered = batch.filter((a) => a.epoch === epoch && a.session === session);
      // Appends of an older session of this leader arrive late (or duplicated): ignore them.
      const known = this.sessions.get(shard);
      if (known !== undefined && (known.epoch > epoch || (known.epoch === epoch && known.session > session))) continue;
      if (known === undefined || known.epoch !== epoch || known.session !== session) this.sessions.set(shard, { epoch, session, maxLast: 0 });
      const cur = this.sessions.get(shard)!;
      const newest = Math.max(...answered.map((a) => a.last));
      const fresh = newest >= cur.maxLast;
      cur.maxLast = Math.max(cur.maxLast, newest);
      try {
        if (this.o.ackBeforeFsync === true) {
          // Teeth: acknowledge before the fdatasync (the simulator must catch the loss this allows).
          const p = s.applyReplicated(records);
          for (const a of answered) this.o.transport.send('data', { t: 'appendOk', epoch: a.epoch, shard, session: a.session, ackSeq: a.last });
          await p;
        } else {
          // Linked to the local tip: the whole local log is the leader's up to what it holds now.
          const durable = await s.applyReplicated(records, Math.max(...answered.map((a) => a.committed)));
          const last = answered[answered.length - 1]!;
          this.setVerified(shard, epoch, Math.min(durable, Math.max(...answered.map((a) => a.last))), 'raise');
          if (fresh && durable > last.tip && last.last === last.tip) await this.cutStaleTail(s, last.tip, epoch);
          for (const a of answered) this.o.transport.send('data', { t: 'appendOk', epoch: a.epoch, shard, session: a.session, ackSeq: a.last });
        }
      } catch (e) {
        if (!(e instanceof ReplicaRejectError)) throw e;
        await this.refuse(s, e, epoch, session);
      }
    }
  }

  /**
   * The leader's log ends at `tip` and this one goes on past it, with records the leader never
   * sent: a tail of an older epoch (it would otherwise hide until the leader's next write).
   */
  private async cutStaleTail(s: ShardPort, tip: number, epoch: number): Promise<void> {
    await s.quiesce();
    const t = await s.tip();
    if (t.durableSeq <= tip) return;
    // Records of the sender's own epoch are its records (reached here by S3 catch-up after the
    // append was sent): only an older epoch's tail can be stale. Never below what was verified.
    const end = await s.recordAt(t.durableSeq);
    if (end === null || end.epoch >= epoch) return;
    tip = Math.max(tip, this.verifiedSeq(s.id, epoch));
    if (t.durableSeq <= tip) return;
    if (tip < t.barrierSeq) {
      this.o.log(`cluster: shard ${s.id}: ACKNOWLEDGED HISTORY DIFFERS FROM THE LEADER'S: the leader ends at seq ${tip}, records up to ${t.barrierSeq} were acknowledged here`);
      return;
    }
    this.o.log(`cluster: shard ${s.id}: the local tail after seq ${tip} is not the leader's (it ends there); rewinding it`);
    this.o.counters.rewoundRecords += t.durableSeq - tip;
    this.setVerified(s.id, epoch, tip, 'lower');
    await s.truncateAfter(tip);
  }

  private async refuse(s: ShardPort, e: ReplicaRejectError, epoch: number, session: number): Promise<void> {
    let reason: 'gap' | 'diverged' | 'invalid' | 'busy' | 'fatal' = e.reason;
    // Whatever was placed before the refusal becomes durable first: the leader resends after it.
    await s.quiesce();
    let tip = await s.tip();
    if (e.reason === 'diverged') {
      // Never below what this node verified as the leader's (it may have acknowledged those to it).
      const keep = Math.max(tip.barrierSeq, Math.min(this.verifiedSeq(s.id, epoch), tip.durableSeq));
      if (tip.durableSeq > keep) {
        this.o.log(`cluster: shard ${s.id}: the local tail after seq ${keep} diverges from the leader's; rewinding it (${e.message})`);
        this.o.counters.rewoundRecords += tip.durableSeq - keep;
        this.setVerified(s.id, epoch, keep, 'lower');
        await s.truncateAfter(keep);
        tip = await s.tip();
      } else {
        reason = 'fatal';
        this.o.log(`cluster: shard ${s.id}: ACKNOWLEDGED HISTORY DIFFERS FROM THE LEADER'S at seq ${tip.barrierSeq}: ${e.message}`);
      }
    }
    this.o.transport.send('data', { t: 'appendReject', epoch, shard: s.id, session, reason, placed: tip.durableSeq, message: e.message });
  }
}

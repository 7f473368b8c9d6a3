// One node of a two-node cluster: its role, the S3 lease, heartbeats, election, promotion,
// demotion, and the follower's side of replication. The leader's side is replicator.ts.
//
// Roles (SPEC §7; reference §6.2): boot → catching-up (S3) → follower | promoting → leader;
// leader → fenced (authority expired) | follower (a higher epoch seen, or step-down). Only the
// leader takes writes (writeGate), and only while its authority lasts (timing.ts):
//   leader:   validUntil = (send time of the last acknowledged heartbeat or S3 renewal) + renewDeadline
//   follower: may challenge at max(last heartbeat acknowledged, first sight of the lease's ETag) + TTL
// Steady state: heartbeats carry the authority and S3 sees no request. The leader renews the lease
// in S3 only while heartbeats fail; a follower reads S3 only while it hears no heartbeat.
//
// No direct I/O: time, S3, the peer and the shards are ports (ports.ts), so the simulator runs
// this very code.
import { ReplicaRejectError } from '../shard/shard.ts';
import type { CommitStep } from '../shard/shard.ts';
import { LeaseStore, type LeaseRecord, type ObservedLease } from './lease.ts';
import type { ObjectStore } from './object-store.ts';
import type { Append, ClusterMessage, Heartbeat, HeartbeatAck } from './messages.ts';
import type { Channel, ClusterCounters, Clock, PeerTransport, ShardPort } from './ports.ts';
import { newCounters } from './ports.ts';
import { lastSeqOf, Replicator } from './replicator.ts';
import { replicationTimeoutMs, type ClusterTiming } from './timing.ts';
import { catchUpFromS3 } from './catch-up.ts';

export type ClusterRole = 'boot' | 'follower' | 'catching-up' | 'promoting' | 'leader' | 'fenced';

export interface ClusterNodeOptions {
  nodeId: string;
  /** Address clients dial (named in 2011 answers) and the replication address. */
  clientAddress: string;
  replicationAddress: string;
  timing: ClusterTiming;
  clock: Clock;
  store: ObjectStore;
  transport: PeerTransport;
  shards: readonly ShardPort[];
  log: (msg: string) => void;
  /**
   * Deliberately broken protocol variants for the simulator's teeth tests. Never set in a real
   * node (`celer serve` has no flag for them).
   */
  unsafe?: { takeoverAfterMs?: number; ackBeforeFsync?: boolean };
}

export interface WriteRefusal {
  message: string;
  leader: string | null;
}

/** Heartbeat send times remembered for acknowledgements (older ones are forgotten). */
const HEARTBEATS_REMEMBERED = 64;
/** Delay of the commit notice after commits (appends carry the committed seq meanwhile). */
const COMMIT_NOTIFY_DELAY_MS = 5;
/** Backoff of S3 retries while booting. */
const BOOT_RETRY_MS = { initial: 100, max: 2000 } as const;

export class ClusterNode {
  readonly o: ClusterNodeOptions;
  role: ClusterRole = 'boot';
  epoch = 0;
  /** The leader as far as this node knows. */
  leader: { id: string; client: string } | null = null;
  readonly counters: ClusterCounters = newCounters();
  readonly replicator: Replicator;
  private readonly leases: LeaseStore;
  private observed: ObservedLease | null = null;
  private observedAtMono = 0;
  /** Follower: when it last acknowledged a heartbeat (monotonic ms; -Infinity: never). */
  private lastHbMono = Number.NEGATIVE_INFINITY;
  /** Leader: authority deadline (monotonic ms). */
  private validUntil = Number.NEGATIVE_INFINITY;
  private lastHbAckMono = Number.NEGATIVE_INFINITY;
  private lastS3RenewMono = Number.NEGATIVE_INFINITY;
  private hbN = 0;
  private readonly hbSent = new Map<number, { mono: number; wall: number }>();
  private peer: { id: string; client: string; driftRefused: boolean } | null = null;
  private s3Busy = false;
  private transition: Promise<void> = Promise.resolve();
  private transitioning = false;
  private stepping = false;
  private stopped = false;
  private cancelTick: (() => void) | null = null;
  private readonly applyQueues = new Map<number, { pending: Append[]; running: boolean }>();
  private readonly shardById = new Map<number, ShardPort>();
  private notifyScheduled = false;
  /**
   * Follower, per shard: the local log up to here is known to be the current leader's (an append
   * of its, or its anchor, linked to it). Commits from heartbeats and notices go no further:
   * records a deposed leader still holds at those seqs must never become visible or acked.
   */
  private readonly verified = new Map<number, { epoch: number; seq: number }>();
  private verifiedSeq(shard: number, epoch: number): number {
    const v = this.verified.get(shard);
    return v !== undefined && v.epoch === epoch ? v.seq : 0;
  }
  private setVerified(shard: number, epoch: number, seq: number, how: 'raise' | 'lower'): void {
    const cur = this.verifiedSeq(shard, epoch);
    this.verified.set(shard, { epoch, seq: how === 'raise' ? Math.max(cur, seq) : Math.min(cur, seq) });
  }
  /**
   * Leader, per shard: where the log ended when this node started leading. Records up to here
   * came from earlier leaders (adopted, possibly acknowledged by them); only records after it are
   * this node's own, and only those may be rewound when it stops leading.
   */
  private readonly adoptedEnd = new Map<number, number>();
  /** Follower, per shard: the newest stream session of the leader seen, and the highest seq it carried. */
  private readonly sessions = new Map<number, { epoch: number; session: number; maxLast: number }>();

  constructor(o: ClusterNodeOptions) {
    this.o = o;
    this.leases = new LeaseStore(o.store);
    for (const s of o.shards) this.shardById.set(s.id, s);
    this.replicator = new Replicator(
      {
        nodeId: o.nodeId,
        clock: o.clock,
        store: o.store,
        send: (ch, m) => o.transport.send(ch, m),
        connected: () => o.transport.connected('data'),
        // The adopted tail of a promotion commits while the role is still 'promoting'.
        authority: () => (this.role === 'leader' || this.role === 'promoting') && !this.stopped && this.now() < this.validUntil,
        replicationTimeoutMs: replicationTimeoutMs(o.timing),
        probeIntervalMs: o.timing.renewIntervalMs,
        counters: this.counters,
        log: o.log,
        onCommitted: () => this.scheduleCommitNotify(),
        // A refused group leaves its shard refusing writes until the tail is rewound: step down now
        // (rewinding it), rather than lead on with a shard that takes nothing.
        onRefused: (why) => {
          if (this.role === 'leader' || this.role === 'promoting') void this.demote('fenced', why);
        },
      },
      o.shards,
    );
    o.transport.onMessage((ch, m) => this.onMessage(ch, m));
    o.transport.onLinkChange((ch, up) => {
      if (ch === 'data' && this.role === 'leader') this.replicator.linkChanged(up);
    });
  }

  /** The commit step of shard `id` (shard/shard.ts): replication to the follower or S3. */
  commitStep(id: number): CommitStep {
    return { commit: (from, to, records) => this.replicator.commit(id, from, to, records) };
  }

  private now(): number {
    return this.o.clock.monoMs();
  }

  hasAuthority(): boolean {
    return this.role === 'leader' && !this.stopped && this.now() < this.validUntil;
  }

  /** Null when this node takes writes now; else why not and where the leader is. */
  writeGate(): WriteRefusal | null {
    if (this.hasAuthority() && !this.stepping) return null;
    const leader = this.leader !== null && this.leader.id !== this.o.nodeId ? this.leader.client : null;
    const why = this.stepping ? 'this node is handing leadership over' : this.role === 'leader' ? 'this node lost its lease and stopped taking writes' : `this node is ${this.role === 'follower' ? 'a follower' : this.role}`;
    return { message: `not the leader: ${why}${leader !== null ? `; the leader is ${leader}` : '; a leader is being elected, retry shortly'}`, leader };
  }

  /** Leader: ms of authority left; follower: ms until it may challenge. */
  leaseRemainingMs(): number | null {
    const now = this.now();
    if (this.role === 'leader') return Math.max(0, Math.round(this.validUntil - now));
    if (this.observed === null && this.lastHbMono === Number.NEGATIVE_INFINITY) return null;
    return Math.max(0, Math.round(this.challengeAt() - now));
  }

  peerInfo(): { id: string | null; client: string | null; connected: boolean; lagRecords: number | null; driftRefused: boolean } {
    const connected = this.o.transport.connected('data') && this.o.transport.connected('control');
    return {
      id: this.peer?.id ?? null,
      client: this.peer?.client ?? (this.leader !== null && this.leader.id !== this.o.nodeId ? this.leader.client : null),
      connected,
      lagRecords: this.role === 'leader' ? this.replicator.lag() : null,
      driftRefused: this.peer?.driftRefused ?? false,
    };
  }

  // -------------------------------------------------------------------------------------------
  // Lifecycle

  /** Boots: reads the lease (retrying until S3 answers), catches up from S3, then elects. */
  async start(): Promise<void> {
    await this.serial(async () => {
      let delay: number = BOOT_RETRY_MS.initial;
      for (;;) {
        if (this.stopped) return;
        try {
          this.observe(await this.leases.read());
          break;
        } catch (e) {
          this.o.log(`cluster: cannot read the lease from S3 yet (${(e as Error).message}); retrying in ${delay} ms`);
          await this.sleep(delay);
          delay = Math.min(BOOT_RETRY_MS.max, delay * 2);
        }
      }
      this.role = 'catching-up';
      await this.catchUp();
      if (this.role === 'catching-up') this.role = 'follower';
    });
    this.schedule(0);
  }

  async stop(): Promise<void> {
    this.stopped = true;
    this.cancelTick?.();
    this.cancelTick = null;
    this.replicator.stop('this node is shutting down');
    await this.transition;
  }

  private schedule(ms: number): void {
    this.cancelTick?.();
    this.cancelTick = this.o.clock.after(ms, () => {
      this.cancelTick = null;
      if (this.stopped) return;
      this.tick();
      this.schedule(this.o.timing.renewIntervalMs);
    });
  }

  private sleep(ms: number): Promise<void> {
    return new Promise((r) => this.o.clock.after(ms, r));
  }

  /** Runs role transitions one at a time. */
  private serial(f: () => Promise<void>): Promise<void> {
    const run = this.transition.then(async () => {
      this.transitioning = true;
      try {
        await f();
      } catch (e) {
        this.o.log(`cluster: ${(e as Error).stack ?? (e as Error).message}`);
      } finally {
        this.transitioning = false;
      }
    });
    this.transition = run;
    return run;
  }

  // -------------------------------------------------------------------------------------------
  // The periodic tick

  private tick(): void {
    if (this.transitioning) return;
    const now = this.now();
    if (this.role === 'leader') {
      if (now >= this.validUntil) {
        void this.demote('fenced', `its authority expired (no heartbeat acknowledged and no S3 renewal for ${this.o.timing.renewDeadlineMs} ms)`);
        return;
      }
      this.sendHeartbeat();
      this.replicator.tick();
      const hbFailing = now - this.lastHbAckMono > this.o.timing.renewIntervalMs * 2 || this.peer?.driftRefused === true;
      if (hbFailing && !this.s3Busy) {
        const firstFailure = this.lastS3RenewMono < this.lastHbAckMono;
        if (firstFailure || this.validUntil - now <= this.o.timing.renewDeadlineMs / 2) void this.renewS3();
      }
      return;
    }
    if (this.role === 'follower' || this.role === 'fenced') {
      const hearing = now - this.lastHbMono <= this.o.timing.renewIntervalMs * 2;
      if (!hearing && !this.s3Busy) void this.pollLease();
      // The TTL runs out before the next tick: look again right then, not up to an interval late.
      const due = this.challengeAt() - now;
      if (!hearing && due > 0 && due < this.o.timing.renewIntervalMs) {
        this.o.clock.after(due + 1, () => {
          if (!this.stopped && !this.transitioning && !this.s3Busy && (this.role === 'follower' || this.role === 'fenced')) void this.pollLease();
        });
      }
    }
  }

  private challengeAt(): number {
    const ttl = this.o.unsafe?.takeoverAfterMs ?? this.o.timing.leaseTtlMs;
    return Math.max(this.lastHbMono, this.observedAtMono) + ttl;
  }

  private observe(l: ObservedLease | null): void {
    if (l === null) {
      this.observed = null;
      return;
    }
    if (this.observed === null || this.observed.etag !== l.etag) {
      this.observed = l;
      this.observedAtMono = this.now();
    }
    if (l.lease.epoch >= this.epoch) {
      this.epoch = l.lease.epoch;
      this.leader = { id: l.lease.leader, client: l.lease.client };
    }
  }

  private leaseFor(epoch: number, acquiredAtMs: number): LeaseRecord {
    const wall = this.o.clock.nowMs();
    return { leader: this.o.nodeId, epoch, client: this.o.clientAddress, replication: this.o.replicationAddress, acquiredAtMs, renewedAtMs: wall, ttlMs: this.o.timing.leaseTtlMs };
  }

  /** Follower (hearing no heartbeat) or fenced: read the lease; challenge once the TTL has run out. */
  private async pollLease(): Promise<void> {
    this.s3Busy = true;
    try {
      let l: ObservedLease | null;
      try {
        l = await this.leases.read();
      } catch (e) {
        this.o.log(`cluster: reading the lease failed (${(e as Error).message})`);
        return;
      }
      if (this.role !== 'follower' && this.role !== 'fenced') return;
      if (l === null) {
        // No lease at all: a fresh bucket (or a deleted object). Create one.
        await this.acquire(null);
        return;
      }
      this.observe(l);
      if (l.lease.leader === this.o.nodeId) {
        // Ours: handed over to us, or we held it and were fenced. Nobody else led meanwhile
        // (they would have replaced it), so take it with a new epoch — at once, unless another
        // leader's heartbeat was acknowledged here within the TTL (a step-down whose answer was
        // lost may leave it leading on heartbeats): then only after the TTL since that heartbeat.
        if (this.leader !== null && this.leader.id !== this.o.nodeId && this.now() < this.lastHbMono + this.o.timing.leaseTtlMs) return;
        await this.acquire(l);
        return;
      }
      if (this.now() >= this.challengeAt()) await this.acquire(l);
    } finally {
      this.s3Busy = false;
    }
  }

  /**
   * The leader wrote the lease over to this node with `epoch` (a conditional write of its own,
   * after it stopped taking writes) and said so: lead under that epoch without waiting for a TTL.
   * If the lease says otherwise, the usual polling decides.
   */
  private async takeHandover(epoch: number): Promise<void> {
    if (this.s3Busy) return;
    this.s3Busy = true;
    try {
      const l = await this.leases.read();
      if (l === null || l.lease.leader !== this.o.nodeId || l.lease.epoch !== epoch || (this.role !== 'follower' && this.role !== 'fenced')) return;
      this.observed = l;
      this.observedAtMono = this.now();
      this.counters.elections++;
      void this.promote(epoch, this.now());
    } catch (e) {
      this.o.log(`cluster: reading the handed-over lease failed (${(e as Error).message}); the next poll retries`);
    } finally {
      this.s3Busy = false;
    }
  }

  /** Conditional write of the lease with a new epoch; on success, promotion. */
  private async acquire(cur: ObservedLease | null): Promise<void> {
    const sendMono = this.now();
    const epoch = Math.max(this.epoch, cur?.lease.epoch ?? 0) + 1;
    const next = this.leaseFor(epoch, this.o.clock.nowMs());
    this.counters.elections++;
    let r;
    try {
      r = cur === null ? await this.leases.create(next) : await this.leases.replace(next, cur.etag);
    } catch (e) {
      // Outcome unknown: the next poll re-reads and sees whether it landed (then it names us).
      this.o.log(`cluster: the lease write for epoch ${epoch} failed (${(e as Error).message}); re-reading`);
      return;
    }
    if (!r.ok) {
      this.o.log(`cluster: lost the race for the lease (epoch ${epoch}); staying ${this.role}`);
      this.observedAtMono = this.now();
      return;
    }
    this.observed = { lease: next, etag: r.etag };
    this.observedAtMono = this.now();
    void this.promote(epoch, sendMono);
  }

  // -------------------------------------------------------------------------------------------
  // Promotion and demotion

  private promote(epoch: number, grantMono: number): Promise<void> {
    return this.serial(async () => {
      if (this.stopped) return;
      this.role = 'promoting';
      this.epoch = epoch;
      this.verified.clear();
      this.leader = { id: this.o.nodeId, client: this.o.clientAddress };
      this.validUntil = grantMono + this.o.timing.renewDeadlineMs;
      this.o.log(`cluster: won the lease with epoch ${epoch}; catching up from S3 before taking writes`);
      try {
        // Records the old leader committed through S3 while this node was away.
        await this.catchUp();
        if ((this.role as ClusterRole) !== 'promoting') return;
        // Appends from the old leader still in flight finish first (new ones are refused now): a
        // shard must not take writes while replicated records it has not indexed are on their way.
        for (const s of this.o.shards) await this.onShardQueue(s.id, () => s.quiesce());
        // Catch-up may have taken long: renew before the authority lapses.
        if (this.validUntil - this.now() < this.o.timing.renewDeadlineMs / 2) await this.renewS3();
        if ((this.role as ClusterRole) !== 'promoting') return;
        for (const s of this.o.shards) this.adoptedEnd.set(s.id, (await s.tip()).durableSeq);
        await this.replicator.start(epoch);
        for (const s of this.o.shards) await s.becomeLeader(epoch);
        if ((this.role as ClusterRole) !== 'promoting') return;
        if (this.now() >= this.validUntil) throw new Error('the authority expired during the promotion');
      } catch (e) {
        // Step back; the lease names this node, so the next poll takes it again with a new epoch.
        this.o.log(`cluster: promotion to epoch ${epoch} failed (${(e as Error).message}); stepping back`);
        await this.stepBack('fenced', `promotion failed: ${(e as Error).message}`);
        return;
      }
      this.role = 'leader';
      this.lastHbAckMono = this.now();
      this.counters.electionsWon++;
      this.o.log(`cluster: leader with epoch ${epoch}`);
      this.sendHeartbeat();
    });
  }

  /** Leaves the leader role: fail what is in flight, rewind the unacknowledged tail, become a replica. */
  demote(to: 'fenced' | 'follower', why: string, epoch?: number): Promise<void> {
    if (epoch !== undefined && epoch > this.epoch) this.epoch = epoch;
    return this.serial(async () => {
      if (this.role !== 'leader' && this.role !== 'promoting') {
        if (to === 'follower' && this.role === 'fenced') this.role = 'follower';
        return;
      }
      this.o.log(`cluster: leaving the leader role (${why})`);
      if (to === 'fenced') this.counters.fencings++;
      await this.stepBack(to, why);
    });
  }

  /**
   * The shards become replicas and lose their unacknowledged tail. Each shard's part runs on its
   * queue, after appends already queued and before any that arrive later, so nothing is applied
   * to a tail that is about to be cut, and nothing is committed that is not the leader's.
   */
  private async stepBack(to: 'fenced' | 'follower', why: string): Promise<void> {
    this.role = to;
    this.validUntil = Number.NEGATIVE_INFINITY;
    this.verified.clear();
    this.replicator.stop(`this node stopped leading: ${why}`);
    for (const s of this.o.shards) {
      await this.onShardQueue(s.id, async () => {
        try {
          await s.becomeReplica(this.epoch);
          await s.quiesce();
          const tip = await s.tip();
          // Only this node's own unacknowledged records go; an adopted tail stays (its old leader
          // may have acknowledged it), for the next leader's stream to link or rewind.
          const cut = Math.max(tip.committedSeq, this.adoptedEnd.get(s.id) ?? tip.durableSeq);
          this.adoptedEnd.delete(s.id);
          if (tip.durableSeq > cut) {
            await s.truncateAfter(cut);
            this.counters.rewoundRecords += tip.durableSeq - cut;
          }
        } catch (e) {
          // The tail stays for now: the leader's first append will not link to it, and the
          // follower side rewinds it then (refuse()).
          this.o.log(`cluster: shard ${s.id}: rewinding after leading failed (${(e as Error).message}); the next append from the leader retries`);
        }
      });
    }
    // A fenced node listens for a leader like a follower does.
    this.lastHbMono = Number.NEGATIVE_INFINITY;
    this.observedAtMono = this.now();
  }

  /** S3 catch-up of every shard (peer uploads only). */
  private async catchUp(): Promise<void> {
    for (const s of this.o.shards) {
      await this.onShardQueue(s.id, async () => {
        try {
          await catchUpFromS3(s, this.o.store, this.o.nodeId, this.o.log, this.counters);
        } catch (e) {
          // S3 is an accelerator for a follower; a leader-to-be retries on its next attempt.
          this.o.log(`cluster: S3 catch-up of shard ${s.id} failed (${(e as Error).message})`);
          if (this.role === 'promoting') throw e;
        }
      });
    }
  }

  // -------------------------------------------------------------------------------------------
  // Leader: heartbeats and S3 renewal

  private sendHeartbeat(): void {
    const n = ++this.hbN;
    const committed = this.replicator.committedSeqs();
    const wallMs = this.o.clock.nowMs();
    const hb: Heartbeat = { t: 'hb', epoch: this.epoch, from: this.o.nodeId, client: this.o.clientAddress, n, wallMs, committed };
    this.hbSent.set(n, { mono: this.now(), wall: wallMs });
    if (this.hbSent.size > HEARTBEATS_REMEMBERED) this.hbSent.delete(n - HEARTBEATS_REMEMBERED);
    this.counters.heartbeatsSent++;
    this.o.transport.send('control', hb);
  }

  private async renewS3(): Promise<void> {
    if (this.s3Busy || this.observed === null) return;
    this.s3Busy = true;
    const sendMono = this.now();
    this.lastS3RenewMono = sendMono;
    const epoch = this.epoch;
    try {
      const cur = this.observed;
      const next = { ...this.leaseFor(epoch, cur.lease.acquiredAtMs) };
      let r;
      try {
        r = await this.leases.replace(next, cur.etag);
      } catch (e) {
        this.o.log(`cluster: renewing the lease in S3 failed (${(e as Error).message})`);
        return;
      }
      this.counters.leaseRenewalsS3++;
      if (r.ok) {
        this.observed = { lease: next, etag: r.etag };
        if (this.epoch === epoch && (this.role === 'leader' || this.role === 'promoting')) this.validUntil = Math.max(this.validUntil, sendMono + this.o.timing.renewDeadlineMs);
        return;
      }
      // Replaced by someone else: we are deposed.
      let l: ObservedLease | null = null;
      try {
        l = await this.leases.read();
      } catch {
        /* the tick fences us at the deadline anyway */
      }
      if (l !== null) this.observe(l);
      if (l === null || l.lease.leader !== this.o.nodeId || l.lease.epoch !== epoch) void this.demote('fenced', 'the lease in S3 was taken over', l?.lease.epoch);
      else this.observed = l;
    } finally {
      this.s3Busy = false;
    }
  }

  // -------------------------------------------------------------------------------------------
  // Messages

  private onMessage(ch: Channel, m: ClusterMessage): void {
    if (this.stopped) return;
    if (m.t === 'stale') {
      if (m.epoch > this.epoch && (this.role === 'leader' || this.role === 'promoting')) void this.demote('follower', `the peer knows epoch ${m.epoch}`, m.epoch);
      return;
    }
    if (m.t === 'hbAck') {
      this.onHeartbeatAck(m);
      return;
    }
    if (m.t === 'probeState' || m.t === 'appendOk' || m.t === 'appendReject') {
      if (m.epoch > this.epoch) void this.demote('follower', `the peer knows epoch ${m.epoch}`, m.epoch);
      else if (this.role === 'leader') this.replicator.onMessage(m);
      return;
    }
    // From the leader: hb, handover, probe, append, commit.
    if (m.epoch < this.epoch) {
      this.o.transport.send(ch, { t: 'stale', epoch: this.epoch, from: this.o.nodeId });
      return;
    }
    if (this.role === 'leader' || this.role === 'promoting') {
      if (m.epoch > this.epoch) void this.demote('follower', `a leader with epoch ${m.epoch} spoke`, m.epoch);
      else this.o.log(`cluster: ignoring a ${m.t} of epoch ${m.epoch} while leading under the same epoch`);
      return;
    }
    this.epoch = m.epoch;
    switch (m.t) {
      case 'hb':
        this.onHeartbeat(m);
        return;
      case 'handover':
        this.o.log(`cluster: the leader handed its lease over (epoch ${m.epoch})`);
        this.lastHbMono = Number.NEGATIVE_INFINITY;
        void this.takeHandover(m.epoch);
        return;
      case 'probe':
        void this.onShardQueue(m.shard, async () => {
          const s = this.shardById.get(m.shard);
          if (s === undefined) return;
          const tip = await s.tip();
          this.o.transport.send('data', { t: 'probeState', epoch: this.epoch, shard: m.shard, session: m.session, placed: tip.durableSeq, barrier: tip.barrierSeq });
        });
        return;
      case 'append':
        this.enqueueAppend(m);
        return;
      case 'commit':
        void this.followerCommit(m.shard, m.committed, m.epoch);
        return;
    }
  }

  private onHeartbeat(m: Heartbeat): void {
    this.leader = { id: m.from, client: m.client };
    this.peer = { id: m.from, client: m.client, driftRefused: false };
    if (this.role === 'fenced') this.role = 'follower';
    this.lastHbMono = this.now();
    this.o.transport.send('control', { t: 'hbAck', epoch: this.epoch, from: this.o.nodeId, client: this.o.clientAddress, n: m.n, wallMs: this.o.clock.nowMs(), ok: true });
    for (let i = 0; i < m.committed.length; i++) if (typeof m.committed[i] === 'number') void this.followerCommit(i, m.committed[i]!, m.epoch);
  }

  private onHeartbeatAck(m: HeartbeatAck): void {
    if (m.epoch > this.epoch) {
      if (this.role === 'leader' || this.role === 'promoting') void this.demote('follower', `the peer knows epoch ${m.epoch}`, m.epoch);
      return;
    }
    if (this.role !== 'leader' || m.epoch !== this.epoch) return;
    const sent = this.hbSent.get(m.n);
    if (sent === undefined) return;
    // The follower's wall clock against ours, from the round trip (its delay cannot pass for
    // drift): beyond --max-clock-drift-ms its copies and its heartbeats do not count (record
    // timestamps would jump at a failover); the leader renews in S3 and commits through S3.
    const rtt = this.now() - sent.mono;
    const drift = m.wallMs - (sent.wall + rtt / 2);
    const untrusted = Math.abs(drift) > this.o.timing.maxClockDriftMs + rtt / 2;
    if (untrusted !== (this.peer?.driftRefused ?? false)) {
      this.o.log(
        untrusted
          ? `cluster: the follower's clock is ${Math.round(drift)} ms off ours (limit --max-clock-drift-ms ${this.o.timing.maxClockDriftMs}); committing through S3 and renewing the lease there until it is back within the limit`
          : "cluster: the follower's clock is back within the limit; replicating to it again",
      );
    }
    this.peer = { id: m.from, client: m.client, driftRefused: untrusted };
    this.replicator.setPeerUsable(!untrusted);
    if (untrusted) return;
    this.counters.heartbeatsAcked++;
    this.lastHbAckMono = this.now();
    this.validUntil = Math.max(this.validUntil, sent.mono + this.o.timing.renewDeadlineMs);
  }

  /**
   * Tells the follower what is committed once commits pause: under load every append carries the
   * committed seq already, so this only matters when a burst ends (the follower's reads then see
   * its last writes without waiting for the next heartbeat). Only shards whose seq moved.
   */
  private scheduleCommitNotify(): void {
    if (this.notifyScheduled) return;
    this.notifyScheduled = true;
    this.o.clock.after(COMMIT_NOTIFY_DELAY_MS, () => {
      this.notifyScheduled = false;
      if (this.role !== 'leader') return;
      const c = this.replicator.committedSeqs();
      for (let i = 0; i < c.length; i++) {
        if (c[i] === undefined || c[i] === this.notified[i]) continue;
        this.notified[i] = c[i]!;
        this.o.transport.send('data', { t: 'commit', epoch: this.epoch, shard: i, committed: c[i]! });
      }
    });
  }
  private readonly notified: number[] = [];

  // -------------------------------------------------------------------------------------------
  // Follower: applying the leader's records

  /** `epoch`: of the leader message that said so; only records verified under that epoch commit. */
  private async followerCommit(shard: number, committed: number, epoch: number): Promise<void> {
    const s = this.shardById.get(shard);
    if (s === undefined || this.role === 'leader' || this.role === 'promoting') return;
    if (this.verifiedSeq(shard, epoch) <= 0) return;
    try {
      // On the shard's queue: never concurrent with a truncation of the tail.
      await this.onShardQueue(shard, async () => {
        const upTo = Math.min(committed, this.verifiedSeq(shard, epoch));
        if (upTo > 0 && this.role !== 'leader' && this.role !== 'promoting') await s.commitTo(upTo);
      });
    } catch (e) {
      this.o.log(`cluster: shard ${shard}: commit to ${committed} failed (${(e as Error).message})`);
    }
  }

  /** Runs `f` after everything queued for the shard's log (appends, catch-up, probes). */
  private onShardQueue(shard: number, f: () => Promise<void>): Promise<void> {
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

  private enqueueAppend(m: Append): void {
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
    const s = this.shardById.get(shard);
    while (q.pending.length > 0) {
      const batch = q.pending.splice(0);
      const epoch = batch[batch.length - 1]!.epoch;
      const session = batch[batch.length - 1]!.session;
      if (s === undefined || this.role === 'leader' || this.role === 'promoting' || epoch < this.epoch) continue;
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
        if (this.o.unsafe?.ackBeforeFsync === true) {
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
    this.counters.rewoundRecords += t.durableSeq - tip;
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
        this.counters.rewoundRecords += tip.durableSeq - keep;
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

  // -------------------------------------------------------------------------------------------
  // Step-down (upgrades)

  /** Hands leadership to the caught-up follower; false (with why) when it cannot within `handoverTtlMs`. */
  async stepDown(handoverTtlMs: number): Promise<{ steppedDown: boolean; reason: string }> {
    if (this.role !== 'leader') return { steppedDown: false, reason: `this node is ${this.role}, not the leader` };
    if (this.peer === null || this.peer.id === '') return { steppedDown: false, reason: 'no follower has answered a heartbeat yet' };
    this.stepping = true;
    try {
      const deadline = this.now() + handoverTtlMs;
      while (!this.replicator.caughtUp()) {
        if (this.now() >= deadline || this.role !== 'leader') return { steppedDown: false, reason: `the follower did not catch up within ${handoverTtlMs} ms` };
        await this.sleep(5);
      }
      const cur = this.observed;
      if (cur === null) return { steppedDown: false, reason: 'the lease has not been read' };
      const peer = this.peer;
      const epoch = this.epoch + 1;
      const next: LeaseRecord = { leader: peer.id, epoch, client: peer.client, replication: '', acquiredAtMs: this.o.clock.nowMs(), renewedAtMs: this.o.clock.nowMs(), ttlMs: this.o.timing.leaseTtlMs };
      // From here no group may be acknowledged: the lease is about to name the peer.
      const before = this.validUntil;
      this.validUntil = Number.NEGATIVE_INFINITY;
      let r;
      try {
        r = await this.leases.replace(next, cur.etag);
      } catch (e) {
        // Unknown outcome: the lease may name the peer now. Stop leading either way.
        await this.demote('fenced', `the lease write of the step-down had an unknown outcome (${(e as Error).message})`);
        return { steppedDown: false, reason: `writing the lease over failed (${(e as Error).message}); this node stopped leading, the next election decides` };
      }
      if (!r.ok) {
        this.validUntil = before;
        return { steppedDown: false, reason: 'the lease changed meanwhile' };
      }
      this.observed = { lease: next, etag: r.etag };
      this.leader = { id: peer.id, client: peer.client };
      await this.demote('follower', `handing over to ${peer.id}`, epoch);
      this.o.transport.send('control', { t: 'handover', epoch, from: this.o.nodeId });
      return { steppedDown: true, reason: `leadership handed to ${peer.id} (epoch ${epoch})` };
    } finally {
      this.stepping = false;
    }
  }
}

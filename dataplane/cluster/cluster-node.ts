// One node of a two-node cluster: its role, the S3 lease, heartbeats, election, promotion,
// demotion, and the follower's side of replication. The leader's side is replicator.ts.
//
// Roles (SPEC §7; reference §6.2): boot → catching-up (S3) → follower | promoting → leader;
// leader → fenced (authority expired) | follower (a higher epoch seen, or step-down). Only the
// leader takes writes (writeGate), and only while its authority lasts (timing.ts):
//   leader:   validUntil = (send time of the last acknowledged heartbeat or S3 renewal) + renewDeadline
//   follower: may challenge at max(last heartbeat acknowledged, first sight of the lease's ETag) + TTL
//             (an ETag the last acknowledged heartbeat named counts as seen when that heartbeat was)
// Steady state: heartbeats carry the authority and S3 sees no request. The leader renews the lease
// in S3 only while heartbeats fail; a follower reads S3 only while it hears no heartbeat.
//
// No direct I/O: time, S3, the peer and the shards are ports (ports.ts), so the simulator runs
// this very code.
import type { CommitStep } from '../shard/shard.ts';
import { LeaseStore, type LeaseRecord, type ObservedLease } from './lease.ts';
import type { ObjectStore } from './object-store.ts';
import type { ClusterMessage, Heartbeat, HeartbeatAck } from './messages.ts';
import type { Channel, ClusterCounters, Clock, PeerTransport, ShardPort } from './ports.ts';
import { newCounters } from './ports.ts';
import { Replicator } from './replicator.ts';
import { ReplicaSide } from './replica-side.ts';
import { replicationTimeoutMs, type ClusterTiming } from './timing.ts';
import { catchUpFromS3, listPeerFallback } from './catch-up.ts';
import type { FallbackKey } from './fallback.ts';

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
  unsafe?: {
    takeoverAfterMs?: number;
    ackBeforeFsync?: boolean;
    /** takeHandover leads from its read of the lease, with no write of its own (before the review 3 A3 fix). */
    handoverFromRead?: boolean;
  };
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
  /** The follower's side of replication: shard queues, appends, verified seqs. */
  private readonly replicas: ReplicaSide;
  private readonly leases: LeaseStore;
  private observed: ObservedLease | null = null;
  private observedAtMono = 0;
  /** Follower: when it last acknowledged a heartbeat (monotonic ms; -Infinity: never). */
  private lastHbMono = Number.NEGATIVE_INFINITY;
  /** Follower: the lease ETag the last acknowledged heartbeat named, and when it was acknowledged. */
  private hbLease: { etag: string; atMono: number } | null = null;
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
  private notifyScheduled = false;
  /**
   * Leader, per shard: where the log ended when this node started leading. Records up to here
   * came from earlier leaders (adopted, possibly acknowledged by them); only records after it are
   * this node's own, and only those may be rewound when it stops leading.
   */
  private readonly adoptedEnd = new Map<number, number>();
  constructor(o: ClusterNodeOptions) {
    this.o = o;
    this.leases = new LeaseStore(o.store);
    this.replicas = new ReplicaSide({
      shards: o.shards,
      transport: o.transport,
      log: o.log,
      counters: this.counters,
      role: () => this.role,
      epoch: () => this.epoch,
      ...(o.unsafe?.ackBeforeFsync === true ? { ackBeforeFsync: true } : {}),
    });
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
    return { commit: (from, to, records) => this.replicator.commit(id, from, to, records), send: (records) => this.replicator.send(id, records) };
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
      // First sight of an object starts its TTL, because a leader may have renewed in S3 just
      // before: its authority runs from when it sent that write, which only the write's landing
      // (≤ now) bounds. But an object a heartbeat named was written, and its answer seen, before
      // that heartbeat left, so every grant from it precedes the heartbeat: the TTL from the
      // heartbeat already covers it. Without this, a follower that last read the lease before the
      // leader's last write of it (in practice every follower: it lost the race at boot, or the
      // leader renewed in S3 while it was away) would count the TTL from its first poll after the
      // heartbeats stop, two heartbeat intervals late: ~0.5 s more of every failover.
      this.observedAtMono = this.hbLease !== null && this.hbLease.etag === l.etag ? this.hbLease.atMono : this.now();
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
        // (Only heartbeats set lastHbMono, and never this node's own; observe() above has just
        // made `leader` name this node, so it cannot tell.)
        if (this.now() < this.lastHbMono + this.o.timing.leaseTtlMs) return;
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
   * after it stopped taking writes) and said so: lead under that epoch without waiting for a TTL,
   * once a renewal of that object lands. If the lease says otherwise, the usual polling decides.
   */
  private async takeHandover(epoch: number): Promise<void> {
    if (this.s3Busy) return;
    this.s3Busy = true;
    try {
      const l = await this.leases.read();
      if (l === null || l.lease.leader !== this.o.nodeId || l.lease.epoch !== epoch || (this.role !== 'follower' && this.role !== 'fenced')) return;
      if (this.o.unsafe?.handoverFromRead === true) {
        this.observed = l;
        this.observedAtMono = this.now();
        this.counters.elections++;
        void this.promote(epoch, this.now());
        return;
      }
      // The old leader counts its TTL from when it stepped back, before the handover message left;
      // a read here, however late, bounds nothing on its side. So the authority runs from a write
      // of our own (same epoch): once it lands, the old leader's challenge on the handed-over ETag
      // fails, and it first sees the new ETag after the write was sent.
      const sendMono = this.now();
      const next = this.leaseFor(epoch, l.lease.acquiredAtMs);
      const r = await this.leases.replace(next, l.etag);
      if (!r.ok || (this.role !== 'follower' && this.role !== 'fenced')) return;
      this.observed = { lease: next, etag: r.etag };
      this.observedAtMono = this.now();
      this.counters.elections++;
      void this.promote(epoch, sendMono);
    } catch (e) {
      // A write with an unknown outcome leaves a lease naming this node: the next poll takes it.
      this.o.log(`cluster: taking the handed-over lease failed (${(e as Error).message}); the next poll retries`);
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
      this.hbLease = null;
      this.replicas.forgetVerified();
      this.leader = { id: this.o.nodeId, client: this.o.clientAddress };
      this.validUntil = grantMono + this.o.timing.renewDeadlineMs;
      this.o.log(`cluster: won the lease with epoch ${epoch}; catching up from S3 before taking writes`);
      try {
        // Records the old leader committed through S3 while this node was away.
        await this.catchUp();
        if ((this.role as ClusterRole) !== 'promoting') return;
        // Appends from the old leader still in flight finish first (new ones are refused now): a
        // shard must not take writes while replicated records it has not indexed are on their way.
        for (const s of this.o.shards) await this.replicas.onShardQueue(s.id, () => s.quiesce());
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
    this.replicas.forgetVerified();
    this.replicator.stop(`this node stopped leading: ${why}`);
    for (const s of this.o.shards) {
      await this.replicas.onShardQueue(s.id, async () => {
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
    this.hbLease = null;
    this.observedAtMono = this.now();
  }

  /** S3 catch-up of every shard (peer uploads only). */
  private async catchUp(): Promise<void> {
    let listed: Map<number, FallbackKey[]>;
    try {
      listed = await listPeerFallback(this.o.store, this.o.nodeId);
    } catch (e) {
      // S3 is an accelerator for a follower; a leader-to-be retries on its next attempt.
      this.o.log(`cluster: listing the S3 fallback objects failed (${(e as Error).message})`);
      if (this.role === 'promoting') throw e;
      return;
    }
    // Only shards with objects have anything to do; they download one after another (each
    // prefetches CATCH_UP_PREFETCH objects), as before.
    for (const s of this.o.shards) {
      const objs = listed.get(s.id);
      if (objs === undefined) continue;
      await this.replicas.onShardQueue(s.id, async () => {
        try {
          await catchUpFromS3(s, objs, this.o.store, this.o.log, this.counters);
        } catch (e) {
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
    const hb: Heartbeat = { t: 'hb', epoch: this.epoch, from: this.o.nodeId, client: this.o.clientAddress, n, wallMs, committed, ...(this.observed !== null ? { leaseEtag: this.observed.etag } : {}) };
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
        void this.replicas.onShardQueue(m.shard, async () => {
          const s = this.replicas.shard(m.shard);
          if (s === undefined) return;
          const tip = await s.tip();
          this.o.transport.send('data', { t: 'probeState', epoch: this.epoch, shard: m.shard, session: m.session, placed: tip.durableSeq, barrier: tip.barrierSeq });
        });
        return;
      case 'append':
        this.replicas.enqueueAppend(m);
        return;
      case 'commit':
        void this.replicas.commit(m.shard, m.committed, m.epoch);
        return;
    }
  }

  private onHeartbeat(m: Heartbeat): void {
    this.leader = { id: m.from, client: m.client };
    this.peer = { id: m.from, client: m.client, driftRefused: false };
    if (this.role === 'fenced') this.role = 'follower';
    this.lastHbMono = this.now();
    this.hbLease = m.leaseEtag !== undefined ? { etag: m.leaseEtag, atMono: this.lastHbMono } : null;
    this.o.transport.send('control', { t: 'hbAck', epoch: this.epoch, from: this.o.nodeId, client: this.o.clientAddress, n: m.n, wallMs: this.o.clock.nowMs(), ok: true });
    for (let i = 0; i < m.committed.length; i++) if (typeof m.committed[i] === 'number') void this.replicas.commit(i, m.committed[i]!, m.epoch);
  }

  private onHeartbeatAck(m: HeartbeatAck): void {
    if (m.epoch > this.epoch) {
      if (this.role === 'leader' || this.role === 'promoting') void this.demote('follower', `the peer knows epoch ${m.epoch}`, m.epoch);
      return;
    }
    if (this.role !== 'leader' || m.epoch !== this.epoch) return;
    // An answer that arrives once the authority has lapsed revives nothing (the tick fences this
    // node; a stalled event loop only runs it late): the follower may have answered it after it
    // had waited out the TTL and sent its own lease write, which nothing here can see.
    if (this.now() >= this.validUntil) return;
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
